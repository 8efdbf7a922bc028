"""geoseg from Python, cell by cell (paste the blocks into a notebook, or run this file).

    python docs/examples/notebook_example.py [WORKDIR]

Generates a small synthetic scene (512 x 512 px at 0.5 m, with exact truth), segments it with
the built-in models, looks at the predictions (xarray), the features (GeoPandas) and the summary,
and scores the run against the truth. Takes a few seconds on a laptop CPU; the test suite runs
it (tests/pipeline/test_api.py).
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import geoseg
from geoseg.sample import generate_scene


def main(workdir: Path) -> dict[str, Any]:
    # %% a scene: image_t0.tif (4 bands, EPSG:32633) plus truth rasters and footprints
    scene = generate_scene(workdir / "scene", size=512, seed=0, overwrite=True)

    # %% run: flags of `geoseg run` are keyword arguments (chunk_size, models, region, ...)
    with warnings.catch_warnings():  # the generated image has no nodata value, by design
        warnings.filterwarnings("ignore", message=".*declares no nodata value.*")
        run = geoseg.run(scene.image_t0, workdir / "run", chunk_size=256, overwrite=True)
    print(run, "complete:", run.complete)

    # %% the summary is typed (run.summary.raw is the JSON document)
    s = run.summary
    print(f"{s.grid.shape[1]}x{s.grid.shape[0]} px in {s.grid.crs.to_string()}, "
          f"{s.chunks.total} chunks in {s.timings_s['total_s']:.1f} s")
    for name, m2 in s.class_areas_m2["landcover"].items():
        print(f"  {name:<12} {m2 / 1e4:8.3f} ha")

    # %% predictions: an xarray Dataset on the exact grid (dask arrays, one per store chunk)
    ds = run.predictions()
    landcover = ds["landcover"]  # uint8 class ids, _FillValue 255 (not masked)
    counts = np.bincount(landcover.values.ravel(), minlength=256)
    names = run.class_names("landcover")
    print("pixels per class:", dict(zip(names, counts[:len(names)].tolist(), strict=True)))
    confidence = ds["landcover_confidence"].values * ds["landcover_confidence"].attrs[
        "scale_factor"]
    print(f"mean confidence {confidence.mean():.3f}; transform {tuple(run.transform)[:6]}")
    try:  # rioxarray (optional) reads the CF grid mapping: same CRS and transform
        import rioxarray  # noqa: F401

        print("rioxarray:", ds.rio.crs, ds.rio.transform() == run.transform)
    except ImportError:
        pass

    # %% features: GeoPandas, in the run's CRS
    buildings = run.features("buildings")
    print(f"{len(buildings)} buildings, median area {buildings['area_m2'].median():.0f} m²")
    big = buildings[buildings["area_m2"] > 100]
    print(f"{len(big)} larger than 100 m²; layers: {run.feature_layers}")

    # %% the quicklook shows itself in a notebook (it is also a path)
    quicklook = run.quicklook()
    print("quicklook:", quicklook.path)

    # %% evaluate: against the generated scene, then against a truth raster alone (any grid)
    report = geoseg.evaluate(run, scene=scene.root)
    print("headline:", {k: round(v, 3) for k, v in report["headline"].items()})
    lc = geoseg.evaluate(run, truth=scene.landcover_t0)["landcover"]
    for name, sc in lc["per_class"].items():
        print(f"  {name:<12} IoU {sc['iou']:.3f}  precision {sc['precision']:.3f}  "
              f"recall {sc['recall']:.3f}  F1 {sc['f1']:.3f}")
    print("confusion matrix:", lc["confusion_png"])

    # %% reopen the run later (another session, another process)
    again = geoseg.open_run(workdir / "run")
    assert again.summary.features == s.features
    return {"run": run, "report": report, "landcover": lc, "buildings": buildings}


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="geoseg-"))
    main(root)
