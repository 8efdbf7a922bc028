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


def test_a_repaired_image_resumes_as_the_advice_says(tmp_path: Path,
                                                     tiny_bundles: tuple[str, str]) -> None:
    """An image cut short (an interrupted download): its chunks fail, "fix the input, then
    rerun with --resume". Downloaded again whole (another file size), --resume keeps the
    finished chunks and computes the failed ones: the store equals a clean run's. An image
    replaced by another one is still refused (its sampled pixels differ)."""
    import numpy as np
    import rasterio
    import zarr

    from geoseg.errors import ResumeError

    clean = write_raster(tmp_path / "clean.tif", textured(256, 256, seed=5),
                         descriptions=["red", "green", "blue", "nir"])
    image = tmp_path / "image.tif"
    with rasterio.open(clean) as s:  # 32² tiles
        profile = {**s.profile, "blockxsize": 32, "blockysize": 32, "tiled": True}
        with rasterio.open(image, "w", **profile) as d:
            d.write(s.read())
    whole = image.read_bytes()
    image.write_bytes(whole[:len(whole) * 3 // 4])
    opts = {"models": list(tiny_bundles), "chunk_size": 64, "workers": 1, "threads": 1,
            "vectors": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = geoseg.run(image, tmp_path / "out", **opts)
        failed = len(first.failed_chunks)
        assert failed and all(not f.retryable for f in first.failed_chunks)
        image.write_bytes(whole)  # downloaded again, whole
        resumed = geoseg.run(image, tmp_path / "out", resume=True, **opts)
        assert geoseg.run(image, tmp_path / "ref", **opts).complete
    assert resumed.complete and resumed.summary.chunks.computed_this_run == failed
    with warnings.catch_warnings():  # the repaired image is the run's input from now on
        warnings.simplefilter("ignore")
        assert geoseg.run(image, tmp_path / "out", resume=True, **opts).complete
    a = zarr.open_group(str(tmp_path / "out" / "predictions.zarr"), mode="r")
    b = zarr.open_group(str(tmp_path / "ref" / "predictions.zarr"), mode="r")
    for name in ("landcover", "buildings_confidence"):
        assert np.array_equal(a[name][:], b[name][:]), name  # type: ignore[index]
    other = write_raster(tmp_path / "other.tif", textured(256, 256, seed=6),
                         descriptions=["red", "green", "blue", "nir"])
    image.write_bytes(whole[:len(whole) * 3 // 4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        geoseg.run(image, tmp_path / "out2", **opts)
        image.write_bytes(other.read_bytes())
        with pytest.raises(ResumeError, match="sampled pixels"):
            geoseg.run(image, tmp_path / "out2", resume=True, **opts)
