"""Run ``geoseg ARGS`` in this process and write CPU seconds per thread role as JSON.

    python -m benchmarks.thread_cpu OUT.json -- run IMAGE -o RUN ...

Where the time of a run goes, in CPU seconds rather than the wall seconds of each stage (which
count waiting for the GIL and for cores): every thread of this process is sampled from
``/proc/self/task`` every 50 ms (its last reading counts) and named by its Python thread's name
(``geoseg-io`` reads and writes, ``geoseg-model`` the model's caller, ``geoseg-vec`` vector
threads, ``geoseg-gpkg`` the GeoPackage writer, ``geoseg-export`` COGs and quicklook,
``asyncio``/``zarr_io`` zarr's own I/O, ``MainThread`` the driver); threads Python did not start
(onnxruntime's and other libraries' pools) are ``native``, and finished child processes (vector
workers) ``child processes``. ``busy_cores``: the cores this process kept busy in each tenth of
the run (child processes not counted). Linux only.
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
import threading
import time
from itertools import pairwise
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _thread_cpu(tid: int) -> float | None:
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def busy_cores(timeline: list[tuple[float, float]], wall: float,
               parts: int = 10) -> list[float]:
    """Cores this process kept busy in each tenth of the run (its threads' CPU-s over the
    tenth's seconds, from ``(seconds, process CPU-s)`` samples): where a run leaves cores idle,
    at its start, its end, or a stall in between (a sampler that cannot run for a while, as
    when a thread sleeps holding the GIL, shows as a gap the next sample spreads over)."""
    if wall <= 0 or len(timeline) < 2:
        return []
    edges = [wall * i / parts for i in range(parts + 1)]

    def cpu_at(t: float) -> float:  # linear between samples
        for (t0, c0), (t1, c1) in pairwise(timeline):
            if t <= t1:
                return c0 if t1 <= t0 else c0 + (c1 - c0) * max(t - t0, 0.0) / (t1 - t0)
        return timeline[-1][1]

    cpu = [cpu_at(t) for t in edges]
    return [round((cpu[i + 1] - cpu[i]) / (edges[i + 1] - edges[i]), 2) for i in range(parts)]


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        raise SystemExit(__doc__)
    out, args = Path(sys.argv[1]), sys.argv[3:]
    seen: dict[int, tuple[str, float]] = {}
    timeline: list[tuple[float, float]] = []  # (seconds since start, process CPU-s so far)
    stop = threading.Event()
    start = time.perf_counter()

    def sample() -> None:
        while True:
            names = {t.native_id: t.name for t in threading.enumerate()}
            for tid in map(int, os.listdir("/proc/self/task")):
                cpu = _thread_cpu(tid)
                if cpu is not None:
                    seen[tid] = (names.get(tid) or seen.get(tid, ("native", 0.0))[0], cpu)
            timeline.append((time.perf_counter() - start, time.process_time()))
            if stop.wait(0.05):
                return

    sampler = threading.Thread(target=sample, name="sampler", daemon=True)
    sampler.start()
    from geoseg.cli import main as geoseg

    t0 = time.perf_counter()
    rc = geoseg(args)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    roles: dict[str, float] = {}
    for name, cpu in seen.values():
        if name != "sampler":  # this script's own
            role = re.sub(r"_\d+$", "", name)
            roles[role] = roles.get(role, 0.0) + cpu
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    roles["child processes"] = kids.ru_utime + kids.ru_stime
    ranked = sorted(roles.items(), key=lambda kv: -kv[1])
    out.write_text(json.dumps({"rc": rc, "wall_s": wall,
                               "cpu_s": {k: round(v, 3) for k, v in ranked},
                               "busy_cores": busy_cores(timeline, wall)}))
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
