"""Tiled prediction of one chunk's context window with centre-weighted blending.

A chunk is predicted on ``chunk + halo`` pixels. When that window is larger than the model tile,
it is covered by overlapping tiles; their class probabilities are blended with a separable cosine
(Hann-like) weight that is 1 in the tile centre and ramps down over the overlap, then the halo is
cropped away. Everything here is plain numpy and depends only on the window's pixels, so results
do not depend on worker count or chunk order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from geoseg.errors import InputError

ProbaFn = Callable[[np.ndarray], np.ndarray]
"""(N, C, H, W) float32 raw bands -> (N, K, H, W) float32 probabilities."""


@dataclass(frozen=True)
class TileLayout:
    """Tile origins along one axis of length ``n`` with tiles of ``tile`` px."""

    starts: tuple[int, ...]
    tile: int


def axis_layout(n: int, tile: int, min_overlap: int) -> TileLayout:
    """Fewest tiles of size ``tile`` covering ``[0, n)`` with at least ``min_overlap`` px of
    overlap between neighbours; tiles are spread evenly (deterministic, integer starts)."""
    if tile <= 0 or min_overlap < 0 or min_overlap >= tile:
        raise InputError(f"bad tiling: tile={tile}, overlap={min_overlap}: "
                         "need 0 <= overlap < tile")
    if n <= tile:
        return TileLayout((0,), tile)
    count = math.ceil((n - min_overlap) / (tile - min_overlap))
    span = n - tile
    starts = tuple(round(i * span / (count - 1)) for i in range(count))
    return TileLayout(starts, tile)


def ramp_weight(tile: int, overlap: int) -> np.ndarray:
    """1-D blending weight: cosine ramp over ``overlap`` px at each end, 1 in between, never 0."""
    w = np.ones(tile, dtype=np.float32)
    if overlap > 0:
        r = min(overlap, tile // 2)
        t = (np.arange(r, dtype=np.float32) + 0.5) / r
        ramp = 0.5 - 0.5 * np.cos(np.pi * t)
        w[:r] = ramp
        w[tile - r:] = ramp[::-1]
    return np.maximum(w, 1e-3)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


Crop = tuple[slice, slice]
"""Rows and columns of a chunk's core inside its context window."""


def pad_to_multiple(image: np.ndarray, tile: int, multiple: int = 32) -> np.ndarray:
    """``image`` (C, H, W) padded at the far edges (reflect, or edge when too small) to the
    tile grid's size: a multiple of ``multiple`` up to ``tile``, never smaller than the image."""
    _c, h, w = image.shape
    ph, pw = max(min(tile, round_up(h, multiple)), h), max(min(tile, round_up(w, multiple)), w)
    if (ph, pw) == (h, w):
        return image
    pads = ((0, 0), (0, ph - h), (0, pw - w))
    if h > 1 and w > 1 and ph - h < h and pw - w < w:
        return np.pad(image, pads, mode="reflect")
    return np.pad(image, pads, mode="edge")


def single_pass(h: int, w: int, tile: int, multiple: int = 32) -> bool:
    """Whether an (h, w) window is predicted in one forward pass (no blending)."""
    return round_up(h, multiple) <= tile and round_up(w, multiple) <= tile


def pad_window(image: np.ndarray, shape: tuple[int, int], inside: Crop, mode: str,
               fill: np.ndarray) -> np.ndarray:
    """``image`` (C, H, W) padded at the far edges to ``shape`` (≥ (H, W)), what lies outside
    ``inside`` (the rows and columns of the window that are in the image) filled by ``mode``:

    - ``constant``: the window as it is (pixels outside the image already hold the fill) and
      ``fill`` (C, 1, 1) in the padding;
    - ``reflect``: the pixels inside the image mirrored outward (numpy ``reflect``, repeated
      when the padding is wider than the image), over the window's part outside the image and
      the padding alike.
    """
    _c, h, w = image.shape
    ph, pw = max(shape[0], h), max(shape[1], w)
    rs, cs = inside
    r0, r1, _ = rs.indices(h)
    c0, c1, _ = cs.indices(w)
    if mode == "reflect" and r1 > r0 and c1 > c0:
        if (r0, r1, c0, c1, ph, pw) == (0, h, 0, w, h, w):
            return image
        pads = ((0, 0), (r0, ph - r1), (c0, pw - c1))
        return np.pad(image[:, r0:r1, c0:c1], pads, mode="reflect")
    if mode not in ("reflect", "constant"):
        raise InputError(f"unknown padding {mode!r}: use constant or reflect")
    if (ph, pw) == (h, w):
        return image
    out = np.empty((image.shape[0], ph, pw), dtype=image.dtype)
    out[...] = np.asarray(fill, dtype=image.dtype).reshape(-1, 1, 1)
    out[:, :h, :w] = image
    return out


