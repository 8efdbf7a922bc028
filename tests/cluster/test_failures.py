"""Failures during a run on Ray: dead model actors and dead task workers are survived; a chunk
that keeps failing is reported (window + error), the CLI exits 3, and --resume retries it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from geoseg.config import validate_job
from geoseg.job import run_job
from geoseg.runtime.ray_backend import RayBackend
from tests.cluster import faults
from tests.cluster.conftest import assert_same_store, job_dict, write_config

pytestmark = pytest.mark.ray


def _own_image(tmp_path: Path, region_tif: Path) -> Path:
    """A per-test copy: fault markers live beside the image and must not leak across tests."""
    (tmp_path / "img").mkdir()
    return Path(shutil.copy(region_tif, tmp_path / "img" / "region.tif"))


def test_dead_actor_and_dead_writer_are_survived(ray_cluster: None, tmp_path: Path,
                                                 region_tif: Path, tiny_bundles: tuple[str, str],
                                                 clean_run: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Ray restarts the actor and retries its call, and retries the writer's task: no chunk
    even needs one of the driver's own retries."""
    img = _own_image(tmp_path, region_tif)
    out = tmp_path / "out"
    backend = RayBackend(worker_cls=faults.CrashingWorker, write_fn=faults.crash_after_write)
    res = run_job(validate_job(job_dict(img, out, tiny_bundles, max_in_flight=3)),
                  backend=backend)
    assert (img.parent / "actor-crashed").exists() and (out / "writer-crashed").exists()
    assert res.ok, res.failed
    assert res.summary["chunks"]["computed_this_run"] == 16
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]
    assert_same_store(clean_run, out)
    # back pressure: never more than max_in_flight chunks in the air, and the window was used
    assert backend.peak_in_flight == 3


@pytest.mark.slow
def test_actor_dead_for_good_is_replaced(ray_cluster: None, tmp_path: Path, region_tif: Path,
                                         tiny_bundles: tuple[str, str], clean_run: Path) -> None:
    """No Ray restarts left: the backend starts a new actor and retries the chunk itself."""
    img = _own_image(tmp_path, region_tif)
    out = tmp_path / "out"
    res = run_job(validate_job(job_dict(img, out, tiny_bundles)),
                  backend=RayBackend(worker_cls=faults.CrashingWorker, actor_restarts=0))
    assert (img.parent / "actor-crashed").exists()
    assert res.ok, res.failed
    assert_same_store(clean_run, out)


