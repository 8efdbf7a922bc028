"""The run manifest: plan + resolved config + per-chunk completion, next to the outputs.

``manifest.json`` is written once by the driver when a run starts; ``chunks.jsonl`` gets one line
per finished chunk, appended and fsynced by the driver (the single writer) *after* the chunk's Zarr
write returned. A rerun with ``--resume`` skips every chunk listed there, so a killed job loses at
most the chunks in flight.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoseg.errors import OutputExistsError, ResumeError

MANIFEST = "manifest.json"
CHUNKS = "chunks.jsonl"


@dataclass
class Manifest:
    root: Path
    data: dict[str, Any]
    done: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def result_key(self) -> str:
        return str(self.data.get("result_key", ""))

    def record(self, chunk_id: str, stats: dict[str, Any]) -> None:
        self.done[chunk_id] = stats
        line = json.dumps({"chunk": chunk_id, **stats}, sort_keys=True)
        with open(self.root / CHUNKS, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def update(self, **values: Any) -> None:
        self.data.update(values)
        _atomic_write_json(self.root / MANIFEST, self.data)


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def has_results(root: Path) -> bool:
    return root.exists() and any(root.iterdir())


def start(root: Path, data: dict[str, Any], *, overwrite: bool, resume: bool) -> Manifest:
    """Open the manifest for a new run, refusing to clobber existing outputs unless told."""
    root = Path(root)
    if has_results(root):
        if resume:
            return load(root, expect_key=str(data["result_key"]))
        if not overwrite:
            raise OutputExistsError(
                f"output {root} already holds results: pass --resume to continue that run or "
                "--overwrite to replace it")
        _clear(root)
    elif resume and not root.exists():
        pass  # nothing to resume: a fresh run
    root.mkdir(parents=True, exist_ok=True)
    m = Manifest(root, dict(data))
    _atomic_write_json(root / MANIFEST, m.data)
    (root / CHUNKS).touch()
    return m


def load(root: Path, expect_key: str | None = None) -> Manifest:
    path = root / MANIFEST
    if not path.is_file():
        raise ResumeError(f"{root} has no {MANIFEST}: it was not written by geoseg run; "
                          "choose another output or pass --overwrite")
    data = json.loads(path.read_text())
    if expect_key is not None and data.get("result_key") != expect_key:
        raise ResumeError(f"{root} was produced with a different image, region, model or "
                          "inference settings: resume refused; pass --overwrite to start over")
    done: dict[str, dict[str, Any]] = {}
    chunks = root / CHUNKS
    if chunks.exists():
        for line in chunks.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a killed driver: that chunk is redone
            done[rec.pop("chunk")] = rec
    return Manifest(root, data, done)


def _clear(root: Path) -> None:
    import shutil

    for child in root.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()