@dataclass(frozen=True)
class TileGrid:
    """How :func:`predict_window` covers a window: the window padded to the tile grid
    (``image``), the tile shape, the tiles' origins and their blending weight (th, tw)."""

    image: np.ndarray
    shape: tuple[int, int]
    origins: tuple[tuple[int, int], ...]
    weight: np.ndarray


def tile_grid(image: np.ndarray, *, tile: int, overlap: int, multiple: int = 32,
              exact: bool = False) -> TileGrid:
    """The tiling of :func:`predict_window` (shared with the device-side blend of
    :meth:`geoseg.models.predictor.Predictor.predict_tiles_core`)."""
    _c, h, w = image.shape
    if exact:
        if h < tile or w < tile:
            raise ValueError(f"window {h}x{w} is smaller than the {tile} px tile: pad it first")
        th = tw = tile
    else:
        th = min(tile, round_up(h, multiple))
        tw = min(tile, round_up(w, multiple))
        image = pad_to_multiple(image, tile, multiple)
    ph, pw = image.shape[1:]
    ys = axis_layout(ph, th, overlap)
    xs = axis_layout(pw, tw, overlap)
    wy = ramp_weight(th, overlap if len(ys.starts) > 1 else 0)
    wx = ramp_weight(tw, overlap if len(xs.starts) > 1 else 0)
    return TileGrid(image, (th, tw), tuple((y, x) for y in ys.starts for x in xs.starts),
                    np.outer(wy, wx))


def predict_window(image: np.ndarray, proba: ProbaFn, num_classes: int, *, tile: int,
                   overlap: int, batch_size: int, multiple: int = 32,
                   exact: bool = False) -> np.ndarray:
    """Blend model probabilities over ``image`` (C, H, W) → (K, H, W) float32.

    If the whole window fits in one tile (after padding to ``multiple``), it is predicted in a
    single forward pass; otherwise tiles of ``tile`` px overlap by ≥ ``overlap`` px and are
    blended. Windows are padded at the far edges (reflect) to a multiple of ``multiple`` px.

    ``exact`` (a model that takes one input size only): every tile is exactly ``tile`` px; the
    caller pads a window smaller than a tile up to it (see :func:`pad_window`).
    """
    _c, h, w = image.shape
    grid = tile_grid(image, tile=tile, overlap=overlap, multiple=multiple, exact=exact)
    th, tw = grid.shape
    ph, pw = grid.image.shape[1:]
    acc = np.zeros((num_classes, ph, pw), dtype=np.float32)
    norm = np.zeros((ph, pw), dtype=np.float32)
    origins = grid.origins
    for i in range(0, len(origins), batch_size):
        group = origins[i:i + batch_size]
        batch = np.stack([grid.image[:, y:y + th, x:x + tw] for y, x in group])
        probs = proba(np.ascontiguousarray(batch))
        if probs.shape != (len(group), num_classes, th, tw):
            raise InputError(f"model returned shape {probs.shape}, expected "
                             f"{(len(group), num_classes, th, tw)}")
        for (y, x), p in zip(group, probs, strict=True):
            acc[:, y:y + th, x:x + tw] += p * grid.weight
            norm[y:y + th, x:x + tw] += grid.weight
    acc /= norm
    return acc[:, :h, :w]


