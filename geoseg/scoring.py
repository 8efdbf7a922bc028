"""Scoring outputs against ground truth: pixel and boundary metrics of class maps streamed
chunk by chunk, footprint object metrics (SpaceNet one-to-one matching at IoU ≥ 0.5), and COCO
mask AP and panoptic quality of footprints rasterized onto the truth's instance grid.

Truth class rasters may be on any grid (resampled nearest-neighbour onto the predictions', see
:mod:`geoseg.truth_raster`); truth footprints in any OGR format, layer and CRS. Every bad input is
one :class:`~geoseg.errors.InputError` line. :func:`evaluate_outputs` is what ``geoseg eval`` and
``geoseg.evaluate(...)`` run: the report plus a confusion-matrix PNG per class layer."""

from __future__ import annotations

import json
import logging
import warnings
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

from geoseg.class_report import class_report, confusion_png
from geoseg.errors import GeoSegWarning, InputError
from geoseg.grid import ChunkGrid, GeoBox, Window, normalize_crs
from geoseg.layout import MANIFEST, RunLayout
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
from geoseg.sources.remote import is_local_path
from geoseg.store import class_names_of, store_grid
from geoseg.truth_raster import TruthReader, open_grid

log = logging.getLogger(__name__)
_COORDS = ("x", "y", "spatial_ref")


def open_store(store: str | Path) -> zarr.Group:
    """A geoseg prediction store, read only; one :class:`InputError` line when it is not one."""
    p = Path(store)
    hint = "pass the predictions.zarr of a geoseg run"
    if not p.exists():
        raise InputError(f"predictions {p} not found: {hint}")
    try:
        g = zarr.open_group(str(p), mode="r")
    except (OSError, ValueError) as exc:  # zarr's GroupNotFoundError is both
        raise InputError(f"{p} is not a Zarr store: {hint}") from exc
    if not {"transform", "crs_wkt", "chunk_size"} <= set(g.attrs):
        raise InputError(f"{p} is a Zarr store without geoseg's grid attributes: {hint}")
    if not any(n not in _COORDS for n, _ in g.arrays()):
        raise InputError(f"{p} holds no prediction layer yet: the run wrote nothing")
    return g


def store_classes(store: str | Path, layer: str) -> tuple[int | None, tuple[str, ...] | None]:
    """Number of classes and their names of a store layer (the model bundle's classes, as the
    run recorded them); None where the layer does not say."""
    g = open_store(store)
    layers = [n for n, _ in g.arrays() if n not in _COORDS and not n.endswith("_confidence")]
    if layer not in layers:
        raise InputError(f"{store} has no layer {layer!r} (layers: {', '.join(layers) or 'none'})"
                         ": pass --layer (layer= in Python)")
    flags = g[layer].attrs.get("flag_values")
    if not isinstance(flags, list) or not flags:
        return None, None
    ids = [int(v) for v in flags]
    k = max(ids) + 1
    meanings = class_names_of(dict(g[layer].attrs))
    return k, tuple(meanings) if ids == list(range(k)) and len(meanings) == k else None


def truth_window(truth: str | Path, grid: GeoBox) -> Window:
    """Window of the truth raster that is exactly ``grid`` (same CRS, pixel size, alignment)."""
    tgrid, _ = open_grid(truth)
    if tgrid.crs != grid.crs or not np.allclose(tgrid.resolution, grid.resolution):
        raise InputError(f"truth {truth} is on another grid (CRS or pixel size): resample it "
                         "onto the prediction grid first")
    inv = ~tgrid.transform
    c, r = inv @ (grid.transform.c, grid.transform.f)
    if abs(c - round(c)) > 1e-6 or abs(r - round(r)) > 1e-6:
        raise InputError(f"truth {truth} is not pixel-aligned with the prediction grid")
    return Window(round(r), round(c), grid.height, grid.width)


def _class_windows(store: Path, layer: str, reader: TruthReader,
                   halo: int) -> Iterator[tuple[np.ndarray, np.ndarray, Window]]:
    """Prediction and truth of each store chunk grown by ``halo`` px (clipped to the grid), with
    the chunk's window inside them."""
    grid, chunk = store_grid(store)
    arr = open_store(store)[layer]
    if not isinstance(arr, zarr.Array):
        raise InputError(f"{layer} is not an array in {store}")
    for ch in ChunkGrid(grid.shape, chunk):
        padded = ch.window.pad(halo).intersect(grid.window)
        rs, cs = padded.slices()
        yield np.asarray(arr[rs, cs]), reader.read(padded), ch.window.relative_to(padded)


