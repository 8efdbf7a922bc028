"""Render one block of the scene (both dates) from the plan.

A block is rendered on its window grown by a halo (:meth:`Plan.margin`) so that shadows cast
from outside and the optical blur are complete; only the core is returned. Every input is a
function of global pixel coordinates, so the result does not depend on the block size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray
from rasterio import features

from geoseg.grid import Window
from geoseg.sample import shading
from geoseg.sample.city_plan import Plan
from geoseg.sample.noise import fbm, subkey
from geoseg.sample.palette import (
    BUILDING,
    LANDCOVER_NODATA,
    MAT_CLASS,
    MAT_TEXTURE,
    ROAD,
    VEG,
    Mat,
)

F32 = NDArray[np.float32]
WHITE_PAINT = np.array([0.82, 0.82, 0.78, 0.68], np.float32)


@dataclass
class DateBlock:
    """Core-window outputs of one date."""

    image: NDArray[np.uint8]  # (4, h, w)
    landcover: NDArray[np.uint8]
    instances: NDArray[np.uint32]


@dataclass
class _Ctx:
    pad: Window
    rows: NDArray[np.int64]
    cols: NDArray[np.int64]
    transform: Affine
    qbox: shapely.Polygon
    clip: tuple[float, float, float, float]
    n_low: F32
    n_mid: F32
    n_fine: F32
    n_ground: F32
    n_mix: F32
    base: NDArray[np.uint8]


def _context(plan: Plan, core: Window) -> _Ctx:
    pad = core.pad(plan.margin())
    rows = np.arange(pad.row_off, pad.row_end, dtype=np.int64)
    cols = np.arange(pad.col_off, pad.col_end, dtype=np.int64)
    tf = plan.transform @ Affine.translation(pad.col_off, pad.row_off)
    ps = plan.pixel_size
    left, top = tf.c, tf.f
    right, bottom = left + pad.width * ps, top - pad.height * ps
    qbox = shapely.box(left - ps, bottom - ps, right + ps, top + ps)
    clip = (left - 4 * ps, bottom - 4 * ps, right + 4 * ps, top + 4 * ps)
    k = plan.key
    n_low = fbm(rows, cols, 45.0 / ps, 3, subkey(k, 21))
    n_ground = fbm(rows, cols, 70.0 / ps, 4, subkey(k, 24))
    mix = fbm(rows, cols, 20.0 / ps, 3, subkey(k, 25))
    n_mid = fbm(rows, cols, 5.0 / ps, 3, subkey(k, 22))
    base = np.where(mix < 0.42, Mat.DRY_GRASS, np.where(mix < 0.62, Mat.SOIL, Mat.MOSSY_SOIL))
    base = np.where((n_low > 0.72) & (mix > 0.55), Mat.SAND, base)
    n_ground = n_ground + np.float32(0.12) * (n_mid - np.float32(0.5))
    base = np.where(n_ground > np.float32(plan.veg_threshold), Mat.GRASS, base).astype(np.uint8)
    return _Ctx(pad, rows, cols, tf, qbox, clip, n_low=n_low, n_mid=n_mid,
                n_fine=fbm(rows, cols, max(1.6, 1.0 / ps), 2, subkey(k, 23)),
                n_ground=n_ground, n_mix=mix, base=base)


def _burn(geoms: NDArray[np.object_], values: NDArray[np.integer], ctx: _Ctx,
          dtype: type, all_touched: bool = False) -> NDArray[Any]:
    shape = (ctx.pad.height, ctx.pad.width)
    if not len(geoms):
        return np.zeros(shape, dtype)
    return features.rasterize(zip(geoms, values.tolist(), strict=True), out_shape=shape,
                              transform=ctx.transform, fill=0, dtype=dtype,
                              all_touched=all_touched)


def _area_ids(plan: Plan, ctx: _Ctx, date: int) -> NDArray[np.int32]:
    """Global index of the topmost area at each pixel (flat), -1 where there is none."""
    sel = np.sort(plan.area_tree.query(ctx.qbox))
    sel = sel[(plan.area_dates[sel] >> date) & 1 == 1]
    geoms = shapely.clip_by_rect(plan.area_geoms[sel], *ctx.clip)
    keep = ~shapely.is_empty(geoms)
    sel, geoms = sel[keep], geoms[keep]
    aid = _burn(geoms, np.arange(1, len(sel) + 1), ctx, np.int32)
    lut = np.concatenate([[-1], sel]).astype(np.int32)
    return lut[aid.ravel()]


def _ground(plan: Plan, ctx: _Ctx, gid: NDArray[np.int32],
            at: NDArray[np.int64] | None = None) -> tuple[NDArray[np.uint8], F32]:
    """Material and textured colour (4, n) of ground pixels ``at`` (all when None).

    Works through the pixels in chunks to keep temporaries small.
    """
    n = len(gid) if at is None else len(at)
    mat = np.empty(n, np.uint8)
    refl = np.empty((4, n), np.float32)
    step = 1 << 18
    for k in range(0, n, step):
        part = slice(k, min(n, k + step))
        pix = np.arange(part.start, part.stop) if at is None else at[part]
        mat[part], refl[:, part] = _ground_pixels(plan, ctx, gid[pix], pix)
    return mat, refl


def _ground_pixels(plan: Plan, ctx: _Ctx, gid: NDArray[np.int32],
                   pix: NDArray[np.int64]) -> tuple[NDArray[np.uint8], F32]:
    base = ctx.base.ravel()[pix]
    nl, nm, nf, ng = (a.ravel()[pix] for a in (ctx.n_low, ctx.n_mid, ctx.n_fine, ctx.n_ground))
    idx = np.where(gid >= 0, gid, len(plan.area_geoms) + base.astype(np.int32))
    mat = plan.ground_mat[idx]
    tex = (1.0 + MAT_TEXTURE[mat, 0] * (2 * nl - 1) + MAT_TEXTURE[mat, 1] * (2 * nm - 1)
           + MAT_TEXTURE[mat, 2] * (2 * nf - 1))
    on = np.flatnonzero(plan.ground_stripe[idx, 3] > 0)
    if len(on):
        w = ctx.pad.width
        y = (pix[on] // w + ctx.pad.row_off).astype(np.float64) + 0.5
        x = (pix[on] % w + ctx.pad.col_off).astype(np.float64) + 0.5
        s = plan.ground_stripe[idx[on]].astype(np.float64)
        ph = (x * s[:, 0] + y * s[:, 1]) * s[:, 2]
        tri = np.abs(2.0 * (ph - np.floor(ph)) - 1.0)
        tex[on] *= (1.0 + s[:, 3] * (2.0 * tri - 1.0)).astype(np.float32)
    refl = np.empty((4, len(idx)), np.float32)
    for b in range(4):
        np.multiply(plan.ground_colour[b][idx], tex, out=refl[b])
    # green grass fades into dry grass near the threshold of the ground field
    fi = np.flatnonzero((gid < 0) & (base == Mat.GRASS))
    thr = np.float32(plan.veg_threshold + 0.07)
    dry = np.clip((thr - ng[fi]) / np.float32(0.07), 0, 1) * np.float32(0.6)
    target = plan.base_colour[Mat.DRY_GRASS][:, None] * tex[fi][None, :]
    refl[:, fi] += (target - refl[:, fi]) * dry[None, :]
    return mat, refl


def _paint(plan: Plan, ctx: _Ctx, refl: F32, cls: NDArray[np.uint8], height: F32) -> None:
    """Lane markings and cars (on road pixels only)."""
    road = cls == ROAD
    sel = np.sort(plan.mark_tree.query(ctx.qbox))
    if len(sel):
        m = _burn(plan.marks[sel], np.ones(len(sel), np.uint8), ctx, np.uint8, True) > 0
        fi = np.flatnonzero(m & road)
        flat = refl.reshape(4, -1)
        flat[:, fi] = flat[:, fi] * np.float32(0.3) + WHITE_PAINT[:, None] * np.float32(0.7)
    sel = np.sort(plan.car_tree.query(ctx.qbox))
    if len(sel):
        cid = _burn(plan.car_geoms[sel], np.arange(1, len(sel) + 1), ctx, np.int32)
        fi = np.flatnonzero((cid > 0) & road)
        refl.reshape(4, -1)[:, fi] = plan.car_colour[sel[cid.ravel()[fi] - 1]].T
        height.ravel()[fi] = np.float32(1.5)


def render_block(plan: Plan, core: Window) -> tuple[DateBlock, DateBlock]:
    """Image, land cover and building instances of ``core`` at both dates."""
    ctx = _context(plan, core)
    shape = (ctx.pad.height, ctx.pad.width)
    g0, g1 = _area_ids(plan, ctx, 0), _area_ids(plan, ctx, 1)
    mat0, refl0 = _ground(plan, ctx, g0)
    mat1, refl1 = mat0.copy(), refl0.copy()
    diff = np.flatnonzero(g0 != g1)
    if len(diff):
        mat1[diff], refl1[:, diff] = _ground(plan, ctx, g1, diff)
    return (_render_date(plan, ctx, core, 0, mat0.reshape(shape), refl0.reshape(4, *shape)),
            _render_date(plan, ctx, core, 1, mat1.reshape(shape), refl1.reshape(4, *shape)))


def _render_date(plan: Plan, ctx: _Ctx, core: Window, date: int, mat: NDArray[np.uint8],
                 refl: F32) -> DateBlock:
    ill = plan.illum[date]
    pad = ctx.pad
    origin = (pad.row_off, pad.col_off)
    cls = MAT_CLASS[mat]
    height = np.zeros(mat.shape, np.float32)
    direct = np.ones(mat.shape, np.float32)
    _paint(plan, ctx, refl, cls, height)
    surfaces = []
    trees = shading.crowns(plan, date, mat.shape, origin, ctx.n_fine, ctx.n_mid, ill)
    surfaces.append(trees)
    cls.ravel()[trees.at] = VEG
    layer = plan.layers[date]
    bsel = np.sort(layer.tree.query(ctx.qbox))
    inst = _burn(layer.geoms[bsel], layer.ids[bsel], ctx, np.uint32).astype(np.uint32)
    if len(bsel):
        psel = np.sort(layer.part_tree.query(ctx.qbox)).astype(np.int64)
        part = _burn(layer.part_geoms[psel], np.arange(1, len(psel) + 1), ctx, np.int32)
        surfaces.append(shading.roofs(plan, layer, inst, part, psel, origin, ctx.n_mid,
                                      ctx.n_fine, ill))
    cls[inst > 0] = BUILDING
    for s in surfaces:
        flat = refl.reshape(4, -1)
        flat[:, s.at] = s.colour.T
        direct.ravel()[s.at] = s.direct
        height.ravel()[s.at] = s.height
    reach = plan.margin() - 6
    shadow = shading.cast_shadows(height, ill, plan.pixel_size, reach)
    amb = np.float32(ill.ambient)
    lit = direct * (~shadow).astype(np.float32)
    for b in range(4):
        tint = np.float32(ill.tint[b])
        norm = amb * tint + (1 - amb)
        refl[b] *= (amb * tint + (1 - amb) * lit) / norm
    refl = shading.blur(refl)
    inner = core.relative_to(pad)
    rs, cs = inner.slices()
    rows, cols = ctx.rows[rs], ctx.cols[cs]
    image = shading.expose(refl[:, rs, cs], ill, rows, cols, subkey(plan.key, 31, date))
    landcover = cls[rs, cs].copy()
    instances = inst[rs, cs].copy()
    collar = shading.collar_mask(plan, rows, cols)
    if collar.any():
        image[:, collar] = 0
        landcover[collar] = LANDCOVER_NODATA
        instances[collar] = 0
    return DateBlock(image, landcover, instances)
