"""``geoseg train -o``: a folder geoseg did not write is refused before any training; an
earlier training output is continued with --resume or replaced with --overwrite; writes never
follow a symlink out of the bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoseg.cli import main
from geoseg.errors import OutputExistsError
from geoseg.training import scene_files, train
from tests.train.test_checkpoint import _config


def _cli(capsys: pytest.CaptureFixture[str], scene: Path, out: Path,
         *extra: str) -> tuple[int, str]:
    pair = f"{scene / 'image_t0.tif'}:{scene / 'landcover_t0.tif'}"
    rc = main(["-q", "train", "--task", "landcover", "--pair", pair, "-o", str(out),
               "--steps", "1", "--batch-size", "1", "--chip-size", "64", "--threads", "1",
               *extra])
    return rc, capsys.readouterr().err


def test_foreign_folder_and_file_refused_before_training(
        tiny_scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    user = tmp_path / "userb"
    user.mkdir()
    (user / "bundle.yaml").write_text("my notes\n")
    for flags in ((), ("--overwrite",), ("--resume",)):
        rc, err = _cli(capsys, tiny_scene, user, *flags)
        assert rc == 2 and err.count("\n") == 1 and "did not write" in err, err
        assert sorted(p.name for p in user.iterdir()) == ["bundle.yaml"]
        assert (user / "bundle.yaml").read_text() == "my notes\n"
    afile = tmp_path / "afile"
    afile.write_text("a file")
    rc, err = _cli(capsys, tiny_scene, afile)
    assert rc == 2 and err.count("\n") == 1 and "is a file" in err, err
    assert afile.read_text() == "a file"


def test_earlier_training_needs_resume_or_overwrite(
        tiny_scene: Path, tmp_path: Path, landcover_classes: tuple[object, ...]) -> None:
    cfg = _config(landcover_classes, steps=1)  # type: ignore[arg-type]
    scenes = scene_files(tiny_scene, "landcover", ["t0"])
    out = tmp_path / "b"
    first = train(cfg, scenes, out)
    weights = (out / "weights.safetensors").read_bytes()
    with pytest.raises(OutputExistsError, match=r"--resume \(resume=True\) .* --overwrite "
                       r"\(overwrite=True\)"):  # the CLI's flag and the Python argument
        train(cfg.model_copy(update={"seed": 9}), scenes, out)
    assert (out / "weights.safetensors").read_bytes() == weights
    again = train(cfg.model_copy(update={"seed": 9}), scenes, out, overwrite=True)
    assert (out / "weights.safetensors").read_bytes() != weights
    assert again.spec.training is not None and first.spec.training is not None
    (out / "notes.txt").write_text("kept")  # a user's file beside an earlier bundle stays
    train(cfg, scenes, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "kept"


def test_bundle_writes_replace_symlinks(tiny_scene: Path, tmp_path: Path,
                                        landcover_classes: tuple[object, ...]) -> None:
    cfg = _config(landcover_classes, steps=1)  # type: ignore[arg-type]
    scenes = scene_files(tiny_scene, "landcover", ["t0"])
    out = tmp_path / "b"
    train(cfg, scenes, out)
    victim = tmp_path / "victim.yaml"
    victim.write_text("outside")
    (out / "bundle.yaml").unlink()
    (out / "bundle.yaml").symlink_to(victim)
    train(cfg, scenes, out, overwrite=True)  # the checkpoint says: an earlier training
    assert victim.read_text() == "outside"
    assert not (out / "bundle.yaml").is_symlink()
    assert (out / "weights.safetensors").stat().st_mode & 0o777 == (out / "bundle.yaml").stat(
        ).st_mode & 0o777