_NUM_CLASSES_HINT = "give the layer's class count, or leave it out for the run's class list"


def _num_classes(store: str | Path, layer: str, given: int | None) -> int:
    if given is not None and given < 1:
        raise InputError(f"num_classes must be at least 1, got {given}: {_NUM_CLASSES_HINT}")
    k, _ = store_classes(store, layer)
    if given is not None:
        return given
    if k is None:
        raise InputError(f"{store} does not list the classes of {layer}: pass --num-classes")
    return k


def _counted(cm: np.ndarray, truth: str | Path, layer: str) -> None:
    if not cm.sum():
        raise InputError(f"truth {truth} and the {layer} predictions share no valid pixel: "
                         "check the truth's extent, CRS and nodata")


def evaluate_pixels(store: str | Path, layer: str, truth: str | Path,
                    num_classes: int | None = None) -> PixelScores:
    """Confusion matrix of a stored class map against a truth raster on any grid (nodata and
    255 ignored); ``num_classes`` defaults to the layer's class list."""
    k = _num_classes(store, layer, num_classes)
    cm = np.zeros((k, k), np.int64)
    with TruthReader(truth, store_grid(store)[0]) as reader:
        for pred, t, _ in _class_windows(Path(store), layer, reader, 0):
            cm += confusion_matrix(pred, t, k, ignore=255)
    _counted(cm, truth, layer)
    return PixelScores.from_confusion(cm)


@dataclass(frozen=True)
class ClassMapScores:
    """Pixel metrics, per-class scores and boundary F1 of one class map."""

    pixels: PixelScores
    boundary: BoundaryScores
    class_names: tuple[str, ...] | None = None  # the run's (bundle's) class names, when known
    truth_resampled: bool = False  # the truth was on another grid (nearest-neighbour)

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, object]:
        names = class_names if class_names is not None else self.class_names
        out = self.pixels.to_dict(names)
        out["per_class"] = class_report(self.pixels.confusion, names)
        out["boundary"] = self.boundary.to_dict(names)
        out["truth_resampled"] = self.truth_resampled
        return out


def evaluate_class_map(store: str | Path, layer: str, truth: str | Path,
                       num_classes: int | None = None, *, tol: float = 2.0) -> ClassMapScores:
    """Pixel metrics, per-class IoU/precision/recall/F1 and boundary F1 (tolerance ``tol`` px)
    of a stored class map against a truth raster (nodata and 255 ignored), in one pass.

    The truth may be on any grid: it is then resampled nearest-neighbour onto the prediction
    grid (and boundaries are measured there). Chunks are read with enough context that the
    boundary counts equal those of the whole map (chunk edges are not boundaries).
    ``num_classes`` defaults to the layer's class list (whose names label the report)."""
    k = _num_classes(store, layer, num_classes)
    _, names = store_classes(store, layer)
    cm = np.zeros((k, k), np.int64)
    bc = BoundaryCounts.zeros(k, tol)
    with TruthReader(truth, store_grid(store)[0]) as reader:
        for pred, t, core in _class_windows(Path(store), layer, reader, boundary_halo(tol)):
            rs, cs = core.slices()
            cm += confusion_matrix(pred[rs, cs], t[rs, cs], k, ignore=255)
            bc = bc + boundary_counts(pred, t, k, tol=tol, ignore=255, core=core)
    _counted(cm, truth, layer)
    return ClassMapScores(PixelScores.from_confusion(cm), BoundaryScores.from_counts(bc),
                          _names_for(names, k), reader.resampled)


def _names_for(names: Sequence[str] | None, k: int) -> tuple[str, ...] | None:
    """The run's class names for a report of ``k`` classes: cut to ``k``, or extended with
    ``class <id>`` for ids the run does not name (a ``num_classes`` given above its list)."""
    if names is None:
        return None
    return tuple(names[:k]) + tuple(f"class {i}" for i in range(len(names), k))


def _require_run_footprints(root: Path, gpkg: Path) -> None:
    """One line when a run has no ``buildings`` layer to score (its land-cover polygons were
    scored as footprints): it ran without a buildings model, or found no building."""
    import pyogrio

    layers = {str(n) for n, _ in pyogrio.list_layers(gpkg)} if gpkg.is_file() else set()
    if "buildings" in layers:
        return
    if not (RunLayout(root).store / "buildings").is_dir():
        raise InputError(f"run {root} has no building footprints: it ran without a buildings "
                         "model (geoseg run IMAGE -o OUT -m buildings)")
    raise InputError(f"run {root} found no building (its {gpkg.name} has no buildings layer): "
                     "every truth building is missed (recall 0)")


