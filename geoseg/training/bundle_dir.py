"""Where ``geoseg train`` writes a bundle: refuse a folder it did not write, before any training.

A folder is an earlier training output when its ``bundle.yaml`` records training (``training``
provenance, which only :func:`geoseg.training.train` writes) or it holds a training checkpoint.
Such a folder is continued with ``resume`` or replaced with ``overwrite``; any other non-empty
folder, or a file, is refused in one line, so that a user's bundle, notes or weights are never
overwritten.
"""

from __future__ import annotations

from pathlib import Path

from geoseg.bundle import BUNDLE_FILE
from geoseg.errors import ConfigError, GeoSegError, OutputExistsError
from geoseg.training.checkpoint import checkpoint_path


def earlier_training(out: Path) -> bool:
    """Whether ``out`` holds what an earlier ``geoseg train`` wrote."""
    if checkpoint_path(out).is_file() and not checkpoint_path(out).is_symlink():
        return True
    spec_file = out / BUNDLE_FILE
    if not spec_file.is_file() or spec_file.is_symlink():
        return False
    from geoseg.bundle import read_spec

    try:
        return read_spec(out).training is not None
    except (GeoSegError, OSError, ValueError):
        return False


def check_bundle_dir(out_dir: str | Path, *, resume: bool, overwrite: bool) -> Path:
    """``out_dir`` if training may write there (see the module doc); raises otherwise."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out} is a file: give a directory for the bundle")
    if not out.is_dir() or not any(out.iterdir()):
        return out
    if not earlier_training(out):
        first = sorted(p.name for p in out.iterdir())[0]
        raise OutputExistsError(
            f"{out} holds files geoseg did not write (e.g. {first}): choose a new or empty -o "
            "directory for the bundle (geoseg never overwrites files it did not write)")
    if not (resume or overwrite):
        raise OutputExistsError(
            f"{out} already holds a trained bundle or a training checkpoint: pass --resume "
            "(resume=True) to continue that training, --overwrite (overwrite=True) to replace "
            "it, or choose another -o")
    return out
