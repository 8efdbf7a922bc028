"""The layout of a run folder: every name geoseg writes there, in one place.

``--overwrite`` removes exactly these names (and nothing else) from a folder whose manifest says
geoseg wrote it; anything else in the folder belongs to the user and stays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STORE = "predictions.zarr"
GPKG = "features.gpkg"
SUMMARY = "summary.json"
MANIFEST = "manifest.json"
CHUNKS = "chunks.jsonl"
QUICKLOOK = "quicklook.png"
EVALUATION = "evaluation.json"
CONFUSION = "confusion_{layer}.png"  # `geoseg eval`: confusion matrix of a class layer
STAC_ITEM = "stac-item.json"  # written last, by a complete run only
LOCK = ".geoseg.lock"
# object storage (no appends there): one small object per finished chunk instead of chunks.jsonl
STATE = "_geoseg"
RECORDS = f"{STATE}/chunks"


def record_name(chunk_id: str) -> str:
    """The object that says chunk ``chunk_id`` is done, in a run in object storage."""
    return f"{RECORDS}/{chunk_id}.json"


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run folder."""

    root: Path

    @property
    def store(self) -> Path:
        return self.root / STORE

    @property
    def gpkg(self) -> Path:
        return self.root / GPKG

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def chunks(self) -> Path:
        return self.root / CHUNKS

    @property
    def quicklook(self) -> Path:
        return self.root / QUICKLOOK

    @property
    def evaluation(self) -> Path:
        return self.root / EVALUATION

    @property
    def stac_item(self) -> Path:
        return self.root / STAC_ITEM

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    def cog(self, layer: str) -> Path:
        return self.root / f"{layer}.tif"

    def confusion(self, layer: str) -> Path:
        """The confusion-matrix PNG ``geoseg eval`` writes for a class layer of this run."""
        return self.root / CONFUSION.format(layer=layer)

    def outputs(self, layers: list[str] | tuple[str, ...], remote: bool = False) -> list[str]:
        """Names (relative to the root) a run with these model layers writes (``remote``: a
        run in object storage, whose chunk records are objects under :data:`STATE`)."""
        return [STORE, GPKG, SUMMARY, QUICKLOOK, EVALUATION, STAC_ITEM, CHUNKS, MANIFEST,
                *(f"{name}.tif" for name in layers),
                *(CONFUSION.format(layer=name) for name in layers),
                *([STATE] if remote else [])]

