"""Per-pixel appearance of roofs and tree crowns, cast shadows, and the sensor model.

All functions take arrays of one padded block and global pixel coordinates, so results depend
only on the position of a pixel in the scene, never on the block it is rendered in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from geoseg.sample.city_plan import Illumination, Layer, Plan
from geoseg.sample.noise import noise1d, subkey, white
from geoseg.sample.shapes import DOME, FLAT, GABLE, HIP

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
SOLAR = np.array([0.07, 0.09, 0.16, 0.10], np.float32)


@dataclass
class Surface:
    """Appearance of some pixels (flat indices ``at``): colour, direct light, height (m)."""

    at: I64
    colour: F32  # (n, 4)
    direct: F32
    height: F32


def _lambert(nx: F64, ny: F64, nz: F64, sun: tuple[float, float, float]) -> F32:
    d = (nx * sun[0] + ny * sun[1] + nz * sun[2]) / sun[2]
    return np.maximum(d, 0.0).astype(np.float32)


def roofs(plan: Plan, layer: Layer, inst: NDArray[np.uint32], part: NDArray[np.int32],
          psel: I64, origin: tuple[int, int], n_mid: F32, n_fine: F32,
          ill: Illumination) -> Surface:
    """Roof colour, shading and height for every building pixel of a padded block."""
    w = inst.shape[1]
    at = np.flatnonzero(inst.ravel())
    bid = inst.ravel()[at].astype(np.int64)
    pl = part.ravel()[at].astype(np.int64) - 1
    pg = np.where(pl >= 0, psel[np.maximum(pl, 0)], 0)
    ok = (pl >= 0) & (layer.part[pg, 0].astype(np.int64) == bid)
    prm = layer.part[pg]
    rt = np.where(ok, layer.part_roof[pg], FLAT)
    rise = np.where(ok, layer.part_rise[pg], 0.0).astype(np.float64)
    y = (at // w + origin[0]).astype(np.float64) + 0.5
    x = (at % w + origin[1]).astype(np.float64) + 0.5
    rx, ry = x - prm[:, 1], y - prm[:, 2]
    ux, uy, a, b = prm[:, 3], prm[:, 4], prm[:, 5], prm[:, 6]
    t = rx * ux + ry * uy
    s = -rx * uy + ry * ux
    ps = plan.pixel_size
    sun = ill.sun()
    # horizontal normal direction (hx, hy) and slope (rise per metre run) per pixel
    sgn_s = np.where(s >= 0, 1.0, -1.0)
    hx, hy = -uy * sgn_s, ux * sgn_s
    run = np.maximum(b, 1e-6)
    across = np.maximum(b - np.abs(s), 0.0)
    prof = across / run
    end = (rt == HIP) & ((a - np.abs(t)) < across)
    sgn_t = np.where(t >= 0, 1.0, -1.0)
    hx = np.where(end, ux * sgn_t, hx)
    hy = np.where(end, uy * sgn_t, hy)
    prof = np.where(end, np.maximum(a - np.abs(t), 0.0) / run, prof)
    dome = rt == DOME
    rr = np.hypot(rx, ry)
    hx = np.where(dome, rx / np.maximum(rr, 1e-6), hx)
    hy = np.where(dome, ry / np.maximum(rr, 1e-6), hy)
    prof = np.where(dome, np.maximum(1.0 - rr / np.maximum(a, 1e-6), 0.0), prof)
    slope = np.where(rt == FLAT, 0.0, rise / (run * ps))
    inv = 1.0 / np.sqrt(1.0 + slope * slope)
    direct = _lambert(hx * slope * inv, hy * slope * inv, inv, sun)
    height = plan.wall[bid] + (rise * np.where(rt == FLAT, 0.0, prof)).astype(np.float32)
    lr, lc = at // w, at % w
    nm, nf = n_mid[lr, lc], n_fine[lr, lc]
    tex = plan.roof_texture[bid]
    shade = 1.0 + tex * (2.0 * nm - 1.0) + np.float32(0.05) * (2.0 * nf - 1.0)
    flat = rt == FLAT
    rim = flat & (np.minimum(a - np.abs(t), b - np.abs(s)) < 0.6 / ps)
    shade = np.where(flat, shade + np.float32(0.1) * (2.0 * nf - 1.0), shade)
    shade = np.where(rim, shade * 1.12, shade)
    ridge = (rt == GABLE) | (rt == HIP)
    shade = np.where(ridge & (np.abs(s) < 0.6), shade * 1.06, shade)
    colour = plan.roof_colour[bid] * shade[:, None].astype(np.float32)
    facing = (hx * sun[0] + hy * sun[1]) > 0
    panel = (plan.solar[bid] & (rt == GABLE) & facing & (np.abs(s) > 0.25 * b)
             & (np.abs(s) < 0.85 * b) & (np.abs(t) < 0.7 * a))
    colour[panel] = SOLAR * (0.9 + 0.2 * nf[panel, None])
    edge = _edges(inst).ravel()[at]
    colour[edge] *= np.float32(0.78)
    return Surface(at, colour.astype(np.float32), direct, height.astype(np.float32))


def _edges(inst: NDArray[np.uint32]) -> NDArray[np.bool_]:
    """Building pixels whose 4-neighbourhood holds another id (outlines and party walls)."""
    e = np.zeros(inst.shape, bool)
    e[1:] |= inst[1:] != inst[:-1]
    e[:-1] |= inst[:-1] != inst[1:]
    e[:, 1:] |= inst[:, 1:] != inst[:, :-1]
    e[:, :-1] |= inst[:, :-1] != inst[:, 1:]
    return e & (inst > 0)


def crowns(plan: Plan, date: int, shape: tuple[int, int], origin: tuple[int, int], n_fine: F32,
           n_mid: F32, ill: Illumination, chunk: int = 1500) -> Surface:
    """Tree crowns (z-buffered by crown height) with sphere shading and leafy texture."""
    h, w = shape
    r0, c0 = origin
    tr = plan.trees
    x, y, r = tr[:, 0], tr[:, 1], tr[:, 2]
    sel = np.flatnonzero(plan.tree_alive[:, date] & (x + r >= c0) & (x - r <= c0 + w)
                         & (y + r >= r0) & (y - r <= r0 + h))
    best_h = np.full(h * w, -1.0, np.float32)
    best_t = np.full(h * w, -1, np.int32)
    for k in range(0, len(sel), chunk):
        idx = sel[k:k + chunk]
        tx, ty, trr, th = tr[idx, 0], tr[idx, 1], tr[idx, 2], tr[idx, 3]
        x0 = np.floor(tx - trr).astype(np.int64)
        y0 = np.floor(ty - trr).astype(np.int64)
        bw = np.floor(tx + trr).astype(np.int64) - x0 + 1
        bh = np.floor(ty + trr).astype(np.int64) - y0 + 1
        n = bw * bh
        tid = np.repeat(np.arange(len(idx)), n)
        loc = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        px = x0[tid] + loc % bw[tid] - c0
        py = y0[tid] + loc // bw[tid] - r0
        inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
        tid, px, py = tid[inside], px[inside], py[inside]
        d2, z = _sphere(px + c0, py + r0, tx[tid], ty[tid], trr[tid])
        q = 0.74 + 0.26 * n_fine[py, px].astype(np.float64)
        keep = d2 < q * q
        tid, pix, z = tid[keep], (py * w + px)[keep], z[keep]
        hh = (th[tid] * (0.45 + 0.55 * z)).astype(np.float32)
        order = np.lexsort((tid, hh, pix))
        pix_s = pix[order]
        last = np.ones(len(order), bool)
        last[:-1] = pix_s[1:] != pix_s[:-1]
        o = order[last]
        p = pix[o]
        win = hh[o] >= best_h[p]
        o, p = o[win], p[win]
        best_h[p], best_t[p] = hh[o], idx[tid[o]]
    at = np.flatnonzero(best_t >= 0)
    tg = best_t[at].astype(np.int64)
    lr, lc = at // w, at % w
    _, nz = _sphere(lc + c0, lr + r0, tr[tg, 0], tr[tg, 1], tr[tg, 2])
    dx = (lc + c0 + 0.5 - tr[tg, 0]) / tr[tg, 2]
    dy = (lr + r0 + 0.5 - tr[tg, 1]) / tr[tg, 2]
    direct = np.minimum(_lambert(dx, dy, np.maximum(nz, 0.15), ill.sun()), 1.6)
    leaf = (0.62 + 0.6 * n_fine[lr, lc]) * (0.9 + 0.2 * n_mid[lr, lc])
    colour = plan.tree_colour[tg] * leaf[:, None].astype(np.float32)
    return Surface(at, colour, direct, best_h[at])


def _sphere(px: I64, py: I64, cx: F64, cy: F64, r: F64) -> tuple[F64, F64]:
    """Squared normalised distance of pixel centres to crown centres, and sphere height."""
    dx = (px + 0.5 - cx) / r
    dy = (py + 0.5 - cy) / r
    d2 = dx * dx + dy * dy
    return d2, np.sqrt(np.maximum(1.0 - d2, 0.0))


def cast_shadows(height: F32, ill: Illumination, pixel_size: float, reach: int) -> NDArray[
        np.bool_]:
    """Pixels from which the sun is hidden by something taller along the sun direction."""
    sx, sy, sz = ill.sun()
    horiz = float(np.hypot(sx, sy))
    ux, uy = sx / horiz, sy / horiz
    drop = sz / horiz * pixel_size  # height the ray gains per pixel travelled
    h, w = height.shape
    acc = np.zeros_like(height)
    seen: set[tuple[int, int]] = set()
    top = float(height.max()) if height.size else 0.0
    for k in range(1, reach + 1):
        dc, dr = round(k * ux), round(k * uy)
        if (dc, dr) in seen:
            continue
        seen.add((dc, dr))
        gain = np.float32(np.hypot(dc, dr) * drop)
        if gain >= top:
            break
        if abs(dr) >= h or abs(dc) >= w:
            break
        dst = (slice(max(0, -dr), h - max(0, dr)), slice(max(0, -dc), w - max(0, dc)))
        src = (slice(max(0, dr), h - max(0, -dr)), slice(max(0, dc), w - max(0, -dc)))
        np.maximum(acc[dst], height[src] - gain, out=acc[dst])
    return acc > height + np.float32(0.25)


def blur(refl: F32) -> F32:
    """Optical blur (Gaussian, sigma 0.7 px) of each band, in place."""
    tmp = np.empty_like(refl[0])
    for b in range(refl.shape[0]):
        ndimage.gaussian_filter(refl[b], 0.7, output=tmp, mode="nearest", truncate=4.0)
        refl[b] = tmp
    return refl


def expose(refl: F32, ill: Illumination, rows: I64, cols: I64, key: int) -> NDArray[np.uint8]:
    """Exposure, haze, gamma, sensor noise and quantisation to 1..255 (0 stays for nodata)."""
    levels = np.arange(4096, dtype=np.float64) / 4095.0
    lut = (255.0 * levels ** (1.0 / ill.gamma)).astype(np.float32)
    h1 = white(rows, cols, key)
    h2 = white(rows, cols, key ^ 0x51ED27)
    out = np.empty(refl.shape, np.uint8)
    v = np.empty(refl.shape[1:], np.float32)
    u = np.empty(refl.shape[1:], np.float32)
    for b in range(refl.shape[0]):
        np.multiply(refl[b], np.float32(ill.gain[b] * 4095.0), out=v)
        v += np.float32(ill.haze[b] * 4095.0)
        np.clip(v, 0, 4095, out=v)
        dn = lut[v.astype(np.int32)]
        shift = np.uint32(8 * b)
        u[...] = (h1 >> shift) & np.uint32(255)
        u += (h2 >> shift) & np.uint32(255)
        u -= np.float32(255.0)
        u *= np.float32(ill.noise_dn / 104.0)
        dn += u
        np.rint(dn, out=dn)
        np.clip(dn, 1, 255, out=dn)
        out[b] = dn
    return out


def collar_mask(plan: Plan, rows: I64, cols: I64) -> NDArray[np.bool_]:
    """Irregular nodata collar along the four scene edges (``collar`` to ``collar + extra``)."""
    h, w = plan.shape
    c, e = plan.collar, plan.collar_extra
    if c <= 0:
        return np.zeros((len(rows), len(cols)), bool)

    def width(t: I64, salt: int) -> I64:
        n = noise1d(t, 48.0, subkey(plan.key, salt))
        return c + np.floor(n * np.float32(e + 1)).astype(np.int64)

    left, right = width(rows, 11)[:, None], width(rows, 12)[:, None]
    top, bottom = width(cols, 13)[None, :], width(cols, 14)[None, :]
    cc, rr = cols[None, :], rows[:, None]
    return (cc < left) | (cc >= w - right) | (rr < top) | (rr >= h - bottom)
