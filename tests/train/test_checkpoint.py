"""Checkpoints: an interrupted run resumed gives bit-identical weights; progress callbacks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from geoseg.bundle import ClassSpec, Normalization
from geoseg.cli import main
from geoseg.errors import ConfigError
from geoseg.training import TrainConfig, scene_files, train
from geoseg.training.checkpoint import checkpoint_path
from geoseg.training.loop import ProgressFn
from tests.train.test_train import TINY


class Stop(Exception):
    """Raised from the progress callback to simulate a crash."""


def _config(classes: tuple[ClassSpec, ...], **update: object) -> TrainConfig:
    base = TrainConfig(name="tiny", task="landcover", classes=classes, architecture=TINY,
                       steps=6, batch_size=2, chip_size=64, tile_size=64, seed=5,
                       val_fraction=0.25, val_windows_per_scene=1, log_every=1,
                       checkpoint_every=2)
    return TrainConfig.model_validate({**base.model_dump(), **update})   # validated


def _stop_at(n: int, seen: list[tuple[int, int, float, float, float]]) -> ProgressFn:
    def progress(step: int, steps: int, loss: float, lr: float, seconds: float) -> None:
        seen.append((step, steps, loss, lr, seconds))
        if step == n:
            raise Stop
    return progress


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "weights.safetensors"))


def _fp32(out: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint_path(out), weights_only=True)
    assert state["step"] == 6
    return dict(state["model"])


@pytest.mark.parametrize("sampling", ["random", "grid"])
def test_resume_is_bit_identical(tiny_scene: Path, tmp_path: Path, sampling: str,
                                 landcover_classes: tuple[ClassSpec, ...]) -> None:
    stop = 3   # after the step-2 checkpoint: step 3 is redone on resume
    # zoom and blur on for every chip, so the augmentation RNG stream is exercised too; grid
    # sampling stops mid-pass, so its queue must come back from the checkpoint
    # (4 grid cells, 3 chips a step: the step-2 checkpoint falls mid-pass)
    cfg = _config(landcover_classes, sampling=sampling, batch_size=3,
                  augment={"scale_p": 1.0, "blur": 1.0},
                  loss={"ce": 1.0, "dice": 0.5, "focal": 0.5, "boundary_weight": 2.0})
    scenes = scene_files(tiny_scene, "landcover", ["t0"])
    seen: list[tuple[int, int, float, float, float]] = []
    a = train(cfg, scenes, tmp_path / "a", progress=_stop_at(-1, seen))
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5, 6] and all(s[1] == 6 for s in seen)
    assert [s[2] for s in seen] == a.losses

    with pytest.raises(Stop):
        train(cfg, scenes, tmp_path / "b", progress=_stop_at(stop, []))
    state = torch.load(checkpoint_path(tmp_path / "b"), weights_only=True)
    assert state["step"] == 2 and not (tmp_path / "b" / "weights.safetensors").exists()
    resumed: list[tuple[int, int, float, float, float]] = []
    b = train(cfg, scenes, tmp_path / "b", resume=True, progress=_stop_at(-1, resumed))
    assert resumed[0][0] == state["step"] + 1
    assert b.losses == a.losses
    assert b.spec.training is not None and b.spec.training["resumed_at_step"] == state["step"]
    wa, wb = _weights(a.bundle_dir), _weights(b.bundle_dir)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    fa, fb = _fp32(a.bundle_dir), _fp32(b.bundle_dir)      # float32, before the float16 cast
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
    assert not list((tmp_path / "b" / "checkpoints").glob("*.tmp"))


def test_resume_refuses_another_config(tiny_scene: Path, tmp_path: Path,
                                       landcover_classes: tuple[ClassSpec, ...]) -> None:
    cfg = _config(landcover_classes, steps=2)
    scenes = scene_files(tiny_scene, "landcover", ["t0"])
    with pytest.raises(Stop):
        train(cfg, scenes, tmp_path / "b", progress=_stop_at(2, []))
    with pytest.raises(ConfigError, match=r"different config.*lr: 0.003 -> 0.01") as info:
        train(cfg.model_copy(update={"lr": 0.01}), scenes, tmp_path / "b", resume=True)
    assert "\n" not in str(info.value)
    # fields that do not change the result may differ
    res = train(cfg.model_copy(update={"log_every": 5, "checkpoint_every": 7}), scenes,
                tmp_path / "b", resume=True)
    assert res.spec.training is not None and res.spec.training["resumed_at_step"] == 2


def test_resume_refuses_changed_labels_and_the_bundle_records_them(
        tiny_scene: Path, tmp_path: Path, landcover_classes: tuple[ClassSpec, ...]) -> None:
    """Labels edited between the interruption and the resume would train half a run on each:
    refused, naming the scene; the finished bundle records which labels it was trained on."""
    import hashlib
    import shutil

    import rasterio

    cfg = _config(landcover_classes, steps=2)
    scene = tmp_path / "edited"
    shutil.copytree(tiny_scene, scene)
    scenes = scene_files(scene, "landcover", ["t0"])
    with pytest.raises(Stop):
        train(cfg, scenes, tmp_path / "b", progress=_stop_at(2, []))
    labels = scene / "landcover_t0.tif"
    before = labels.read_bytes()
    with rasterio.open(labels, "r+") as ds:  # one pixel relabelled
        one = ds.read(1, window=((0, 1), (0, 1)))
        ds.write((one + 1) % len(landcover_classes), 1, window=((0, 1), (0, 1)))
    with pytest.raises(ConfigError, match=r"scene edited/image_t0: its labels' content changed"):
        train(cfg, scenes, tmp_path / "b", resume=True)
    labels.write_bytes(before)
    res = train(cfg, scenes, tmp_path / "b", resume=True)
    assert res.spec.training is not None and res.spec.training["resumed_at_step"] == 2
    assert res.spec.training["labels"] == [{
        "scene": "edited/image_t0", "labels": "landcover_t0.tif",
        "sha256": hashlib.sha256(before).hexdigest()}]


def test_resume_without_a_checkpoint_starts_afresh(
        tiny_scene: Path, tmp_path: Path, landcover_classes: tuple[ClassSpec, ...]) -> None:
    res = train(_config(landcover_classes, steps=1), scene_files(tiny_scene, "landcover", ["t0"]),
                tmp_path / "c", resume=True)
    assert res.spec.training is not None and res.spec.training["resumed_at_step"] is None
    assert len(res.losses) == 1 and np.isfinite(res.losses).all()
    assert "soft Dice" in str(res.spec.training["loss"])


def test_cli_train_flags_and_progress(tiny_scene: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI builds the config from the new flags and shows progress (training faked)."""
    import geoseg.training

    calls: list[tuple[TrainConfig, bool]] = []

    def fake_train(config: TrainConfig, scenes: object, out: object, *, resume: bool,
                   overwrite: bool, progress: ProgressFn) -> SimpleNamespace:
        calls.append((config, resume))
        for step in (1, 2):
            progress(step, 2, 0.5 / step, 1e-3, 0.1 * step)
        training = {"steps": 2, "final_loss": 0.25, "val": {"windows": 2, "miou": 0.5}}
        norm = Normalization(mean=(100.0,) * 4, std=(30.0,) * 4)
        return SimpleNamespace(bundle_dir=out, seconds=0.2, spec=SimpleNamespace(
            training=training, bands=(1, 2, 3, 4), band_names=None, normalization=norm))

    monkeypatch.setattr(geoseg.training, "train", fake_train)
    pair = f"{tiny_scene / 'image_t0.tif'}:{tiny_scene / 'landcover_t0.tif'}"
    args = ["train", "--task", "landcover", "--pair", pair, "-o", str(tmp_path / "o"),
            "--steps", "2", "--loss", "ce:1,focal:0.5", "--boundary-weight", "2",
            "--checkpoint-every", "7", "--precision", "bf16", "--resume"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    config, resume = calls[-1]
    assert resume and config.checkpoint_every == 7 and config.precision == "bf16"
    assert (config.loss.ce, config.loss.dice, config.loss.focal) == (1.0, 0.0, 0.5)
    assert config.loss.boundary_weight == 2.0
    assert "train: step 2/2  loss 0.2500" in err        # stderr is not a terminal here
    assert "final loss 0.25" in out and '"miou": 0.5' in out
    assert f"geoseg export {tmp_path / 'o'} --halo-check IMAGE" in out   # what to do next
    assert main(["-q", *args[:-1]]) == 0                 # -q: no progress lines
    out, err = capsys.readouterr()
    assert "step 2/2" not in err and not calls[-1][1] and calls[-1][0].loss.focal == 0.5
    assert main([*args, "--loss", "lovasz"]) != 0
    _, err = capsys.readouterr()
    assert err.startswith("error: --loss 'lovasz'") and err.count("\n") == 1


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_training_with_autocast(tiny_scene: Path, tmp_path: Path, precision: str,
                                     landcover_classes: tuple[ClassSpec, ...]) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cfg = _config(landcover_classes, steps=3, device="cuda", precision=precision)
    res = train(cfg, scene_files(tiny_scene, "landcover", ["t0"]), tmp_path / "g")
    assert len(res.losses) == 3 and np.isfinite(res.losses).all()
    assert res.spec.training is not None and res.spec.training["device"] == "cuda"


def test_a_checkpoint_never_writes_through_a_link(tmp_path: Path) -> None:
    """The checkpoint goes to a fresh temporary name and is renamed into place: a symlink
    planted at the old fixed temporary name, or at ``last.pt`` itself, never has its target
    written; the link at ``last.pt`` is replaced by the checkpoint."""
    import numpy as np
    import torch

    from geoseg.training import checkpoint as ck

    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"user data")
    path = checkpoint_path(tmp_path / "out")
    path.parent.mkdir(parents=True)
    (path.parent / "last.pt.tmp").symlink_to(victim)
    path.symlink_to(victim)
    model = torch.nn.Conv2d(3, 2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = ck.TrainState(step=3, losses=[1.0, 0.5], seconds=1.0)
    ck.save(path, model, opt, None, np.random.default_rng(0), state, "{}")
    assert victim.read_bytes() == b"user data"
    assert not path.is_symlink()
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 3
    assert torch.equal(loaded["model"]["weight"], model.state_dict()["weight"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt", "last.pt.tmp"]


def test_a_checkpoint_of_the_earlier_fingerprint_still_resumes(
        landcover_classes: tuple[ClassSpec, ...], tmp_path: Path) -> None:
    """Checkpoints written before the labels were fingerprinted named scenes by image only:
    the same config and scenes resume (with a warning), another config is still refused."""
    from geoseg.training.checkpoint import _older_same, fingerprint

    cfg = _config(landcover_classes)
    labels = {"scene": "s/image_t0", "labels": "landcover_t0.tif", "sha256": "ab"}
    now = fingerprint(cfg, [labels, "weights-sha"])
    assert _older_same(fingerprint(cfg, ["s/image_t0", "weights-sha"]), now, tmp_path)
    other = cfg.model_copy(update={"lr": 0.5})
    assert not _older_same(fingerprint(other, ["s/image_t0", "weights-sha"]), now, tmp_path)
    assert not _older_same(fingerprint(cfg, ["t/image_t0", "weights-sha"]), now, tmp_path)
