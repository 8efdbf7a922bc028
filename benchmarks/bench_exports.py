"""The exports of a finished run: each class-map COG by both routes, and the quicklook.

    python -m benchmarks.bench_exports RUN

RUN is a finished ``geoseg run`` folder with a local store. Prints CPU seconds of each COG
copied from a VRT over the store's Zarr array (what a job does) and from a tiled GeoTIFF of
the same chunks (the route of object-storage stores), whether both COGs hold the same pixels
at every overview level, colour table and tags, and the quicklook's CPU seconds. The COGs
are written to a temporary folder; RUN is only read.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run")
    a = p.parse_args()

    import rasterio

    from geoseg import outputs
    from geoseg.config import validate_job
    from geoseg.plan import make_plan

    run = Path(a.run)
    cfg = validate_job(json.loads((run / "manifest.json").read_text())["config"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the plan's band checks: said when the run ran
        plan = make_plan(cfg)
    store = str(run / "predictions.zarr")
    print(f"{run}: {plan.grid.height}x{plan.grid.width}")
    with tempfile.TemporaryDirectory() as tmp:
        for m in plan.models:
            t0 = time.process_time()
            direct = outputs.export_cog(plan, store, m.name, Path(tmp) / f"zarr-{m.name}.tif")
            t_direct = time.process_time() - t0
            route = outputs._zarr_source
            outputs._zarr_source = lambda *_: None  # type: ignore[assignment]
            try:
                t0 = time.process_time()
                tiles = outputs.export_cog(plan, store, m.name, Path(tmp) / f"gtiff-{m.name}.tif")
                t_tiles = time.process_time() - t0
            finally:
                outputs._zarr_source = route  # type: ignore[assignment]
            with rasterio.open(direct) as x, rasterio.open(tiles) as y:
                same = (x.profile == y.profile and x.colormap(1) == y.colormap(1)
                        and x.tags(1) == y.tags(1) and x.overviews(1) == y.overviews(1)
                        and all(np.array_equal(x.read(1, out_shape=(x.height // f,
                                                                    x.width // f)),
                                               y.read(1, out_shape=(y.height // f,
                                                                    y.width // f)))
                                for f in (1, *x.overviews(1))))
            print(f"COG {m.name:12s} from the Zarr store {t_direct:6.2f} CPU-s, from a GeoTIFF "
                  f"{t_tiles:6.2f} CPU-s ({t_tiles / t_direct:.2f}x); same COG: {same}")
        t0 = time.process_time()
        outputs.quicklook(plan, store, Path(tmp) / "quicklook.png")
        print(f"quicklook {time.process_time() - t0:6.2f} CPU-s")


if __name__ == "__main__":
    main()
