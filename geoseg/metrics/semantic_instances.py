"""Instances from a semantic buildings map (building + boundary classes), for evaluation.

The buildings model marks a thin ``boundary`` ring along every building edge, so touching
buildings have separate ``building`` cores. Instances are the connected components of the
building class, each grown back over building ∪ boundary by a watershed (pixels go to the
nearest core). This is the small evaluation helper; the production vectorizer lives elsewhere.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from geoseg.errors import LabelError


def instances_from_classes(classes: np.ndarray, building: int = 1, boundary: int | None = 2,
                           min_area: int = 4, orphan_boundary: bool = True) -> np.ndarray:
    """Instance labels ``(H, W)`` int32 (0 = none) from a class map.

    Cores are 4-connected components of ``building`` pixels with at least ``min_area`` pixels.
    With ``orphan_boundary``, components of boundary pixels that reach no core (buildings too
    small to have an interior) become instances of their own.
    """
    classes = np.asarray(classes)
    if classes.ndim != 2:
        raise LabelError(f"class map must be 2-D, got shape {classes.shape}")
    core = classes == building
    cores, n = ndimage.label(core)
    if min_area > 1 and n:
        sizes = np.bincount(cores.ravel(), minlength=n + 1)
        small = sizes < min_area
        small[0] = False
        cores[small[cores]] = 0
    if boundary is None:
        return _renumber(cores)
    region = core | (classes == boundary)
    dist = ndimage.distance_transform_edt(~core) if core.any() else np.zeros(classes.shape)
    grown = watershed(dist, markers=cores, mask=region).astype(np.int64)
    if orphan_boundary:
        orphans, m = ndimage.label(region & (grown == 0))
        if m:
            sizes = np.bincount(orphans.ravel(), minlength=m + 1)
            keep = sizes >= min_area
            keep[0] = False
            grown = np.where(keep[orphans], orphans + grown.max(), grown)
    return _renumber(grown)


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Labels made consecutive 1..n (0 stays 0), as int32."""
    ids, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(labels.shape)
    if ids.size and ids[0] != 0:
        inv = inv + 1
    return inv.astype(np.int32)
