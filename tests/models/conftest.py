"""Tiny bundle specs for model tests (random weights, 64-px tiles)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from geoseg.bundle import BundleSpec


def make_spec(arch: str = "unet", classes: tuple[str, ...] = ("bare", "building", "water"),
              task: str = "landcover", depth: int = 3,
              decoder: tuple[int, ...] | None = (16, 8, 8)) -> BundleSpec:
    return BundleSpec.model_validate({
        "name": f"tiny-{arch}", "version": "0.0.1", "task": task,
        "architecture": {"name": arch, "encoder": "resnet18", "encoder_depth": depth,
                         "decoder_channels": decoder},
        "bands": [1, 2, 3, 4], "band_names": ["red", "green", "blue", "nir"],
        "normalization": {"mean": [100.0, 110.0, 90.0, 120.0], "std": [30.0, 25.0, 20.0, 40.0]},
        "classes": [{"id": i, "name": n, "color": "#123456"} for i, n in enumerate(classes)],
        "tile_size": 64, "pixel_size": 0.5})


@pytest.fixture
def spec_factory() -> Callable[..., BundleSpec]:
    return make_spec


@pytest.fixture
def unet_spec() -> BundleSpec:
    return make_spec()


@pytest.fixture
def maskrcnn_spec() -> BundleSpec:
    return make_spec("maskrcnn", ("background", "building", "boundary"), task="buildings",
                     depth=5, decoder=None)
