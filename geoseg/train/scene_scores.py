"""Scene-level evaluation of a bundle: sliding-window prediction with :class:`Predictor`, then
pixel and object metrics against the scene's label rasters.

A simple single-process evaluator for held-out evaluation scenes (a few thousand pixels a side):
it keeps one scene-sized class map in memory, which the production pipeline never does.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import rasterio

from geoseg.errors import BandMismatchError, InputError, LabelError
from geoseg.grid import ChunkGrid, Window
from geoseg.io import open_info, read_window
from geoseg.metrics.objects import score_instances
from geoseg.metrics.pixel import PixelScores, confusion_matrix
from geoseg.metrics.semantic_instances import instances_from_classes
from geoseg.models.predictor import Predictor
from geoseg.train.targets import IGNORE, buildings_target

logger = logging.getLogger(__name__)


def predict_raster(predictor: Predictor, image_path: str | Path, halo: int = 64,
                   batch_size: int = 4) -> np.ndarray:
    """Class ids ``(H, W)`` uint8 for a whole raster (255 where the image is nodata).

    Tiles of ``spec.tile_size`` overlap by ``halo`` px on each side; only each tile's core is
    kept. Pixels outside the raster or nodata are filled with the normalisation mean.
    """
    spec = predictor.spec
    tile = spec.tile_size
    if not 0 <= halo < tile // 2:
        raise InputError(f"halo must be in [0, {tile // 2}) for {tile}-px tiles, got {halo}")
    fill = np.asarray(spec.normalization.mean, dtype=np.float32)[:, None, None]
    info = open_info(image_path)
    if max(spec.bands) > info.count:
        raise BandMismatchError(f"{image_path} has {info.count} bands, bundle "
                                f"{spec.name!r} reads bands {spec.bands}")
    out = np.full(info.geobox.shape, IGNORE, dtype=np.uint8)
    cores = list(ChunkGrid(info.geobox.shape, tile - 2 * halo))
    for i in range(0, len(cores), batch_size):
        batch = cores[i:i + batch_size]
        tiles, valids = [], []
        for c in batch:
            w = c.window
            data, valid = read_window(info, Window(w.row_off - halo, w.col_off - halo, tile, tile),
                                      spec.bands)
            tiles.append(np.where(valid[None], data, fill))
            valids.append(valid)
        classes = predictor.predict_classes(np.stack(tiles))
        for cls, valid, c in zip(classes, valids, batch, strict=True):
            w = c.window
            core = (slice(halo, halo + w.height), slice(halo, halo + w.width))
            out[w.slices()] = np.where(valid[core], cls[core], IGNORE)
    return out


def _read_labels(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    with rasterio.open(path) as ds:
        if (ds.height, ds.width) != shape:
            raise LabelError(f"{path} is {ds.height}x{ds.width}, the image {shape}: use "
                             "labels on the image grid")
        return np.asarray(ds.read(1))


def evaluate_landcover(predictor: Predictor, image: str | Path, labels: str | Path,
                       halo: int = 64) -> dict[str, object]:
    """mIoU, per-class IoU/Dice and pixel accuracy of a semantic bundle on one scene."""
    t0 = time.perf_counter()
    pred = predict_raster(predictor, image, halo)
    truth = _read_labels(labels, pred.shape)
    cm = confusion_matrix(pred, truth, predictor.num_classes, ignore=IGNORE)
    out = PixelScores.from_confusion(cm).to_dict(predictor.class_names)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def evaluate_buildings(predictor: Predictor, image: str | Path, instances: str | Path,
                       halo: int = 64, boundary_width: int = 2, iou_threshold: float = 0.5,
                       min_area: int = 16) -> dict[str, object]:
    """Pixel metrics against the building/boundary target, footprint IoU (building ∪
    boundary vs all instance pixels) and object precision/recall/F1 at ``iou_threshold``
    with instances grown from the building cores (:func:`instances_from_classes`; cores and
    boundary-only blobs under ``min_area`` px are dropped as noise)."""
    t0 = time.perf_counter()
    spec = predictor.spec
    building = spec.class_id("building")
    boundary = spec.class_id("boundary") if "boundary" in predictor.class_names else None
    pred = predict_raster(predictor, image, halo)
    truth_inst = _read_labels(instances, pred.shape)
    valid = pred != IGNORE
    target = buildings_target(truth_inst, boundary_width)
    target[~valid] = IGNORE
    out: dict[str, object] = {}
    if predictor.num_classes == 3 and boundary is not None:
        cm = confusion_matrix(pred, target, 3, ignore=IGNORE)
        out.update(PixelScores.from_confusion(cm).to_dict(predictor.class_names))
    foot_pred = np.isin(pred, [c for c in (building, boundary) if c is not None])
    foot_true = truth_inst > 0
    cm2 = confusion_matrix(np.where(valid, foot_pred, IGNORE).astype(np.uint8),
                           np.where(valid, foot_true, IGNORE).astype(np.uint8), 2, IGNORE)
    out["footprint_iou"] = round(float(PixelScores.from_confusion(cm2).iou[1]), 6)
    found = instances_from_classes(np.where(valid, pred, 0), building, boundary,
                                   min_area=min_area)
    scores = score_instances(found, truth_inst, iou_threshold, valid=valid)
    out[f"objects_iou{round(iou_threshold * 100)}"] = scores.to_dict()
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out
