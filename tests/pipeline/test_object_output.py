"""``geoseg run IMG -o s3://bucket/run`` against a real S3 API on loopback (moto): the Zarr
chunks, COGs and quicklook are byte-identical to a local run's files, the store reads back with
zarr/xarray from the bucket, a failed or interrupted run never looks complete there and
``--resume`` completes it (damaged chunk objects are found by size/ETag and recomputed), a
missing bucket is one line, and ``open_run``/``geoseg change``/``geoseg eval`` read the run
from the bucket."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from geoseg.config import validate_job
from geoseg.errors import OutputExistsError
from geoseg.job import JobResult, Progress, run_job
from geoseg.stac_item import SHA2_256
from tests.s3_fixtures import (
    apply_env,
    assert_same_store,
    body,
    keys,
    moto_server,
    s3_client,
)

BUCKET = "geoseg-out"
URL = f"s3://{BUCKET}"
ARRAYS = ("landcover", "landcover_confidence", "buildings", "buildings_confidence")


def _job(image: Path, out: str, bundles: tuple[str, ...], full: bool = True) -> dict[str, Any]:
    """64² chunks (20 of them); ``full``: vectors, COGs and quicklook too."""
    return {"image": str(image), "output": out, "models": list(bundles),
            "inference": {"chunk_size": 64, "halo": 32}, "vectors": {"enabled": full, "halo": 48},
            "outputs": {"cog": full, "quicklook": full},
            "runtime": {"executor": "local", "threads_per_worker": 1}}


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server() as ep, pytest.MonkeyPatch.context() as mp:
        apply_env(mp, ep, tmp_path_factory.mktemp("aws"))
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        s3_client(ep).create_bucket(Bucket=BUCKET)
        yield ep


@pytest.fixture(scope="module")
def local(image: Path, tiny_bundles: tuple[str, str]) -> Path:
    out = image.parent / "local"
    assert run_job(validate_job(_job(image, str(out), tiny_bundles))).ok
    return out


@pytest.fixture(scope="module")
def remote(endpoint: str, image: Path, tiny_bundles: tuple[str, str]) -> JobResult:
    res = run_job(validate_job(_job(image, f"{URL}/run", tiny_bundles)))
    assert res.ok, res.failed
    return res


def _same_store(endpoint: str, prefix: str, local: Path, same_job: bool = False) -> None:
    assert_same_store(s3_client(endpoint), BUCKET, prefix, local, same_job)


def test_s3_run_equals_local_run(endpoint: str, remote: JobResult, local: Path) -> None:
    c = s3_client(endpoint)
    names = keys(c, BUCKET, "run/")
    top = {k.removeprefix("run/").split("/")[0] for k in names}
    assert top == {"manifest.json", "summary.json", "stac-item.json", "features.gpkg",
                   "landcover.tif", "buildings.tif", "quicklook.png", "predictions.zarr",
                   "_geoseg"}  # no lock left, no chunks.jsonl, no temporary names
    assert len([k for k in names if k.startswith("run/_geoseg/chunks/")]) == 20
    _same_store(endpoint, "run", local, same_job=True)
    for name in ("landcover.tif", "buildings.tif", "quicklook.png"):
        assert body(c, BUCKET, f"run/{name}") == (local / name).read_bytes(), name

    assert remote.output == f"{URL}/run" and remote.summary_path == f"{URL}/run/summary.json"
    summary = json.loads(body(c, BUCKET, "run/summary.json"))
    assert summary["status"] == "complete"
    assert summary["outputs"]["zarr"] == f"{URL}/run/predictions.zarr"
    assert all(v.startswith(f"{URL}/run/") for v in summary["outputs"].values())
    local_summary = json.loads((local / "summary.json").read_text())
    assert summary["class_pixels"] == local_summary["class_pixels"]
    assert summary["features"] == local_summary["features"]
    manifest = json.loads(body(c, BUCKET, "run/manifest.json"))
    assert manifest["status"] == "complete" and "_geoseg" in manifest["outputs"]
    record = json.loads(body(c, BUCKET, "run/_geoseg/chunks/1_2.json"))
    local_records = {(r := json.loads(line))["chunk"]: r
                     for line in (local / "chunks.jsonl").read_text().splitlines()}
    for name, (size, digest, etag) in record["files"].items():  # the local record + the ETag
        assert [size, digest] == local_records["1_2"]["files"][name] and etag

    item = json.loads(body(c, BUCKET, "run/stac-item.json"))
    assert item["assets"]["predictions"]["href"] == "./predictions.zarr"
    assert item["assets"]["landcover"]["href"] == "./landcover.tif"
    lc = body(c, BUCKET, "run/landcover.tif")
    assert item["assets"]["landcover"]["file:checksum"] == SHA2_256 + hashlib.sha256(
        lc).hexdigest()


def test_store_reads_back_from_the_bucket(endpoint: str, remote: JobResult,
                                          local: Path) -> None:
    import rioxarray  # noqa: F401  (the .rio accessor)
    import xarray as xr
    import zarr
    from obstore.store import from_url

    store = zarr.storage.ObjectStore(from_url(f"{URL}/run/predictions.zarr",
                                              client_options={"allow_http": True}),
                                     read_only=True)
    ds = xr.open_zarr(store, decode_coords="all", mask_and_scale=False)
    ref = xr.open_zarr(str(local / "predictions.zarr"), decode_coords="all",
                       mask_and_scale=False)
    assert ds.rio.crs == ref.rio.crs and ds.rio.transform() == ref.rio.transform()
    for name in ARRAYS:
        assert np.array_equal(ds[name].values, ref[name].values), name
    g = zarr.open_group(store, mode="r")
    assert g.attrs["geoseg_complete"] is True


def test_open_run_change_and_eval_read_from_the_bucket(remote: JobResult, local: Path,
                                                       tmp_path: Path) -> None:
    import geopandas as gpd

    import geoseg
    from geoseg.cli import main

    run = geoseg.open_run(f"{URL}/run")
    ref = geoseg.open_run(local)
    assert run.complete and run.layers == ref.layers
    assert np.array_equal(run.predictions()["landcover"].values,
                          ref.predictions()["landcover"].values)
    a, b = run.features("buildings"), gpd.read_file(local / "features.gpkg", layer="buildings")
    assert len(a) == len(b) and a.geometry.geom_equals(b.geometry).all()
    assert geoseg.open_run(f"{URL}/run").path == run.path  # fetched once, then reused

    assert main(["change", f"{URL}/run", f"{URL}/run", "-o", str(tmp_path / "change")]) == 0
    change = json.loads((tmp_path / "change" / "change_summary.json").read_text())
    assert change["areas"]["changed"]["ha"] == 0
    out = tmp_path / "eval.json"
    assert main(["eval", "--run", f"{URL}/run", "--truth", str(local / "landcover.tif"),
                 "--json", str(out), "--no-png"]) == 0
    assert json.loads(out.read_text())["landcover"]["pixel_accuracy"] == 1.0


def _fail(monkeypatch: pytest.MonkeyPatch, always: set[str], once: set[str]) -> dict[str, int]:
    """Chunk writes that fail as obstore fails when the endpoint stays unreachable through its
    own retries: ``always`` on every attempt, ``once`` on the first only. Returns the attempts
    per chunk."""
    from obstore.exceptions import GenericError

    import geoseg.runtime.local as local_backend

    real = local_backend.write_output
    tries: dict[str, int] = {}

    def flaky(plan: Any, store: str, out: Any) -> Any:
        cid = out.chunk.id
        tries[cid] = tries.get(cid, 0) + 1
        if cid in always or (cid in once and tries[cid] == 1):
            raise GenericError(f"Generic S3 error: Error performing PUT {store}/{cid} in "
                               "2.5s, after 10 retries - HTTP error: error sending request")
        return real(plan, store, out)

    monkeypatch.setattr(local_backend, "write_output", flaky)
    return tries


def _config(tmp: Path, job: dict[str, Any]) -> str:
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def _not_complete(endpoint: str, prefix: str) -> dict[str, Any]:
    c = s3_client(endpoint)
    names = keys(c, BUCKET, f"{prefix}/")
    assert f"{prefix}/stac-item.json" not in names and f"{prefix}/.geoseg.lock" not in names
    attrs = json.loads(body(c, BUCKET, f"{prefix}/predictions.zarr/.zattrs"))
    assert attrs["geoseg_complete"] is False
    manifest: dict[str, Any] = json.loads(body(c, BUCKET, f"{prefix}/manifest.json"))
    assert manifest["status"] != "complete"
    return manifest


def test_failed_chunk_never_looks_complete_and_resume_completes_it(
        endpoint: str, image: Path, tiny_bundles: tuple[str, str], local: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from geoseg.cli import main

    job = _job(image, f"{URL}/failed", tiny_bundles, full=False)
    with monkeypatch.context() as mp:
        tries = _fail(mp, always={"1_1"}, once={"0_3"})
        res = run_job(validate_job(job))
    assert [f.chunk_id for f in res.failed] == ["1_1"] and res.failed[0].attempts == 3
    assert tries["0_3"] == 2  # a transient error: retried, then written
    manifest = _not_complete(endpoint, "failed")
    assert manifest["status"] == "completed with 1 failed chunks"
    names = keys(s3_client(endpoint), BUCKET, "failed/_geoseg/chunks/")
    assert len(names) == 19 and "failed/_geoseg/chunks/1_1.json" not in names
    from geoseg.runtime.estimate import estimate  # `geoseg submit --plan`: what is left

    left = estimate(validate_job(job), calibrate=False)
    assert left.chunks_todo == 1 and left.rate is not None  # the rate of the summary's run

    assert main(["-q", "run", str(image), "-o", f"{URL}/failed", "--config",
                 _config(tmp_path, job), "--resume"]) == 0
    assert "failed/stac-item.json" in keys(s3_client(endpoint), BUCKET, "failed/")
    summary = json.loads(body(s3_client(endpoint), BUCKET, "failed/summary.json"))
    assert summary["status"] == "complete" and summary["chunks"]["computed_this_run"] == 1
    _same_store(endpoint, "failed", local)


def test_interrupted_run_and_damaged_objects_are_resumed(
        endpoint: str, image: Path, tiny_bundles: tuple[str, str], local: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    job = validate_job(_job(image, f"{URL}/cut", tiny_bundles, full=False))

    def stop_after_three(p: Progress) -> None:
        if p.done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_job(job, progress=stop_after_three)
    assert _not_complete(endpoint, "cut")["status"] == "interrupted"
    res = run_job(job, resume=True)
    assert res.ok and res.summary["chunks"]["computed_this_run"] == 17
    _same_store(endpoint, "cut", local)

    c = s3_client(endpoint)  # another writer replaces one chunk object and deletes another
    c.put_object(Bucket=BUCKET, Key="cut/predictions.zarr/landcover/0.0", Body=b"not a chunk")
    c.delete_object(Bucket=BUCKET, Key="cut/predictions.zarr/buildings_confidence/2.2")
    with caplog.at_level(logging.WARNING, logger="geoseg.job"):
        res = run_job(job, resume=True)
    assert "2 finished chunk(s) are missing or damaged" in caplog.text
    assert res.ok and res.summary["chunks"]["computed_this_run"] == 2
    _same_store(endpoint, "cut", local)


def test_missing_bucket_is_one_line(endpoint: str, image: Path, tiny_bundles: tuple[str, str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from geoseg.cli import main

    rc = main(["run", str(image), "-o", "s3://no-such-bucket/run", "--model", tiny_bundles[0],
               "--chunk-size", "64"])
    err = capsys.readouterr().err.strip()
    assert rc == 4, err
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "bucket s3://no-such-bucket does not exist" in err and "testing-secret" not in err


def test_foreign_objects_refused_and_kept_by_overwrite(endpoint: str, image: Path,
                                                       tiny_bundles: tuple[str, str]) -> None:
    c = s3_client(endpoint)
    c.put_object(Bucket=BUCKET, Key="theirs/notes.txt", Body=b"mine")
    job = _job(image, f"{URL}/theirs", (tiny_bundles[0],), full=False)
    with pytest.raises(OutputExistsError, match="geoseg did not write"):
        run_job(validate_job(job))
    c.delete_object(Bucket=BUCKET, Key="theirs/notes.txt")
    assert run_job(validate_job(job)).ok
    c.put_object(Bucket=BUCKET, Key="theirs/notes.txt", Body=b"mine")
    with pytest.raises(OutputExistsError, match=r"--resume .* or --overwrite"):
        run_job(validate_job(job))
    before = set(keys(c, BUCKET, "theirs/predictions.zarr/"))
    assert run_job(validate_job(job), overwrite=True).ok
    assert body(c, BUCKET, "theirs/notes.txt") == b"mine"
    assert set(keys(c, BUCKET, "theirs/predictions.zarr/")) == before


def test_overwrite_with_fewer_outputs_removes_the_earlier_ones(
        endpoint: str, image: Path, tiny_bundles: tuple[str, str]) -> None:
    """An overwrite removes the earlier run's single objects (COGs, GeoPackage, STAC item),
    not only its folders: none is served as part of the new run."""
    c = s3_client(endpoint)
    first = _job(image, f"{URL}/fewer", tiny_bundles)
    first["inference"]["chunk_size"] = 128  # 6 chunks: what is compared is the folder
    assert run_job(validate_job(first)).ok
    assert {"buildings.tif", "features.gpkg"} <= {k.split("/")[1] for k in keys(c, BUCKET,
                                                                                "fewer/")}
    job = _job(image, f"{URL}/fewer", (tiny_bundles[0],), full=False)
    job["inference"]["chunk_size"] = 128
    assert run_job(validate_job(job), overwrite=True).ok
    top = {k.split("/")[1] for k in keys(c, BUCKET, "fewer/")}
    assert top == {"manifest.json", "summary.json", "stac-item.json", "predictions.zarr",
                   "_geoseg"}
    item = json.loads(body(c, BUCKET, "fewer/stac-item.json"))
    assert set(item["assets"]) == {"predictions", "summary"}, item["assets"]
