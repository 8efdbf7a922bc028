"""Build the torch module a bundle's ``architecture`` names (random weights; no model hub).

Semantic models come from segmentation-models-pytorch (U-Net, DeepLabv3+); the instance model is
torchvision's Mask R-CNN (see :mod:`geoseg.models.maskrcnn`). Encoders are always built with
``encoder_weights=None``: weights come from the bundle's safetensors file only.
"""

from __future__ import annotations

import logging

import segmentation_models_pytorch as smp
import torch
from torch import nn

from geoseg.bundle import ArchitectureSpec, BundleSpec
from geoseg.errors import BundleError

logger = logging.getLogger(__name__)

SEMANTIC_ARCHITECTURES = ("unet", "deeplabv3plus")


def build_model(spec: BundleSpec) -> nn.Module:
    """The (untrained) network described by ``spec.architecture``, for ``len(spec.bands)``
    input bands and ``spec.num_classes`` outputs."""
    arch = spec.architecture
    in_channels = len(spec.bands)
    if arch.name == "maskrcnn":
        from geoseg.models.maskrcnn import build_maskrcnn

        return build_maskrcnn(arch, in_channels, spec.tile_size)
    return build_semantic(arch, in_channels, spec.num_classes)


def build_semantic(arch: ArchitectureSpec, in_channels: int, num_classes: int) -> nn.Module:
    """smp U-Net or DeepLabv3+ whose encoder keeps only the stages it uses."""
    model: nn.Module
    try:
        if arch.name == "unet":
            decoder = arch.decoder_channels or (256, 128, 64, 32, 16)[: arch.encoder_depth]
            if len(decoder) != arch.encoder_depth:
                raise BundleError(
                    f"unet decoder_channels {tuple(decoder)} must have encoder_depth="
                    f"{arch.encoder_depth} entries: fix architecture.decoder_channels")
            model = smp.Unet(arch.encoder, encoder_depth=arch.encoder_depth,
                             encoder_weights=None, decoder_channels=tuple(decoder),
                             in_channels=in_channels, classes=num_classes)
        elif arch.name == "deeplabv3plus":
            channels = arch.decoder_channels[0] if arch.decoder_channels else 256
            model = smp.DeepLabV3Plus(arch.encoder, encoder_depth=arch.encoder_depth,
                                      encoder_weights=None, decoder_channels=channels,
                                      in_channels=in_channels, classes=num_classes)
        else:
            raise BundleError(f"{arch.name!r} is not a semantic architecture: use one of "
                              f"{SEMANTIC_ARCHITECTURES}")
    except (KeyError, ValueError) as exc:
        if isinstance(exc, BundleError):
            raise
        if "encoder name" in str(exc):
            raise BundleError(f"unknown encoder {arch.encoder!r} for {arch.name}: use one of "
                              "segmentation-models-pytorch's encoders (e.g. resnet18, "
                              "resnet34, efficientnet-b0, mit_b0)") from exc
        raise BundleError(f"cannot build {arch.name} with encoder {arch.encoder!r}: {exc}; "
                          "fix the bundle's architecture section") from exc
    _trim_encoder(model, arch.encoder_depth)
    return model


def _trim_encoder(model: nn.Module, depth: int) -> None:
    """Replace ResNet stages beyond ``depth`` by identities.

    smp keeps ``layer3``/``layer4`` in the encoder even when ``encoder_depth`` never runs them;
    dropping them keeps the weights file small (ResNet-18 ``layer4`` alone is 8.4 M parameters).
    Stage ``i`` (``layer{i}``) runs only when ``depth > i``.
    """
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        return
    for i in range(max(depth, 1), 5):
        name = f"layer{i}"
        if isinstance(getattr(encoder, name, None), nn.Module):
            setattr(encoder, name, nn.Identity())


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (for reports)."""
    return sum(int(p.numel()) for p in model.parameters())


def is_semantic(spec: BundleSpec) -> bool:
    return spec.architecture.name in SEMANTIC_ARCHITECTURES


def dummy_input(spec: BundleSpec, size: int = 64) -> torch.Tensor:
    """A zero batch of one ``size``² tile with the bundle's band count (for export/tests)."""
    return torch.zeros(1, len(spec.bands), size, size)