def read_polygons(path: str | Path, layer: str | None, what: str, *,
                  required: bool = False) -> Any:
    """Polygons of any OGR vector file (GeoPackage, GeoJSON, shapefile, FlatGeobuf, ...) as a
    GeoDataFrame: ``layer``, else a layer named ``buildings``, else the only (first) polygon
    layer. Non-polygon features are dropped with a warning; every problem is one line.
    ``required``: a layer without features is refused (truth that would score 0 silently)."""
    import warnings

    import geopandas as gpd
    import pyogrio

    from geoseg.errors import GeoSegWarning

    p = str(path)
    if is_local_path(p) and not Path(p).exists():
        raise InputError(f"{what} {p} not found: check the path")
    try:
        layers = [(str(n), str(t or "")) for n, t in pyogrio.list_layers(p)]
    except Exception as exc:  # pyogrio's DataSourceError and GDAL's own
        raise InputError(f"{what} {p} is not a vector file GDAL can read "
                         f"({str(exc).splitlines()[0][:200]})") from exc
    names = [n for n, _ in layers]
    if layer is None:
        # polygon layers, else layers of unknown or mixed geometry (e.g. GeoJSON)
        polygonal = [n for n, t in layers if "polygon" in t.lower()] or [
            n for n, t in layers if t.lower() in ("unknown", "geometry", "geometrycollection")]
        if not polygonal:
            raise InputError(f"{what} {p} has no polygon layer (layers: " + (", ".join(
                f"{n} ({t or 'no geometry'})" for n, t in layers) or "none") + ")")
        layer = "buildings" if "buildings" in polygonal else polygonal[0]
    if layer not in names:
        raise InputError(f"{what} {p} has no layer {layer!r} (layers: {', '.join(names) or 'none'})"
                         ": pass the right one")
    df = gpd.read_file(p, layer=layer)
    if required and not len(df):
        raise InputError(f"{what} {p} (layer {layer}) holds no features: check the file and "
                         "its layer (every prediction would be scored a false positive)")
    keep = df.geometry.geom_type.isin(["Polygon", "MultiPolygon"])
    if len(df) and not keep.any():
        raise InputError(f"{what} {p} (layer {layer}) holds no polygons: pass a polygon layer")
    if not keep.all():
        warnings.warn(GeoSegWarning(f"{what} {p} (layer {layer}): {int((~keep).sum())} "
                                    "non-polygon features ignored"), stacklevel=2)
        df = df[keep]
    if len(df) and df.crs is None:
        raise InputError(f"{what} {p} (layer {layer}) has no CRS: assign one (e.g. "
                         "ogr2ogr -a_srs EPSG:4326 ...)")
    return df


def _check_truth_extent(truth: Any, path: str | Path, grid: GeoBox) -> None:
    """Refuse truth footprints none of which (in the run's CRS) touches the run's extent."""
    b = grid.bounds
    if normalize_crs(truth.crs) != grid.crs:
        try:
            truth = truth.to_crs(grid.crs)
        except Exception as exc:  # pyproj cannot transform (disjoint areas of use): no overlap
            log.debug("truth footprints not transformable to the prediction CRS: %s", exc)
            truth = truth.iloc[0:0]
    geoms = truth.geometry
    if not len(geoms) or not geoms.intersects(shapely.box(b.left, b.bottom, b.right,
                                                          b.top)).any():
        raise InputError(f"truth footprints {path} do not overlap the predictions (none of "
                         f"their {len(geoms)} features, in {grid.crs.to_string()}, touches the "
                         "run's extent): check its CRS and extent")


