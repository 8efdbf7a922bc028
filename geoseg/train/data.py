"""Training chips read window by window from GeoTIFF scenes (never whole rasters).

Each scene is an image raster and a label raster on the same grid. The rightmost
``val_fraction`` of every scene's columns is a held-out validation stripe: training chips lie
wholly left of it, validation windows wholly inside it (a split by area, so neighbouring pixels
never land on both sides).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np
import rasterio
from rasterio.io import DatasetReader
from rasterio.windows import Window as RioWindow

from geoseg.errors import LabelError, RasterNotFoundError
from geoseg.grid import ChunkGrid, Window
from geoseg.io import RasterInfo, open_info, read_window
from geoseg.train.targets import IGNORE, buildings_target

logger = logging.getLogger(__name__)

Task = Literal["landcover", "buildings"]
LABEL_FILES: dict[str, str] = {"landcover": "landcover_{date}.tif",
                               "buildings": "instances_{date}.tif"}


@dataclass(frozen=True)
class SceneFiles:
    """One training scene: image raster + label raster (classes or instance ids) on one grid."""

    image: Path
    labels: Path

    @property
    def name(self) -> str:
        return f"{self.image.parent.name}/{self.image.stem}"


def scene_files(scene_dir: str | Path, task: Task,
                dates: Sequence[str] = ("t0", "t1")) -> list[SceneFiles]:
    """The (image, labels) pairs of a generated scene directory for ``task``, one per date."""
    root = Path(scene_dir)
    out = []
    for date in dates:
        image, labels = root / f"image_{date}.tif", root / LABEL_FILES[task].format(date=date)
        for p in (image, labels):
            if not p.is_file():
                raise RasterNotFoundError(f"{p} is missing: generate the scene first "
                                          "(geoseg.sample.generate_scene)")
        out.append(SceneFiles(image, labels))
    return out


def _rio(win: Window) -> RioWindow:
    return RioWindow(win.col_off, win.row_off, win.width, win.height)


def band_stats(images: Sequence[Path], bands: Sequence[int],
               strip: int = 512) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band mean and std of the valid pixels of ``images``, streamed in windows of
    ``strip`` x ``strip`` px (validity as :func:`geoseg.io.read_window` decides it)."""
    n = 0
    s = np.zeros(len(bands))
    ss = np.zeros(len(bands))
    for path in images:
        info = open_info(path)
        for chunk in ChunkGrid(info.geobox.shape, strip):
            data, valid = read_window(info, chunk.window, tuple(bands))
            v = data[:, valid].astype(np.float64)
            n += v.shape[1]
            s += v.sum(axis=1)
            ss += (v * v).sum(axis=1)
    if n == 0:
        raise LabelError("training images have no valid pixels: check their nodata setting")
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean * mean, 1e-12))
    return (tuple(round(float(m), 4) for m in mean),
            tuple(round(max(float(v), 1e-3), 4) for v in std))


