"""Validation of a model in training on the held-out stripe windows of its scenes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from geoseg.config import VectorConfig
from geoseg.metrics.objects import ObjectScores, score_instances
from geoseg.metrics.pixel import PixelScores, confusion_matrix
from geoseg.training.data import ChipSampler
from geoseg.training.targets import BOUNDARY, BUILDING, IGNORE
from geoseg.vectorize.footprints import split_buildings


def validate(model: torch.nn.Module, sampler: ChipSampler, mean: np.ndarray, std: np.ndarray,
             max_per_scene: int, class_names: Sequence[str],
             classify: Callable[[torch.Tensor], np.ndarray] | None = None) -> dict[str, object]:
    """Pixel metrics (and, for buildings, object F1@0.5 of the instances the footprint
    vectorizer would split, :func:`split_buildings`) on the validation windows.

    ``classify`` maps a normalised window ``(1, C, H, W)`` to its class map ``(H, W)``
    (default: the argmax of a semantic model's logits)."""
    windows = sampler.val_windows(max_per_scene) if max_per_scene else []
    if not windows:
        return {"windows": 0}
    k = len(class_names)
    cm = np.zeros((k, k), dtype=np.int64)
    objects = ObjectScores(0, 0, 0)
    # the run's minimum footprint area as a pixel count (projected grids in metres; none on
    # geographic ones)
    px = sampler.pixel_size if sampler.task == "buildings" else 0.0
    min_pixels = int(VectorConfig().min_building_area_m2 / px**2) if px > 0.01 else 0
    model.eval()
    for scene, win in windows:
        image, target = sampler.read(scene, win)
        x = torch.from_numpy(((image - mean) / std)[None].astype(np.float32))
        if classify is not None:
            pred = classify(x)
        else:
            with torch.inference_mode():
                pred = model(x).argmax(dim=1)[0].numpy().astype(np.uint8)
        cm += confusion_matrix(pred, target, k, ignore=IGNORE)
        if sampler.task == "buildings":
            truth = sampler.read_labels(scene, win)
            found = split_buildings(pred, BUILDING, BOUNDARY, min_pixels=min_pixels)
            objects = objects + score_instances(found, truth, 0.5, valid=target != IGNORE)
    out: dict[str, object] = {"windows": len(windows)}
    scores = PixelScores.from_confusion(cm).to_dict(class_names)
    scores.pop("confusion")
    out.update(scores)
    if sampler.task == "buildings":
        out["objects_iou50"] = objects.to_dict()
    return out
