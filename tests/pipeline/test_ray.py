"""The Ray backend on a local cluster: determinism across worker counts, CLI end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import zarr
from affine import Affine

from geoseg.config import validate_job
from geoseg.job import run_job
from geoseg.plan import make_plan

pytestmark = pytest.mark.ray


def _job(image: Path, out: Path, bundles: tuple[str, str], workers: int,
         chunk: int) -> dict[str, Any]:
    return {"image": str(image), "output": str(out), "models": list(bundles),
            "inference": {"chunk_size": chunk, "halo": 64}, "vectors": {"halo": 64},
            "runtime": {"workers": workers, "threads_per_worker": 1}}


def _run(image: Path, out: Path, bundles: tuple[str, str], workers: int, chunk: int) -> object:
    return run_job(validate_job(_job(image, out, bundles, workers, chunk)))


def test_one_and_two_workers_identical(ray_cluster: None, tmp_path: Path, scene_tif: Path,
                                       tiny_bundles: tuple[str, str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from geoseg import outputs

    with monkeypatch.context() as mp:  # the quicklook comes from the pixels workers kept
        for name in ("read_window", "read_layer"):
            mp.setattr(outputs, name, lambda *_, **__: pytest.fail("quicklook read again"))
        r1 = _run(scene_tif, tmp_path / "w1", tiny_bundles, 1, 128)  # 6 chunks, 2 seams
        r2 = _run(scene_tif, tmp_path / "w2", tiny_bundles, 2, 128)  # each way
    assert r1.ok and r2.ok  # type: ignore[attr-defined]
    quicklook = (tmp_path / "w1" / "quicklook.png").read_bytes()
    assert quicklook == (tmp_path / "w2" / "quicklook.png").read_bytes()
    plan = make_plan(validate_job(_job(scene_tif, tmp_path / "w1", tiny_bundles, 1, 128)))
    assert quicklook == outputs.quicklook(plan, str(tmp_path / "w1" / "predictions.zarr"),
                                          tmp_path / "read-back.png").read_bytes()
    a = zarr.open_group(str(tmp_path / "w1" / "predictions.zarr"), mode="r")
    b = zarr.open_group(str(tmp_path / "w2" / "predictions.zarr"), mode="r")
    for name in ("landcover", "landcover_confidence", "buildings", "buildings_confidence"):
        assert np.array_equal(a[name][:], b[name][:]), name  # type: ignore[index]
    for layer in ("landcover", "buildings"):
        d1 = pyogrio.read_dataframe(tmp_path / "w1" / "features.gpkg", layer=layer)
        d2 = pyogrio.read_dataframe(tmp_path / "w2" / "features.gpkg", layer=layer)
        assert len(d1) == len(d2)
        # order follows chunk completion; the set of (class, geometry) must be identical
        assert _canonical(d1) == _canonical(d2)


def _canonical(df: object) -> list[tuple[int, str]]:
    import shapely

    key = "id" if "id" in df.columns else "class_id"  # type: ignore[attr-defined]
    return sorted((str(k), shapely.normalize(g).wkt)  # type: ignore[misc]
                  for k, g in zip(df[key], df.geometry, strict=True))  # type: ignore[index]


def test_demo_end_to_end_through_cli(ray_cluster: None, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`geoseg sample` + `geoseg run` with the built-in bundles on a local Ray cluster."""
    import geopandas as gpd
    import rasterio
    import rioxarray  # noqa: F401
    import xarray as xr
    from pyproj import CRS

    from geoseg.cli import main

    assert main(["sample", str(tmp_path / "scene"), "--size", "512", "--seed", "11"]) == 0
    img = tmp_path / "scene" / "image_t0.tif"
    out = tmp_path / "run"
    rc = main(["-q", "run", str(img), "-o", str(out), "--chunk-size", "256"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "complete" in printed and str(out / "features.gpkg") in printed
    with rasterio.open(img) as src:
        crs, transform, shape = CRS.from_wkt(src.crs.to_wkt()), src.transform, src.shape
    ds = xr.open_zarr(str(out / "predictions.zarr"), decode_coords="all", mask_and_scale=False)
    for name in ("landcover", "buildings"):
        assert ds[name].shape == shape
        assert CRS.from_wkt(ds[name].rio.crs.to_wkt()) == crs
        assert ds[name].rio.transform().almost_equals(transform, precision=1e-9)
        with rasterio.open(out / f"{name}.tif") as cog:
            assert cog.crs == src.crs and cog.transform == transform
            assert cog.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    b = gpd.read_file(out / "features.gpkg", layer="buildings")
    assert len(b) > 10 and b.geometry.is_valid.all() and b["id"].is_unique
    assert (b.acquisition_date == "2019-06-01").all() and (b.source_image == "image_t0.tif").all()
    assert b.crs == crs
    lc = gpd.read_file(out / "features.gpkg", layer="landcover")
    assert set(lc.class_name) <= {"bare", "building", "road", "vegetation", "water"}


def test_footprints_independent_of_chunk_size(ray_cluster: None, tmp_path: Path) -> None:
    """The same buildings (ids and geometry) whatever the chunking, with the trained model."""
    from geoseg.sample import generate_scene

    scene = generate_scene(tmp_path / "scene", size=512, seed=12)
    runs = {}
    for chunk in (128, 192):
        cfg = validate_job({"image": str(scene.image_t0), "output": str(tmp_path / f"c{chunk}"),
                            "models": ["buildings"], "inference": {"chunk_size": chunk},
                            "outputs": {"cog": False, "quicklook": False},
                            "runtime": {"workers": 1, "threads_per_worker": 2}})
        assert run_job(cfg).ok
        runs[chunk] = pyogrio.read_dataframe(tmp_path / f"c{chunk}" / "features.gpkg",
                                             layer="buildings")
    a, b = runs[128], runs[192]
    assert len(a) > 10 and a["id"].is_unique and b["id"].is_unique
    # Different tile shapes may flip a near-tie pixel (float summation order; more of them in
    # bf16); a building cluster is split as a whole, so every footprint of a cluster (building
    # or boundary pixels, 4-connected, in either run) without such a pixel must come out
    # identical (id and geometry) under both chunkings.
    import shapely
    from rasterio.features import shapes
    from scipy import ndimage

    za = zarr.open_group(str(tmp_path / "c128" / "predictions.zarr"), mode="r")["buildings"][:]
    zb = zarr.open_group(str(tmp_path / "c192" / "predictions.zarr"), mode="r")["buildings"][:]
    diff = za != zb
    assert diff.sum() <= za.size * 1e-3
    clusters, _ = ndimage.label(((za == 1) | (za == 2)) | ((zb == 1) | (zb == 2)),
                                structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    hit = np.isin(clusters, np.unique(clusters[diff])) | diff
    transform = Affine(0.5, 0, 500000.0, 0, -0.5, 5100000.0)
    touched = shapely.union_all([shapely.geometry.shape(g) for g, v in
                                 shapes(hit.astype(np.uint8), mask=hit, transform=transform)])

    def clean(df: object) -> list[tuple[int, str]]:
        keep = [not g.intersects(touched) for g in df.geometry]  # type: ignore[attr-defined]
        return _canonical(df[keep])  # type: ignore[index]

    ca, cb = clean(a), clean(b)
    print(f"{int(diff.sum())} flipped pixels; {len(ca)} of {len(a)} footprints away from them")
    assert len(ca) >= len(a) // 3  # most footprints are away from any flipped pixel
    assert ca == cb


def test_a_cpu_job_runs_a_model_actor_per_node_with_its_cores(
        ray_cluster: None, tmp_path: Path, scene_tif: Path,
        tiny_bundles: tuple[str, str]) -> None:
    """Workers and threads left to geoseg on Ray: one model actor per node with CPUs (this
    session's Ray is one node of 2 CPUs), given that node's cores, not the driver's; each
    node's reader is told its band of chunks (one node: all of them, each tile decoded once).
    The two-node case is tests/cluster/test_no_shared_disk.py."""
    job = _job(scene_tif, tmp_path / "o", tiny_bundles, 1, 64)
    job["runtime"] = {"device": "cpu"}
    res = run_job(validate_job(job))
    assert res.ok
    rt = res.summary["runtime"]
    assert (rt["backend"], rt["workers"], rt["threads_per_worker"], rt["model_nodes"]) == \
        ("RayBackend", 1, 2, 1)
    import rasterio

    with rasterio.open(scene_tif) as src:
        (bh, bw), h, w = src.block_shapes[0], src.height, src.width
    blocks = res.summary["source_blocks"]
    assert blocks["decoded"] == -(-h // bh) * -(-w // bw) and blocks["reused"] > 0


def test_an_address_other_than_the_connected_cluster_is_refused(ray_cluster: None) -> None:
    """Ray joins one cluster per process: geoseg.run(address=B) after a job on A ran on A,
    silently; now one line. The cluster it is connected to is accepted."""
    import ray

    from geoseg.errors import ClusterError
    from geoseg.runtime.ray_backend import _check_same_cluster

    here = str(ray.get_runtime_context().gcs_address)
    _check_same_cluster(here)
    _check_same_cluster("auto")
    other = f"127.0.0.1:{int(here.rpartition(':')[2]) + 1}"
    with pytest.raises(ClusterError, match=f"already connected to the Ray cluster at {here}"):
        _check_same_cluster(other)
    from geoseg.runtime.ray_backend import _other_cluster

    # heads on the default port of two machines are two clusters; loopback may be this one
    assert _other_cluster("10.0.0.5:6379", "10.0.0.6:6379")
    assert not _other_cluster("10.0.0.5:6379", "127.0.0.1:6379")
    assert not _other_cluster("10.0.0.5:6379", "10.0.0.5:6379")


def test_a_job_with_nothing_finishing_says_so(ray_cluster: None,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """After the only worker node was lost a job waited in silence (for ever, or until a node
    joined); now every quiet period logs the cluster's live CPU nodes."""
    import time

    import ray

    from geoseg.runtime.ray_backend import _wait_one

    @ray.remote
    def slow() -> int:
        time.sleep(1.5)
        return 7

    ref = slow.remote()
    with caplog.at_level("WARNING", logger="geoseg.runtime.ray_backend"):
        assert _wait_one([ref], quiet_s=0.5) == [ref]
    said = [r.getMessage() for r in caplog.records if "no chunk finished" in r.getMessage()]
    assert said and "1 in flight; 1 live node(s) with CPUs" in said[0]
