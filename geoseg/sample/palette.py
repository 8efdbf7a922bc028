"""Classes, surface materials and their colours (R, G, B, NIR reflectance in [0, 1]).

Colours are chosen so that colour alone does not give the class away: roofs span the greys,
reds and browns of roads and soil, some bare ground is green-ish, water ranges from dark blue
to green-brown. NIR separates vegetation (high) and water (very low) from the rest (moderate).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

CLASSES: list[tuple[int, str, str]] = [
    (0, "bare", "#c8b48c"),
    (1, "building", "#d7301f"),
    (2, "road", "#636363"),
    (3, "vegetation", "#31a354"),
    (4, "water", "#3182bd"),
]
BARE, BUILDING, ROAD, VEG, WATER = 0, 1, 2, 3, 4
LANDCOVER_NODATA = 255


class Mat(IntEnum):
    """Surface materials of the ground layer (buildings and trees are drawn on top)."""

    GRASS = 0
    DRY_GRASS = 1
    SOIL = 2
    SAND = 3
    MOSSY_SOIL = 4
    CROP = 5
    PLOUGHED = 6
    FOREST_FLOOR = 7
    ASPHALT = 8
    CONCRETE = 9
    GRAVEL = 10
    WATER = 11
    RUBBLE = 12
    YARD = 13
    MEADOW = 14


MAT_CLASS: NDArray[np.uint8] = np.array(
    [VEG, BARE, BARE, BARE, BARE, VEG, BARE, VEG, ROAD, ROAD, ROAD, WATER, BARE, BARE, VEG],
    np.uint8)

# Texture amplitudes per material: (large patches, mid mottling, fine grain).
MAT_TEXTURE: NDArray[np.float32] = np.array([
    [0.18, 0.16, 0.12],  # grass
    [0.20, 0.14, 0.12],  # dry grass
    [0.16, 0.18, 0.10],  # soil
    [0.08, 0.08, 0.06],  # sand
    [0.15, 0.16, 0.10],  # mossy soil
    [0.10, 0.08, 0.08],  # crop
    [0.10, 0.14, 0.12],  # ploughed
    [0.20, 0.20, 0.14],  # forest floor
    [0.06, 0.10, 0.07],  # asphalt
    [0.05, 0.07, 0.05],  # concrete
    [0.10, 0.12, 0.12],  # gravel
    [0.06, 0.03, 0.02],  # water
    [0.14, 0.20, 0.16],  # rubble
    [0.08, 0.12, 0.08],  # yard
    [0.16, 0.12, 0.10],  # meadow
], np.float32)

_C = dict[Mat, list[tuple[float, float, float, float]]]
MAT_COLOURS: _C = {
    Mat.GRASS: [(0.26, 0.36, 0.16, 0.55), (0.30, 0.38, 0.20, 0.50), (0.22, 0.32, 0.15, 0.58),
                (0.36, 0.40, 0.24, 0.46)],
    Mat.DRY_GRASS: [(0.52, 0.48, 0.32, 0.40), (0.46, 0.44, 0.30, 0.38),
                    (0.40, 0.40, 0.26, 0.36)],
    Mat.SOIL: [(0.44, 0.35, 0.26, 0.34), (0.36, 0.30, 0.24, 0.30), (0.55, 0.45, 0.34, 0.40),
               (0.30, 0.27, 0.23, 0.26)],
    Mat.SAND: [(0.72, 0.65, 0.50, 0.54), (0.64, 0.60, 0.50, 0.50)],
    Mat.MOSSY_SOIL: [(0.34, 0.37, 0.25, 0.30), (0.30, 0.34, 0.24, 0.28)],
    Mat.CROP: [(0.24, 0.40, 0.14, 0.66), (0.32, 0.44, 0.18, 0.62), (0.52, 0.50, 0.26, 0.52),
               (0.20, 0.34, 0.12, 0.70)],
    Mat.PLOUGHED: [(0.40, 0.32, 0.24, 0.30), (0.30, 0.25, 0.20, 0.25), (0.50, 0.42, 0.32, 0.36)],
    Mat.FOREST_FLOOR: [(0.14, 0.20, 0.10, 0.40), (0.18, 0.22, 0.12, 0.42)],
    Mat.ASPHALT: [(0.22, 0.22, 0.23, 0.21), (0.30, 0.30, 0.31, 0.28), (0.40, 0.40, 0.40, 0.36),
                  (0.17, 0.17, 0.18, 0.16)],
    Mat.CONCRETE: [(0.58, 0.57, 0.54, 0.50), (0.50, 0.50, 0.48, 0.44)],
    Mat.GRAVEL: [(0.52, 0.47, 0.38, 0.42), (0.46, 0.43, 0.38, 0.39)],
    Mat.WATER: [(0.06, 0.10, 0.15, 0.02), (0.12, 0.20, 0.16, 0.04), (0.24, 0.24, 0.18, 0.06),
                (0.08, 0.14, 0.14, 0.03)],
    Mat.RUBBLE: [(0.50, 0.46, 0.40, 0.40), (0.42, 0.38, 0.32, 0.34)],
    Mat.YARD: [(0.56, 0.55, 0.52, 0.48), (0.44, 0.43, 0.41, 0.38), (0.48, 0.40, 0.30, 0.36)],
    Mat.MEADOW: [(0.34, 0.40, 0.20, 0.56), (0.40, 0.44, 0.26, 0.52)],
}

ROOF_COLOURS: list[tuple[float, float, float, float]] = [
    (0.58, 0.28, 0.20, 0.40),  # terracotta
    (0.48, 0.24, 0.20, 0.34),  # dark red tiles
    (0.24, 0.24, 0.26, 0.24),  # dark grey slate
    (0.38, 0.38, 0.39, 0.34),  # grey
    (0.58, 0.57, 0.54, 0.50),  # light concrete
    (0.80, 0.80, 0.78, 0.70),  # white membrane
    (0.44, 0.35, 0.28, 0.34),  # brown
    (0.30, 0.38, 0.33, 0.30),  # green metal
    (0.30, 0.36, 0.46, 0.30),  # blue metal
    (0.14, 0.14, 0.15, 0.12),  # black
    (0.50, 0.44, 0.36, 0.40),  # sandy gravel roof
]
TREE_COLOURS: list[tuple[float, float, float, float]] = [
    (0.10, 0.20, 0.07, 0.52), (0.14, 0.24, 0.09, 0.56), (0.08, 0.16, 0.09, 0.44),
    (0.18, 0.26, 0.10, 0.58), (0.22, 0.16, 0.14, 0.42),
]
CAR_COLOURS: list[tuple[float, float, float, float]] = [
    (0.85, 0.85, 0.85, 0.70), (0.10, 0.10, 0.11, 0.10), (0.45, 0.46, 0.48, 0.40),
    (0.60, 0.12, 0.10, 0.35), (0.12, 0.20, 0.45, 0.20), (0.70, 0.70, 0.72, 0.60),
]


def pick_colour(rng: np.random.Generator, choices: list[tuple[float, float, float, float]],
                jitter: float = 0.08) -> NDArray[np.float32]:
    """One of ``choices`` with multiplicative per-object jitter (brightness and hue)."""
    base = np.asarray(choices[int(rng.integers(len(choices)))], np.float32)
    bright = 1.0 + jitter * rng.uniform(-1.5, 1.5)
    hue = 1.0 + jitter * 0.5 * rng.uniform(-1, 1, 4)
    return np.clip(base * bright * hue, 0.02, 0.98).astype(np.float32)


def tree_colours(rng: np.random.Generator, n: int) -> NDArray[np.float32]:
    """Crown colours of ``n`` trees (mostly greens, rarely copper) with jitter."""
    choice = rng.choice(len(TREE_COLOURS), n, p=[0.3, 0.28, 0.2, 0.19, 0.03])
    base = np.asarray(TREE_COLOURS, np.float32)[choice]
    jitter = (1.0 + 0.12 * rng.uniform(-1.5, 1.5, (n, 1))) * (
        1.0 + 0.06 * rng.uniform(-1, 1, (n, 4)))
    return np.clip(base * jitter, 0.02, 0.98).astype(np.float32)


def mat_colour(rng: np.random.Generator, mat: Mat, jitter: float = 0.08) -> NDArray[np.float32]:
    return pick_colour(rng, MAT_COLOURS[mat], jitter)
