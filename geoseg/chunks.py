"""The work done for one chunk, as plain functions on numpy arrays (no Ray here).

read → predict (all models, tiled + blended, halo cropped) → write one Zarr chunk → stats.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
from rasterio.errors import RasterioIOError

from geoseg import stageclock
from geoseg.area import geodesic, row_pixel_areas_m2
from geoseg.blockcache import BlockCache
from geoseg.errors import InputError
from geoseg.grid import Chunk, Window
from geoseg.io import RasterInfo, read_window
from geoseg.outdir import storage_errors
from geoseg.plan import ModelRef, Plan
from geoseg.region import region_mask
from geoseg.sources.mosaic import Mosaic, read_window_sources, sources_record
from geoseg.sources.remote import is_local_path, redact
from geoseg.stitch import (
    Crop,
    classify,
    pad_to_multiple,
    pad_window,
    predict_window,
    single_pass,
    tta_proba,
)
from geoseg.store import FILL, SOURCE, chunk_files, write_chunk
from geoseg.thumbs import IMAGE, THUMBS, Thumbs, class_thumb, image_thumb, quicklook_step


class ProbaModel(Protocol):
    def predict_proba(self, x: np.ndarray) -> np.ndarray: ...


class CoreModel(ProbaModel, Protocol):
    """A model that classifies one tile's core itself (on its device: only uint8 comes back)."""

    semantic: bool

    def predict_core(self, x: np.ndarray, crop: Crop) -> tuple[np.ndarray, np.ndarray]: ...