def evaluate_footprints(pred_gpkg: str | Path, truth_gpkg: str | Path, *,
                        pred_layer: str | None = None, truth_layer: str | None = None,
                        bounds: tuple[float, float, float, float] | None = None,
                        iou: float = 0.5, grid: GeoBox | None = None,
                        store: str | Path | None = None) -> ObjectScores:
    """SpaceNet precision/recall/F1 of predicted vs truth footprints, any OGR format, layer and
    CRS (truth is reprojected to the predictions'); with ``bounds``, both are limited to
    buildings whose centre lies inside (the area that was predicted); with the run's
    ``store`` (and ``grid``), to those whose centre has a prediction (not the image's nodata).

    Truth without features is refused, and so is truth of which no feature touches ``grid``
    (the run's prediction grid, when known): either would score 0 without saying why."""
    pred = read_polygons(pred_gpkg, pred_layer, "footprints")
    truth = read_polygons(truth_gpkg, truth_layer, "truth footprints", required=True)
    if grid is not None:
        _check_truth_extent(truth, truth_gpkg, grid)
    if len(truth) and len(pred) and normalize_crs(truth.crs) != normalize_crs(pred.crs):
        truth = truth.to_crs(pred.crs)
    given = len(truth)
    if bounds is not None:
        box = shapely.box(*bounds)
        truth = truth[truth.geometry.representative_point().within(box)]
        pred = pred[pred.geometry.representative_point().within(box)]
    if store is not None and grid is not None and len(truth):
        points = np.asarray(truth.geometry.representative_point().values, dtype=object)
        truth = truth[_predicted_at(store, grid, points)]
        if len(truth) < given:
            warnings.warn(GeoSegWarning(
                f"{given - len(truth)} of {given} truth footprints lie outside the run's grid "
                "or over its image's nodata: not scored (nothing was predicted there)"),
                stacklevel=2)
    return score_polygons(list(pred.geometry), list(truth.geometry), iou)


def _predicted_at(store: str | Path, grid: GeoBox, points: np.ndarray) -> np.ndarray:
    """Whether the run predicted a class at each point (in the grid's CRS): not outside its
    grid, nor where its image had no data (the store's fill)."""
    from geoseg.store import FILL, read_layer

    names = sorted(n for n, _ in open_store(store).arrays()
                   if n not in _COORDS and not n.endswith("_confidence"))
    layer = "landcover" if "landcover" in names else names[0]  # (every layer: same nodata)
    values, inside = grid.sample(shapely.get_x(points), shapely.get_y(points),
                                 lambda win: read_layer(store, layer, win))
    inside[inside] = values != FILL
    return inside


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

    tgrid, _ = open_grid(truth, "truth instances")
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
                 boundary_tol: float = 2.0, iou: float = 0.5,
                 num_classes: int | None = None) -> dict[str, Any]:
    """Score a ``geoseg run`` output directory against a generated scene's truth.

    Land cover: pixel metrics and boundary F1 (``num_classes`` defaults to the run's class
    list). Buildings: SpaceNet F1 at ``iou`` on polygons, and COCO mask AP and PQ with the
    footprints rasterized onto the scene's instance raster (land-cover nodata is void).
    """
    run, scene = Path(run), Path(scene)
    if not scene.is_dir():
        raise InputError(f"scene {scene} not found: pass a scene directory from `geoseg sample`")
    layout = RunLayout(run)
    store = layout.store
    g = open_store(store)
    report: dict[str, Any] = {"headline": {}}
    names = [n for n, _ in g.arrays()]
    landcover = scene / f"landcover_{date}.tif"
    if "landcover" in names:
        cs = evaluate_class_map(store, "landcover", landcover, num_classes, tol=boundary_tol)
        report["landcover"] = cs.to_dict()
        report["headline"]["landcover mIoU"] = cs.pixels.miou
        report["headline"]["landcover boundary F1"] = cs.boundary.mean_f1
    gpkg = layout.gpkg
    if "buildings" in names and gpkg.exists():
        grid, chunk = store_grid(store)
        b = grid.bounds
        obj = evaluate_footprints(gpkg, scene / f"buildings_{date}.gpkg",
                                  bounds=(b.left, b.bottom, b.right, b.top), iou=iou)
        report["buildings"] = obj.to_dict()
        report["headline"][f"building F1@{iou:g}"] = obj.f1
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


def _require_complete(root: Path) -> None:
    """Refuse a run that is not complete (both of its marks, as :attr:`geoseg.Run.complete`)."""
    from geoseg.errors import IncompleteRunError
    from geoseg.store import COMPLETE_ATTR, store_attrs

    manifest = root / MANIFEST
    status = "complete"
    if manifest.is_file():
        try:
            status = str(json.loads(manifest.read_text(encoding="utf-8")).get("status"))
        except (OSError, ValueError, AttributeError):
            status = "unreadable"
    store = RunLayout(root).store
    done = status == "complete" and (not store.exists()
                                     or bool(store_attrs(store).get(COMPLETE_ATTR)))
    if not done:
        raise IncompleteRunError(
            f"{root} is not a complete run (status: {status}): its missing chunks would count "
            "as predicted nothing; finish it with `geoseg run --resume`, or pass --partial "
            "(partial=True) to score what exists")


