"""The class-map COG copied from a VRT over the store's Zarr array (GDAL's Zarr driver) is the
COG copied from a tiled GeoTIFF of the same chunks: same pixels, overviews, colour table, tags
and georeferencing, a valid COG layout, and no temporary file left. Compressed by several
threads it is the same file, byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from geoseg import outputs
from geoseg.config import validate_job
from geoseg.job import run_job
from geoseg.plan import make_plan
from geoseg.runtime.serial import SerialBackend


def test_cog_from_the_zarr_store_equals_the_geotiff_route(
        tmp_path: Path, scene_tif: Path, tiny_bundles: tuple[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "a run & <its> 'outputs'"  # characters the VRT's XML must escape
    cfg = validate_job({"image": str(scene_tif), "output": str(out), "models": list(tiny_bundles),
                        "inference": {"chunk_size": 64, "halo": 32}, "vectors": {"enabled": False},
                        "runtime": {"threads_per_worker": 1}})
    assert run_job(cfg, backend=SerialBackend()).ok
    plan = make_plan(cfg)
    store = str(out / "predictions.zarr")
    for m in plan.models:
        assert outputs._zarr_source(store, m.name) is not None
        direct = outputs.export_cog(plan, store, m.name, tmp_path / f"direct-{m.name}.tif")
        with monkeypatch.context() as mp:
            mp.setattr(outputs, "_zarr_source", lambda *_: None)
            tiles = outputs.export_cog(plan, store, m.name, tmp_path / f"tiles-{m.name}.tif")
        with rasterio.open(direct) as a, rasterio.open(tiles) as b:
            assert a.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert a.profile == b.profile and a.crs == plan.grid.crs
            assert a.transform == plan.grid.transform and a.nodata == 255
            assert a.colormap(1) == b.colormap(1)
            assert a.colormap(1)[m.spec.classes[1].id][:3] == m.spec.classes[1].rgb
            assert a.tags(1) == b.tags(1) == {f"class_{c.id}": c.name for c in m.spec.classes}
            assert a.overviews(1) == b.overviews(1)
            assert np.array_equal(a.read(1), b.read(1))
            for f in a.overviews(1):
                shape = (a.height // f, a.width // f)
                assert np.array_equal(a.read(1, out_shape=shape), b.read(1, out_shape=shape))
        threaded = outputs.export_cog(plan, store, m.name, tmp_path / f"threaded-{m.name}.tif",
                                      threads=3)
        assert threaded.read_bytes() == direct.read_bytes()  # threads compress, same bytes
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_object_storage_and_unquotable_paths_take_the_geotiff_route(tmp_path: Path) -> None:
    assert outputs._zarr_source("s3://bucket/run/predictions.zarr", "landcover") is None
    odd = tmp_path / 'a "quoted" run.zarr'
    (odd / "landcover").mkdir(parents=True)
    (odd / "landcover" / ".zarray").write_text("{}")
    assert outputs._zarr_source(str(odd), "landcover") is None
    assert outputs._zarr_source(str(tmp_path / "missing.zarr"), "landcover") is None


def test_temporary_names_never_write_through_a_link(tmp_path: Path, scene_tif: Path,
                                                    tiny_bundles: tuple[str, str]) -> None:
    """export_cog writes and then deletes its own temporaries (``.tiles-*.vrt`` / ``.tif``,
    ``.partial-*``): a link planted at one of those names is replaced, never followed, and the
    file it points at is neither written nor deleted."""
    out = tmp_path / "run"
    cfg = validate_job({"image": str(scene_tif), "output": str(out), "models": [tiny_bundles[0]],
                        "inference": {"chunk_size": 64, "halo": 32}, "vectors": {"enabled": False},
                        "runtime": {"threads_per_worker": 1}})
    assert run_job(cfg, backend=SerialBackend()).ok
    plan = make_plan(cfg)
    store = str(out / "predictions.zarr")
    victims = tmp_path / "victims"
    victims.mkdir()
    final = tmp_path / "cog" / "landcover.tif"
    final.parent.mkdir()
    for name in (".tiles-landcover.vrt", ".tiles-landcover.tif", ".partial-landcover.tif"):
        (victims / name).write_bytes(b"VICTIM")
        (final.parent / name).symlink_to(victims / name)
    outputs.export_cog(plan, store, "landcover", final)
    assert sorted(p.name for p in final.parent.iterdir()) == ["landcover.tif"]
    assert all(p.read_bytes() == b"VICTIM" for p in victims.iterdir())
    assert len(list(victims.iterdir())) == 3
    with rasterio.open(final) as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
