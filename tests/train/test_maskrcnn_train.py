"""Mask R-CNN training: detection targets, instance chips, training, resume and the CLI.

Training tests shrink the detector's training-time RoI/proposal sampling (it does not change the
weights' layout) so a step takes a few seconds on a CPU; they are still marked slow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geoseg.bundle import ArchitectureSpec, ClassSpec, read_spec
from geoseg.cli import main
from geoseg.errors import ConfigError
from geoseg.models import Predictor
from geoseg.training import BUILDING_CLASSES, AugmentConfig, SceneFiles, TrainConfig, train
from geoseg.training import maskrcnn_step as inst
from geoseg.training.augment import augment
from geoseg.training.checkpoint import checkpoint_path
from geoseg.training.loop import MASKRCNN_LR
from geoseg.training.maskrcnn_step import (
    InstanceSampler,
    decode_chip,
    detection_targets,
    encode_chip,
    instance_batch,
)
from tests.train.test_checkpoint import Stop, _stop_at

BUILDINGS = tuple(ClassSpec(id=i, name=n, color=c) for i, n, c in BUILDING_CLASSES)
MASKRCNN = ArchitectureSpec(name="maskrcnn", encoder="resnet18")


def _scenes(scene: Path) -> list[SceneFiles]:
    return [SceneFiles(scene / "image_t0.tif", scene / "instances_t0.tif")]


def _config(**update: object) -> TrainConfig:
    base = {"name": "tiny-maskrcnn", "task": "buildings", "classes": BUILDINGS,
            "architecture": MASKRCNN, "steps": 3, "batch_size": 1, "chip_size": 64,
            "tile_size": 64, "seed": 1, "val_fraction": 0.25, "val_windows_per_scene": 1,
            "log_every": 1, "checkpoint_every": 2}
    return TrainConfig.model_validate({**base, **update})


@pytest.fixture
def small_detector_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer RoIs and proposals in training (the mask head dominates a CPU step)."""
    monkeypatch.setattr(inst, "ROIS_PER_IMAGE", 16)
    monkeypatch.setattr(inst, "RPN_PROPOSALS_TRAIN", 64)


# --- targets by hand -------------------------------------------------------------------------

def test_detection_targets_by_hand() -> None:
    ids = np.zeros((8, 10), dtype=np.int32)
    ids[1:5, 2:5] = 3            # 4 x 3 = 12 px
    ids[3:8, 7:10] = 7           # cut by the right and bottom edges: 5 x 3 = 15 px
    ids[0, 9] = 9                # 1 px: dropped
    t = detection_targets(ids, min_pixels=12)
    assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
    assert t["masks"].dtype == torch.uint8 and t["masks"].shape == (2, 8, 10)
    # x0, y0, x1, y1 with the max side exclusive (+1), as torchvision expects
    assert t["boxes"].tolist() == [[2.0, 1.0, 5.0, 5.0], [7.0, 3.0, 10.0, 8.0]]
    assert t["labels"].tolist() == [1, 1]
    assert np.array_equal(t["masks"][0].numpy(), (ids == 3).astype(np.uint8))
    assert np.array_equal(t["masks"][1].numpy(), (ids == 7).astype(np.uint8))
    assert len(detection_targets(ids, min_pixels=13)["boxes"]) == 1   # 12-px instance dropped


def test_chip_without_instances_gives_empty_targets() -> None:
    t = detection_targets(np.zeros((6, 7), dtype=np.int32))
    assert t["boxes"].shape == (0, 4) and t["boxes"].dtype == torch.float32
    assert t["labels"].shape == (0,) and t["masks"].shape == (0, 6, 7)
    assert t["masks"].dtype == torch.uint8


def test_encoding_keeps_ids_nodata_and_avoids_ignore() -> None:
    ids = np.zeros((6, 6), dtype=np.uint32)
    ids[0:2, 0:3] = 255          # an id equal to IGNORE
    ids[3:6, 3:6] = 100_000
    valid = np.ones((6, 6), dtype=bool)
    valid[4:, 4:] = False        # nodata on part of a building
    code = encode_chip(ids, valid)
    assert code.dtype == np.int32 and not (code == 255).any()
    assert (code < 0).sum() == 4 and ((code >= 0).mean() == 32 / 36)
    back = decode_chip(code)
    # same partition into instances; the instance under nodata keeps its pixels
    for a in (255, 100_000):
        (b,) = np.unique(back[ids == a])
        assert b > 0 and np.array_equal(back == b, ids == a)
    assert (back[ids == 0] == 0).all()


def test_augmentation_moves_ids_without_changing_them() -> None:
    rng = np.random.default_rng(0)
    ids = np.zeros((64, 64), dtype=np.int32)
    for k in range(1, 40):
        r, c = rng.integers(0, 56, 2)
        ids[r:r + 8, c:c + 8] = k
    code = encode_chip(ids, np.ones_like(ids, dtype=bool))
    image = np.zeros((1, 64, 64), np.float32)
    geometric = AugmentConfig.off().model_copy(update={"rot90": True, "flips": True})
    for seed in range(4):
        _, out = augment(image, code, np.random.default_rng(seed), geometric)
        # every id keeps its value and its pixel count
        assert np.array_equal(np.bincount(out.ravel()), np.bincount(code.ravel()))
    zoom = AugmentConfig.off().model_copy(update={"scale": (0.5, 0.6), "scale_p": 1.0})
    _, out = augment(image, code, np.random.default_rng(1), zoom)
    assert (out == 255).any()                                 # the zoomed-out rim
    ids_out = decode_chip(out)
    assert set(np.unique(ids_out)) <= set(np.unique(code))    # nearest neighbour: no new ids
    assert (ids_out[out == 255] == 0).all()