def _require_complete_outputs(root: Path | None, store: str | Path | None,
                              footprints: str | Path | None) -> None:
    """Refuse outputs of a run that is not complete, however they are named: ``--run``, or a
    store / footprints file inside a run folder, or a store that says it is unfinished."""
    from geoseg.errors import IncompleteRunError
    from geoseg.store import COMPLETE_ATTR, store_attrs

    owners = [root] if root is not None else []
    for path in (store, footprints):
        if path is not None and is_local_path(str(path)):
            owner = _run_root(None, Path(path))
            if owner is not None and owner.resolve() not in [o.resolve() for o in owners]:
                owners.append(owner)
    for owner in owners:
        _require_complete(owner)
    if store is not None and not owners and is_local_path(str(store)) and Path(store).is_dir():
        try:
            unfinished = store_attrs(store).get(COMPLETE_ATTR) is False
        except (OSError, ValueError, AttributeError):
            unfinished = False  # not a store geoseg can read: open_store says so
        if unfinished:
            raise IncompleteRunError(
                f"{store} is a store of a run that did not finish: its missing chunks would "
                "count as predicted nothing; finish the run with `geoseg run --resume`, or "
                "pass --partial (partial=True) to score what exists")


def _check_png_target(path: Path) -> None:
    """A confusion PNG may replace only a PNG geoseg wrote (see :func:`confusion_png`)."""
    from geoseg.class_report import written_by_geoseg
    from geoseg.outdir import check_target

    check_target(path, written_by_geoseg, "the confusion matrix")


def _run_root(run: str | Path | None, store: Path | None) -> Path | None:
    """The run folder being evaluated: ``run``, or the folder of a store that a run wrote."""
    if run is not None:
        return Path(run)
    if store is not None and (store.parent / MANIFEST).is_file():
        return store.parent
    return None


def _run_area(root: Path | None, footprints: str | Path) -> dict[str, Any]:
    """``grid``, ``bounds`` and ``store`` of the run the footprints come from: truth beyond
    the run's grid or over its image's nodata was not predicted, so it is not scored (it was
    counted as missed)."""
    grid = _footprints_grid(root, footprints)
    if grid is None:
        return {"grid": None}
    owner = root if root is not None else Path(footprints).parent
    b = grid.bounds
    return {"grid": grid, "bounds": (b.left, b.bottom, b.right, b.top),
            "store": RunLayout(owner).store}


def _footprints_grid(root: Path | None, footprints: str | Path) -> GeoBox | None:
    """The prediction grid of the run the footprints come from (``root``, or the run folder
    holding the footprints file beside its store), None where there is no such run or store."""
    owner = root
    if owner is None and is_local_path(str(footprints)):
        owner = Path(footprints).parent
    if owner is None:
        return None
    store = RunLayout(owner).store
    if not store.is_dir():
        return None
    try:
        return store_grid(store)[0]
    except (OSError, ValueError, KeyError, StopIteration) as exc:  # no readable grid: unchecked
        log.debug("no prediction grid in %s: %s", store, exc)
        return None


def _png_path(template: str | Path | None, layer: str, root: Path | None, store: Path) -> Path:
    """Where the confusion matrix of ``layer`` goes: ``template`` (``{layer}`` filled in), else
    the run folder (a listed output, :meth:`RunLayout.confusion`), else beside the store."""
    if template is not None:
        return Path(str(template).replace("{layer}", layer))
    return RunLayout(root if root is not None else store.parent).confusion(layer)


