"""The inputs of a change comparison: two ``geoseg run`` output directories.

A run is read through its store's metadata only (grid, chunking, class scheme, date); pixels are
read later, chunk by chunk.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affine import Affine

from geoseg.bundle import flag_word
from geoseg.errors import GeoSegWarning, InputError
from geoseg.grid import GeoBox, normalize_crs
from geoseg.layout import GPKG, MANIFEST, STORE
from geoseg.store import class_names_of

log = logging.getLogger(__name__)

LAYER = "landcover"


@dataclass(frozen=True)
class ClassScheme:
    """Class ids with their names and colours, as declared by the store's ``flag_*`` attrs."""

    values: tuple[int, ...]
    meanings: tuple[str, ...]
    colors: tuple[str, ...]

    def name(self, value: int) -> str:
        return dict(zip(self.values, self.meanings, strict=True)).get(value, str(value))

    @property
    def size(self) -> int:
        """Length of a lookup table indexed by class id."""
        return max(self.values) + 1 if self.values else 0


@dataclass(frozen=True)
class RunInfo:
    """One run directory as the change stage sees it."""

    path: Path
    grid: GeoBox
    chunk: int
    classes: ClassScheme
    date: str
    source_image: str
    complete: bool
    gpkg: Path | None
    inputs: tuple[str, ...] = ()  # the run's images as it was given them (its manifest)
    source: dict[str, Any] | None = None  # ... and how it read them (bands, crs, mosaic, ...)

    @property
    def store(self) -> Path:
        return self.path / STORE

    def describe(self) -> dict[str, Any]:
        b = self.grid.bounds
        return {"path": str(self.path), "acquisition_date": self.date or None,
                "source_image": self.source_image or None, "complete": self.complete,
                "grid": {"shape": list(self.grid.shape), "crs": self.grid.crs.to_string(),
                         "resolution": list(self.grid.resolution),
                         "transform": list(self.grid.transform)[:6],
                         "bounds": [b.left, b.bottom, b.right, b.top]},
                "chunk_size": self.chunk, "features": str(self.gpkg) if self.gpkg else None}


def _json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}; rerun `geoseg run` for this "
                         "directory") from exc


def open_run(path: str | Path, label: str) -> RunInfo:
    """Read a run directory's grid and class scheme; raise :class:`InputError` when it is not
    a usable ``geoseg run`` output."""
    root = Path(path)
    store = root / STORE
    if not (store / ".zgroup").exists():
        raise InputError(f"run {label} ({root}) has no {STORE}: pass a directory written by "
                         "`geoseg run -o DIR`")
    attrs = _json(store / ".zattrs")
    meta = _json(store / LAYER / ".zarray") if (store / LAYER / ".zarray").exists() else None
    if meta is None:
        raise InputError(f"run {label} ({root}) has no {LAYER!r} layer: run it with a "
                         "land-cover model")
    try:
        transform = Affine(*attrs["transform"][:6])
        crs = normalize_crs(attrs["crs_wkt"])
        chunk = int(attrs["chunk_size"])
    except KeyError as exc:
        raise InputError(f"run {label} ({root}) store lacks the {exc} attribute: rerun "
                         "`geoseg run` to rewrite it") from exc
    shape = (int(meta["shape"][0]), int(meta["shape"][1]))
    grid = GeoBox(shape, transform, crs)
    lattrs = _json(store / LAYER / ".zattrs")
    classes = _scheme(lattrs, label, root)
    # both marks, as geoseg.open_run: a run killed between them is not complete
    manifest = root / MANIFEST
    recorded = _json(manifest) if manifest.is_file() else {}
    status = recorded.get("status") if manifest.is_file() else "complete"
    config = recorded.get("config")
    config = config if isinstance(config, dict) else {}
    # the inputs as the run could open them from anywhere (absolute; runs before 2026-12-06
    # recorded only the config's paths, relative to where they ran: source_image then)
    paths = recorded.get("input_paths")
    inputs = tuple(str(i) for i in paths) if isinstance(paths, list) else ()
    source = config.get("source") if isinstance(config.get("source"), dict) else None
    complete = bool(attrs.get("geoseg_complete", False)) and status == "complete"
    if not complete:
        warnings.warn(f"run {label} ({root}) is not complete: its missing chunks count as "
                      "unknown; finish it with `geoseg run --resume`", GeoSegWarning,
                      stacklevel=2)
    gpkg = root / GPKG
    return RunInfo(root, grid, chunk, classes, str(attrs.get("acquisition_date") or ""),
                   str(attrs.get("source_image") or ""), complete,
                   gpkg if gpkg.exists() else None, inputs, source)


def _scheme(attrs: dict[str, Any], label: str, root: Path) -> ClassScheme:
    values = attrs.get("flag_values")
    meanings = class_names_of(attrs)
    colors = str(attrs.get("flag_colors", "")).split()
    if not isinstance(values, list) or len(values) != len(meanings):
        raise InputError(f"run {label} ({root}) declares no usable class scheme (flag_values/"
                         "flag_meanings): rerun `geoseg run` with a current geoseg")
    if len(colors) != len(values):
        colors = ["#808080"] * len(values)
    return ClassScheme(tuple(int(v) for v in values), tuple(meanings), tuple(colors))


def check_same_classes(a: RunInfo, b: RunInfo) -> None:
    """Both runs must use one class scheme, else transitions would be meaningless."""
    def words(c: ClassScheme) -> tuple[str, ...]:  # a store from before ``class_names``
        return tuple(flag_word(n) for n in c.meanings)  # spells "low vegetation" so

    if (a.classes.values, words(a.classes)) != (b.classes.values, words(b.classes)):
        raise InputError(
            f"runs use different land-cover classes ({' '.join(a.classes.meanings)} vs "
            f"{' '.join(b.classes.meanings)}): compare runs made with the same land-cover model")
