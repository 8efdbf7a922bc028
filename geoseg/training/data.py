"""Training chips read window by window from GeoTIFF scenes (never whole rasters).

Each scene is an image raster plus labels: a raster on the image grid, or a vector file of
polygons in any CRS (:mod:`geoseg.training.labels`, rasterized per window). The rightmost
``val_fraction`` of every scene's columns is a held-out validation stripe: training chips lie
wholly left of it, validation windows wholly inside it (a split by area, so neighbouring pixels
never land on both sides). Training chips are drawn at random or cell by cell from a grid
(``sampling``); chips whose valid share (image valid and label not ``IGNORE``) is below
``min_valid_fraction`` are redrawn (random) or skipped (grid).

Label rasters are checked when the scenes are opened, before any training: they must share the
image's grid (shape, transform and CRS), and landcover labels may hold only the run's class ids
and ``IGNORE`` (scanned window by window, so a rare bad id cannot crash a long run late).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np
import rasterio
from pyproj import CRS
from rasterio.crs import CRS as RioCRS
from rasterio.errors import RasterioIOError
from rasterio.io import DatasetReader
from rasterio.windows import Window as RioWindow

from geoseg.errors import LabelError, RasterNotFoundError
from geoseg.grid import Window, normalize_crs
from geoseg.io import RasterInfo, open_info, read_window
from geoseg.training.bands import training_normalization
from geoseg.training.labels import VectorLabels, is_vector
from geoseg.training.targets import IGNORE, buildings_target

logger = logging.getLogger(__name__)

Task = Literal["landcover", "buildings"]
Sampling = Literal["random", "grid"]
LABEL_FILES: dict[str, str] = {"landcover": "landcover_{date}.tif",
                               "buildings": "instances_{date}.tif"}
SCAN_PIXELS = 1 << 22
"""Pixels per read (about) when label rasters are scanned for class ids."""
SHOWN_IDS = 5
"""Bad label ids named in the error (the smallest ones)."""


@dataclass(frozen=True)
class SceneFiles:
    """One training scene: image raster + labels (classes or instance ids).

    ``labels`` is a raster on the image grid or a vector file (.gpkg, .geojson, .json, .shp,
    .fgb; any CRS). For vector landcover labels ``label_field`` names the class attribute (ids
    or class names) and ``background`` is the class of uncovered pixels (``IGNORE`` = 255 to
    leave them out of the loss); ``label_layer`` picks a layer of a vector file of several
    (default: its first).
    """

    image: Path
    labels: Path
    label_field: str = "class_id"
    background: int = 0
    label_layer: str | None = None

    @property
    def name(self) -> str:
        return f"{self.image.parent.name}/{self.image.stem}"

    def labels_identity(self) -> dict[str, object]:
        """What this scene's targets depend on besides the config: the label file's bytes
        (sha256; a shapefile's .dbf, .shx, .prj and .cpg with it) and how a vector file is
        read. A resume compares it, and the bundle records it."""
        files = [self.labels]
        vector = is_vector(self.labels)
        if self.labels.suffix.lower() == ".shp":  # its sidecars, in either case
            files += sorted(p for p in self.labels.parent.iterdir()
                            if p.stem == self.labels.stem
                            and p.suffix.lower() in (".dbf", ".shx", ".prj", ".cpg"))
        digest = hashlib.sha256()
        for path in files:
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
        out: dict[str, object] = {"scene": self.name, "labels": self.labels.name,
                                  "sha256": digest.hexdigest()}
        if vector:
            out.update(field=self.label_field, layer=self.label_layer,
                       background=self.background)
        return out


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
                                          f"(geoseg sample {root})")
        out.append(SceneFiles(image, labels))
    return out


def _rio(win: Window) -> RioWindow:
    return RioWindow(win.col_off, win.row_off, win.width, win.height)


def band_stats(images: Sequence[Path], bands: Sequence[int],
               strip: int = 512) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band mean and std of the valid pixels of ``images``, from windows of ``strip`` px
    (validity as :func:`geoseg.io.read_window` decides it; see
    :func:`geoseg.training.bands.training_normalization`, which also clips)."""
    norm = training_normalization(images, bands, window=strip)
    return norm.mean, norm.std


class ChipSampler:
    """Reads training chips and validation windows from open scenes.

    ``fill`` (usually the normalisation mean) replaces image nodata pixels, exactly as at
    inference; their targets become ``IGNORE`` (255). ``class_names`` check the classes of
    vector landcover labels. Use as a context manager to close files.
    """

    def __init__(self, scenes: Sequence[SceneFiles], task: Task, bands: Sequence[int],
                 chip_size: int, fill: Sequence[float], val_fraction: float = 0.15,
                 boundary_width: int = 2, *, class_names: Sequence[str] | None = None,
                 sampling: Sampling = "random", min_valid_fraction: float = 0.5,
                 max_tries: int = 50,
                 clip: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        if not scenes:
            raise LabelError("no training scenes given")
        if not 0.0 <= val_fraction < 1.0:
            raise LabelError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if not 0.0 <= min_valid_fraction <= 1.0:
            raise LabelError(f"min_valid_fraction must be in [0, 1], got {min_valid_fraction}")
        if sampling not in ("random", "grid"):
            raise LabelError(f"sampling must be 'random' or 'grid', got {sampling!r}")
        self.task = task
        self.bands = list(bands)
        self.chip = chip_size
        self.fill = np.asarray(fill, dtype=np.float32)[:, None, None]
        self.clip = None if clip is None else tuple(
            np.asarray(b, dtype=np.float32)[:, None, None] for b in clip)
        self.boundary_width = boundary_width
        self.class_names = list(class_names) if class_names is not None else None
        self.sampling = sampling
        self.min_valid_fraction = min_valid_fraction
        self.max_tries = max(1, max_tries)
        self._stack = contextlib.ExitStack()
        self.images: list[RasterInfo] = []
        self.labels: list[DatasetReader | VectorLabels] = []
        self.splits: list[int] = []
        self._queue: list[tuple[int, Window]] = []
        self._rejected: set[tuple[int, Window]] = set()
        try:
            for sc in scenes:
                self._open(sc, val_fraction)
            if task == "landcover" and self.class_names is not None:
                for sc, lab in zip(scenes, self.labels, strict=True):
                    if isinstance(lab, DatasetReader):
                        check_class_ids(lab, sc.labels, len(self.class_names))
        except BaseException:
            self._stack.close()
            raise

    def _open(self, sc: SceneFiles, val_fraction: float) -> None:
        img = open_info(sc.image)
        lab: DatasetReader | VectorLabels
        if is_vector(sc.labels):
            lab = VectorLabels(sc.labels, img.geobox, self.task, field=sc.label_field,
                               class_names=self.class_names, background=sc.background,
                               layer=sc.label_layer)
        else:
            lab = self._open_raster(sc.labels)
            _check_label_grid(img, lab, sc)
        if max(self.bands) > img.count or min(self.bands) < 1:
            raise LabelError(f"{sc.image} has {img.count} bands, training reads bands "
                             f"{self.bands}: pick bands that exist")
        height, width = img.geobox.shape
        split = round(width * (1.0 - val_fraction))
        if split < self.chip or height < self.chip:
            fits = min(height, split) // 32 * 32
            raise LabelError(f"{sc.image} ({height}x{width}) has no room for "
                             f"{self.chip}-px chips left of its validation stripe (the right "
                             f"{1 - split / width:.0%}): use smaller chips"
                             + (f" (--chip-size {fits})" if fits >= 32 else "")
                             + ", a smaller val_fraction (TrainConfig), or a larger image")
        self.images.append(img)
        self.labels.append(lab)
        self.splits.append(split)

    def _open_raster(self, path: Path) -> DatasetReader:
        if not Path(path).exists():
            raise LabelError(f"labels not found: {path} (check the path)")
        try:
            return self._stack.enter_context(rasterio.open(path))
        except RasterioIOError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise LabelError(f"cannot read labels {path}: {first} (give a label raster on the "
                             "image grid or a vector file: .gpkg, .geojson, .shp, .fgb)") from exc

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
        image = self.prepare(data, valid)
        if self.task == "buildings":
            target = self._buildings(scene, win)
        else:
            target = self.read_labels(scene, win).astype(np.uint8)
        target[~valid] = IGNORE
        return image, target

    def prepare(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Raw window values as the model sees them before ``(x - mean) / std``: clipped to
        the normalisation's bounds (if any), nodata = fill; as at inference."""
        if self.clip is not None:
            data = np.clip(data, self.clip[0], self.clip[1])
        return np.where(valid[None], data, self.fill)

    def read_chip(self, scene: int, win: Window) -> tuple[np.ndarray, np.ndarray]:
        """A training chip's image and target (:meth:`read`; subclasses may train on
        another target, e.g. instance ids in :mod:`geoseg.training.maskrcnn_step`)."""
        return self.read(scene, win)

    def chip_valid_fraction(self, target: np.ndarray) -> float:
        """Share of a :meth:`read_chip` target's pixels that count in training."""
        return valid_fraction(target)

    def read_labels(self, scene: int, win: Window) -> np.ndarray:
        """The labels' values (classes or instance ids) in ``win``; a label raster's declared
        nodata is left out as at evaluation: ``IGNORE`` among classes, no instance (0) among
        instance ids (whose target :meth:`read` then ignores there)."""
        values, nodata = self._read_labels(scene, win)
        if nodata is not None:
            values = np.where(nodata, IGNORE if self.task == "landcover" else 0, values)
        return values

    def _read_labels(self, scene: int, win: Window) -> tuple[np.ndarray, np.ndarray | None]:
        """The raw label values in ``win`` and where they are the raster's declared nodata
        (None: no nodata declared, or vector labels)."""
        lab = self.labels[scene]
        if isinstance(lab, VectorLabels):
            return lab.read(win), None
        values = np.asarray(lab.read(1, window=_rio(win)))
        if lab.nodata is None:
            return values, None
        nodata = _is_nodata(values, lab.nodata)
        return values, (nodata if nodata.any() else None)

    def _buildings(self, scene: int, win: Window) -> np.ndarray:
        """Building/boundary target from instance ids read with a halo (exact rings); the
        labels' nodata is ignored."""
        halo = self.boundary_width
        outer = win.pad(halo).intersect(self.images[scene].geobox.window)
        raw, nodata = self._read_labels(scene, outer)
        inst = raw if nodata is None else np.where(nodata, 0, raw)
        top, left = win.row_off - outer.row_off, win.col_off - outer.col_off
        bottom, right = outer.row_end - win.row_end, outer.col_end - win.col_end
        inst = np.pad(inst, ((halo - top, halo - bottom), (halo - left, halo - right)),
                      mode="edge")
        target = buildings_target(inst, halo)[halo:-halo, halo:-halo]
        if nodata is not None:
            top, left = win.row_off - outer.row_off, win.col_off - outer.col_off
            target[nodata[top:top + win.height, left:left + win.width]] = IGNORE
        return target

    def train_window(self, rng: np.random.Generator) -> tuple[int, Window]:
        """A random chip window wholly inside the training area of a random scene."""
        scene = int(rng.integers(len(self.images)))
        row = int(rng.integers(self.images[scene].geobox.height - self.chip + 1))
        col = int(rng.integers(self.splits[scene] - self.chip + 1))
        return scene, Window(row, col, self.chip, self.chip)

    def grid_windows(self) -> list[tuple[int, Window]]:
        """Chip windows tiling every scene's training area (the last row/column of cells is
        shifted inwards so the whole area is covered)."""
        out = []
        for scene, img in enumerate(self.images):
            rows = _starts(img.geobox.height, self.chip)
            cols = _starts(self.splits[scene], self.chip)
            out += [(scene, Window(r, c, self.chip, self.chip)) for r in rows for c in cols]
        return out

    def train_chip(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Image and target of the next training chip whose valid share (image valid and
        label not ``IGNORE``) is at least ``min_valid_fraction``, by ``sampling``."""
        if self.sampling == "grid":
            return self._grid_chip(rng)
        for _ in range(self.max_tries):
            scene, win = self.train_window(rng)
            image, target = self.read_chip(scene, win)
            if self.chip_valid_fraction(target) >= self.min_valid_fraction:
                return image, target
        raise LabelError(f"no training chip with at least {self.min_valid_fraction:.0%} valid "
                         f"pixels in {self.max_tries} random draws: check the images' nodata "
                         "and the labels' coverage, or lower min_valid_fraction")

    def state_dict(self) -> dict[str, list[list[int]]]:
        """JSON-able sampling state (grid sampling's queue and rejected cells), so a resumed
        training run draws exactly the chips an uninterrupted one would."""
        def cells(items: Sequence[tuple[int, Window]]) -> list[list[int]]:
            return [[s, w.row_off, w.col_off] for s, w in items]
        return {"queue": cells(self._queue), "rejected": cells(sorted(
            self._rejected, key=lambda c: (c[0], c[1].row_off, c[1].col_off)))}

    def load_state_dict(self, state: dict[str, list[list[int]]]) -> None:
        def cells(items: list[list[int]]) -> list[tuple[int, Window]]:
            return [(s, Window(r, c, self.chip, self.chip)) for s, r, c in items]
        self._queue = cells(state.get("queue", []))
        self._rejected = set(cells(state.get("rejected", [])))

    def _grid_chip(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Grid cells in a fresh random order each pass; cells below the threshold are
        skipped (and remembered, so they are read once)."""
        for _ in range(2):
            while self._queue:
                cell = self._queue.pop()
                image, target = self.read_chip(*cell)
                if self.chip_valid_fraction(target) >= self.min_valid_fraction:
                    return image, target
                self._rejected.add(cell)
            cells = [c for c in self.grid_windows() if c not in self._rejected]
            self._queue = [cells[i] for i in rng.permutation(len(cells))]
        raise LabelError(f"no grid cell of {self.chip} px has at least "
                         f"{self.min_valid_fraction:.0%} valid pixels: check the images' "
                         "nodata and the labels' coverage, or lower min_valid_fraction")

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


def _check_label_grid(img: RasterInfo, lab: DatasetReader, sc: SceneFiles) -> None:
    """Refuse a label raster that is not on the image's pixel grid: another CRS (a label
    raster without a CRS is taken to be in the image's), shape or transform."""
    if lab.crs is not None and lab.crs != RioCRS.from_wkt(img.geobox.crs.to_wkt()):
        raise LabelError(f"{sc.labels} is in {_crs_name(normalize_crs(lab.crs))} but {sc.image} "
                         f"is in {_crs_name(img.geobox.crs)}: reproject the labels onto the "
                         f"image grid, e.g. {_warp_command(img, sc.labels)}")
    t = img.geobox.transform
    # the same grid to a millionth of a pixel (a grid written by another tool may differ in
    # the last bits of its origin: 1e-9 m is not another grid)
    close = lab.transform.almost_equals(t, precision=1e-6 * max(abs(t.a), abs(t.e)))
    if img.geobox.shape != (lab.height, lab.width) or not close:
        what = (f"its shape ({lab.width} x {lab.height}) differs from the image's "
                f"({img.geobox.width} x {img.geobox.height})"
                if img.geobox.shape != (lab.height, lab.width) else
                "its pixels are not the image's (origin or pixel size)")
        raise LabelError(f"{sc.labels} is not on the grid of {sc.image}: {what}; resample the "
                         f"labels onto the image grid, e.g. {_warp_command(img, sc.labels)}")


def _crs_name(crs: CRS) -> str:
    """``EPSG:4326`` (or the CRS's name when it has no authority code)."""
    auth = crs.to_authority()
    return f"{auth[0]}:{auth[1]}" if auth else crs.name


def _warp_command(img: RasterInfo, labels: Path) -> str:
    """A ``gdalwarp`` call that puts ``labels`` on ``img``'s exact grid (nearest neighbour)."""
    box, crs = img.geobox, img.geobox.crs
    auth = crs.to_authority()
    srs = f"{auth[0]}:{auth[1]}" if auth else f"'{crs.to_proj4()}'"
    b = box.bounds
    extent = " ".join(f"{v:.12g}" for v in (b.left, b.bottom, b.right, b.top))
    return (f"gdalwarp -r near -t_srs {srs} -te {extent} -ts {box.width} {box.height} "
            f"{labels} {labels.with_name(labels.stem + '_on_grid.tif')}")


def check_class_ids(lab: DatasetReader, path: Path, num_classes: int, *,
                    pixels_per_read: int = SCAN_PIXELS) -> None:
    """Refuse landcover labels holding a value that is neither a class id (``0..num_classes-1``)
    nor ``IGNORE``; band 1 is read window by window (:func:`_scan_windows`)."""
    smallest = np.empty(0)  # the smallest bad values (SHOWN_IDS + 1 at most), sorted
    pixels = 0
    for win in _scan_windows(lab, pixels_per_read):
        values = np.asarray(lab.read(1, window=win))
        wrong = _not_class_ids(values, num_classes)
        if lab.nodata is not None:  # left out of training, as at evaluation
            wrong &= ~_is_nodata(values, lab.nodata)
        if wrong.any():
            pixels += int(np.count_nonzero(wrong))
            smallest = np.union1d(smallest, values[wrong])[:SHOWN_IDS + 1]
    if pixels:
        raise LabelError(_class_id_message(path, smallest, pixels, num_classes))


def _is_nodata(values: np.ndarray, nodata: float) -> np.ndarray:
    """Where label ``values`` are the raster's declared ``nodata`` (NaN included)."""
    return np.isnan(values) if np.isnan(nodata) else values == nodata


def _scan_windows(ds: DatasetReader, pixels: int = SCAN_PIXELS) -> Iterator[RioWindow]:
    """Windows of about ``pixels`` px covering ``ds``, on whole blocks (full rows when the
    raster is striped)."""
    bh, bw = ds.block_shapes[0]
    cols = ds.width if bw >= ds.width else max(bw, math.isqrt(pixels) // bw * bw)
    rows = max(bh, pixels // cols // bh * bh)
    for row in range(0, ds.height, rows):
        for col in range(0, ds.width, cols):
            yield RioWindow(col, row, min(cols, ds.width - col), min(rows, ds.height - row))


def _not_class_ids(values: np.ndarray, num_classes: int) -> np.ndarray:
    """Mask of the values that are neither an integer in ``0..num_classes-1`` nor ``IGNORE``."""
    ok = (values >= 0) & (values < num_classes)
    if values.dtype.kind == "f":
        ok &= values == np.round(values)
    return ~ok & (values != IGNORE)


def _class_id_message(path: Path, bad: np.ndarray, pixels: int, num_classes: int) -> str:
    shown = ", ".join(f"{v:g}" for v in bad[:SHOWN_IDS]) + (", ..." if bad.size > SHOWN_IDS
                                                            else "")
    ids = "ids" if bad.size > 1 else "id"
    return (f"{path} holds label {ids} {shown} ({pixels} px) but training has {num_classes} "
            f"classes (ids 0..{num_classes - 1}, {IGNORE} or the raster's nodata = leave out): "
            "give a class for "
            "every id in the labels (--classes NAME,... names ids 0, 1, ... in order) or fix "
            f"the labels (set pixels to leave out to {IGNORE})")


def valid_fraction(target: np.ndarray) -> float:
    """Share of a target's pixels that count in the loss (not ``IGNORE``)."""
    return float(np.count_nonzero(target != IGNORE)) / max(1, target.size)


def _starts(length: int, chip: int) -> list[int]:
    starts = list(range(0, length - chip + 1, chip))
    if starts[-1] != length - chip:
        starts.append(length - chip)
    return starts

