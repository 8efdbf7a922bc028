"""A tiny generated scene on a real projected grid (EPSG:32633, 0.5 m)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoseg.bundle import ClassSpec

COLOURS = np.array([[200, 180, 140, 90], [215, 48, 31, 60], [99, 99, 99, 40],
                    [49, 163, 84, 200], [49, 130, 189, 10]], dtype=np.uint8)
CLASSES = tuple(ClassSpec(id=i, name=n, color="#808080")
                for i, n in enumerate(("bare", "building", "road", "vegetation", "water")))


def _write(path: Path, data: np.ndarray, nodata: float | None) -> None:
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype, crs="EPSG:32633",
                       transform=Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0), nodata=nodata,
                       tiled=True, blockxsize=64, blockysize=64) as ds:
        ds.write(data)


def write_scene(root: Path, size: int = 128, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    land = np.zeros((size, size), dtype=np.uint8)
    land[:, : size // 3] = 3
    land[size // 2:, size // 3: size // 2] = 4
    land[size // 4: size // 4 + 6, :] = 2
    inst = np.zeros((size, size), dtype=np.uint32)
    for k, (r, c) in enumerate([(50, 60), (50, 72), (90, 80), (100, 20), (60, 105)], start=1):
        inst[r:r + 12, c:c + 12] = k      # buildings 1 and 2 touch
    land[inst > 0] = 1
    image = COLOURS[land].transpose(2, 0, 1).astype(np.int16)
    image = np.clip(image + rng.integers(-8, 9, image.shape), 1, 255).astype(np.uint8)
    image[:, :8, :8] = 0                  # a nodata corner
    land[:8, :8] = 255
    root.mkdir(parents=True, exist_ok=True)
    _write(root / "image_t0.tif", image, 0)
    _write(root / "landcover_t0.tif", land, 255)
    _write(root / "instances_t0.tif", inst, None)
    return root


@pytest.fixture
def tiny_scene(tmp_path: Path) -> Path:
    return write_scene(tmp_path / "scene")


@pytest.fixture
def landcover_classes() -> tuple[ClassSpec, ...]:
    return CLASSES
