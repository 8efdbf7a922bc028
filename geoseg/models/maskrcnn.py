"""Mask R-CNN for building instances, and its conversion to a per-class probability map.

The detector sees tiles exactly as the semantic models do: already normalised by the predictor
(so its transform uses mean 0 / std 1) and never resized (so masks line up with the tile's
pixels). Its output is turned into the same ``(K, H, W)`` probability map as a semantic
``buildings`` bundle (background, building and optionally boundary), so the rest of the pipeline
does not care which kind of model produced it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from geoseg.bundle import ArchitectureSpec, BundleSpec
from geoseg.errors import BundleError

DETECTOR_CLASSES = 2  # background, building
MASKRCNN_CLASS_NAMES = ("background", "building", "boundary")
# Buildings at ~0.5 m are 10-100 px across: anchors one octave smaller than torchvision's.
ANCHOR_SIZES = ((16,), (32,), (64,), (128,), (256,))


class NoResizeTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform without the resize step: tiles keep their pixel grid."""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None,
               ) -> tuple[Tensor, dict[str, Tensor] | None]:
        return image, target


def build_maskrcnn(arch: ArchitectureSpec, in_channels: int, tile_size: int) -> MaskRCNN:
    """Mask R-CNN with a ResNet-FPN backbone (random weights, trainable BatchNorm everywhere)
    for ``in_channels`` bands; two detector classes (background, building)."""
    try:
        backbone = resnet_fpn_backbone(backbone_name=arch.encoder, weights=None,
                                       trainable_layers=5, norm_layer=nn.BatchNorm2d)
    except (KeyError, ValueError) as exc:
        raise BundleError(f"Mask R-CNN needs a torchvision ResNet encoder (e.g. 'resnet18'), "
                          f"got {arch.encoder!r}") from exc
    body: Any = backbone.body
    old = body.conv1
    body.conv1 = nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size,
                           stride=old.stride, padding=old.padding, bias=False)
    sizes = tuple((s,) for s in arch.anchor_sizes) if arch.anchor_sizes else ANCHOR_SIZES
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    model = MaskRCNN(backbone, num_classes=DETECTOR_CLASSES, min_size=tile_size,
                     max_size=tile_size, image_mean=[0.0] * in_channels,
                     image_std=[1.0] * in_channels, rpn_anchor_generator=anchors,
                     box_detections_per_img=200)
    model.transform = NoResizeTransform(tile_size, tile_size, [0.0] * in_channels,
                                        [1.0] * in_channels)
    return model


def class_layout(spec: BundleSpec) -> tuple[int, int, int | None]:
    """Output channel of (background, building, boundary-or-None) for a Mask R-CNN bundle."""
    names = [c.name for c in spec.classes]
    unknown = set(names) - set(MASKRCNN_CLASS_NAMES)
    if unknown or "building" not in names or "background" not in names:
        raise BundleError(f"a maskrcnn bundle's classes must be background, building and "
                          f"optionally boundary; got {names}: fix the bundle's classes")
    boundary = spec.class_id("boundary") if "boundary" in names else None
    return spec.class_id("background"), spec.class_id("building"), boundary


def instances_to_proba(masks: np.ndarray, scores: np.ndarray, num_classes: int,
                       layout: tuple[int, int, int | None], mask_threshold: float = 0.5,
                       ring: int = 1) -> np.ndarray:
    """One tile's instances as a ``(K, H, W)`` float32 probability map.

    ``masks`` are ``(M, H, W)`` mask probabilities of kept instances, ``scores`` their scores.
    Building probability is the max over instances of ``score × mask``; where two instances
    touch, the pixels of each within ``ring`` px of the other become ``boundary`` (with the
    same probability), which is what lets the pipeline split touching buildings; background is
    one minus the rest.
    """
    bg, building, boundary = layout
    h, w = masks.shape[-2:]
    out = np.zeros((num_classes, h, w), dtype=np.float32)
    if len(masks) == 0:
        out[bg] = 1.0
        return out
    weighted = masks.astype(np.float32) * scores.astype(np.float32)[:, None, None]
    best = weighted.max(axis=0)
    owner = weighted.argmax(axis=0)
    inside = np.take_along_axis(masks, owner[None], axis=0)[0] >= mask_threshold
    labels = np.where(inside, owner + 1, 0).astype(np.int32)
    out[building] = best
    if boundary is not None:
        contact = touching_pixels(labels, ring)
        out[boundary] = np.where(contact, best, 0.0)
        out[building] = np.where(contact, 0.0, best)
    out[bg] = 1.0 - out[building] - (out[boundary] if boundary is not None else 0.0)
    np.clip(out[bg], 0.0, 1.0, out=out[bg])
    return out


def touching_pixels(labels: np.ndarray, ring: int = 1) -> np.ndarray:
    """Pixels of an instance that lie within ``ring`` px (square neighbourhood) of a pixel of
    another instance (background, label 0, does not count)."""
    size = 2 * ring + 1
    big = np.iinfo(np.int32).max
    hi = ndimage.maximum_filter(labels, size=size, mode="constant", cval=0)
    lo = ndimage.minimum_filter(np.where(labels > 0, labels, big), size=size, mode="constant",
                                cval=big)
    return (labels > 0) & ((hi != labels) | (lo != labels))
