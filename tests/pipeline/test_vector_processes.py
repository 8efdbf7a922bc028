"""Vector tasks in worker processes (local executor): when they are used, that they give the
same features as threads, and that a worker's log records and errors reach the job."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyogrio
import pytest

from geoseg.config import validate_job
from geoseg.errors import ConfigError, InputError
from geoseg.grid import Chunk, Window
from geoseg.job import run_job
from geoseg.plan import make_plan
from geoseg.runtime.vector_procs import PROCESS_MIN_PIXELS, VectorPool, vector_processes


def _cfg(image: Path, out: Path, bundles: tuple[str, ...], **runtime: Any) -> Any:
    return validate_job({"image": str(image), "output": str(out), "models": list(bundles),
                         "inference": {"chunk_size": 64, "halo": 32}, "vectors": {"halo": 48},
                         "runtime": {"threads_per_worker": 1, **runtime}})


def test_processes_where_they_pay(tmp_path: Path, scene_tif: Path,
                                  tiny_bundles: tuple[str, str]) -> None:
    both = make_plan(_cfg(scene_tif, tmp_path / "a", tiny_bundles))
    landcover = make_plan(_cfg(scene_tif, tmp_path / "b", tiny_bundles[:1]))
    big = [Chunk((0, 0), Window(0, 0, 2048, 2048))]
    small = [Chunk((0, 0), Window(0, 0, 2048, 2047))]
    assert big[0].window.size == PROCESS_MIN_PIXELS
    assert vector_processes(both, big, "cpu", 3) == 3        # buildings: GIL-bound threads
    assert vector_processes(landcover, big, "cpu", 3) == 0   # land cover on CPUs: threads
    assert vector_processes(landcover, big, "cuda", 4) == 4  # beside a GPU: processes
    assert vector_processes(both, small, "cuda", 4) == 0     # too little work to start them
    assert vector_processes(both, list(both.chunks), "cpu", 2) == 0  # the test scene
    assert vector_processes(landcover, small, "cpu", 2, setting=1) == 1  # the user's choice
    assert vector_processes(both, big, "cpu", 2, setting=0) == 0


def test_processes_give_the_features_of_threads(tmp_path: Path, scene_tif: Path,
                                                tiny_bundles: tuple[str, str]) -> None:
    # (executor named: after another test's ray.init, auto would pick Ray)
    threads = run_job(_cfg(scene_tif, tmp_path / "threads", tiny_bundles, executor="local"))
    procs = run_job(_cfg(scene_tif, tmp_path / "procs", tiny_bundles, executor="local",
                         vector_processes=2))
    assert threads.ok and procs.ok
    assert threads.summary["runtime"]["backend"] == procs.summary["runtime"]["backend"] \
        == "LocalBackend"
    assert threads.summary["runtime"]["vector_processes"] == 0
    assert procs.summary["runtime"]["vector_processes"] == 2
    for layer in ("landcover", "buildings"):
        a, b = (pyogrio.read_dataframe(out / "features.gpkg", layer=layer)
                .sort_values("id").reset_index(drop=True)
                for out in (tmp_path / "threads", tmp_path / "procs"))
        assert len(a) == len(b) > 0
        assert (a.geometry.to_wkb() == b.geometry.to_wkb()).all()
        assert a.drop(columns="geometry").equals(b.drop(columns="geometry"))
    assert procs.summary["features"] == threads.summary["features"]


def test_vector_processes_must_not_be_negative(tmp_path: Path, scene_tif: Path,
                                               tiny_bundles: tuple[str, str]) -> None:
    with pytest.raises(ConfigError, match="vector_processes"):
        _cfg(scene_tif, tmp_path / "o", tiny_bundles, vector_processes=-1)


def logs_or_fails(_plan: Any, _store: str, chunk: Chunk) -> str:
    """A vector function for worker processes (importable by name)."""
    if chunk.id == "0_1":
        raise InputError(f"chunk {chunk.id} is broken")
    logging.getLogger("geoseg.tests.worker").warning("vectorized %s in a worker", chunk.id)
    logging.getLogger("geoseg.tests.worker").debug("too fine for the job's level")
    return f"features of {chunk.id}"


def test_a_workers_log_records_and_errors_reach_the_job(tmp_path: Path, scene_tif: Path,
                                                        tiny_bundles: tuple[str, str],
                                                        caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    import os

    plan = make_plan(_cfg(scene_tif, tmp_path / "o", tiny_bundles))
    ok, broken = plan.chunks.get(0, 0), plan.chunks.get(0, 1)
    pool = VectorPool(logs_or_fails, plan, str(tmp_path / "s.zarr"), threads=1, processes=1)
    try:
        with caplog.at_level(logging.INFO, logger="geoseg"):
            assert pool.result(pool.submit(ok)) == "features of 0_0"
            with pytest.raises(InputError, match="chunk 0_1 is broken"):
                pool.result(pool.submit(broken))
    finally:
        pool.shutdown()
    records = [r for r in caplog.records if r.name == "geoseg.tests.worker"]
    assert [r.getMessage() for r in records] == ["vectorized 0_0 in a worker"]
    assert records[0].levelno == logging.WARNING and records[0].process != os.getpid()


def crashes_once(_plan: Any, store: str, chunk: Chunk) -> str:
    """Kills its worker the first time it sees chunk 0_0 (a marker file beside ``store``
    remembers), and always for chunk 0_2."""
    import os

    marker = Path(store).with_name(f"crashed-{chunk.id}")
    if chunk.id == "0_2" or (chunk.id == "0_0" and not marker.exists()):
        marker.touch()
        os._exit(9)
    return f"features of {chunk.id}"


def test_a_dead_worker_costs_a_retry_not_the_run(tmp_path: Path, scene_tif: Path,
                                                 tiny_bundles: tuple[str, str]) -> None:
    from concurrent.futures.process import BrokenProcessPool

    plan = make_plan(_cfg(scene_tif, tmp_path / "o", tiny_bundles))
    chunks = [plan.chunks.get(0, i) for i in range(4)]
    pool = VectorPool(crashes_once, plan, str(tmp_path / "s.zarr"), threads=1, processes=2)
    try:
        futures = {c.id: pool.submit(c) for c in chunks}
        for cid in ("0_0", "0_1", "0_3"):
            assert pool.result(futures[cid]) == f"features of {cid}"
        with pytest.raises(BrokenProcessPool):  # it kills the worker it is given alone too
            pool.result(futures["0_2"])
        assert pool.restarts >= 1
        assert pool.result(pool.submit(chunks[1])) == "features of 0_1"  # the pool still works
    finally:
        pool.shutdown()


def test_a_script_without_a_main_guard_is_not_run_again_by_the_workers(
        tmp_path: Path, scene_tif: Path, tiny_bundles: tuple[str, str]) -> None:
    """Python's spawn runs the parent's main script in each child: a script calling
    geoseg.run at top level would start the job again in every vector worker."""
    import subprocess
    import sys

    out = tmp_path / "out"
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import geoseg\n"
        f"run = geoseg.run({str(scene_tif)!r}, {str(out)!r}, models={list(tiny_bundles)!r},\n"
        "                 chunk_size=64, halo=32, executor='local', vector_processes=2)\n"
        "print('status', run.summary.status, sum(run.summary.features.values()))\n")
    import os

    import geoseg

    env = {**os.environ, "PYTHONPATH": str(Path(geoseg.__file__).parents[1])}  # this checkout
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, status, count = proc.stdout.strip().splitlines()[-1].split()
    assert status == "complete" and int(count) > 0
    assert "in use by another geoseg job" not in proc.stderr


def test_a_killed_worker_leaves_no_leaked_semaphore_warning(
        tmp_path: Path, scene_tif: Path, tiny_bundles: tuple[str, str]) -> None:
    """numcodecs' Blosc creates a multiprocessing lock in each process on first use; a worker
    killed before it could unregister its own lock made Python print "resource_tracker: There
    appear to be N leaked semaphore objects" when the job's process exited. The fork server
    creates that lock once, before any worker is forked."""
    import os
    import subprocess
    import sys

    import geoseg

    (tmp_path / "killer.py").write_text(
        "import os\n"
        "from pathlib import Path\n\n"
        "import numcodecs.blosc\n\n"
        "def vectorize(plan, store, chunk):\n"
        "    numcodecs.blosc.get_mutex()  # what decoding a Blosc chunk does\n"
        "    marker = Path(store).with_name('killed-' + chunk.id)\n"
        "    if chunk.id == '0_0' and not marker.exists():\n"
        "        marker.touch()\n"
        "        os._exit(9)\n"
        "    return chunk.id\n")
    script = tmp_path / "job.py"
    script.write_text(
        "import sys\n"
        "from geoseg.config import validate_job\n"
        "from geoseg.plan import make_plan\n"
        "from geoseg.runtime.vector_procs import VectorPool\n"
        "from killer import vectorize\n\n"
        "if __name__ == '__main__':\n"
        f"    cfg = validate_job({{'image': {str(scene_tif)!r},\n"
        f"                        'output': {str(tmp_path / 'o')!r},\n"
        f"                        'models': {list(tiny_bundles)!r},\n"
        "                        'inference': {'chunk_size': 64, 'halo': 32}})\n"
        "    plan = make_plan(cfg)\n"
        f"    pool = VectorPool(vectorize, plan, {str(tmp_path / 's.zarr')!r}, threads=1,\n"
        "                      processes=2)\n"
        "    chunks = [plan.chunks.get(0, i) for i in range(4)]\n"
        "    futures = [pool.submit(c) for c in chunks]\n"
        "    print(sorted(pool.result(f) for f in futures), pool.restarts)\n"
        "    pool.shutdown()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(geoseg.__file__).parents[1]), str(tmp_path)])}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("]")[0] == "['0_0', '0_1', '0_2', '0_3'"
    assert int(proc.stdout.split()[-1]) >= 1               # a worker died and was replaced
    assert "leaked" not in proc.stderr, proc.stderr[-2000:]
