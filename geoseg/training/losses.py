"""Segmentation losses: cross-entropy, soft Dice, focal, a weighted sum, and boundary weights.

All take logits ``(N, K, H, W)`` and integer targets ``(N, H, W)`` in which ``IGNORE`` (255)
marks pixels that carry no label (nodata); those pixels contribute nothing to any term.

Boundary weighting (``boundary_weight`` w > 0, ``boundary_sigma`` σ px) multiplies the
per-pixel cross-entropy and focal terms by ``1 + w * exp(-d² / 2σ²)``, where d is the Euclidean
distance (px) to the nearest *class edge pixel* (a labelled pixel with a 4-neighbour of another
labelled class; both sides of an edge are edge pixels, so d = 0 there). Edges with ``IGNORE``
pixels and the chip border are not class edges. This is a simplification of the U-Net paper's
map (Ronneberger et al. 2015, which uses the distances to the two nearest objects and a class
balancing term): it only needs a class raster, so it serves land cover and buildings alike.
Weighted terms are normalised by the sum of their weights, so w changes the emphasis, not the
scale, of the loss.

Contact weighting (``contact_weight`` c > 0, buildings targets only) multiplies the same terms by
``1 + c`` on *contact* pixels: boundary-class pixels with no background pixel within
``contact_radius`` px, i.e. the party walls between touching buildings (the outer ring of a
building always has background next to it). They are a few percent of the boundary pixels, and
the footprints of terraced houses merge where the model misses them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from geoseg.errors import ConfigError
from geoseg.training.targets import IGNORE

TERMS = ("ce", "dice", "focal")


class LossConfig(BaseModel):
    """Weights of the loss terms (a term with weight 0 is not computed) and their options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ce: float = Field(default=1.0, ge=0, description="cross-entropy weight")
    dice: float = Field(default=1.0, ge=0, description="soft Dice weight")
    focal: float = Field(default=0.0, ge=0, description="focal loss weight")
    focal_gamma: float = Field(default=2.0, ge=0)
    focal_alpha: tuple[float, ...] | None = Field(default=None, description=(
        "per-class focal weights (one per class); None = 1 for every class"))
    boundary_weight: float = Field(default=0.0, ge=0, description=(
        "w in 1 + w * exp(-d²/2σ²) on the CE and focal terms; 0 = off"))
    boundary_sigma: float = Field(default=3.0, gt=0, description="σ in px")
    contact_weight: float = Field(default=0.0, ge=0, description=(
        "c in 1 + c on boundary pixels between touching buildings (CE and focal); 0 = off"))
    contact_radius: int = Field(default=3, ge=1, description=(
        "a boundary pixel with no background pixel this close (px) is a contact pixel"))


def parse_loss(text: str) -> dict[str, float]:
    """Term weights from a CLI string: ``ce+dice`` (weights 1), ``focal``, or
    ``ce:1,dice:0.5,focal:1``. Terms not named get weight 0."""
    out = dict.fromkeys(TERMS, 0.0)
    for part in filter(None, (p.strip() for p in re.split(r"[+,]", text))):
        name, _, value = part.partition(":")
        name = name.strip().lower()
        if name not in TERMS:
            raise ConfigError(f"--loss {text!r}: unknown term {name!r}; use {', '.join(TERMS)} "
                              "as in 'ce+dice' or 'ce:1,dice:0.5'")
        try:
            out[name] = float(value) if value else 1.0
        except ValueError:
            raise ConfigError(f"--loss {text!r}: {value!r} is not a number") from None
        if out[name] < 0:
            raise ConfigError(f"--loss {text!r}: weights must be >= 0")
    if not any(out.values()):
        raise ConfigError(f"--loss {text!r}: give at least one term with a weight > 0")
    return out


