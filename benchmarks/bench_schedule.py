"""Memory of the block cache's read schedule against the size of the region (no image read).

    python -m benchmarks.bench_schedule [--sizes 16384 100000 200000 2000000] [--chunk 1024]
        [--halo 64] [--block 128] [--unbounded]

For each square image size it announces every chunk window (with its halo) of a tiled image of
``--block``² blocks, as a job does, makes the schedule, and prints the process's growth in
resident memory and the counters kept: the schedule must stop growing with the region
(bounded by :data:`geoseg.blockcache.MAX_SCHEDULED_WINDOWS` and ``MAX_SCHEDULED_READS``).
``--unbounded`` lifts both limits, as before they existed (keep its sizes at 200000 and less:
2,000,000² would need ~61 GB).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import time
from collections.abc import Iterator
from unittest import mock

from geoseg.blockcache import BlockCache


def _windows(n: int, chunk: int, halo: int) -> Iterator[tuple[int, int, int, int]]:
    for r in range(0, n, chunk):
        for c in range(0, n, chunk):
            r0, c0 = max(r - halo, 0), max(c - halo, 0)
            yield r0, c0, min(r + chunk + halo, n) - r0, min(c + chunk + halo, n) - c0


def measure(n: int, chunk: int, halo: int, block: int) -> dict[str, object]:
    ident = (f"/virtual/{n}.tif", 1, 1, 1)
    cache = BlockCache()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with mock.patch("geoseg.blockcache.file_identity", return_value=ident):
        cache.expect(ident[0], _windows(n, chunk, halo))
    if ident in cache._expected:  # what the first read does
        cache._count_uses(ident, block, block, block * block * 5)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"size": n, "chunks": (-(-n // chunk)) ** 2,
            "scheduled": bool(cache._uses), "block_counters": len(cache._uses),
            "peak_rss_growth_mb": round((rss1 - rss0) / 1024, 1),
            "seconds": round(time.perf_counter() - t0, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[16384, 100000, 200000, 2000000])
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--halo", type=int, default=64)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--unbounded", action="store_true", help="no limits (the old schedule)")
    a = p.parse_args()
    with contextlib.ExitStack() as stack:
        if a.unbounded:
            for name in ("MAX_SCHEDULED_WINDOWS", "MAX_SCHEDULED_READS"):
                stack.enter_context(mock.patch(f"geoseg.blockcache.{name}", 1 << 62))
        for n in sorted(a.sizes):  # growing: ru_maxrss is a peak, each size adds to the last
            print(json.dumps({"unbounded": a.unbounded, **measure(n, a.chunk, a.halo, a.block)}),
                  flush=True)


if __name__ == "__main__":
    main()
