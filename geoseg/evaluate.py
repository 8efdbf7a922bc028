"""Scoring outputs against ground truth: pixel and boundary metrics of class maps streamed
chunk by chunk, footprint object metrics (SpaceNet one-to-one matching at IoU ≥ 0.5), and COCO
mask AP and panoptic quality of footprints rasterized onto the truth's instance grid."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
import zarr
from rasterio.io import DatasetReader
from rasterio.windows import Window as RioWindow

from geoseg.errors import InputError
from geoseg.grid import ChunkGrid, GeoBox, Window, normalize_crs
from geoseg.layout import RunLayout
from geoseg.metrics import (
    BoundaryCounts,
    BoundaryScores,
    CocoScores,
    InstanceOverlaps,
    ObjectScores,
    PanopticScores,
    PixelScores,
    boundary_counts,
    boundary_halo,
    coco_match,
    confusion_matrix,
    panoptic_match,
    score_polygons,
)
from geoseg.store import store_grid


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


def _class_windows(store: Path, layer: str, truth: str | Path,
                   halo: int) -> Iterator[tuple[np.ndarray, np.ndarray, Window]]:
    """Prediction and truth of each store chunk grown by ``halo`` px (clipped to the grid), with
    the chunk's window inside them."""
    grid, chunk = store_grid(store)
    win = truth_window(truth, grid)
    arr = zarr.open_group(str(store), mode="r")[layer]
    if not isinstance(arr, zarr.Array):
        raise InputError(f"{layer} is not an array in {store}")
    with rasterio.open(truth) as src:
        for ch in ChunkGrid(grid.shape, chunk):
            padded = ch.window.pad(halo).intersect(grid.window)
            rs, cs = padded.slices()
            pred = np.asarray(arr[rs, cs])
            t = src.read(1, window=RioWindow(win.col_off + padded.col_off,
                                             win.row_off + padded.row_off, padded.width,
                                             padded.height), boundless=True, fill_value=255)
            yield pred, t, ch.window.relative_to(padded)


def evaluate_pixels(store: str | Path, layer: str, truth: str | Path,
                    num_classes: int) -> PixelScores:
    """Confusion matrix of a stored class map against a truth raster (nodata 255 ignored)."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    for pred, t, _ in _class_windows(Path(store), layer, truth, 0):
        cm += confusion_matrix(pred, t, num_classes, ignore=255)
    return PixelScores.from_confusion(cm)


@dataclass(frozen=True)
class ClassMapScores:
    """Pixel metrics and boundary F1 of one class map."""

    pixels: PixelScores
    boundary: BoundaryScores

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, object]:
        out = self.pixels.to_dict(class_names)
        out["boundary"] = self.boundary.to_dict(class_names)
        return out


def evaluate_class_map(store: str | Path, layer: str, truth: str | Path, num_classes: int, *,
                       tol: float = 2.0) -> ClassMapScores:
    """Pixel metrics and boundary F1 (tolerance ``tol`` px) of a stored class map against a
    truth raster (nodata 255 ignored), in one pass. Chunks are read with enough context that
    the boundary counts equal those of the whole map (chunk edges are not boundaries)."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    bc = BoundaryCounts.zeros(num_classes, tol)
    for pred, t, core in _class_windows(Path(store), layer, truth, boundary_halo(tol)):
        rs, cs = core.slices()
        cm += confusion_matrix(pred[rs, cs], t[rs, cs], num_classes, ignore=255)
        bc = bc + boundary_counts(pred, t, num_classes, tol=tol, ignore=255, core=core)
    return ClassMapScores(PixelScores.from_confusion(cm), BoundaryScores.from_counts(bc))


