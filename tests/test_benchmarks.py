"""Benchmark helpers that touch files: they remove only what they wrote."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.rv_predict import clear_own_labels


def test_rv_predict_replaces_only_its_own_labels(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "labels.tif").write_bytes(b"a user's file")
    with pytest.raises(SystemExit, match="not written by this script"):
        clear_own_labels(theirs)
    assert (theirs / "labels.tif").read_bytes() == b"a user's file"

    ours = tmp_path / "ours"
    clear_own_labels(ours)  # a new folder: marked as ours
    (ours / "labels.tif").write_bytes(b"an earlier run")
    clear_own_labels(ours)
    assert not (ours / "labels.tif").exists() and (ours / ".written-by-rv_predict").exists()


def test_busy_cores_shows_where_a_run_left_its_cores_idle() -> None:
    """Two busy cores for 4 s, a 5-s stall with no sample in it (0.1 CPU-s), two cores again:
    the stall's tenths show it, and the CPU-s add up to the samples' total."""
    from benchmarks.thread_cpu import busy_cores

    timeline = [(t * 0.5, t * 1.0) for t in range(9)]  # 0–4 s, 2 cores
    timeline += [(9.0, 8.1), (9.5, 9.1), (10.0, 10.1)]
    tenths = busy_cores(timeline, 10.0)
    assert tenths[:4] == [2.0] * 4 and tenths[9] == 2.0
    assert tenths[4:9] == [0.02] * 5
    assert abs(sum(tenths) - 10.1) < 0.05
    assert busy_cores(timeline[:1], 10.0) == [] and busy_cores(timeline, 0.0) == []


def test_bench_trace_prints_both_walks_on_a_class_map(tmp_path: Path) -> None:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    classes = np.kron(rng.integers(0, 4, (32, 32)), np.ones((16, 16))).astype(np.uint8)
    path = tmp_path / "classes.tif"
    with rasterio.open(path, "w", driver="GTiff", width=512, height=512, count=1,
                       dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 5100000, 0.5, 0.5)) as dst:
        dst.write(classes, 1)
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_trace", str(path), "--chunk",
                          "256", "--repeat", "1"], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert "4 chunks of 256" in out
    assert out.count("compiled is") == 2  # trace_regions and landcover_parts, with a ratio


def test_replay_bundle_predicts_the_class_written_in_band_one(tmp_path: Path) -> None:
    """The pipeline-cost benchmark on a real map: the near-free replay model outputs band 1."""
    import numpy as np

    from benchmarks.bench_pipeline import replay_bundle
    from geoseg.models.onnx_predictor import OnnxPredictor

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (2, 3, 40, 56), dtype=np.uint8)
    x[:, 0] = rng.integers(0, 5, (2, 40, 56))
    proba = OnnxPredictor(replay_bundle(tmp_path), num_threads=1).predict_proba(x)
    np.testing.assert_array_equal(proba.argmax(axis=1), x[:, 0])


@pytest.mark.parametrize("threads", [1, 2])
def test_stage_profile_takes_the_forward_pass_out_of_the_runs_cpu(threads: int) -> None:
    """The profile's "not the forward pass" line: the run's CPU-s less the model thread's CPU
    in the forward part, per Mpx; with the engine on more than one thread it says that its
    own threads are not taken out."""
    from benchmarks.bench_pipeline import _stage_profile

    summary = {"throughput": {"pixels": 4_000_000}, "models": {"landcover": "m@1"},
               "runtime": {"threads_per_worker": threads},
               "stage_cpu_s": {"read_s": 0.4, "predict_landcover_s": 3.0,
                               "forward_landcover_s": 2.0, "forward_landcover_cpu_s": 1.2,
                               "classify_landcover_s": 0.8, "classify_landcover_cpu_s": 0.3},
               "timings_s": {"total_s": 9.0}}
    lines = _stage_profile(summary, wall=10.0, cpu=14.0, threads={})
    row = next(line for line in lines if "not the forward pass" in line)
    assert "3.200 CPU-s/Mpx" in row and "forward, model thread: 0.300" in row  # (14-1.2)/4
    assert ("exact with --threads 1" in row) == (threads != 1)
    assert any("forward (model thread's CPU)" in line and "0.300" in line for line in lines)


def test_bench_schedule_stops_growing_with_the_region() -> None:
    from benchmarks.bench_schedule import measure

    small = measure(4096, 1024, 64, 128)
    huge = measure(2_000_000, 1024, 64, 128)
    assert small["scheduled"] and small["block_counters"] == (4096 // 128) ** 2
    assert not huge["scheduled"] and huge["block_counters"] == 0 and huge["chunks"] == 1954 ** 2


def _landcover_runs(tmp_path: Path, image_b: bool = True) -> tuple[Path, Path]:
    """Two land-cover-only runs (no buildings model, no GeoPackage) of one place, with their
    images (``image_b=False``: b records an image that does not exist)."""
    import numpy as np

    from tests.change.conftest import SHAPE, T_A, make_run, pattern
    from tests.conftest import write_raster

    rng = np.random.default_rng(0)
    images = [write_raster(tmp_path / f"{k}.tif",
                           rng.integers(100, 900, (4, *SHAPE)).astype(np.uint16), transform=T_A)
              for k in "ab"]
    a = make_run(tmp_path / "a", pattern(SHAPE, 0), image=images[0], buildings=None,
                 building_model=False)
    b = make_run(tmp_path / "b", pattern(SHAPE, 1), date="2024-06-01", buildings=None,
                 building_model=False, image=images[1] if image_b else tmp_path / "gone.tif")
    return a, b


def _bench_change(tmp_path: Path, a: Path, b: Path, *tiles: int
                  ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "benchmarks.bench_change", "--run-a", str(a),
                           "--run-b", str(b), *(f"--tiles={n}" for n in tiles),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)


def test_bench_change_compares_runs_without_a_buildings_model(tmp_path: Path) -> None:
    """Land-cover-only runs: their change summary has ``buildings: null`` (the table shows
    null) and there are no footprints to tile."""
    import json

    a, b = _landcover_runs(tmp_path)
    res = _bench_change(tmp_path, a, b, 1, 2)
    assert res.returncode == 0, res.stderr
    rows = json.loads((tmp_path / "work" / "results.json").read_text())
    assert [(r["tiles"], r["shape"], r["buildings"]) for r in rows] == [
        (1, [96, 128], None), (2, [192, 256], None)]


def test_bench_change_reports_a_failed_change_in_one_line(tmp_path: Path) -> None:
    """A ``geoseg change`` that fails (here: date b's image is gone) stops the benchmark with
    one line naming the command and the change's own error, and a non-zero exit."""
    a, b = _landcover_runs(tmp_path, image_b=False)
    res = _bench_change(tmp_path, a, b, 1)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("error: ") and " -m geoseg change " in lines[0]
    assert "failed (exit 2)" in lines[0] and "gone.tif" in lines[0]
    assert not (tmp_path / "work" / "results.json").exists()
