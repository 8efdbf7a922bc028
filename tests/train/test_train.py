from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from safetensors.torch import load_file

from geoseg.bundle import ArchitectureSpec, ClassSpec, read_spec
from geoseg.errors import LabelError
from geoseg.grid import Window
from geoseg.models import Predictor
from geoseg.training import (
    BUILDING_CLASSES,
    ChipSampler,
    TrainConfig,
    band_stats,
    buildings_target,
    scene_files,
    train,
)
from geoseg.training.loop import lr_factor

TINY = ArchitectureSpec(name="unet", encoder="resnet18", encoder_depth=3,
                        decoder_channels=(16, 8, 8))
BUILDINGS = tuple(ClassSpec(id=i, name=n, color=c) for i, n, c in BUILDING_CLASSES)


def _config(classes: tuple[ClassSpec, ...], task: str = "landcover",
            seed: int = 0) -> TrainConfig:
    return TrainConfig(name=f"tiny-{task}", task=task, classes=classes, architecture=TINY,
                       steps=2, batch_size=2, chip_size=64, tile_size=64, seed=seed,
                       val_fraction=0.25, val_windows_per_scene=2, log_every=1)


def test_two_steps_make_a_bundle_that_loads(tiny_scene: Path, tmp_path: Path,
                                            landcover_classes: tuple[ClassSpec, ...]) -> None:
    result = train(_config(landcover_classes), scene_files(tiny_scene, "landcover", ["t0"]),
                   tmp_path / "b")
    spec = read_spec(result.bundle_dir)
    assert spec == result.spec and spec.pixel_size == 0.5 and spec.tile_size == 64
    assert spec.training is not None and spec.training["steps"] == 2
    assert spec.training["seed"] == 0 and spec.training["chip_size"] == 64
    val = spec.training["val"]
    assert isinstance(val, dict) and val["windows"] == 2 and "miou" in val
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    proba = Predictor(result.bundle_dir).predict_proba(np.full((1, 4, 64, 64), 100, np.float32))
    assert proba.shape == (1, 5, 64, 64)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_is_deterministic(tiny_scene: Path, tmp_path: Path, precision: str,
                                   landcover_classes: tuple[ClassSpec, ...]) -> None:
    scenes = scene_files(tiny_scene, "landcover", ["t0"])
    runs = [train(_config(landcover_classes, seed=s).model_copy(update={"precision": precision}),
                  scenes, tmp_path / f"r{i}")
            for i, s in enumerate((3, 3, 4))]
    a, b, c = (load_file(str(r.bundle_dir / "weights.safetensors")) for r in runs)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert runs[0].losses == runs[1].losses
    assert not all(np.array_equal(a[k].numpy(), c[k].numpy()) for k in a)


def test_buildings_bundle_and_validation(tiny_scene: Path, tmp_path: Path) -> None:
    result = train(_config(BUILDINGS, "buildings"), scene_files(tiny_scene, "buildings", ["t0"]),
                   tmp_path / "bld")
    assert [c.name for c in result.spec.classes] == ["background", "building", "boundary"]
    val = result.spec.training["val"] if result.spec.training else {}
    assert isinstance(val, dict) and "objects_iou50" in val


def test_chips_stay_out_of_the_validation_stripe(tiny_scene: Path) -> None:
    scenes = scene_files(tiny_scene, "buildings", ["t0"])
    rng = np.random.default_rng(0)
    with ChipSampler(scenes, "buildings", (1, 2, 3, 4), 64, (0, 0, 0, 0), 0.25) as s:
        for _ in range(50):
            _, win = s.train_window(rng)
            assert win.col_end <= 96 and win.row_end <= 128
        assert [w for _, w in s.val_windows()] == [Window(0, 96, 64, 32), Window(64, 96, 64, 32)]
        # a chip's target equals the whole-raster target cut out (rings read with a halo)
        with rasterio.open(tiny_scene / "instances_t0.tif") as ds:
            whole = buildings_target(ds.read(1), 2)
        win = Window(44, 58, 64, 32)
        image, target = s.read(0, win)
        assert np.array_equal(target, whole[win.slices()])
        assert image.shape == (4, 64, 32) and image.dtype == np.float32


def test_nodata_becomes_fill_and_ignore(tiny_scene: Path) -> None:
    scenes = scene_files(tiny_scene, "landcover", ["t0"])
    with ChipSampler(scenes, "landcover", (1, 2, 3, 4), 64, (1, 2, 3, 4), 0.25) as s:
        image, target = s.read(0, Window(0, 0, 16, 16))
    assert (image[:, :8, :8] == np.array([1, 2, 3, 4])[:, None, None]).all()
    assert (target[:8, :8] == 255).all() and (target[8:, 8:] != 255).all()


def test_band_stats_skip_nodata(tiny_scene: Path) -> None:
    mean, std = band_stats([tiny_scene / "image_t0.tif"], (1, 3))
    with rasterio.open(tiny_scene / "image_t0.tif") as ds:
        data = ds.read([1, 3]).astype(np.float64)
    valid = data[:, 8:, :].reshape(2, -1)
    valid = np.concatenate([valid, data[:, :8, 8:].reshape(2, -1)], axis=1)
    assert mean == pytest.approx(valid.mean(axis=1), abs=1e-3)
    assert std == pytest.approx(valid.std(axis=1), abs=1e-3)


def test_scene_too_small_for_chips(tiny_scene: Path) -> None:
    with pytest.raises(LabelError, match="chips"):
        ChipSampler(scene_files(tiny_scene, "landcover", ["t0"]), "landcover", (1, 2, 3, 4),
                    128, (0, 0, 0, 0), 0.25)


def test_learning_rate_schedule() -> None:
    assert lr_factor(0.0, 0.1, 0.01) == pytest.approx(0.1)    # warm-up starts at first/warmup
    assert lr_factor(0.05, 0.1) == pytest.approx(0.5)
    assert lr_factor(0.1, 0.1) == pytest.approx(1.0)          # peak, then cosine
    assert lr_factor(0.55, 0.1) == pytest.approx(0.02 + 0.98 * 0.5)
    assert lr_factor(1.0, 0.1) == pytest.approx(0.02)


def test_time_budget_ends_training(tiny_scene: Path, tmp_path: Path,
                                   landcover_classes: tuple[ClassSpec, ...]) -> None:
    config = _config(landcover_classes).model_copy(update={"steps": 1000, "max_seconds": 0.5})
    result = train(config, scene_files(tiny_scene, "landcover", ["t0"]), tmp_path / "t")
    assert result.spec.training is not None
    assert 0 < len(result.losses) < 1000 and result.spec.training["steps"] == len(result.losses)


def test_contact_weight_needs_a_buildings_task(tiny_scene: Path, tmp_path: Path,
                                               landcover_classes: tuple[ClassSpec, ...]) -> None:
    from geoseg.errors import ConfigError
    from geoseg.training.losses import LossConfig

    cfg = _config(landcover_classes).model_copy(update={"loss": LossConfig(contact_weight=3.0)})
    with pytest.raises(ConfigError, match=r"contact_weight .* needs task buildings"):
        train(cfg, scene_files(tiny_scene, "landcover", ["t0"]), tmp_path / "b")
    ok = _config(BUILDINGS, "buildings").model_copy(
        update={"loss": LossConfig(contact_weight=3.0)})
    res = train(ok, scene_files(tiny_scene, "buildings", ["t0"]), tmp_path / "ok")
    assert res.spec.training is not None
    assert "walls between touching buildings" in str(res.spec.training["loss"])
