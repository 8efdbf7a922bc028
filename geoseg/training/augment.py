"""Training augmentations of a normalised chip ``(C, H, W)`` and its target ``(H, W)``.

Joint (geometry, image and target together): random 90° rotation, flips, and a random zoom.
Image-only: contrast/brightness jitter, Gaussian blur, Gaussian noise. Every random number is
drawn from the numpy Generator passed in, so a chip's augmentation is a function of the
Generator state (and draws are only made for enabled operations).

Zoom: a factor s is drawn log-uniformly from ``scale`` (so 0.75 and 1.33 are equally likely
extremes). s > 1 resizes a random ``H/s`` crop of the chip up to ``H``; s < 1 resizes the whole
chip down to ``s·H`` and places it at a random offset in an ``H`` canvas whose rim is image 0
(the normalised mean, the same fill nodata gets) and target ``IGNORE``, so the rim never
trains. The sampler therefore reads chips of the usual size. Images are resampled bilinearly,
targets by nearest neighbour on the same pixel-centre coordinates (labels are never
interpolated). For the buildings task the boundary ring is scaled too (1.5-2.7 px for a 2-px
ring at the default range); narrow ``scale`` if that matters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage

from geoseg.training.targets import IGNORE


class AugmentConfig(BaseModel):
    """Which augmentations run and how strong they are (``AugmentConfig.off()``: none)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rot90: bool = True
    flips: bool = True
    scale: tuple[float, float] | None = Field(default=(0.75, 1.33), description=(
        "zoom factor range (log-uniform); None = no zoom"))
    scale_p: float = Field(default=0.5, ge=0, le=1, description="probability of a zoom")
    contrast: tuple[float, float] | None = (0.8, 1.2)
    brightness: float = Field(default=0.2, ge=0, description="± offset in σ units, per band")
    blur: float = Field(default=0.3, ge=0, le=1, description="probability of a Gaussian blur")
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    noise: float = Field(default=0.08, ge=0, description="max σ of additive Gaussian noise")

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        for name in ("scale", "contrast", "blur_sigma"):
            r = getattr(self, name)
            if r is not None and not 0 < r[0] <= r[1]:
                raise ValueError(f"augment.{name} must be (low, high) with 0 < low <= high")
        return self

    @classmethod
    def off(cls) -> AugmentConfig:
        return cls(rot90=False, flips=False, scale=None, contrast=None, brightness=0.0,
                   blur=0.0, noise=0.0)

    @classmethod
    def coerce(cls, value: Any) -> Any:
        """``None`` / ``"none"`` / ``False`` mean no augmentation (for configs and YAML)."""
        if value is None or value is False or (isinstance(value, str)
                                               and value.lower() in ("none", "off")):
            return cls.off()
        return value

    def describe(self) -> str:
        parts = []
        if self.rot90:
            parts.append("rot90")
        if self.flips:
            parts.append("flips")
        if self.scale:
            parts.append(f"zoom {self.scale[0]:g}-{self.scale[1]:g} (p {self.scale_p:g})")
        if self.contrast:
            parts.append(f"contrast {self.contrast[0]:g}-{self.contrast[1]:g}")
        if self.brightness:
            parts.append(f"brightness ±{self.brightness:g}σ")
        if self.blur:
            parts.append(f"blur σ {self.blur_sigma[0]:g}-{self.blur_sigma[1]:g} "
                         f"(p {self.blur:g})")
        if self.noise:
            parts.append(f"noise σ≤{self.noise:g}")
        return ", ".join(parts) or "none"


def _axis(out: int, src: int, rng: np.random.Generator,
          factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates (pixel centres) of ``out`` output pixels and their validity."""
    i = np.arange(out, dtype=np.float64)
    if factor >= 1.0:          # zoom in: a random crop of size out/factor, resized to out
        size = max(1, round(out / factor))
        off = int(rng.integers(src - size + 1))
        return off + (i + 0.5) * size / out - 0.5, np.ones(out, dtype=bool)
    size = max(1, round(out * factor))   # zoom out: src resized to size, placed at off
    off = int(rng.integers(out - size + 1))
    coords = (i - off + 0.5) * src / size - 0.5
    return coords, (i >= off) & (i < off + size)


def zoom(image: np.ndarray, target: np.ndarray, factor: float,
         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Zoom by ``factor`` keeping the chip size (module docstring); bilinear image, nearest
    target, both sampled at the same coordinates."""
    _, h, w = image.shape
    rows, rvalid = _axis(h, h, rng, factor)
    cols, cvalid = _axis(w, w, rng, factor)
    rr, cc = np.meshgrid(np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1), indexing="ij")
    out = np.stack([ndimage.map_coordinates(band, (rr, cc), order=1, mode="nearest")
                    for band in image]).astype(np.float32)
    # nearest: round half up on the same coordinates (map_coordinates order=0 rounds too,
    # but indexing is exact for integer labels of any dtype)
    ri = np.floor(rr + 0.5).astype(np.intp)
    ci = np.floor(cc + 0.5).astype(np.intp)
    lab = target[ri, ci]
    inside = rvalid[:, None] & cvalid[None, :]
    out[:, ~inside] = 0.0
    lab = np.where(inside, lab, np.asarray(IGNORE, dtype=target.dtype))
    return out, lab


def augment(image: np.ndarray, target: np.ndarray, rng: np.random.Generator,
            config: AugmentConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Augment a normalised chip and its target (default: ``AugmentConfig()``).

    Draw order: rotation, flips, zoom, contrast, brightness, blur, noise; with ``scale=None``
    and ``blur=0`` the draws are those of the earlier rotation/flip/jitter/noise recipe."""
    c = AugmentConfig() if config is None else config
    if c.rot90:
        k = int(rng.integers(4))
        image, target = np.rot90(image, k, axes=(1, 2)), np.rot90(target, k)
    if c.flips:
        if rng.random() < 0.5:
            image, target = image[:, :, ::-1], target[:, ::-1]
        if rng.random() < 0.5:
            image, target = image[:, ::-1], target[::-1]
    if c.scale is not None and c.scale_p > 0 and rng.random() < c.scale_p:
        lo, hi = np.log(c.scale[0]), np.log(c.scale[1])
        image, target = zoom(image, target, float(np.exp(rng.uniform(lo, hi))), rng)
    image = np.asarray(image, dtype=np.float32)
    if c.contrast is not None:
        image = image * np.float32(rng.uniform(*c.contrast))
    if c.brightness:
        shift = rng.uniform(-c.brightness, c.brightness, size=(image.shape[0], 1, 1))
        image = image + shift.astype(np.float32)
    if c.blur > 0 and rng.random() < c.blur:
        sigma = float(rng.uniform(*c.blur_sigma))
        image = ndimage.gaussian_filter(image, sigma=(0.0, sigma, sigma), mode="reflect")
    if c.noise:
        sigma = rng.uniform(0.0, c.noise)
        image = image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(target)
