from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from geoseg.bundle import BundleSpec
from geoseg.errors import BundleError
from geoseg.models import build_model, count_parameters


@pytest.mark.parametrize(("arch", "decoder"), [("unet", (16, 8, 8)), ("deeplabv3plus", (32,))])
def test_semantic_forward_shape(arch: str, decoder: tuple[int, ...],
                                spec_factory: Callable[..., BundleSpec]) -> None:
    spec = spec_factory(arch, decoder=decoder)
    model = build_model(spec).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 4, 64, 96))
    assert out.shape == (2, 3, 64, 96)


def test_unused_encoder_stages_are_dropped(spec_factory: Callable[..., BundleSpec]) -> None:
    small = build_model(spec_factory(depth=3))
    names = {n.split(".")[1] for n, _ in small.named_parameters() if n.startswith("encoder.")}
    assert "layer3" not in names and "layer4" not in names and "layer2" in names
    assert count_parameters(small) < 1_500_000


def test_maskrcnn_forward(maskrcnn_spec: BundleSpec) -> None:
    torch.manual_seed(0)
    model = build_model(maskrcnn_spec).eval()
    with torch.no_grad():
        out = model([torch.randn(4, 64, 64), torch.randn(4, 64, 64)])
    assert len(out) == 2
    assert out[0]["masks"].shape[1:] == (1, 64, 64)  # not resized
    assert model.backbone.body.conv1.in_channels == 4


def test_decoder_length_must_match_depth(spec_factory: Callable[..., BundleSpec]) -> None:
    with pytest.raises(BundleError, match="encoder_depth"):
        build_model(spec_factory(depth=4, decoder=(16, 8, 8)))
