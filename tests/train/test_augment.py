"""Augmentations: labels are never interpolated, geometry moves image and target together."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from geoseg.training.augment import AugmentConfig, augment, zoom
from geoseg.training.loop import TrainConfig
from geoseg.training.targets import IGNORE
from tests.train.conftest import CLASSES

GEOMETRY = AugmentConfig(contrast=None, brightness=0.0, blur=0.0, noise=0.0)   # joint ops only
BASE = {"name": "x", "task": "landcover", "classes": CLASSES}
LABELS = np.array([0, 1, 2, IGNORE], dtype=np.uint8)


def _blocks(seed: int, size: int = 64, block: int = 8) -> np.ndarray:
    """Target of ``block``-px squares of random labels (some IGNORE)."""
    rng = np.random.default_rng(seed)
    cells = LABELS[rng.integers(len(LABELS), size=(size // block, size // block))]
    return np.kron(cells, np.ones((block, block), dtype=np.uint8))


def _chip(target: np.ndarray) -> np.ndarray:
    """Image whose channel 0 equals the target, channel 1 is a ramp."""
    ramp = np.linspace(-1, 1, target.size, dtype=np.float32).reshape(target.shape)
    return np.stack([target.astype(np.float32), ramp])


@pytest.mark.parametrize("seed", range(6))
def test_labels_stay_in_the_label_set(seed: int) -> None:
    target = _blocks(seed)
    cfg = AugmentConfig(scale_p=1.0, blur=1.0)
    image, out = augment(_chip(target), target, np.random.default_rng(seed), cfg)
    assert out.dtype == target.dtype and out.shape == target.shape == image.shape[1:]
    assert set(np.unique(out)) <= set(LABELS.tolist())


@pytest.mark.parametrize("seed", range(8))
def test_flips_and_rotations_move_image_and_target_together(seed: int) -> None:
    target = _blocks(seed)
    cfg = GEOMETRY.model_copy(update={"scale": None})
    image, out = augment(_chip(target), target, np.random.default_rng(seed), cfg)
    assert np.array_equal(image[0], out.astype(np.float32))   # IGNORE stays IGNORE, exactly
    assert (out == IGNORE).sum() == (target == IGNORE).sum()


@pytest.mark.parametrize("factor", [0.75, 0.9, 1.0, 1.2, 1.33])
def test_zoom_moves_image_and_target_together(factor: float) -> None:
    target = _blocks(int(factor * 100))
    image, out = zoom(_chip(target), target, factor, np.random.default_rng(0))
    assert out.shape == target.shape and image.shape == (2, *target.shape)
    # away from label edges the bilinear image equals the nearest-neighbour target; the rim a
    # zoom-out adds is image 0 (the normalised mean) and target IGNORE
    uniform = (ndimage.maximum_filter(out, 3, mode="nearest")
               == ndimage.minimum_filter(out, 3, mode="nearest"))
    same = np.isclose(image[0], out, atol=1e-4)
    rim = (out == IGNORE) & (image[0] == 0)
    assert (same | rim)[uniform].all()
    assert uniform.mean() > 0.5
    if factor < 1:   # the rim exists and is IGNORE on at least one side
        assert (out == IGNORE).sum() > (target == IGNORE).sum() * factor**2


def test_zoom_keeps_ignore() -> None:
    target = np.full((64, 64), 1, dtype=np.uint8)
    target[16:48, 16:48] = IGNORE
    for factor in (0.75, 1.33):
        _, out = zoom(_chip(target), target, factor, np.random.default_rng(1))
        assert (out == IGNORE).any() and set(np.unique(out)) <= {1, IGNORE}


def test_geometry_of_the_full_pipeline_with_zoom() -> None:
    target = _blocks(7)
    for seed in range(5):
        image, out = augment(_chip(target), target, np.random.default_rng(seed),
                             GEOMETRY.model_copy(update={"scale_p": 1.0}))
        uniform = (ndimage.maximum_filter(out, 3, mode="nearest")
                   == ndimage.minimum_filter(out, 3, mode="nearest"))
        ok = np.isclose(image[0], out, atol=1e-4) | ((out == IGNORE) & (image[0] == 0))
        assert ok[uniform].all()


def test_image_only_ops_leave_the_target_alone() -> None:
    target = _blocks(3)
    cfg = AugmentConfig(rot90=False, flips=False, scale=None, blur=1.0)
    image, out = augment(_chip(target), target, np.random.default_rng(0), cfg)
    assert np.array_equal(out, target)
    assert not np.array_equal(image[0], target.astype(np.float32))


def test_deterministic_given_the_generator() -> None:
    target = _blocks(5)
    cfg = AugmentConfig(scale_p=1.0, blur=1.0)
    a = augment(_chip(target), target, np.random.default_rng(11), cfg)
    b = augment(_chip(target), target, np.random.default_rng(11), cfg)
    c = augment(_chip(target), target, np.random.default_rng(12), cfg)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_without_zoom_and_blur_the_earlier_recipe_is_reproduced() -> None:
    """scale=None, blur=0 draws exactly what the former ``data.augment`` drew."""
    target = _blocks(2)
    image = np.random.default_rng(0).standard_normal((4, 64, 64)).astype(np.float32)
    new = augment(image, target, np.random.default_rng(3),
                  AugmentConfig(scale=None, blur=0.0))
    rng = np.random.default_rng(3)
    k = int(rng.integers(4))
    im, t = np.rot90(image, k, axes=(1, 2)), np.rot90(target, k)
    if rng.random() < 0.5:
        im, t = im[:, :, ::-1], t[:, ::-1]
    if rng.random() < 0.5:
        im, t = im[:, ::-1], t[::-1]
    contrast = rng.uniform(0.8, 1.2)
    brightness = rng.uniform(-0.2, 0.2, size=(4, 1, 1))
    sigma = rng.uniform(0.0, 0.08)
    noise = rng.standard_normal(im.shape, dtype=np.float32) * np.float32(sigma)
    im = im * np.float32(contrast) + brightness.astype(np.float32) + noise
    assert np.array_equal(new[0], im) and np.array_equal(new[1], t)


def test_augment_none_in_the_config() -> None:
    for value in ("none", None):
        cfg = TrainConfig.model_validate({**BASE, "augment": value})
        assert cfg.augment == AugmentConfig.off() and cfg.augment.describe() == "none"
    target = _blocks(1)
    image, out = augment(_chip(target), target, np.random.default_rng(0), AugmentConfig.off())
    assert np.array_equal(image, _chip(target)) and np.array_equal(out, target)
    cfg = TrainConfig.model_validate({**BASE, "augment": {"scale": [0.8, 1.25], "blur": 0.5}})
    assert cfg.augment.scale == (0.8, 1.25) and "blur" in cfg.augment.describe()
    with pytest.raises(ValueError, match="low <= high"):
        AugmentConfig(scale=(1.2, 0.8))


def test_legacy_dice_weight_maps_to_the_loss_config() -> None:
    cfg = TrainConfig.model_validate({**BASE, "dice_weight": 0.5})   # configs before ``loss``
    assert cfg.loss.dice == 0.5 and cfg.loss.ce == 1.0