class ChipSampler:
    """Reads training chips and validation windows from open scenes.

    ``fill`` (usually the normalisation mean) replaces image nodata pixels, exactly as at
    inference; their targets become ``IGNORE`` (255). Use as a context manager to close files.
    """

    def __init__(self, scenes: Sequence[SceneFiles], task: Task, bands: Sequence[int],
                 chip_size: int, fill: Sequence[float], val_fraction: float = 0.15,
                 boundary_width: int = 2) -> None:
        if not scenes:
            raise LabelError("no training scenes given")
        if not 0.0 <= val_fraction < 1.0:
            raise LabelError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.task = task
        self.bands = list(bands)
        self.chip = chip_size
        self.fill = np.asarray(fill, dtype=np.float32)[:, None, None]
        self.boundary_width = boundary_width
        self._stack = contextlib.ExitStack()
        self.images: list[RasterInfo] = []
        self.labels: list[DatasetReader] = []
        self.splits: list[int] = []
        try:
            for sc in scenes:
                self._open(sc, val_fraction)
        except BaseException:
            self._stack.close()
            raise

    def _open(self, sc: SceneFiles, val_fraction: float) -> None:
        img = open_info(sc.image)
        lab = self._stack.enter_context(rasterio.open(sc.labels))
        if img.geobox.shape != (lab.height, lab.width) or img.geobox.transform != lab.transform:
            raise LabelError(f"{sc.labels} is not on the grid of {sc.image}: resample the "
                             "labels to the image grid")
        if max(self.bands) > img.count or min(self.bands) < 1:
            raise LabelError(f"{sc.image} has {img.count} bands, training reads bands "
                             f"{self.bands}: pick bands that exist")
        height, width = img.geobox.shape
        split = round(width * (1.0 - val_fraction))
        if split < self.chip or height < self.chip:
            raise LabelError(f"{sc.image} ({height}x{width}) has no room for "
                             f"{self.chip}-px chips left of the validation stripe: use "
                             "smaller chips or a smaller val_fraction")
        self.images.append(img)
        self.labels.append(lab)
        self.splits.append(split)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> ChipSampler:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def pixel_size(self) -> float:
        return float(self.images[0].geobox.resolution[0])

    def read(self, scene: int, win: Window) -> tuple[np.ndarray, np.ndarray]:
        """Raw image ``(C, h, w)`` float32 (nodata = fill) and target ``(h, w)`` uint8."""
        data, valid = read_window(self.images[scene], win, tuple(self.bands))
        image = np.where(valid[None], data, self.fill)
        if self.task == "buildings":
            target = self._buildings(scene, win)
        else:
            target = self.labels[scene].read(1, window=_rio(win)).astype(np.uint8)
        target[~valid] = IGNORE
        return image, target

    def read_labels(self, scene: int, win: Window) -> np.ndarray:
        """The label raster's values (classes or instance ids) in ``win``."""
        return np.asarray(self.labels[scene].read(1, window=_rio(win)))

    def _buildings(self, scene: int, win: Window) -> np.ndarray:
        """Building/boundary target from instance ids read with a halo (exact rings)."""
        lab = self.labels[scene]
        halo = self.boundary_width
        grid = Window(0, 0, lab.height, lab.width)
        outer = win.pad(halo).intersect(grid)
        inst = lab.read(1, window=_rio(outer))
        top, left = win.row_off - outer.row_off, win.col_off - outer.col_off
        bottom, right = outer.row_end - win.row_end, outer.col_end - win.col_end
        inst = np.pad(inst, ((halo - top, halo - bottom), (halo - left, halo - right)),
                      mode="edge")
        return buildings_target(inst, halo)[halo:-halo, halo:-halo]

    def train_window(self, rng: np.random.Generator) -> tuple[int, Window]:
        """A random chip window wholly inside the training area of a random scene."""
        scene = int(rng.integers(len(self.images)))
        row = int(rng.integers(self.images[scene].geobox.height - self.chip + 1))
        col = int(rng.integers(self.splits[scene] - self.chip + 1))
        return scene, Window(row, col, self.chip, self.chip)

    def val_windows(self, max_per_scene: int = 8) -> list[tuple[int, Window]]:
        """Fixed windows tiling each scene's validation stripe (width a multiple of 32)."""
        out = []
        for scene, img in enumerate(self.images):
            width = (img.geobox.width - self.splits[scene]) // 32 * 32
            if width == 0:
                continue
            rows = list(range(0, img.geobox.height - self.chip + 1, self.chip))[:max_per_scene]
            out += [(scene, Window(r, self.splits[scene], self.chip, width)) for r in rows]
        return out


def augment(image: np.ndarray, target: np.ndarray, rng: np.random.Generator,
            ) -> tuple[np.ndarray, np.ndarray]:
    """Joint random 90° rotation and flips of a normalised chip and its target, then
    image-only contrast/brightness jitter and Gaussian noise."""
    k = int(rng.integers(4))
    image, target = np.rot90(image, k, axes=(1, 2)), np.rot90(target, k)
    if rng.random() < 0.5:
        image, target = image[:, :, ::-1], target[:, ::-1]
    if rng.random() < 0.5:
        image, target = image[:, ::-1], target[::-1]
    contrast = rng.uniform(0.8, 1.2)
    brightness = rng.uniform(-0.2, 0.2, size=(image.shape[0], 1, 1))
    sigma = rng.uniform(0.0, 0.08)
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    image = image * np.float32(contrast) + brightness.astype(np.float32) + noise
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(target)