def read_polygons(path: str | Path, layer: str | None, what: str) -> Any:
    """Polygons of any OGR vector file (GeoPackage, GeoJSON, shapefile, FlatGeobuf, ...) as a
    GeoDataFrame: ``layer``, else a layer named ``buildings``, else the only (first) polygon
    layer. Non-polygon features are dropped with a warning; every problem is one line."""
    import warnings

    import geopandas as gpd
    import pyogrio

    from geoseg.errors import GeoSegWarning

    p = str(path)
    if "://" not in p and not p.startswith("/vsi") and not Path(p).exists():
        raise InputError(f"{what} {p} not found: check the path")
    try:
        layers = [(str(n), str(t or "")) for n, t in pyogrio.list_layers(p)]
    except Exception as exc:  # pyogrio's DataSourceError and GDAL's own
        raise InputError(f"{what} {p} is not a vector file GDAL can read "
                         f"({str(exc).splitlines()[0][:200]})") from exc
    names = [n for n, _ in layers]
    if layer is None:
        polygonal = [n for n, t in layers if "polygon" in t.lower()] or names
        layer = "buildings" if "buildings" in names else (polygonal[0] if polygonal else None)
    if layer is None or layer not in names:
        raise InputError(f"{what} {p} has no layer {layer!r} (layers: {', '.join(names) or 'none'})"
                         ": pass the right one")
    df = gpd.read_file(p, layer=layer)
    keep = df.geometry.geom_type.isin(["Polygon", "MultiPolygon"])
    if not keep.all():
        warnings.warn(GeoSegWarning(f"{what} {p} (layer {layer}): {int((~keep).sum())} "
                                    "non-polygon features ignored"), stacklevel=2)
        df = df[keep]
    if len(df) and df.crs is None:
        raise InputError(f"{what} {p} (layer {layer}) has no CRS: assign one (e.g. "
                         "ogr2ogr -a_srs EPSG:4326 ...)")
    return df


def evaluate_footprints(pred_gpkg: str | Path, truth_gpkg: str | Path, *,
                        pred_layer: str | None = None, truth_layer: str | None = None,
                        bounds: tuple[float, float, float, float] | None = None,
                        iou: float = 0.5) -> ObjectScores:
    """SpaceNet precision/recall/F1 of predicted vs truth footprints, any OGR format, layer and
    CRS (truth is reprojected to the predictions'); with ``bounds``, both are limited to
    buildings whose centre lies inside (the area that was predicted)."""
    pred = read_polygons(pred_gpkg, pred_layer, "footprints")
    truth = read_polygons(truth_gpkg, truth_layer, "truth footprints")
    if len(truth) and len(pred) and normalize_crs(truth.crs) != normalize_crs(pred.crs):
        truth = truth.to_crs(pred.crs)
    if bounds is not None:
        box = shapely.box(*bounds)
        truth = truth[truth.geometry.representative_point().within(box)]
        pred = pred[pred.geometry.representative_point().within(box)]
    return score_polygons(list(pred.geometry), list(truth.geometry), iou)


def _read_valid(src: DatasetReader, win: Window) -> tuple[np.ndarray, np.ndarray]:
    """Band 1 of ``win`` (may reach outside the raster) and where it holds data."""
    fill = src.nodata if src.nodata is not None else 0
    data = src.read(1, window=RioWindow(win.col_off, win.row_off, win.width, win.height),
                    boundless=True, fill_value=fill)
    valid = np.zeros(win.shape, bool)
    inner = win.intersect(Window(0, 0, src.height, src.width)).relative_to(win)
    valid[inner.slices()] = True
    if src.nodata is not None:
        valid &= data != src.nodata
    return data, valid


def _confidences(df: Any, where: str) -> np.ndarray:
    if "confidence" not in df.columns:
        raise InputError(f"{where} has no 'confidence' attribute: COCO AP ranks footprints by "
                         "their confidence")
    conf = np.asarray(df["confidence"], dtype=np.float64)
    bad = ~np.isfinite(conf)
    if bad.any():
        raise InputError(f"{where}: {int(bad.sum())} footprints have no confidence: COCO AP "
                         "needs a score for every footprint")
    return conf


@dataclass(frozen=True)
class InstanceScores:
    """COCO mask AP and panoptic quality of footprints on an instance grid."""

    coco: CocoScores
    panoptic: PanopticScores
    max_dets: int | None

    def to_dict(self) -> dict[str, object]:
        return {"coco": {**self.coco.to_dict(), "max_dets": self.max_dets},
                "panoptic": self.panoptic.to_dict()}


