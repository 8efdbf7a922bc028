"""A run whose chunks fail on a damaged image: it finishes the others, and nothing in its
folder looks finished (no features.gpkg, COGs or STAC item), with advice a rerun can follow."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import geoseg
from geoseg.errors import GeoSegWarning, IncompleteRunError
from tests.conftest import damaged_copy, write_raster
from tests.pipeline.conftest import textured


def _damaged(tmp_path: Path) -> Path:
    """A 256² GeoTIFF of 32² tiles with a few compressed tiles overwritten (header intact)."""
    img = write_raster(tmp_path / "clean.tif", textured(256, 256, seed=5),
                       descriptions=["red", "green", "blue", "nir"])
    return damaged_copy(img, tmp_path / "damaged.tif")


def test_a_run_with_failed_chunks_publishes_no_features(
        tmp_path: Path, tiny_bundles: tuple[str, str]) -> None:
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        run = geoseg.run(_damaged(tmp_path), out, models=list(tiny_bundles), chunk_size=64,
                         workers=1, threads=1)
    failed = run.failed_chunks
    assert failed and not run.complete and all(not f.retryable for f in failed)
    assert len({f.chunk_id for f in failed}) == len(failed)  # each reported once
    said = [str(w.message) for w in seen if issubclass(w.category, GeoSegWarning)
            and "chunk(s) failed" in str(w.message)]
    assert len(said) == 1 and f"{len(failed)} failed on an error a rerun cannot fix" in said[0]
    # the chunks that could be read are in the store; the folder's finished outputs are not
    names = {p.name for p in out.iterdir()}
    assert {"predictions.zarr", "summary.json", "manifest.json"} <= names
    assert not names & {"features.gpkg", "landcover.tif", "buildings.tif", "stac-item.json"}
    assert "gpkg" not in run.summary.outputs
    with pytest.raises(IncompleteRunError, match=r"a rerun cannot fix .* fix the input or model"):
        run.features("buildings")
