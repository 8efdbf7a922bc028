"""Chunks in worker processes (local executor, ``runtime.chunk_processes``): how the grid is cut
into strips, that the workers write what the job's own process writes, and that a worker
that dies or a job that stops keeps the executor's rules."""

from __future__ import annotations

import json
import os
import signal
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import pyogrio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.config import validate_job
from geoseg.grid import Chunk, ChunkGrid
from geoseg.job import run_job
from geoseg.plan import make_plan
from geoseg.runtime import vector_procs
from geoseg.runtime.base import ChunkFailure
from geoseg.runtime.chunk_procs import chunk_processes, run_in_processes, strips
from tests.conftest import fill_up, small_filesystem, write_raster
from tests.pipeline.conftest import textured


def _cfg(image: Path, out: Path, bundles: tuple[str, ...], **runtime: Any) -> Any:
    return validate_job({"image": str(image), "output": str(out), "models": list(bundles),
                         "inference": {"chunk_size": 64, "halo": 32},
                         "vectors": {"halo": 48},
                         "runtime": {"threads_per_worker": 1, "executor": "local", **runtime}})


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 6),
       st.lists(st.booleans(), min_size=81, max_size=81))
def test_strips_are_whole_columns_in_row_major_order(ny: int, nx: int, n: int,
                                                     keep: list[bool]) -> None:
    grid = ChunkGrid((ny * 10, nx * 10), 10)
    todo = [grid.get(r, c) for r in range(ny) for c in range(nx) if keep[r * 9 + c]]
    parts = strips(reversed(todo), n)
    assert sorted(c.index for s in parts for c in s) == sorted(c.index for c in todo)
    assert len(parts) <= n and all(parts)
    cols = [{c.index[1] for c in s} for s in parts]
    for a, b in pairwise(cols):  # left to right, no column split
        assert max(a) < min(b)
    for s in parts:
        assert [c.index for c in s] == sorted(c.index for c in s)
    if len({c.index[1] for c in todo}) >= n and len(todo) >= n:
        # as even as whole columns allow: no strip has more than its share plus one column
        tallest = max(sum(1 for c in todo if c.index[1] == col) for col in range(nx))
        assert max(map(len, parts)) <= len(todo) / n + tallest


def test_processes_only_when_asked() -> None:
    row = [ChunkGrid((10, 40), 10).get(0, c) for c in range(4)]
    assert chunk_processes(row, None) == 0  # not a default anywhere yet
    assert chunk_processes(row, 1) == 0     # one worker is the job's own process
    assert chunk_processes(row, 3) == 3
    assert chunk_processes(row, 8) == 4     # never more than the grid has columns
    assert chunk_processes(row[:1], 2) == 0


def _chunk_files(store: Path) -> dict[str, bytes]:
    return {str(f.relative_to(store)): f.read_bytes() for f in sorted(store.rglob("*"))
            if f.is_file() and not f.name.startswith(".z") and f.name != "zarr.json"}


def test_workers_write_what_the_job_process_writes(tmp_path: Path, scene_tif: Path,
                                                   tiny_bundles: tuple[str, str]) -> None:
    one = run_job(_cfg(scene_tif, tmp_path / "one", tiny_bundles))
    three = run_job(_cfg(scene_tif, tmp_path / "three", tiny_bundles, chunk_processes=3))
    assert one.ok and three.ok
    assert one.summary["runtime"]["chunk_processes"] == 0
    assert three.summary["runtime"]["chunk_processes"] == 3
    a, b = (_chunk_files(tmp_path / run / "predictions.zarr") for run in ("one", "three"))
    assert len(a) > 20 and a == b
    for layer in ("landcover", "buildings"):
        fa, fb = (pyogrio.read_dataframe(tmp_path / run / "features.gpkg", layer=layer)
                  .sort_values("id").reset_index(drop=True) for run in ("one", "three"))
        assert len(fa) == len(fb) > 0
        assert (fa.geometry.to_wkb() == fb.geometry.to_wkb()).all()
        assert fa.drop(columns="geometry").equals(fb.drop(columns="geometry"))
    assert one.summary["class_pixels"] == three.summary["class_pixels"]
    # each strip decodes the blocks it reads once (blocks along a strip's edge in both)
    blocks_one, blocks_three = one.summary["source_blocks"], three.summary["source_blocks"]
    assert blocks_one["decoded"] < blocks_three["decoded"] <= 3 * blocks_one["decoded"]


class _Recorder:
    """Callbacks that do what a test asks at the first chunk written."""

    def __init__(self, at_first: Any = None) -> None:
        self.done: list[str] = []
        self.failed: list[ChunkFailure] = []
        self.at_first = at_first

    def chunk_done(self, chunk: Chunk, stats: dict[str, Any]) -> None:
        self.done.append(chunk.id)
        if self.at_first is not None:
            act, self.at_first = self.at_first, None
            act()

    def chunk_failed(self, failure: ChunkFailure) -> None:
        self.failed.append(failure)

    def vectors_done(self, chunk: Chunk, result: Any) -> None:
        raise AssertionError("no vectors in these runs")


def _workers() -> list[int]:
    """Processes forked by geoseg's fork server (the chunk workers here)."""
    server = vector_procs._SERVER
    assert server is not None
    parent = server._forkserver_pid  # type: ignore[attr-defined]
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            out.append(int(stat.parent.name))
    return out


@pytest.fixture
def wide_tif(tmp_path: Path) -> Path:
    """A 384×1024 image: 6×16 chunks of 64, two strips of 8 columns."""
    return write_raster(tmp_path / "wide.tif", textured(384, 1024, seed=5),
                        descriptions=["red", "green", "blue", "nir"])