def evaluate_outputs(*, run: str | Path | None = None, scene: str | Path | None = None,
                     date: str = "t0", store: str | Path | None = None,
                     layer: str = "landcover", truth: str | Path | None = None,
                     num_classes: int | None = None, footprints: str | Path | None = None,
                     footprints_layer: str | None = None,
                     truth_footprints: str | Path | None = None, truth_layer: str | None = None,
                     truth_instances: str | Path | None = None, iou: float = 0.5,
                     boundary_tol: float = 2.0, confusion: str | Path | None = None,
                     plot: bool = True, partial: bool = False) -> dict[str, Any]:
    """Score whatever is given, as ``geoseg eval`` does; returns the JSON-ready report.

    * ``run`` + ``scene``: a run against a generated scene (:func:`evaluate_run`);
    * ``truth``: a class raster on any grid against ``layer`` of ``store`` (default: the run's
      store), with per-class scores and a confusion-matrix PNG;
    * ``truth_footprints`` (any OGR file, layer, CRS) and/or ``truth_instances`` against
      ``footprints`` (default: the run's GeoPackage).

    The PNG goes to ``confusion`` (``{layer}`` is replaced by the layer name), else into the run
    folder as ``confusion_<layer>.png``, else beside the store; ``plot=False`` skips it. Its path
    is in the report (``<layer>.confusion_png``). A PNG path that holds a file geoseg did not
    write (in the run folder too) is refused before any scoring.

    A run that is not complete (interrupted, failed chunks) is refused with
    :class:`~geoseg.errors.IncompleteRunError` unless ``partial=True``, whether it is named by
    ``run`` or by a ``store`` / ``footprints`` inside its folder: its missing chunks would be
    scored as if the model had predicted nothing there.
    """
    from geoseg.errors import ConfigError

    root = Path(run) if run is not None else None
    if root is not None and not (root / MANIFEST).is_file() and not RunLayout(root).store.exists():
        raise InputError(f"{root} is not a geoseg run folder (no {MANIFEST}): pass the folder "
                         "given to `geoseg run --out`")
    if num_classes is not None and num_classes < 1:
        raise InputError(f"num_classes must be at least 1, got {num_classes}: "
                         f"{_NUM_CLASSES_HINT}")
    if not 0 < iou <= 1:
        raise InputError(f"iou must be in (0, 1], got {iou}")
    if boundary_tol < 0:
        raise InputError(f"boundary_tol must be 0 or more pixels, got {boundary_tol}")
    if not partial:
        _require_complete_outputs(root, store, footprints)
    if plot and (store is not None or root is not None):  # before the scoring, not after
        where = Path(store) if store is not None else RunLayout(root or Path(".")).store
        owner = _run_root(run, where)
        for name in ("landcover",) if root is not None and scene is not None else (layer,):
            _check_png_target(_png_path(confusion, name, owner, where))
    report: dict[str, Any] = {}
    sections: list[str] = []  # class layers scored by pixels
    if root is not None and scene is not None:
        report = evaluate_run(root, scene, date=date, boundary_tol=boundary_tol, iou=iou,
                              num_classes=num_classes)
        sections = [n for n in ("landcover",) if n in report]
    else:
        if store is None and root is not None and truth is not None:
            store = RunLayout(root).store
        if footprints is None and root is not None and (truth_footprints or truth_instances):
            footprints = RunLayout(root).gpkg
            if footprints_layer is None:  # the run's footprints, never its land-cover polygons
                footprints_layer = "buildings"
                _require_run_footprints(root, footprints)
        if truth is not None:
            if store is None:
                raise ConfigError("a truth raster needs predictions: pass --store (or --run)")
            report[layer] = evaluate_class_map(store, layer, truth, num_classes,
                                               tol=boundary_tol).to_dict()
            sections = [layer]
        buildings: dict[str, object] = {}
        if footprints is not None and truth_footprints is not None:
            buildings.update(evaluate_footprints(
                footprints, truth_footprints, pred_layer=footprints_layer,
                truth_layer=truth_layer, iou=iou,
                **_run_area(root, footprints)).to_dict())
        if footprints is not None and truth_instances is not None:
            buildings.update(evaluate_instances(footprints, truth_instances,
                                                pred_layer=footprints_layer).to_dict())
        if buildings:
            report["buildings"] = buildings
    if not report:
        raise ConfigError("nothing to evaluate: pass --run RUN --scene SCENE, or --truth (with "
                          "--run or --store), or --truth-footprints and/or --truth-instances "
                          "(with --run or --footprints); in Python the same names as "
                          "arguments, e.g. geoseg.evaluate(run, truth=...)")
    if plot:
        where = Path(store) if store is not None else RunLayout(root or Path(".")).store
        for name in sections:
            sec = report[name]
            png = _png_path(confusion, name, _run_root(run, where), where)
            _check_png_target(png)  # again: a file may have appeared while scoring
            miou = "n/a" if sec["miou"] is None else f"{sec['miou']:.3f}"
            confusion_png(np.asarray(sec["confusion"]), list(sec["per_class"]), png,
                          title=f"{name}: {sec['pixels']} px, mIoU {miou}")
            sec["confusion_png"] = str(png)
    return report