def max_argmax(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(max, argmax as uint8)`` over axis 0 of (K, H, W) values (K <= 256), class by class:
    contiguous 2-D operations, several times faster than ``argmax(axis=0)``, which walks the
    class axis with a stride of H*W. Ties go to the lower class, as with ``argmax``."""
    if values.shape[0] > 256:
        raise ValueError(f"{values.shape[0]} classes do not fit uint8 class ids")
    top = np.array(values[0], copy=True)
    cls = np.zeros(top.shape, np.uint8)
    better = np.empty(top.shape, bool)
    for k in range(1, values.shape[0]):
        np.greater(values[k], top, out=better)
        np.copyto(cls, np.uint8(k), where=better)
        np.maximum(top, values[k], out=top)
    return top, cls


def classify(probs: np.ndarray, valid: np.ndarray,
             fill: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Class ids (uint8, ``fill`` where invalid) and confidence (uint8 0..255 of max prob,
    0 where invalid) from (K, H, W) probabilities."""
    top, cls = max_argmax(probs)
    conf = np.rint(top * 255.0).astype(np.uint8)
    cls[~valid] = fill
    conf[~valid] = 0
    return cls, conf


#: rows of the logits :func:`classify_logits` handles at once: their K planes (K x 64 x 1024
#: float32, 1.3 MB for 5 classes) stay in the core's cache through its ~4K passes; over a
#: whole 1024² core each pass went to memory (15.2 → 11.3 ms a chunk, 5 classes, DESIGN.md)
STRIP_ROWS = 64


def classify_logits(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class ids and confidence (uint8 0..255 of the max softmax probability) straight from
    (K, H, W) logits: argmax of logits = argmax of probabilities, and the max probability is
    1 / sum(exp(l - max l)), so no full softmax is computed. Invalid pixels are masked by the
    caller. Computed in strips of :data:`STRIP_ROWS` rows (pixel by pixel the same
    arithmetic, so the same values as over the whole array)."""
    k, h, w = logits.shape
    cls = np.empty((h, w), np.uint8)
    conf = np.empty((h, w), np.uint8)
    total = np.empty((min(h, STRIP_ROWS), w), np.float32)
    term = np.empty_like(total)
    for r0 in range(0, h, STRIP_ROWS):
        r1 = min(h, r0 + STRIP_ROWS)
        top, cls[r0:r1] = max_argmax(logits[:, r0:r1])
        tot, tm = total[:r1 - r0], term[:r1 - r0]
        tot.fill(0)
        for i in range(k):
            np.subtract(logits[i, r0:r1], top, out=tm)
            tot += np.exp(tm, out=tm)
        conf[r0:r1] = np.rint(255.0 / tot)
    return cls, conf


def _transforms(mode: str) -> list[tuple[int, bool]]:
    """(quarter turns, flip left-right) of each view: flips = the identity and 3 flips; d4 =
    the 8 symmetries of the square."""
    if mode == "flips":
        return [(0, False), (0, True), (2, True), (2, False)]  # id, x, y (=rot180∘x), xy
    if mode == "d4":
        return [(k, f) for k in range(4) for f in (False, True)]
    if mode == "none":
        return [(0, False)]
    raise InputError(f"unknown test-time augmentation {mode!r}: use none, flips or d4")


def tta_proba(proba: ProbaFn, mode: str) -> ProbaFn:
    """``proba`` averaged over the views of ``mode`` (each view's probabilities mapped back to
    the tile before averaging), for batches (N, C, H, W). Quarter turns need square tiles or
    a model that takes any multiple of 32 (U-Net / DeepLabV3+ do)."""
    views = _transforms(mode)
    if len(views) == 1:
        return proba

    def view(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
        v = np.rot90(x[..., ::-1] if flip else x, k, axes=(2, 3))
        p = np.rot90(proba(np.ascontiguousarray(v)), -k, axes=(2, 3))
        return p[..., ::-1] if flip else p

    def averaged(x: np.ndarray) -> np.ndarray:
        total = np.array(view(x, *views[0]), dtype=np.float32)
        for k, flip in views[1:]:
            total += view(x, k, flip)
        return total / np.float32(len(views))

    return averaged
