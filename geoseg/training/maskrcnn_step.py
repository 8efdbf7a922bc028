"""Mask R-CNN training: instance-id chips, per-chip detection targets, one optimisation step.

Chips come from :class:`InstanceSampler`, a :class:`~geoseg.training.data.ChipSampler` whose
training target is the chip's instance ids instead of the building/boundary classes (the
validation windows still read the class target, so validation scores are those of the semantic
buildings bundles). Ids are renumbered per chip to 1..n, skipping ``IGNORE`` (255), and image
nodata pixels carry ``-1 - id``; the chip then goes through the same joint augmentation as the
semantic chips (:func:`geoseg.training.augment.augment`), whose rotations, flips and zoom move
label values without interpolating them (the zoom samples targets by nearest neighbour, and its
rim is ``IGNORE``, which is never an id here and becomes "no instance"). Decoding gives the ids
back: instances touching nodata keep all their pixels, the image there is the fill as usual.

Detection targets (:func:`detection_targets`) follow torchvision's format: one box per instance
id present in the (augmented) chip from its mask's extent, ``x1 = max col + 1`` and
``y1 = max row + 1``; label 1 (building); a uint8 mask. Instances with fewer than ``min_pixels``
px in the chip (e.g. cut by its edge) are dropped; chips without instances are valid negatives.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from geoseg.bundle import BundleSpec
from geoseg.grid import Window
from geoseg.io import read_window
from geoseg.models.maskrcnn import class_layout, instances_to_proba
from geoseg.training.augment import AugmentConfig, augment
from geoseg.training.data import ChipSampler
from geoseg.training.targets import IGNORE

MIN_PIXELS = 16
# Training-time sampling of the detector (no effect on the weights' layout or on inference).
# torchvision's defaults (512 RoIs per image, 2000 RPN proposals) are for GPUs; the mask head
# (4 conv layers of 256 channels on 14x14 per positive RoI) dominates a CPU step, so use Fast
# R-CNN's smaller RoI batch (it used 64 per image) and fewer proposals.
ROIS_PER_IMAGE = 128
RPN_PROPOSALS_TRAIN = 1000
GRAD_CLIP = 10.0   # max gradient norm: early box-regression losses of a random network spike

Targets = dict[str, torch.Tensor]


def encode_chip(ids: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """int32 code of an instance-id chip: ids renumbered 1..n (0 = none) skipping ``IGNORE``,
    and ``-1 - id`` where the image is nodata (see the module docstring)."""
    pos = ids > 0
    out = np.zeros(ids.shape, dtype=np.int32)
    _, inverse = np.unique(ids[pos], return_inverse=True)
    out[pos] = inverse.ravel() + 1
    out[out >= IGNORE] += 1
    return np.where(valid, out, -1 - out)


def decode_chip(code: np.ndarray) -> np.ndarray:
    """Instance ids (int32, 0 = none) of an (augmented) :func:`encode_chip` code."""
    ids = np.where(code < 0, -1 - code, code)
    ids[code == IGNORE] = 0          # the zoom's rim
    return ids.astype(np.int32, copy=False)


def detection_targets(ids: np.ndarray, min_pixels: int = MIN_PIXELS) -> Targets:
    """torchvision detection targets of an instance-id chip ``(H, W)`` (0 = none): ``boxes``
    ``(N, 4)`` float32 x0, y0, x1, y1 (exclusive max), ``labels`` ``(N,)`` int64 all 1,
    ``masks`` ``(N, H, W)`` uint8; instances under ``min_pixels`` px are dropped."""
    h, w = ids.shape
    pos = ids > 0
    lab = np.zeros((h, w), dtype=np.int32)
    values, inverse = np.unique(ids[pos], return_inverse=True)
    lab[pos] = inverse.ravel() + 1
    counts = np.bincount(lab.ravel(), minlength=len(values) + 1)
    boxes = []
    keep = []
    for i, box in enumerate(ndimage.find_objects(lab), start=1):
        if box is not None and counts[i] >= min_pixels:
            rows, cols = box
            boxes.append((cols.start, rows.start, cols.stop, rows.stop))
            keep.append(i)
    masks = (lab[None] == np.asarray(keep, dtype=np.int32)[:, None, None]).astype(np.uint8)
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.ones(len(keep), dtype=torch.int64),
            "masks": torch.from_numpy(masks)}


class InstanceSampler(ChipSampler):
    """A chip sampler whose training chips carry instance ids (:func:`encode_chip`)."""

    def read_chip(self, scene: int, win: Window) -> tuple[np.ndarray, np.ndarray]:
        data, valid = read_window(self.images[scene], win, tuple(self.bands))
        image = self.prepare(data, valid)
        return image, encode_chip(self.read_labels(scene, win), valid)

    def chip_valid_fraction(self, target: np.ndarray) -> float:
        return float(np.count_nonzero(target >= 0)) / max(1, target.size)


def instance_batch(sampler: ChipSampler, rng: np.random.Generator, n: int, mean: np.ndarray,
                   std: np.ndarray, aug: AugmentConfig | None = None,
                   min_pixels: int = MIN_PIXELS) -> tuple[list[torch.Tensor], list[Targets]]:
    """``n`` normalised, augmented chips and their detection targets."""
    images, targets = [], []
    for _ in range(n):
        image, code = sampler.train_chip(rng)
        image, code = augment((image - mean) / std, code, rng, aug)
        images.append(torch.from_numpy(image))
        targets.append(detection_targets(decode_chip(code), min_pixels))
    return images, targets


def configure_training(model: nn.Module) -> None:
    """Set the detector's training-time sampling (constants above) on a torchvision Mask R-CNN."""
    roi_heads: object = getattr(model, "roi_heads", None)
    rpn: object = getattr(model, "rpn", None)
    sampler = getattr(roi_heads, "fg_bg_sampler", None)
    if sampler is not None:
        sampler.batch_size_per_image = ROIS_PER_IMAGE
    for name in ("_pre_nms_top_n", "_post_nms_top_n"):
        top = getattr(rpn, name, None)
        if isinstance(top, dict):
            top["training"] = RPN_PROPOSALS_TRAIN


def detector_step(model: nn.Module, opt: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler | None, images: list[torch.Tensor],
                  targets: list[Targets], precision: str) -> float:
    """One Mask R-CNN step: the sum of its five losses (classifier, box regression, mask,
    objectness, RPN box regression) under autocast, gradient norm clipped to ``GRAD_CLIP``."""
    device = images[0].device.type
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    with torch.autocast(device, dtype=dtype, enabled=precision != "fp32"):
        parts = model(images, targets)
    loss = torch.stack([v.float() for v in parts.values()]).sum()
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
    return float(loss.detach())


def detector_classifier(model: nn.Module, spec: BundleSpec,
                        ) -> Callable[[torch.Tensor], np.ndarray]:
    """Class map ``(H, W)`` uint8 of one normalised tile ``(1, C, H, W)``, exactly as the
    :class:`~geoseg.models.Predictor` turns detections into probabilities (score and mask
    thresholds of ``spec``, :func:`instances_to_proba`), for validation."""
    layout = class_layout(spec)
    arch = spec.architecture

    def classify(x: torch.Tensor) -> np.ndarray:
        model.eval()
        with torch.inference_mode():
            det = model(list(x.unbind(0)))[0]
        scores = det["scores"].float().numpy()
        keep = scores >= arch.score_threshold
        masks = det["masks"][:, 0].float().numpy()[keep]
        proba = instances_to_proba(masks, scores[keep], spec.num_classes, layout,
                                   arch.mask_threshold)
        return proba.argmax(axis=0).astype(np.uint8)

    return classify
