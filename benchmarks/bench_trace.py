"""Outline tracing: the compiled walk vs the array version, on one class map, in one run.

    python -m benchmarks.bench_trace CLASSES.tif [--chunk 1024] [--repeat 3]

Times ``trace_regions`` and the whole per-chunk land-cover step (``landcover_parts``: labels,
tracing, features) over the map's chunks with each walk, and prints seconds per Mpx and ratios.
Without a map, the demo scene's land-cover truth is generated (``geoseg sample``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from pyproj import CRS
from skimage.measure import label

from geoseg.grid import ChunkGrid
from geoseg.vectorize import landcover, trace


def _walks() -> dict[str, Callable[[], object]]:
    jit = trace.compiled()
    if jit is None:
        raise SystemExit("numba is not installed: pip install numba (the array walk is all)")
    return {"compiled": lambda: jit, "numpy": lambda: None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("classes", nargs="?")
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    path = a.classes
    if path is None:
        from geoseg.sample import generate_scene

        root = Path(tempfile.mkdtemp(prefix="geoseg-bench-trace-"))
        generate_scene(root, size=4096, seed=0, overwrite=True)
        path = str(root / "landcover_t0.tif")
    with rasterio.open(path) as src:
        classes = src.read(1)
        transform, crs = src.transform, CRS.from_user_input(src.crs.to_wkt())
    grid = ChunkGrid(classes.shape, a.chunk)
    chunks = [(c, classes[c.window.slices()]) for c in grid]
    labels = [label(cls, background=255, connectivity=1).astype(np.int32) for _, cls in chunks]
    mpx = classes.size / 1e6
    regions = sum(int(lab.max()) for lab in labels)
    print(f"{path}: {classes.shape[0]}x{classes.shape[1]}, {len(chunks)} chunks of {a.chunk}, "
          f"{regions} regions ({regions / mpx:.0f} per Mpx)")
    walks = _walks()
    trace.trace_regions(labels[0])  # compile / load the cache before timing
    best: dict[tuple[str, str], float] = {}
    for _ in range(a.repeat):  # alternate the walks, keep each one's best
        for name, walk in walks.items():
            original = trace.compiled
            trace.compiled = walk  # type: ignore[assignment]
            try:
                t0 = time.perf_counter()
                for (chunk, _), lab in zip(chunks, labels, strict=True):
                    trace.trace_regions(lab, chunk.window.row_off, chunk.window.col_off)
                t1 = time.perf_counter()
                for chunk, cls in chunks:
                    landcover.landcover_parts(cls, None, chunk, transform, crs=crs)
                t2 = time.perf_counter()
            finally:
                trace.compiled = original  # type: ignore[method-assign]
            for what, s in (("trace_regions", t1 - t0), ("landcover_parts", t2 - t1)):
                best[name, what] = min(best.get((name, what), float("inf")), s)
    for what in ("trace_regions", "landcover_parts"):
        c, n = best["compiled", what], best["numpy", what]
        print(f"{what:16s} compiled {c / mpx:.4f} s/Mpx   numpy {n / mpx:.4f} s/Mpx   "
              f"compiled is {n / c:.1f}x faster")


if __name__ == "__main__":
    main()