class DeviceBlendModel(ProbaModel, Protocol):
    """A model that also blends overlapping tiles on its device (a PyTorch model on a GPU)."""

    blends_on_device: bool

    def predict_tiles_core(self, x: np.ndarray, crop: Crop, *, tile: int, overlap: int,
                           batch_size: int, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        ...


@dataclass
class ChunkInput:
    chunk: Chunk
    data: np.ndarray   # (C, H, W) float32 over chunk + halo, bands = plan.bands
    valid: np.ndarray  # (H, W) bool
    read_s: float
    # a mosaic's provenance: which item (1-based, 0 none) produced each pixel, and those items
    source: np.ndarray | None = None
    sources: list[dict[str, Any]] | None = None
    thumb: np.ndarray | None = None  # the image's quicklook pixels (geoseg.thumbs)


@dataclass
class ChunkOutput:
    chunk: Chunk
    arrays: dict[str, np.ndarray]  # store array name -> core block
    timings: dict[str, float] = field(default_factory=dict)
    sources: list[dict[str, Any]] | None = None  # a mosaic's items in this chunk
    thumb: np.ndarray | None = None  # the image's quicklook pixels (geoseg.thumbs)


def source_window(plan: Plan, chunk: Chunk) -> Window:
    """The image pixels a chunk's read covers: its window plus halo, in the image's grid (it
    may reach outside the image: reads are boundless)."""
    ctx = chunk.window.pad(plan.halo)
    return Window(ctx.row_off + plan.offset.row_off, ctx.col_off + plan.offset.col_off,
                  ctx.height, ctx.width)


def block_cache(plan: Plan, todo: Iterable[Chunk]) -> BlockCache:
    """The decoded-block cache of a run's reads, told which image pixels the reads of ``todo``
    will cover (:meth:`~geoseg.blockcache.BlockCache.expect`)."""
    cache = BlockCache()
    if isinstance(plan.image, RasterInfo):
        inside = plan.image.geobox.window
        cache.expect(plan.image.path, (  # consumed only up to the schedule's limit
            (w.row_off, w.col_off, w.height, w.width)
            for w in (source_window(plan, c).intersect(inside) for c in todo)))
    return cache


def read_chunk(plan: Plan, chunk: Chunk, cache: BlockCache | None = None) -> ChunkInput:
    """Read the chunk plus halo from the image (boundless; region and nodata masked). A
    ``cache`` shared by the reads of one job decodes each source block once (see
    :mod:`geoseg.blockcache`)."""
    t0 = time.perf_counter()
    ctx = chunk.window.pad(plan.halo)
    img_win = source_window(plan, chunk)
    source = sources = None
    try:
        if isinstance(plan.image, Mosaic):
            data, valid, source, refs = read_window_sources(plan.image, img_win, plan.bands)
            sources = sources_record(refs)
        else:
            data, valid = read_window(plan.image, img_win, plan.bands, cache=cache)
    except RasterioIOError as exc:
        path = plan.image.path
        where = (f"pixels {img_win.row_off}:{img_win.row_end}, {img_win.col_off}:"
                 f"{img_win.col_end}")
        if not is_local_path(path) or isinstance(plan.image, Mosaic):
            # a remote read may succeed on retry (a mosaic's local errors are InputError): the
            # error stays retryable, with GDAL's cause in its message (rasterio's own says
            # only "Read failed", and the chained cause is lost on the way to the report)
            cause = _gdal_cause(exc, 2 if isinstance(plan.image, Mosaic) else 1)
            raise RasterioIOError(
                f"cannot read {where} of {redact(path)} ({cause}): the file may be truncated "
                "or damaged, or the connection failed; check that the whole file is served "
                "(its size, the URL), then rerun with --resume") from exc
        raise InputError(f"{path} is damaged (cannot read {where}: {_gdal_cause(exc)}): "
                         "repair or re-download it; a rerun cannot fix this") from exc
    # the quicklook shows the image as read (inside the grid, outside a region too)
    thumb = image_thumb(data, valid, plan.bands, plan.image.count,
                        chunk.window.relative_to(ctx), chunk.window,
                        quicklook_step(plan.grid.height, plan.grid.width))
    # pixels of the image outside the output grid (region clip) are context, not output; they
    # stay valid input so that a region's edge is predicted as it would be in the whole image.
    if plan.region is not None:
        valid &= region_mask(plan.region, plan.image.geobox, img_win)
    return ChunkInput(chunk, data, valid, time.perf_counter() - t0, source, sources, thumb)


def _gdal_cause(exc: BaseException, parts: int = 1) -> str:
    """GDAL's own messages chained under rasterio's "Read failed": the last one (the root
    cause: "... got 98998 bytes, expected 1105692") and, with ``parts=2``, the first (it names
    the file and block: which of a mosaic's items failed), redacted."""
    chain: list[str] = []
    e: BaseException | None = exc.__cause__
    while e is not None and len(chain) < 10:  # rasterio chains GDAL's own message
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        if lines:
            chain.append(lines[-1][:160])
        e = e.__cause__
    if not chain:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        return redact(lines[-1][:160]) if lines else "read failed"
    picked = [chain[-1]] if parts == 1 or len(chain) == 1 else [chain[0], chain[-1]]
    return redact(": ".join(picked))


def model_input(plan: Plan, ref: ModelRef, inp: ChunkInput) -> tuple[np.ndarray, int, int, bool]:
    """``(x, tile, overlap, exact)``: the raw bands ``ref`` reads over the chunk context, with
    nodata and pixels outside the image filled as the bundle's ``padding`` says (constant: the
    band mean, 0 after normalising; reflect: the image mirrored at its edge, nodata holes inside
    it still the mean), and the tiling of ``ref`` (see :meth:`Plan.tiling`). With ``exact``
    tiles ``x`` is padded at the far edges up to the tile when the context is smaller (a small
    image or region, a chunk at the image edge with little or no halo); the core's rows and
    columns in ``x`` are the same as in the context."""
    idx = [plan.bands.index(b) for b in ref.spec.bands]
    mean = np.asarray(ref.spec.normalization.mean, dtype=np.float32)[:, None, None]
    if inp.valid.all():  # the common case: no copy when the model reads every band in order
        x = inp.data if idx == list(range(len(plan.bands))) else inp.data[idx]
    else:  # nodata → band mean (0 after normalising)
        x = np.where(inp.valid[None], inp.data[idx], mean)
    tile, overlap, exact = plan.tiling(ref)
    h, w = x.shape[1:]
    shape = (max(h, tile), max(w, tile)) if exact else (h, w)
    if ref.spec.padding == "constant" and shape == (h, w):
        return x, tile, overlap, exact  # as before padding existed: no copy
    img_win = source_window(plan, inp.chunk)
    inner = img_win.intersect(plan.image.geobox.window)
    inside = (inner.relative_to(img_win).slices() if inner.size
              else (slice(0, 0), slice(0, 0)))
    return pad_window(x, shape, inside, ref.spec.padding, mean), tile, overlap, exact


def predict_chunk(plan: Plan, models: Mapping[str, ProbaModel], inp: ChunkInput) -> ChunkOutput:
    """Run every model on the chunk context and crop to the chunk."""
    core = inp.chunk.window.relative_to(inp.chunk.window.pad(plan.halo))
    rs, cs = core.slices()
    valid_core = inp.valid[rs, cs]
    out: dict[str, np.ndarray] = {}
    if inp.source is not None:  # the store's `source` layer: provenance of every pixel
        out[SOURCE] = np.where(valid_core, inp.source[rs, cs], 0).astype(np.uint16)
    timings: dict[str, float] = {"read_s": inp.read_s}
    for ref in plan.models:
        t0 = time.perf_counter()
        with stageclock.collect() as parts:
            cls, conf = _predict_model(plan, ref, models[ref.name], inp, valid_core, (rs, cs))
        out[ref.name] = cls
        out[f"{ref.name}_confidence"] = conf
        timings[f"predict_{ref.name}_s"] = time.perf_counter() - t0
        for name in stageclock.PARTS:  # (not predict_*: that sum is the model's whole time)
            timings[f"{name}_{ref.name}_s"] = parts.get(name, 0.0)
            if name in parts.cpu:
                timings[f"{name}_{ref.name}_cpu_s"] = parts.cpu[name]
    return ChunkOutput(inp.chunk, out, timings, inp.sources, inp.thumb)


def _predict_model(plan: Plan, ref: ModelRef, model: ProbaModel, inp: ChunkInput,
                   valid_core: np.ndarray, core: Crop) -> tuple[np.ndarray, np.ndarray]:
    """Classes and confidence of one model over the chunk's core, each part of the work
    counted in this thread's :func:`geoseg.stageclock.collect` (the model counts its own
    normalize, forward and classify): preparing the input counts as normalize, blending tiles
    on the host as blend (the window's time less the model's parts in it: cutting tiles,
    test-time augmentation's flips, the weighted sums), masking as classify."""
    if not valid_core.any():  # nothing to predict (collar, outside region): skip the model
        return np.full(valid_core.shape, FILL, np.uint8), np.zeros(valid_core.shape, np.uint8)
    rs, cs = core
    with stageclock.part("normalize"):
        x, tile, overlap, exact = model_input(plan, ref, inp)
    one_pass = (x.shape[1:] == (tile, tile) if exact
                else single_pass(x.shape[1], x.shape[2], tile))
    if plan.tta == "none" and one_pass and getattr(model, "semantic", False):
        # one forward pass, no blending: classes and confidence of the core straight from
        # the logits (no softmax over the halo, no blending buffers)
        with stageclock.part("normalize"):
            x = x if exact else pad_to_multiple(x, tile)
        cls, conf = cast(CoreModel, model).predict_core(x[None], (rs, cs))
    elif plan.tta == "none" and getattr(model, "blends_on_device", False):
        # overlapping tiles blended where the model runs (a GPU): only uint8 comes back
        cls, conf = cast(DeviceBlendModel, model).predict_tiles_core(
            x, (rs, cs), tile=tile, overlap=overlap, batch_size=plan.batch_size, exact=exact)
    else:
        t0, before = time.perf_counter(), stageclock.spent()
        probs = predict_window(x, tta_proba(model.predict_proba, plan.tta),
                               ref.spec.num_classes, tile=tile, overlap=overlap,
                               batch_size=plan.batch_size, exact=exact)
        stageclock.add("blend", time.perf_counter() - t0 - (stageclock.spent() - before))
        with stageclock.part("classify"):
            return classify(probs[:, rs, cs], valid_core, FILL)
    with stageclock.part("classify"):
        if valid_core.all():  # the common case: nothing to mask
            return cls, conf
        return np.where(valid_core, cls, np.uint8(FILL)), np.where(valid_core, conf, np.uint8(0))


def class_counts(cls: np.ndarray, num_classes: int) -> list[int]:
    """Pixels of each class id ``0 .. num_classes - 1`` in a uint8 class map, then those of
    :data:`FILL`. Up to 16 classes one comparison each (0.4 ms for a 1024² chunk of 5 classes,
    against 1.6 ms for ``bincount``, which first widens every pixel to int64), else
    ``bincount``."""
    flat = cls.ravel()
    if num_classes > 16:
        counts = np.bincount(flat, minlength=256)
        return [int(v) for v in counts[:num_classes]] + [int(counts[FILL])]
    return [int(np.count_nonzero(flat == k)) for k in (*range(num_classes), FILL)]


def write_output(plan: Plan, store: str, out: ChunkOutput) -> dict[str, Any]:
    """Write the chunk to the store; return stats for the manifest (class pixel counts), and
    under :data:`~geoseg.thumbs.THUMBS` the chunk's quicklook pixels (not for the record)."""
    t0 = time.perf_counter()
    with storage_errors(Path(store), fatal_only=True):  # disk full / permission: one line
        write_chunk(store, out.chunk, out.arrays, plan.chunks.chunk)
    hist: dict[str, list[int]] = {}
    valid = 0
    for i, ref in enumerate(plan.models):
        counts = class_counts(out.arrays[ref.name], ref.spec.num_classes)
        hist[ref.name] = counts[:-1]
        if i == 0:  # the first model's pixels that are not fill
            valid = out.arrays[ref.name].size - counts[-1]
    extra: dict[str, Any] = {}
    if geodesic(plan.grid.crs):  # a pixel's area depends on where it is (its row)
        w = out.chunk.window
        per_px = np.repeat(row_pixel_areas_m2(plan.grid, w.row_off, w.row_end,
                                              w.col_off + w.width // 2), w.width)
        extra["area_m2"] = {
            ref.name: [round(float(v), 4) for v in np.bincount(
                out.arrays[ref.name].ravel(), weights=per_px,
                minlength=256)[: ref.spec.num_classes]]
            for ref in plan.models}
    if out.sources is not None:
        extra["sources"] = out.sources
    step = quicklook_step(plan.grid.height, plan.grid.width)
    thumbs = {ref.name: class_thumb(out.arrays[ref.name], out.chunk.window, step)
              for ref in plan.models}
    if out.thumb is not None:
        thumbs[IMAGE] = out.thumb
    extra[THUMBS] = Thumbs(step, thumbs)
    return {"hist": hist, **extra, "valid_px": valid, "pixels": out.chunk.window.size,
            "files": chunk_files(store, out.chunk, sorted(out.arrays)),
            "timings": {**out.timings, "write_s": time.perf_counter() - t0}}