def test_failing_chunk_reported_then_resumed(ray_cluster: None, tmp_path: Path,
                                             region_tif: Path, tiny_bundles: tuple[str, str],
                                             clean_run: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from geoseg.cli import main

    img = _own_image(tmp_path, region_tif)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "job.yaml", job_dict(img, out, tiny_bundles))
    argv = ["-q", "run", str(img), "-o", str(out), "--config", str(cfg)]
    monkeypatch.setattr("geoseg.job.default_backend",
                        lambda _cfg: RayBackend(worker_cls=faults.FailingWorker))
    assert main(argv) == 3
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert f"failed chunk {faults.BAD_CHUNK} window (64, 0, 64, 64)" in printed
    assert "injected failure" in printed and "--resume" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed with 1 failed chunks"
    summary = json.loads((out / "summary.json").read_text())
    (failure,) = summary["chunks"]["failed"]
    assert failure["chunk_id"] == faults.BAD_CHUNK and failure["attempts"] == 3  # 1 + 2 retries
    assert "ValueError: injected failure" in failure["error"]

    monkeypatch.setattr("geoseg.job.default_backend", lambda _cfg: RayBackend())
    assert main([*argv, "--resume"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chunks"]["computed_this_run"] == 1 and not summary["chunks"]["failed"]
    assert_same_store(clean_run, out)


def _tiled_copy(tmp_path: Path, region_tif: Path, block: int) -> Path:
    """The region's pixels in a GeoTIFF of ``block``² tiles, in a folder of its own."""
    import rasterio

    (tmp_path / "img").mkdir()
    path = tmp_path / "img" / "region.tif"
    with rasterio.open(region_tif) as src:
        profile = {**src.profile, "tiled": True, "blockxsize": block, "blockysize": block}
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read())
            dst.descriptions = src.descriptions
            dst.update_tags(**src.tags())
    return path


def test_one_reader_decodes_each_source_block_once(ray_cluster: None, tmp_path: Path,
                                                   region_tif: Path,
                                                   tiny_bundles: tuple[str, str],
                                                   clean_run: Path) -> None:
    """A local image is read by one reader actor through one block cache, told the chunks
    to come: each of the 16 tiles is decoded once, though the 16 chunk windows (64² + 32 px
    of halo) touch 64 tile reads; read tasks decoded every tile of every window."""
    img = _tiled_copy(tmp_path, region_tif, 64)
    out = tmp_path / "out"
    backend = RayBackend()
    res = run_job(validate_job(job_dict(img, out, tiny_bundles)), backend=backend)
    assert res.ok
    (stats,) = backend.read_stats  # one node: one reader
    assert stats["decoded"] == 16
    assert res.summary["source_blocks"] == stats
    assert stats["reused"] + stats["decoded"] == 4 * 9 + 4 * 2 * 6 + 4 * 4  # 3×3, 2×3, 2×2
    assert stats["peak_bytes"] < 16 * 64 * 64 * 4  # blocks went after their last read
    assert_same_store(clean_run, out)


@pytest.mark.slow  # (14 s; the reader's normal path is in the default suite, above)
def test_reader_dead_for_good_hands_its_reads_to_tasks(ray_cluster: None, tmp_path: Path,
                                                        region_tif: Path,
                                                        tiny_bundles: tuple[str, str],
                                                        clean_run: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """No Ray restarts left for the reader: its chunks are read by tasks, the model actor is
    kept, and the store is the same."""
    img = _tiled_copy(tmp_path, region_tif, 64)
    out = tmp_path / "out"
    backend = RayBackend(reader_cls=faults.CrashingReader, actor_restarts=0)
    res = run_job(validate_job(job_dict(img, out, tiny_bundles)), backend=backend)
    assert (img.parent / "reader-crashed").exists()
    assert res.ok, res.failed
    assert backend.read_stats == []  # the reader is gone, and its statistics with it
    assert "source_blocks" not in res.summary  # no counts rather than zeros
    said = [r.getMessage() for r in caplog.records]
    assert any("chunk reader actor died for good" in m for m in said), said
    assert not any("model actor" in m for m in said), said  # the model was not replaced
    assert_same_store(clean_run, out)


def test_a_node_without_the_drivers_disk_is_one_line_before_any_chunk(
        ray_cluster: None, tmp_path: Path, region_tif: Path,
        tiny_bundles: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Image and --out on a disk only the driver has: every chunk failed, reported as a
    damaged image ("a rerun cannot fix this") or a store without arrays, twice each; now one
    line names the node and the path before any chunk runs. (Every other Ray test runs the
    same check on paths the node does have.)"""
    from geoseg.cli import main

    img = _own_image(tmp_path, region_tif)
    out = tmp_path / "out"
    monkeypatch.setattr("geoseg.job.default_backend",
                        lambda _cfg: RayBackend(worker_cls=faults.BlindWorker))
    cfg = write_config(tmp_path / "job.yaml", job_dict(img, out, tiny_bundles))
    rc = main(["-q", "run", str(img), "-o", str(out), "--config", str(cfg)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("warning:")]
    assert rc == 2 and len(err) == 1, err
    assert "cannot see " + str(img) in err[0] and "every node mounts" in err[0]
    records = out / "chunks.jsonl"
    assert not records.exists() or not records.read_text().strip()  # no chunk ran