def evaluate_instances(pred_gpkg: str | Path, truth: str | Path, *, grid: GeoBox | None = None,
                       pred_layer: str | None = None, void: str | Path | None = None,
                       chunk: int = 1024, max_dets: int | None = None) -> InstanceScores:
    """COCO mask AP/AP50/AP75 and PQ/SQ/RQ of predicted footprints against a truth raster of
    instance ids (0 = none).

    The footprints are rasterized onto ``grid`` (default: the truth raster's grid; otherwise a
    pixel-aligned part of it) chunk by chunk, each feature one instance (pixel centres inside;
    where footprints overlap, the one with the higher ``confidence`` wins). Scores are the
    ``confidence`` attribute. Pixels that are nodata in the truth (or in the ``void`` raster on
    the same grid) are void. Overlaps are summed over chunks, so objects crossing chunk edges
    are scored whole and the area is one COCO image: ``max_dets`` defaults to None (keep all
    detections) because COCO's 100 per image is meant for photos, not scenes with thousands of
    buildings. Footprints that cover no valid pixel centre are not detections.
    """
    from rasterio import features

    with rasterio.open(truth) as src:
        tgrid = GeoBox((src.height, src.width), src.transform, normalize_crs(src.crs))
    grid = grid if grid is not None else tgrid
    twin = truth_window(truth, grid)
    vwin = truth_window(void, grid) if void is not None else None
    df = read_polygons(pred_gpkg, pred_layer, "footprints")
    if df.crs is not None and normalize_crs(df.crs) != grid.crs:
        df = df.to_crs(grid.crs)
    conf = _confidences(df, f"{pred_gpkg} (layer {pred_layer})")
    geoms = np.asarray(df.geometry.values, dtype=object)
    tree = shapely.STRtree(geoms)
    ov = InstanceOverlaps.empty()
    with ExitStack() as stack:
        tsrc = stack.enter_context(rasterio.open(truth))
        vsrc = stack.enter_context(rasterio.open(void)) if void is not None else None
        for ch in ChunkGrid(grid.shape, chunk):
            w = ch.window
            sub = grid[w]
            b = sub.bounds
            hit = tree.query(shapely.box(b.left, b.bottom, b.right, b.top))
            hit = hit[np.lexsort((hit, conf[hit]))]  # low confidence first: high drawn on top
            pred = (features.rasterize(zip(geoms[hit], (hit + 1).tolist(), strict=True),
                                       out_shape=w.shape, transform=sub.transform, fill=0,
                                       dtype="int32")
                    if hit.size else np.zeros(w.shape, np.int32))
            t, valid = _read_valid(tsrc, Window(twin.row_off + w.row_off,
                                                twin.col_off + w.col_off, w.height, w.width))
            if vsrc is not None and vwin is not None:
                valid &= _read_valid(vsrc, Window(vwin.row_off + w.row_off,
                                                  vwin.col_off + w.col_off, w.height,
                                                  w.width))[1]
            ov = ov + InstanceOverlaps.from_rasters(pred, t, valid)
    pairs, n_pred, n_truth = ov.pairs()
    scores = conf[ov.objects - 1]
    dets = coco_match(pairs, n_pred, n_truth, scores, max_dets)
    pq = panoptic_match(pairs, n_pred, n_truth, ov.void_fractions())
    return InstanceScores(CocoScores.from_detections(dets), pq, max_dets)


def evaluate_run(run: str | Path, scene: str | Path, date: str = "t0", *,
                 boundary_tol: float = 2.0) -> dict[str, Any]:
    """Score a ``geoseg run`` output directory against a generated scene's truth.

    Land cover: pixel metrics and boundary F1. Buildings: SpaceNet F1 on polygons, and COCO
    mask AP and PQ with the footprints rasterized onto the scene's instance raster (land-cover
    nodata is void).
    """
    run, scene = Path(run), Path(scene)
    layout = RunLayout(run)
    store = layout.store
    g = zarr.open_group(str(store), mode="r")
    report: dict[str, Any] = {"headline": {}}
    names = [n for n, _ in g.arrays()]
    landcover = scene / f"landcover_{date}.tif"
    if "landcover" in names:
        flags = g["landcover"].attrs["flag_values"]
        k = len(flags) if isinstance(flags, list) else 0
        cs = evaluate_class_map(store, "landcover", landcover, k, tol=boundary_tol)
        meanings = str(g["landcover"].attrs["flag_meanings"]).split()
        report["landcover"] = cs.to_dict(meanings)
        report["headline"]["landcover mIoU"] = cs.pixels.miou
        report["headline"]["landcover boundary F1"] = cs.boundary.mean_f1
    gpkg = layout.gpkg
    if "buildings" in names and gpkg.exists():
        grid, chunk = store_grid(store)
        b = grid.bounds
        obj = evaluate_footprints(gpkg, scene / f"buildings_{date}.gpkg",
                                  bounds=(b.left, b.bottom, b.right, b.top))
        report["buildings"] = obj.to_dict()
        report["headline"]["building F1@0.5"] = obj.f1
        instances = scene / f"instances_{date}.tif"
        if not instances.exists():
            raise InputError(f"{instances} not found: pass a scene directory from "
                             "`geoseg sample`")
        inst = evaluate_instances(gpkg, instances, grid=grid, chunk=chunk,
                                  void=landcover if landcover.exists() else None)
        report["buildings"].update(inst.to_dict())
        report["headline"]["building AP"] = inst.coco.ap
        report["headline"]["building PQ"] = inst.panoptic.pq
    return report