def test_a_dead_worker_fails_its_strip_only(tmp_path: Path, wide_tif: Path,
                                            tiny_bundles: tuple[str, str]) -> None:
    cfg = _cfg(wide_tif, tmp_path / "o", tiny_bundles[:1]).with_overrides("test", vectors=False)
    plan = make_plan(cfg)
    todo = list(plan.chunks)
    store = tmp_path / "o" / "predictions.zarr"
    assert run_job(cfg).ok  # a store to write into
    killed: list[int] = []

    def kill_one() -> None:  # (the OS, for memory)
        pids = _workers()
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])

    cb = _Recorder(kill_one)
    report, _ = run_in_processes(2, plan, str(store), todo, None, None, cb, threads=1,
                                 device="cpu", max_in_flight=2, retries=0, io_threads=2,
                                 passes=None, vector_workers=0, vector_slots=2)
    assert killed
    parts = [{c.id for c in s} for s in strips(todo, 2)]
    failed = {f.chunk_id for f in cb.failed}
    assert failed and report.done == len(cb.done) and len(cb.done) + len(failed) == len(todo)
    assert set(cb.done).isdisjoint(failed)
    lost = next(p for p in parts if failed <= p)  # one strip lost chunks, the other none
    other = next(p for p in parts if p is not lost)
    assert other <= set(cb.done)
    assert all("chunk worker process" in f.error and f.retryable for f in cb.failed)


def test_a_stopped_job_stops_its_workers(tmp_path: Path, wide_tif: Path,
                                         tiny_bundles: tuple[str, str]) -> None:
    cfg = _cfg(wide_tif, tmp_path / "o", tiny_bundles[:1]).with_overrides("test", vectors=False)
    plan = make_plan(cfg)
    todo = list(plan.chunks)
    assert run_job(cfg).ok
    seen: list[list[int]] = []

    def interrupt() -> None:  # Ctrl-C reaches the job's process
        seen.append(_workers())
        raise KeyboardInterrupt

    cb = _Recorder(interrupt)
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_in_processes(2, plan, str(tmp_path / "o" / "predictions.zarr"), todo, None, None,
                         cb, threads=1, device="cpu", max_in_flight=2, retries=0,
                         io_threads=2, passes=None, vector_workers=0, vector_slots=2)
    assert time.perf_counter() - t0 < 60
    assert len(seen[0]) == 2 and len(cb.done) < len(todo)
    assert vector_procs._SERVER is None  # the fork server and its workers are gone
    assert not [p for p in seen[0] if Path(f"/proc/{p}").exists()
                and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1][:3]]


def test_a_full_disk_in_a_worker_is_one_line_then_resume(
        tmp_path: Path, wide_tif: Path, tiny_bundles: tuple[str, str],
        capsys: pytest.CaptureFixture[str]) -> None:
    """A worker's chunk write that finds the disk full stops the whole job with the one line
    a one-process job prints; nothing half-written is left, and --resume finishes the rest."""
    from geoseg.cli import main

    def argv(out: Path, *extra: str, procs: int = 2) -> list[str]:
        return ["-q", "run", str(wide_tif), "-o", str(out), "-m", tiny_bundles[0],
                "--chunk-size", "64", "--halo", "32", "--threads", "1", "--executor", "local",
                "--no-vectors", "--chunk-processes", str(procs), *extra]

    with small_filesystem(tmp_path / "disk", "2m") as disk:  # (skips first where it cannot)
        assert main(argv(tmp_path / "clean", procs=0)) == 0  # (workers write the same bytes)
        capsys.readouterr()
        out = disk / "out"
        filler = fill_up(disk, 160 * 1024)  # the manifest and some chunks, not the store
        rc = main(argv(out))
        err = [ln for ln in capsys.readouterr().err.strip().splitlines()
               if not ln.startswith("warning:")]
        assert rc == 4 and len(err) == 1, err
        assert err[0].startswith("error: disk full writing") and "--resume" in err[0]
        assert "predictions.zarr" in err[0], err  # a chunk write, in a worker
        assert vector_procs._SERVER is None  # no worker outlives the job
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] in ("failed", "running")  # never "complete"
        assert not (out / "summary.json").exists()
        partial = len((out / "chunks.jsonl").read_text().splitlines())
        assert 0 < partial < 96, partial
        assert not [f for f in out.rglob("*")
                    if f.name.startswith(".tmp") or f.name.endswith(".partial")]
        filler.unlink()
        assert main(argv(out, "--resume")) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["chunks"]["computed_this_run"] == 96 - partial
        assert (_chunk_files(out / "predictions.zarr")
                == _chunk_files(tmp_path / "clean" / "predictions.zarr"))


@pytest.mark.gpu
def test_workers_sharing_a_gpu_write_what_one_process_writes(
        tmp_path: Path, wide_tif: Path, tiny_bundles: tuple[str, str]) -> None:
    """Two chunk workers, each with its own CUDA context and two passes in flight, write
    the chunks one process writes on the same GPU."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    runs = {}
    for name, procs in (("one", 0), ("two", 2)):
        cfg = _cfg(wide_tif, tmp_path / name, tiny_bundles[:1], device="cuda",
                   chunk_processes=procs)
        runs[name] = run_job(cfg)
        assert runs[name].ok
    assert runs["two"].summary["runtime"]["chunk_processes"] == 2
    a, b = (_chunk_files(tmp_path / name / "predictions.zarr") for name in ("one", "two"))
    assert len(a) > 50 and a == b
