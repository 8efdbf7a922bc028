"""Why a CPU model runs alone: model passes and land-cover vectors, apart and side by side.

    python -m benchmarks.bench_concurrency RUN BUNDLE [--passes 16]

RUN is a finished ``geoseg run`` folder of the reference bundle (e.g. the benchmark's
``/tmp/geoseg-bench/geoseg-4096-1``: its stored class maps are what gets vectorized); BUNDLE the
ONNX bundle (``/tmp/geoseg-bench/ref-bundle``). One process, one line per arrangement:

- model alone: ``--passes`` passes of chunk + halo (1152²) with every core;
- vectors alone, one thread and two: ``landcover_parts`` of the run's chunks;
- model with one vector thread beside it (what "vectorize while the model works" does on CPUs);
- model, then the vectors on every core (what the local backend does on CPUs);
- two single-thread model callers with a vector thread beside them.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run")
    p.add_argument("bundle")
    p.add_argument("--passes", type=int, default=16)
    a = p.parse_args()

    import rasterio
    import zarr
    from pyproj import CRS

    from geoseg.grid import ChunkGrid
    from geoseg.models.onnx_predictor import OnnxPredictor
    from geoseg.vectorize.landcover import landcover_parts

    run = Path(a.run)
    store = zarr.open_group(str(run / "predictions.zarr"), mode="r")
    classes, confidence = store["landcover"], store["landcover_confidence"]
    assert isinstance(classes, zarr.Array) and isinstance(confidence, zarr.Array)
    with rasterio.open(run / "landcover.tif") as src:
        transform, crs = src.transform, CRS.from_wkt(src.crs.to_wkt())
    grid = ChunkGrid((classes.shape[0], classes.shape[1]), classes.chunks[0])
    chunks = []
    for chunk in grid:
        sl = chunk.window.slices()
        chunks.append((chunk, np.asarray(classes[sl]), np.asarray(confidence[sl])))

    def vectorize(item: Any) -> Any:
        chunk, cls, conf = item
        return landcover_parts(cls, conf, chunk, transform, fill=255, crs=crs)

    cores = os.cpu_count() or 1
    x = np.random.default_rng(0).integers(0, 255, (1, 3, 1152, 1152)).astype(np.float32)
    core = (slice(64, 1088), slice(64, 1088))
    models = {n: OnnxPredictor(a.bundle, device="cpu", num_threads=n) for n in (cores, 1)}
    for m in models.values():
        m.predict_core(x, core)  # warm up

    def passes(model: Any, count: int) -> None:
        for _ in range(count):
            model.predict_core(x, core)

    def timed(name: str, fn: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        fn()
        print(f"{name:<58} {time.perf_counter() - t0:7.2f} s", flush=True)

    def vectors(threads: int) -> None:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(vectorize, chunks))

    def beside(model_fn: Callable[[], None]) -> None:
        with ThreadPoolExecutor(1) as pool:
            futures = [pool.submit(vectorize, c) for c in chunks]
            model_fn()
            for f in futures:
                f.result()

    def split_model() -> None:
        with ThreadPoolExecutor(cores) as pool:
            list(pool.map(lambda _: models[1].predict_core(x, core), range(a.passes)))

    print(f"{a.passes} passes of 1152², {len(chunks)} chunks' vectors, {cores} cores")
    timed(f"model alone ({cores} threads)", lambda: passes(models[cores], a.passes))
    timed("vectors alone, 1 thread", lambda: vectors(1))
    timed(f"vectors alone, {cores} threads", lambda: vectors(cores))
    timed("model + 1 vector thread beside it", lambda: beside(
        lambda: passes(models[cores], a.passes)))
    def model_then_vectors() -> None:
        passes(models[cores], a.passes)
        vectors(cores)

    timed(f"model, then vectors on {cores} threads", model_then_vectors)
    timed(f"{cores} single-thread model callers + 1 vector thread", lambda: beside(split_model))


if __name__ == "__main__":
    main()
