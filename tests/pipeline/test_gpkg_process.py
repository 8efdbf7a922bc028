"""The GeoPackage writer in a process of its own: when it is used, that it writes the file a
writer thread writes, and that its errors, log records and death reach the job."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import pyogrio
import pytest

from geoseg.config import validate_job
from geoseg.errors import InputError, StorageError
from geoseg.job import run_job
from geoseg.plan import make_plan
from geoseg.runtime.sink_process import PROCESS_MIN_PIXELS_GPU, ProcessSink, use_process
from geoseg.vector_outputs import ChunkVectors, PackedVectors, vectorize_chunk


def _cfg(image: Path, out: Path, bundles: tuple[str, ...], **runtime: Any) -> Any:
    return validate_job({"image": str(image), "output": str(out), "models": list(bundles),
                         "inference": {"chunk_size": 64, "halo": 32},
                         "vectors": {"halo": 48, "landcover_split_px": 64},
                         "runtime": {"threads_per_worker": 1, "executor": "local", **runtime}})


def test_a_process_where_it_pays() -> None:
    assert use_process(PROCESS_MIN_PIXELS_GPU, "cuda", None)  # beside a GPU: the lock counts
    assert not use_process(PROCESS_MIN_PIXELS_GPU - 1, "cuda", None)  # too little to start it
    assert not use_process(16384 * 16384, "cpu", None)  # on CPUs the cores count: a thread
    assert use_process(1, "cpu", True)                   # the user's choice
    assert not use_process(PROCESS_MIN_PIXELS_GPU, "cuda", False)


def test_the_process_writes_the_file_a_thread_writes(tmp_path: Path, scene_tif: Path,
                                                     tiny_bundles: tuple[str, str],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    thread = run_job(_cfg(scene_tif, tmp_path / "thread", tiny_bundles, gpkg_process=False))
    caplog.set_level(logging.INFO, logger="geoseg")
    proc = run_job(_cfg(scene_tif, tmp_path / "proc", tiny_bundles, gpkg_process=True))
    # vectors pickled in their worker processes, handed on to the writer's as bytes
    both = run_job(_cfg(scene_tif, tmp_path / "both", tiny_bundles, gpkg_process=True,
                        vector_processes=2))
    assert thread.ok and proc.ok and both.ok
    assert thread.summary["runtime"]["gpkg_process"] is False
    assert proc.summary["runtime"]["gpkg_process"] is both.summary["runtime"]["gpkg_process"] \
        is True
    assert both.summary["runtime"]["vector_processes"] == 2
    for layer in ("landcover", "buildings"):
        a, b, c = (pyogrio.read_dataframe(out / "features.gpkg", layer=layer)
                   .sort_values("id").reset_index(drop=True)
                   for out in (tmp_path / "thread", tmp_path / "proc", tmp_path / "both"))
        assert len(a) == len(b) == len(c) > 0
        for other in (b, c):
            assert (a.geometry.to_wkb() == other.geometry.to_wkb()).all()
            assert a.drop(columns="geometry").equals(other.drop(columns="geometry"))
    assert proc.summary["features"] == both.summary["features"] == thread.summary["features"]
    assert proc.summary["timings_s"]["gpkg_append_s"] > 0  # the worker's time, counted here
    # the worker's log record (regions cut at the 64-px split lines) reached the job's log
    said = [r for r in caplog.records if "cut at split lines" in r.getMessage()]
    assert len(said) == 2 and {r.name for r in said} == {"geoseg.vector_outputs"}
    for out in ("proc", "both"):
        assert [p.name for p in (tmp_path / out).iterdir() if ".partial" in p.name] == []


def test_packed_vectors_are_the_vectors(tmp_path: Path, scene_tif: Path,
                                        tiny_bundles: tuple[str, str]) -> None:
    cfg = _cfg(scene_tif, tmp_path / "run", tiny_bundles, gpkg_process=False)
    assert run_job(cfg).ok
    plan = make_plan(cfg)
    store = str(tmp_path / "run" / "predictions.zarr")
    chunk = next(iter(plan.chunks))
    plain = vectorize_chunk(plan, store, chunk, vcfg=cfg.vectors)
    packed = vectorize_chunk(plan, store, chunk, vcfg=cfg.vectors, packed=True)
    assert isinstance(plain, ChunkVectors) and isinstance(packed, PackedVectors)
    assert packed.chunk == chunk and packed.seconds > 0
    back = packed.unpack()
    assert plain.landcover is not None and back.landcover is not None
    assert [f.to_record() for f in back.landcover.interior] == \
        [f.to_record() for f in plain.landcover.interior]
    assert [b.geometry.wkb for b in back.landcover.border] == \
        [b.geometry.wkb for b in plain.landcover.border]
    assert [f.to_record() for f in back.buildings] == [f.to_record() for f in plain.buildings]


def _vectors(tmp_path: Path, scene_tif: Path, bundles: tuple[str, str]) -> tuple[Any, list[Any]]:
    """A finished run's plan and the vectors of its first two chunks."""
    cfg = _cfg(scene_tif, tmp_path / "run", bundles, gpkg_process=False)
    assert run_job(cfg).ok
    plan = make_plan(cfg)
    store = str(tmp_path / "run" / "predictions.zarr")
    return plan, [vectorize_chunk(plan, store, c, vcfg=cfg.vectors) for c in
                  list(plan.chunks)[:2]]


def test_a_writer_error_reaches_the_job_and_nothing_looks_finished(
        tmp_path: Path, scene_tif: Path, tiny_bundles: tuple[str, str]) -> None:
    plan, vectors = _vectors(tmp_path, scene_tif, tiny_bundles)
    gpkg = tmp_path / "out.gpkg"
    sink = ProcessSink(gpkg, plan, {"source_image": "scene.tif"})
    sink.add(vectors[0])
    sink.add(vectors[1])
    sink.add(vectors[0])  # the same chunk again: the merge refuses it (in the worker)
    with pytest.raises(InputError, match="was given twice"):
        sink.finish()
    assert not gpkg.exists()
    sink.close(abort=True)  # (idempotent)


def test_an_aborted_writer_stops_and_publishes_nothing(
        tmp_path: Path, scene_tif: Path, tiny_bundles: tuple[str, str]) -> None:
    plan, vectors = _vectors(tmp_path, scene_tif, tiny_bundles)
    gpkg = tmp_path / "out.gpkg"
    sink = ProcessSink(gpkg, plan, {"source_image": "scene.tif"})
    for v in vectors:
        sink.add(v)
    sink.close(abort=True)
    assert not gpkg.exists()
    with pytest.raises(RuntimeError, match="closed"):
        sink.finish()


def test_a_writer_that_dies_is_one_clear_error(tmp_path: Path, scene_tif: Path,
                                               tiny_bundles: tuple[str, str]) -> None:
    plan, vectors = _vectors(tmp_path, scene_tif, tiny_bundles)
    gpkg = tmp_path / "out.gpkg"
    sink = ProcessSink(gpkg, plan, {"source_image": "scene.tif"})
    sink.add(vectors[0])
    pool = sink._pool
    assert pool is not None
    pool.submit(int).result()  # the worker has opened the sink and taken the first chunk
    for pid in list(pool._processes):  # killed (the OS, for memory)
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(StorageError, match=r"GeoPackage writer process died.*rerun the job"):
        sink.add(vectors[1])
        sink.finish()
    assert not gpkg.exists()
