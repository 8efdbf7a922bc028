from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geoseg.bundle import ArchitectureSpec, BundleSpec, ClassSpec, Normalization
from geoseg.models import build_model, save_bundle
from tests.conftest import write_raster

LC = (("bare", "#c8b48c"), ("building", "#d7301f"), ("road", "#636363"),
      ("vegetation", "#31a354"), ("water", "#3182bd"))
BD = (("background", "#000000"), ("building", "#d7301f"), ("boundary", "#fdae61"))


def tiny_bundle(root: Path, task: str, seed: int) -> Path:
    classes = LC if task == "landcover" else BD
    spec = BundleSpec(
        name=f"tiny-{task}", version="0.0.1", task=task,  # type: ignore[arg-type]
        architecture=ArchitectureSpec(name="unet", encoder="resnet18", encoder_depth=3,
                                      decoder_channels=(16, 8, 8)),
        bands=(1, 2, 3, 4), band_names=("red", "green", "blue", "nir"),
        normalization=Normalization(mean=(100.0,) * 4, std=(50.0,) * 4),
        classes=tuple(ClassSpec(id=i, name=n, color=c) for i, (n, c) in enumerate(classes)),
        tile_size=256, pixel_size=0.5)
    torch.manual_seed(seed)
    model = build_model(spec)
    out = root / task
    save_bundle(model, spec, out)
    return out


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("bundles")
    return str(tiny_bundle(root, "landcover", 1)), str(tiny_bundle(root, "buildings", 2))


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Blobs of different texture: enough structure for polygons and buildings."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.normal(size=(4, h, w)), sigma=(0, 6, 6))
    base = (base - base.min()) / (np.ptp(base) + 1e-9)
    return np.clip(base * 230 + 10, 1, 255).astype(np.uint8)


@pytest.fixture()
def scene_tif(tmp_path: Path) -> Path:
    return write_raster(tmp_path / "img.tif", textured(200, 264),
                        descriptions=["red", "green", "blue", "nir"],
                        tags={"ACQUISITION_DATE": "2024-06-01"})


def dated_image(root: Path) -> Path:
    """A 200×264 textured 4-band image (bands named red, green, blue, nir), dated 2024-06-01."""
    return write_raster(root / "scene.tif", textured(200, 264),
                        descriptions=["red", "green", "blue", "nir"],
                        tags={"ACQUISITION_DATE": "2024-06-01"})


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`dated_image` in a folder of the test module's own."""
    return dated_image(tmp_path_factory.mktemp("image"))
