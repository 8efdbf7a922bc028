"""Scoring outputs against ground truth: pixel metrics streamed chunk by chunk, and footprint
object metrics (SpaceNet one-to-one matching at IoU ≥ 0.5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
import zarr
from rasterio.windows import Window as RioWindow

from geoseg.errors import InputError
from geoseg.grid import GeoBox, Window, normalize_crs
from geoseg.metrics import ObjectScores, PixelScores, confusion_matrix, score_polygons


def _store_grid(store: Path) -> tuple[GeoBox, int]:
    from affine import Affine

    attrs = json.loads((store / ".zattrs").read_text())
    g = zarr.open_group(str(store), mode="r")
    arr = next(a for n, a in g.arrays() if n not in ("x", "y", "spatial_ref"))
    return (GeoBox(tuple(arr.shape), Affine(*attrs["transform"]),  # type: ignore[arg-type]
                   normalize_crs(attrs["crs_wkt"])), int(attrs["chunk_size"]))


def truth_window(truth: str | Path, grid: GeoBox) -> Window:
    """Window of the truth raster that is exactly ``grid`` (same CRS, pixel size, alignment)."""
    with rasterio.open(truth) as src:
        tgrid = GeoBox((src.height, src.width), src.transform, normalize_crs(src.crs))
    if tgrid.crs != grid.crs or not np.allclose(tgrid.resolution, grid.resolution):
        raise InputError(f"truth {truth} is on another grid (CRS or pixel size): resample it "
                         "onto the prediction grid first")
    inv = ~tgrid.transform
    c, r = inv @ (grid.transform.c, grid.transform.f)
    if abs(c - round(c)) > 1e-6 or abs(r - round(r)) > 1e-6:
        raise InputError(f"truth {truth} is not pixel-aligned with the prediction grid")
    return Window(round(r), round(c), grid.height, grid.width)


def evaluate_pixels(store: str | Path, layer: str, truth: str | Path,
                    num_classes: int) -> PixelScores:
    """Confusion matrix of a stored class map against a truth raster (nodata 255 ignored)."""
    store = Path(store)
    grid, chunk = _store_grid(store)
    win = truth_window(truth, grid)
    arr = zarr.open_group(str(store), mode="r")[layer]
    if not isinstance(arr, zarr.Array):
        raise InputError(f"{layer} is not an array in {store}")
    cm = np.zeros((num_classes, num_classes), np.int64)
    with rasterio.open(truth) as src:
        for r0 in range(0, grid.height, chunk):
            for c0 in range(0, grid.width, chunk):
                h, w = min(chunk, grid.height - r0), min(chunk, grid.width - c0)
                pred = np.asarray(arr[r0:r0 + h, c0:c0 + w])
                t = src.read(1, window=RioWindow(win.col_off + c0, win.row_off + r0, w, h),
                             boundless=True, fill_value=255)
                cm += confusion_matrix(pred, t, num_classes, ignore=255)
    return PixelScores.from_confusion(cm)


def evaluate_footprints(pred_gpkg: str | Path, truth_gpkg: str | Path, *,
                        pred_layer: str = "buildings", truth_layer: str = "buildings",
                        bounds: tuple[float, float, float, float] | None = None,
                        iou: float = 0.5) -> ObjectScores:
    """SpaceNet precision/recall/F1; with ``bounds``, truth is limited to buildings whose centre
    lies inside (the area that was predicted)."""
    import geopandas as gpd

    pred = gpd.read_file(pred_gpkg, layer=pred_layer)
    truth = gpd.read_file(truth_gpkg, layer=truth_layer)
    if truth.crs is not None and pred.crs is not None and truth.crs != pred.crs:
        truth = truth.to_crs(pred.crs)
    if bounds is not None:
        box = shapely.box(*bounds)
        truth = truth[truth.geometry.representative_point().within(box)]
        pred = pred[pred.geometry.representative_point().within(box)]
    return score_polygons(list(pred.geometry), list(truth.geometry), iou)


def evaluate_run(run: str | Path, scene: str | Path, date: str = "t0") -> dict[str, Any]:
    """Score a ``geoseg run`` output directory against a generated scene's truth."""
    run, scene = Path(run), Path(scene)
    store = run / "predictions.zarr"
    g = zarr.open_group(str(store), mode="r")
    report: dict[str, Any] = {"headline": {}}
    names = [n for n, _ in g.arrays()]
    if "landcover" in names:
        flags = g["landcover"].attrs["flag_values"]
        k = len(flags) if isinstance(flags, list) else 0
        ps = evaluate_pixels(store, "landcover", scene / f"landcover_{date}.tif", k)
        meanings = str(g["landcover"].attrs["flag_meanings"]).split()
        report["landcover"] = ps.to_dict(meanings)
        report["headline"]["landcover mIoU"] = ps.miou
    gpkg = run / "features.gpkg"
    if "buildings" in names and gpkg.exists():
        grid, _ = _store_grid(store)
        b = grid.bounds
        obj = evaluate_footprints(gpkg, scene / f"buildings_{date}.gpkg",
                                  bounds=(b.left, b.bottom, b.right, b.top))
        report["buildings"] = obj.to_dict()
        report["headline"]["building F1@0.5"] = obj.f1
    return report
