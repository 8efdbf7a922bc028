"""Vector tasks in threads or in worker processes: why the local executor starts workers.

    geoseg demo --out demo    # or any finished `geoseg run` folder (buildings make the case)
    python -m benchmarks.bench_vector_workers RUN [--workers 2]

Replays ``vectorize_chunk`` (land cover and building footprints, as the job runs them) over
every chunk of RUN's store, in this process: one thread, ``--workers`` threads, and
``--workers`` worker processes (the local executor's ``VectorPool``, worker start-up
included). Prints wall and CPU seconds of each and the ratios to one thread. Threads of one
process take turns on the GIL wherever vectorizing is many small calls (a building's outline
and regularization), so more threads can be slower than one.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def _cpu() -> float:
    """CPU seconds of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()

    from geoseg.config import validate_job
    from geoseg.plan import make_plan
    from geoseg.runtime.vector_procs import VectorPool
    from geoseg.vector_outputs import vectorize_chunk

    run = Path(a.run)
    if (run / "run").is_dir() and not (run / "manifest.json").exists():
        run = run / "run"  # a `geoseg demo` folder
    cfg = validate_job(json.loads((run / "manifest.json").read_text())["config"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the plan's band checks: said when the run ran
        plan = make_plan(cfg)
    store = str(run / "predictions.zarr")
    chunks = list(plan.chunks)

    def parts(r: Any) -> int:
        """Land-cover parts and footprints of one chunk's result."""
        lc = len(r.landcover.interior) + len(r.landcover.border) if r.landcover else 0
        return lc + len(r.buildings)

    def one(chunk: object) -> int:
        return parts(vectorize_chunk(plan, store, chunk, vcfg=cfg.vectors))  # type: ignore[arg-type]

    rows: list[tuple[str, float, float, int]] = []
    for n in (1, a.workers):
        t0, c0 = time.perf_counter(), _cpu()
        with ThreadPoolExecutor(n) as ex:
            count = sum(ex.map(one, chunks))
        rows.append((f"{n} thread{'s' if n > 1 else ''}", time.perf_counter() - t0,
                     _cpu() - c0, count))
    t0, c0 = time.perf_counter(), _cpu()
    pool = VectorPool(functools.partial(vectorize_chunk, vcfg=cfg.vectors), plan, store,
                      threads=1, processes=a.workers)
    try:
        futures = [pool.submit(c) for c in chunks]
        results = [pool.result(f) for f in futures]
    finally:
        pool.shutdown()
    count = sum(parts(r) for r in results)
    rows.append((f"{a.workers} processes (start-up included)", time.perf_counter() - t0,
                 _cpu() - c0, count))

    print(f"{len(chunks)} chunks of {run}; models {', '.join(m.name for m in plan.models)}")
    print(f"{'vector tasks in':40s} {'wall s':>8s} {'CPU s':>8s} {'vs 1 thread':>12s}  parts")
    base = rows[0][1]
    for name, wall, cpu, n in rows:
        print(f"{name:40s} {wall:8.2f} {cpu:8.2f} {base / wall:11.2f}x  {n}")


if __name__ == "__main__":
    main()