def test_instance_sampler_batches(tiny_scene: Path) -> None:
    mean = np.full((4, 1, 1), 100.0, np.float32)
    std = np.full((4, 1, 1), 50.0, np.float32)
    with InstanceSampler(_scenes(tiny_scene), "buildings", (1, 2, 3, 4), 64, [100.0] * 4,
                         val_fraction=0.25) as sampler:
        images, targets = instance_batch(sampler, np.random.default_rng(0), 6, mean, std)
        _, val_target = sampler.read(*sampler.val_windows(1)[0])
    assert all(i.shape == (4, 64, 64) and i.dtype == torch.float32 for i in images)
    assert any(len(t["boxes"]) for t in targets)
    for t in targets:
        boxes, masks = t["boxes"], t["masks"]
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (masks.flatten(1).sum(1) >= inst.MIN_PIXELS).all()
    assert set(np.unique(val_target)) <= {0, 1, 2, 255}   # validation keeps class targets


def test_config_checks_and_default_learning_rate() -> None:
    assert _config().lr == MASKRCNN_LR
    assert _config(lr=1e-3).lr == 1e-3
    unet = TrainConfig(name="u", task="buildings", classes=BUILDINGS)
    assert unet.lr == 3e-3
    from geoseg.training.loop import _check

    with pytest.raises(ConfigError, match="task buildings"):
        _check(_config(task="landcover"))


# --- training (slow: a Mask R-CNN step is seconds on a CPU) ----------------------------------

@pytest.mark.slow
@pytest.mark.usefixtures("small_detector_batches")
def test_three_steps_write_a_bundle_that_predicts(tiny_scene: Path, tmp_path: Path) -> None:
    res = train(_config(), _scenes(tiny_scene), tmp_path / "b")
    assert len(res.losses) == 3 and np.isfinite(res.losses).all()
    spec = read_spec(res.bundle_dir)
    assert spec.architecture.name == "maskrcnn" and spec.training is not None
    assert "Mask R-CNN" in str(spec.training["loss"]) and spec.training["steps"] == 3
    val = spec.training["val"]
    assert isinstance(val, dict) and val["windows"] == 1 and "objects_iou50" in val
    proba = Predictor(res.bundle_dir).predict_proba(np.zeros((1, 4, 64, 64), np.float32))
    assert proba.shape == (1, 3, 64, 64) and proba.dtype == np.float32
    assert (proba >= 0).all() and (proba <= 1).all()
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.usefixtures("small_detector_batches")
def test_resume_is_bit_identical(tiny_scene: Path, tmp_path: Path) -> None:
    cfg = _config(steps=4, batch_size=2, augment={"scale_p": 1.0})
    a = train(cfg, _scenes(tiny_scene), tmp_path / "a")
    with pytest.raises(Stop):
        train(cfg, _scenes(tiny_scene), tmp_path / "b", progress=_stop_at(3, []))
    assert torch.load(checkpoint_path(tmp_path / "b"), weights_only=True)["step"] == 2
    b = train(cfg, _scenes(tiny_scene), tmp_path / "b", resume=True)
    assert b.spec.training is not None and b.spec.training["resumed_at_step"] == 2
    assert b.losses == a.losses
    fa, fb = (torch.load(checkpoint_path(d), weights_only=True)["model"]
              for d in (tmp_path / "a", tmp_path / "b"))
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)


@pytest.mark.slow
@pytest.mark.usefixtures("small_detector_batches")
def test_bf16_step_runs(tiny_scene: Path, tmp_path: Path) -> None:
    res = train(_config(steps=1, precision="bf16", val_windows_per_scene=0), _scenes(tiny_scene),
                tmp_path / "bf")
    assert len(res.losses) == 1 and np.isfinite(res.losses).all()


@pytest.mark.slow
@pytest.mark.usefixtures("small_detector_batches")
def test_cli_trains_maskrcnn(tiny_scene: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    pair = f"{tiny_scene / 'image_t0.tif'}:{tiny_scene / 'instances_t0.tif'}"
    out = tmp_path / "cli"
    assert main(["-q", "train", "--task", "buildings", "--arch", "maskrcnn", "--encoder",
                 "resnet18", "--pair", pair, "-o", str(out), "--steps", "1", "--batch-size",
                 "1", "--chip-size", "64"]) == 0
    assert "bundle written" in capsys.readouterr().out
    spec = read_spec(out)
    assert spec.architecture.name == "maskrcnn" and spec.architecture.encoder == "resnet18"
    assert main(["train", "--task", "landcover", "--arch", "maskrcnn", "--pair", pair, "-o",
                 str(tmp_path / "x"), "--steps", "1", "--chip-size", "64"]) != 0
    assert "task buildings" in capsys.readouterr().err
