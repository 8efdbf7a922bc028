"""Fine-tuning from a bundle (``init_from`` / ``geoseg train --init-from``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from safetensors.torch import load_file

from geoseg.bundle import ArchitectureSpec, ClassSpec, builtin_bundle, read_spec
from geoseg.cli import main
from geoseg.errors import ConfigError
from geoseg.models.factory import build_model
from geoseg.training import SceneFiles, TrainConfig, scene_files, train
from geoseg.training.finetune import load_start, starting_bundle

TINY = ArchitectureSpec(name="unet", encoder="resnet18", encoder_depth=3,
                        decoder_channels=(16, 8, 8))


def _config(classes: tuple[ClassSpec, ...], **update: object) -> TrainConfig:
    base = TrainConfig(name="tiny-landcover", task="landcover", classes=classes,
                       architecture=TINY, steps=2, batch_size=2, chip_size=64, tile_size=64,
                       val_fraction=0.25, val_windows_per_scene=1, log_every=1)
    return base.model_copy(update=update)


def test_fine_tuning_starts_from_the_bundle_and_keeps_its_normalization(
        tiny_scene: Path, tmp_path: Path, landcover_classes: tuple[ClassSpec, ...]) -> None:
    scenes = scene_files(tiny_scene, "landcover", ["t0"])
    first = train(_config(landcover_classes), scenes, tmp_path / "first")
    # training measures how many validation pixels keep their class in bf16 (engine auto)
    assert first.spec.bf16_agreement is not None and 0.0 < first.spec.bf16_agreement <= 1.0
    start = starting_bundle(str(first.bundle_dir))
    # the model the second run starts with holds the first bundle's weights exactly
    model = build_model(first.spec)
    load_start(model, start)
    saved = load_file(str(first.bundle_dir / "weights.safetensors"))
    assert all(torch.equal(model.state_dict()[k].float(), v.float()) for k, v in saved.items())

    tuned = train(_config(landcover_classes, init_from=str(first.bundle_dir), lr=1e-3),
                  scenes, tmp_path / "tuned")
    spec = read_spec(tuned.bundle_dir)
    assert spec.normalization == first.spec.normalization
    assert spec.training is not None
    digest = hashlib.sha256((first.bundle_dir / "weights.safetensors").read_bytes()).hexdigest()
    assert spec.training["init_from"] == {"bundle": "tiny-landcover", "version": "1.0.0",
                                          "weights_sha256": digest, "its_training_steps": 2}
    # two more steps moved the weights away from the start, and not back to a fresh start
    fresh = train(_config(landcover_classes), scenes, tmp_path / "fresh")
    after = load_file(str(tuned.bundle_dir / "weights.safetensors"))
    again = load_file(str(fresh.bundle_dir / "weights.safetensors"))
    assert not all(torch.equal(after[k], saved[k]) for k in saved)
    assert all(torch.equal(again[k], saved[k]) for k in saved)  # same seed, same fresh start
    moved_from_start = sum(float((after[k].float() - saved[k].float()).abs().sum())
                           for k in saved if after[k].is_floating_point())
    assert moved_from_start > 0


def _three_class_labels(scene: Path) -> list[SceneFiles]:
    """The scene with its classes 3 and 4 left out (255), so only ids 0..2 remain."""
    with rasterio.open(scene / "landcover_t0.tif") as src:
        land, profile = src.read(1), src.profile
    land[land >= 3] = 255
    with rasterio.open(scene / "landcover3_t0.tif", "w", **profile) as dst:
        dst.write(land, 1)
    return [SceneFiles(scene / "image_t0.tif", scene / "landcover3_t0.tif")]


def test_incompatible_start_is_one_line(tiny_scene: Path, tmp_path: Path,
                                        landcover_classes: tuple[ClassSpec, ...]) -> None:
    scenes = scene_files(tiny_scene, "landcover", ["t0"])
    first = train(_config(landcover_classes), scenes, tmp_path / "first")
    wider = ArchitectureSpec(name="unet", encoder="resnet18", encoder_depth=3,
                             decoder_channels=(32, 16, 16))
    with pytest.raises(ConfigError, match="architecture unet/resnet18 differs"):
        train(_config(landcover_classes, init_from=str(first.bundle_dir), architecture=wider),
              scenes, tmp_path / "bad")
    three = _three_class_labels(tiny_scene)  # labels the 3-class run can train on
    with pytest.raises(ConfigError, match="predicts 5 classes, the run trains 3"):
        train(_config(landcover_classes[:3], init_from=str(first.bundle_dir)), three,
              tmp_path / "bad2")
    with pytest.raises(ConfigError, match="drop clip_percentiles"):
        train(_config(landcover_classes, init_from=str(first.bundle_dir),
                      clip_percentiles=(2.0, 98.0)), scenes, tmp_path / "bad3")
    # 3 bands from a 4-band start: one line (was a dump of the whole BundleSpec)
    with pytest.raises(ConfigError, match=r"it reads 4 bands \(.*\) but training reads 3 "
                       r"\(\[1, 2, 3\]\): pick as many with --bands") as info:
        train(_config(landcover_classes, init_from=str(first.bundle_dir), bands=(1, 2, 3)),
              scenes, tmp_path / "bad4")
    assert "\n" not in str(info.value) and "ArchitectureSpec" not in str(info.value)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_cli_init_from(tiny_scene: Path, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    pair = f"{tiny_scene / 'image_t0.tif'}:{tiny_scene / 'landcover_t0.tif'}"
    common = ["train", "--task", "landcover", "--pair", pair, "--steps", "2",
              "--batch-size", "2", "--chip-size", "64", "--arch", "unet"]
    assert main([*common, "-o", str(tmp_path / "a")]) == 0
    assert main([*common, "-o", str(tmp_path / "b"), "--init-from", str(tmp_path / "a")]) == 0
    spec = read_spec(tmp_path / "b")
    assert spec.training is not None
    init = spec.training["init_from"]
    assert isinstance(init, dict) and init["bundle"] == "landcover-custom"
    # a built-in bundle with another architecture than the one asked for: one line, no traceback
    code = main([*common, "-o", str(tmp_path / "c"), "--init-from", "landcover"])
    err = capsys.readouterr().err
    assert code != 0 and "differs from the one being trained" in err and "Traceback" not in err
    # without --arch/--encoder the starting bundle's architecture is used
    mine = [c for c in common if c not in ("--arch", "unet")]
    assert main([*mine, "-o", str(tmp_path / "d"), "--init-from", "landcover",
                 "--chip-size", "64"]) == 0
    assert read_spec(tmp_path / "d").architecture == read_spec(builtin_bundle("landcover")) \
        .architecture
    loss = spec.training["final_loss"]
    assert isinstance(loss, float) and np.isfinite(loss)


def test_images_far_from_the_start_bundles_range_warn(
        tiny_scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Fine-tuning keeps the starting bundle's normalization: 16-bit images given to a bundle
    trained on 0-255 pixels reach its weights ~100 standard deviations out; that warns, as
    ``geoseg run`` does, and the same image in its 0-255 form does not."""
    with rasterio.open(tiny_scene / "image_t0.tif") as src:
        profile, data = src.profile, src.read()
    profile.update(dtype="uint16")
    wide = tmp_path / "wide.tif"
    with rasterio.open(wide, "w", **profile) as dst:
        dst.write(data.astype(np.uint16) * 40)
    labels = tiny_scene / "landcover_t0.tif"
    said = {}
    for image in (wide, tiny_scene / "image_t0.tif"):
        assert main(["-q", "train", "--task", "landcover", "--pair", f"{image}:{labels}",
                     "--steps", "1", "--batch-size", "1", "--chip-size", "64",
                     "--init-from", "landcover", "-o", str(tmp_path / image.stem)]) == 0
        said[image.stem] = [line for line in capsys.readouterr().err.splitlines()
                            if "far from those --init-from landcover" in line]
    assert said["image_t0"] == [] and len(said["wide"]) == 1, said
    assert said["wide"][0].startswith(f"warning: {wide}: band 1 values (mean ")
    assert "rescale the images to its range, or train without --init-from" in said["wide"][0]
