"""The GeoPackage writer alone: geoseg's sink (one Arrow stream per layer) against per-batch
``pyogrio.write_dataframe`` appends of the same features (what the sink did before, and what a
script writing as it goes does).

    geoseg run IMAGE -o RUN                      # any finished run with vectors
    python -m benchmarks.bench_gpkg RUN [--repeat 3]

Vectorizes every chunk of RUN once (not timed), then, per repetition and in this process, feeds
the features to ``GeoPackageSink`` (seam merge included, as in a job's writer thread) and,
separately, writes the same rows as 10,000-row GeoDataFrame appends. Prints wall seconds, CPU
seconds of the whole process, features per second and the ratio, measured in one run. Imports
happen before the timing. Output goes to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

from geoseg.config import validate_job
from geoseg.plan import make_plan
from geoseg.vector_outputs import ChunkVectors, GeoPackageSink, vectorize_chunk


def _sink(plan: object, results: list[ChunkVectors], path: Path) -> int:
    sink = GeoPackageSink(path, plan, {"source_image": "bench.tif",  # type: ignore[arg-type]
                                       "acquisition_date": "2024-01-01"})
    for r in results:
        sink.add(r)
    return sum(sink.finish().values())


def _appends(src: Path, path: Path, batch: int = 10_000) -> int:
    import pyogrio

    rows = 0
    for layer, _kind in pyogrio.list_layers(src):
        df = pyogrio.read_dataframe(src, layer=layer)
        for i in range(0, len(df), batch):
            pyogrio.write_dataframe(df.iloc[i:i + batch], path, layer=layer, driver="GPKG",
                                    append=path.exists())
        rows += len(df)
    return rows


def _timed(fn: object, *args: object) -> tuple[int, float, float]:
    t, c = time.perf_counter(), time.process_time()
    n = fn(*args)  # type: ignore[operator]
    return n, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a finished geoseg run with vectors")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    cfg = validate_job(json.loads((args.run / "manifest.json").read_text())["config"])
    plan = make_plan(cfg)
    store = str(args.run / "predictions.zarr")
    results = [vectorize_chunk(plan, store, c, vcfg=cfg.vectors) for c in plan.chunks]
    import geopandas  # noqa: F401  (imports outside the timing)
    import pyarrow  # noqa: F401
    import pyogrio  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'writer':42s} {'features':>9s} {'wall s':>7s} {'CPU s':>7s} {'features/s':>11s}")
        for rep in range(args.repeat):
            stream = Path(tmp) / f"stream{rep}.gpkg"
            appended = Path(tmp) / f"appends{rep}.gpkg"
            n, wall, cpu = _timed(_sink, plan, results, stream)
            print(f"{'geoseg sink (seam merge + Arrow streams)':42s} {n:9d} {wall:7.2f} "
                  f"{cpu:7.2f} {n / wall:11.0f}")
            m, wall_b, cpu_b = _timed(_appends, stream, appended)
            print(f"{'the same rows in 10k write_dataframe appends':42s} {m:9d} {wall_b:7.2f} "
                  f"{cpu_b:7.2f} {m / wall_b:11.0f}")
            print(f"  ratio (appends / sink, wall): {wall_b / wall:.2f}x; the appends have no "
                  "seam merge to do")


if __name__ == "__main__":
    main()