def _valid(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    valid = target != IGNORE
    return valid, torch.where(valid, target, torch.zeros_like(target))


def _weighted_mean(per_pixel: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum(w * x) / sum(w); 0 (with a gradient path) when no pixel is labelled."""
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1e-12)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                  class_weights: torch.Tensor | None = None,
                  pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``-log softmax(logits)[y]`` over labelled pixels, weighted by
    ``class_weights[y] * pixel_weights`` (as torch's weighted mean when no pixel weights)."""
    valid, y = _valid(target)
    nll = -F.log_softmax(logits.float(), dim=1).gather(1, y[:, None])[:, 0]
    weight = valid.to(nll.dtype)
    if class_weights is not None:
        weight = weight * class_weights.to(nll)[y]
    if pixel_weights is not None:
        weight = weight * pixel_weights.to(nll)
    return _weighted_mean(nll, weight)


def focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
          alpha: torch.Tensor | None = None,
          pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss ``-alpha[y] (1 - p_y)^gamma log p_y`` (Lin et al. 2017), averaged over the
    labelled pixels (weighted by ``pixel_weights``; alpha scales the terms, it is not part of
    the normaliser). gamma = 0 and no alpha give cross-entropy."""
    valid, y = _valid(target)
    logp = F.log_softmax(logits.float(), dim=1).gather(1, y[:, None])[:, 0]
    loss = -((1.0 - logp.exp()).clamp_min(0.0) ** gamma) * logp
    if alpha is not None:
        loss = loss * alpha.to(loss)[y]
    weight = valid.to(loss.dtype)
    if pixel_weights is not None:
        weight = weight * pixel_weights.to(loss)
    return _weighted_mean(loss, weight)


def soft_dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``1 - mean_c 2 Σ p_c g_c / (Σ p_c + Σ g_c)`` over the batch's labelled pixels, the mean
    taken over the classes present in the target (smp's DiceLoss also counts absent classes,
    as zeros, in its mean; both agree when every class is present)."""
    valid, y = _valid(target)
    k = logits.shape[1]
    prob = F.softmax(logits.float(), dim=1) * valid[:, None]
    truth = F.one_hot(y, k).permute(0, 3, 1, 2).to(prob) * valid[:, None]
    dims = (0, 2, 3)
    inter = (prob * truth).sum(dims)
    card = prob.sum(dims) + truth.sum(dims)
    score = 2.0 * inter / card.clamp_min(eps)
    present = truth.sum(dims) > 0
    if not bool(present.any()):
        return prob.sum() * 0.0
    return 1.0 - score[present].mean()


def boundary_weights(target: np.ndarray, weight: float, sigma: float) -> np.ndarray:
    """float32 ``(N, H, W)`` (or ``(H, W)``) map ``1 + weight * exp(-d²/2σ²)``, d = distance
    in px to the nearest class edge pixel of the same chip (module docstring); 1 everywhere
    in a chip without edges."""
    t = np.asarray(target)
    if t.ndim == 2:
        return boundary_weights(t[None], weight, sigma)[0]
    out = np.ones(t.shape, dtype=np.float32)
    for i, chip in enumerate(t):
        edge = np.zeros(chip.shape, dtype=bool)
        lab = chip != IGNORE
        # vertical and horizontal neighbour pairs with two different labelled classes
        v = lab[1:] & lab[:-1] & (chip[1:] != chip[:-1])
        h = lab[:, 1:] & lab[:, :-1] & (chip[:, 1:] != chip[:, :-1])
        edge[1:] |= v
        edge[:-1] |= v
        edge[:, 1:] |= h
        edge[:, :-1] |= h
        if edge.any():
            d = ndimage.distance_transform_edt(~edge)
            out[i] = 1.0 + weight * np.exp(-(d * d) / (2.0 * sigma * sigma))
    return out


def contact_mask(target: torch.Tensor, radius: int, background: int = 0,
                 boundary: int = 2) -> torch.Tensor:
    """bool ``(N, H, W)``: boundary pixels with no background pixel within ``radius`` px
    (Chebyshev), the walls between touching buildings. Outside the chip counts as no
    background."""
    bg = (target == background).to(torch.float32)[:, None]
    near = F.max_pool2d(bg, kernel_size=2 * radius + 1, stride=1, padding=radius)[:, 0] > 0
    return (target == boundary) & ~near


class SegLoss:
    """The configured weighted sum of loss terms, callable as ``loss(logits, target)``."""

    def __init__(self, config: LossConfig, num_classes: int,
                 class_weights: Sequence[float] | None = None) -> None:
        if not any((config.ce, config.dice, config.focal)):
            raise ConfigError("loss: every term has weight 0; give ce, dice or focal a weight")
        for name, values in (("class_weights", class_weights),
                             ("loss.focal_alpha", config.focal_alpha)):
            if values is not None and len(values) != num_classes:
                raise ConfigError(f"{name} needs {num_classes} values (one per class), "
                                  f"got {len(values)}")
        self.config = config
        self.class_weights = (torch.tensor(class_weights, dtype=torch.float32)
                              if class_weights else None)
        self.alpha = (torch.tensor(config.focal_alpha, dtype=torch.float32)
                      if config.focal_alpha else None)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        c = self.config
        pixel = None
        if c.boundary_weight > 0 and (c.ce or c.focal):
            w = boundary_weights(target.cpu().numpy(), c.boundary_weight, c.boundary_sigma)
            pixel = torch.from_numpy(w).to(logits.device)
        if c.contact_weight > 0 and (c.ce or c.focal):
            extra = 1.0 + c.contact_weight * contact_mask(target, c.contact_radius).float()
            pixel = extra if pixel is None else pixel * extra
        total = logits.new_zeros((), dtype=torch.float32)
        if c.ce:
            total = total + c.ce * cross_entropy(logits, target, self.class_weights, pixel)
        if c.dice:
            total = total + c.dice * soft_dice(logits, target)
        if c.focal:
            total = total + c.focal * focal(logits, target, c.focal_gamma, self.alpha, pixel)
        return total

    def describe(self) -> str:
        """One line for the bundle's training provenance."""
        c = self.config
        terms = []
        if c.ce:
            terms.append(f"{c.ce:g} x cross-entropy"
                         + (" (class weights)" if self.class_weights is not None else ""))
        if c.dice:
            terms.append(f"{c.dice:g} x soft Dice")
        if c.focal:
            terms.append(f"{c.focal:g} x focal (gamma {c.focal_gamma:g}"
                         + (", alpha per class" if self.alpha is not None else "") + ")")
        text = " + ".join(terms)
        if c.boundary_weight and (c.ce or c.focal):
            text += (f"; CE/focal pixel weights 1 + {c.boundary_weight:g} x "
                     f"exp(-d²/2x{c.boundary_sigma:g}²) from class edges")
        if c.contact_weight and (c.ce or c.focal):
            text += (f"; x (1 + {c.contact_weight:g}) on boundary pixels with no background "
                     f"within {c.contact_radius} px (walls between touching buildings)")
        return text + f", ignore {IGNORE}"
