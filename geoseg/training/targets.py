"""Training targets derived from label rasters.

``buildings`` target: 0 background, 1 building, 2 boundary, where boundary is the ring of each
building instance's pixels that lie within ``width`` px (Euclidean disk) of any pixel that is not
that instance (background or another building). The ring is what separates touching buildings.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import disk

from geoseg.errors import LabelError

BACKGROUND, BUILDING, BOUNDARY = 0, 1, 2
IGNORE = 255
BUILDING_CLASSES = (
    (BACKGROUND, "background", "#000000"),
    (BUILDING, "building", "#d7301f"),
    (BOUNDARY, "boundary", "#fdae61"),
)


def boundary_mask(instances: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels of an instance within ``width`` px of a pixel that is not that instance.

    Outside the array the nearest edge pixel is repeated, so objects cut by the array edge get
    no ring there (read a halo of ``width`` px around a window to get exact rings inside it).
    """
    inst = np.asarray(instances)
    if inst.ndim != 2:
        raise LabelError(f"instance raster must be 2-D, got shape {inst.shape}")
    if width < 1:
        raise LabelError(f"boundary width must be >= 1 px, got {width}")
    inst = inst.astype(np.int64, copy=False)
    fp = disk(width).astype(bool)
    hi = ndimage.maximum_filter(inst, footprint=fp, mode="nearest")
    lo = ndimage.minimum_filter(inst, footprint=fp, mode="nearest")
    return (inst > 0) & ((hi != inst) | (lo != inst))


def buildings_target(instances: np.ndarray, width: int = 2) -> np.ndarray:
    """uint8 ``(H, W)``: 0 background, 1 building, 2 boundary ring of ``width`` px."""
    inst = np.asarray(instances)
    out = np.where(inst > 0, BUILDING, BACKGROUND).astype(np.uint8)
    out[boundary_mask(inst, width)] = BOUNDARY
    return out
