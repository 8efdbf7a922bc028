"""Deterministic noise as a pure function of global coordinates.

Every value here is a hash of integer lattice coordinates and a key, so any window of the scene
can be evaluated on its own and agrees bit for bit with every other window that overlaps it.
That is what makes block-by-block rendering seam-free and independent of the block size. Only
IEEE-exact operations (add, multiply, integer mixing) are used per pixel.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
U32 = NDArray[np.uint32]

_M1 = np.uint32(0x8DA6B343)
_M2 = np.uint32(0xD8163841)
_M3 = np.uint32(0x7FEB352D)
_M4 = np.uint32(0x846CA68B)
_GOLDEN = 0x9E3779B9


def subkey(key: int, *salt: int) -> int:
    """A new 32-bit key derived from ``key`` and ``salt`` (independent noise fields)."""
    k = key & 0xFFFFFFFF
    for s in salt:
        k ^= (s * _GOLDEN) & 0xFFFFFFFF
        k ^= k >> 16
        k = (k * 0x7FEB352D) & 0xFFFFFFFF
        k ^= k >> 15
        k = (k * 0x846CA68B) & 0xFFFFFFFF
        k ^= k >> 16
    return k


def _mix(h: U32) -> U32:
    h = h ^ (h >> np.uint32(16))
    h = h * _M3
    h = h ^ (h >> np.uint32(15))
    h = h * _M4
    return h ^ (h >> np.uint32(16))


def hash2(ix: NDArray[np.integer], iy: NDArray[np.integer], key: int) -> U32:
    """32-bit hash of integer coordinates (broadcasting); negative coordinates are fine."""
    hx = ix.astype(np.int64).astype(np.uint32) * _M1
    hy = iy.astype(np.int64).astype(np.uint32) * _M2
    return _mix(hx ^ hy ^ np.uint32(key & 0xFFFFFFFF))


def to_unit(h: U32) -> F32:
    """Hash bits to floats uniform in [0, 1) (24-bit exact)."""
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _axis(coords: NDArray[np.integer], cell: float) -> tuple[NDArray[np.int64], F32]:
    """Lattice index and smoothstep weight along one axis (pixel centres at ``coords + 0.5``)."""
    pos = (coords.astype(np.float64) + 0.5) / cell
    i0 = np.floor(pos)
    f = (pos - i0).astype(np.float32)
    return i0.astype(np.int64), f * f * (np.float32(3.0) - np.float32(2.0) * f)


def value_noise(rows: NDArray[np.integer], cols: NDArray[np.integer], cell: float,
                key: int) -> F32:
    """Smooth value noise in [0, 1) on the grid ``rows x cols`` (global pixel indices).

    Separable evaluation: the small lattice is interpolated along x first, then along y.
    """
    iy, sy = _axis(rows, cell)
    ix, sx = _axis(cols, cell)
    y0, x0 = int(iy.min()), int(ix.min())
    ly = np.arange(y0, int(iy.max()) + 2)
    lx = np.arange(x0, int(ix.max()) + 2)
    lat = to_unit(hash2(lx[None, :], ly[:, None], key))
    cx = ix - x0
    along_x = lat[:, cx] + (lat[:, cx + 1] - lat[:, cx]) * sx[None, :]
    cy = iy - y0
    top = along_x[cy]
    return top + (along_x[cy + 1] - top) * sy[:, None]


def fbm(rows: NDArray[np.integer], cols: NDArray[np.integer], cell: float, octaves: int,
        key: int, gain: float = 0.5) -> F32:
    """Fractal sum of ``octaves`` value-noise layers (cell halves each octave), in [0, 1)."""
    out = np.zeros((len(rows), len(cols)), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        c = cell / (2 ** o)
        if c < 1.5 and o > 0:
            break
        out += np.float32(amp) * value_noise(rows, cols, c, subkey(key, o))
        total += amp
        amp *= gain
    out *= np.float32(1.0 / total)
    return out


def white(rows: NDArray[np.integer], cols: NDArray[np.integer], key: int) -> U32:
    """Independent 32 random bits per pixel."""
    return hash2(cols[None, :], rows[:, None], key)


def noise1d(t: NDArray[np.integer], cell: float, key: int) -> F32:
    """Smooth 1-D value noise in [0, 1) at integer positions ``t``."""
    i, s = _axis(t, cell)
    zero = np.zeros_like(i)
    a = to_unit(hash2(i, zero, key))
    b = to_unit(hash2(i + 1, zero, key))
    return a + (b - a) * s


def noise_at(x: F64, y: F64, cell: float, key: int) -> F64:
    """Value noise in [0, 1) at scattered points (plan coordinates, any unit)."""
    px, py = np.asarray(x, np.float64) / cell, np.asarray(y, np.float64) / cell
    ix, iy = np.floor(px), np.floor(py)
    fx, fy = px - ix, py - iy
    sx, sy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    ixi, iyi = ix.astype(np.int64), iy.astype(np.int64)

    def v(dx: int, dy: int) -> F64:
        return to_unit(hash2(ixi + dx, iyi + dy, key)).astype(np.float64)

    top = v(0, 0) + (v(1, 0) - v(0, 0)) * sx
    bot = v(0, 1) + (v(1, 1) - v(0, 1)) * sx
    return top + (bot - top) * sy
