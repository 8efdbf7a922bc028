"""``geoseg train -o`` that cannot be written is one line before any training step (it was a
traceback from the first checkpoint's save, after the steps before it were spent)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import geoseg.training.loop as loop
from geoseg.errors import StorageError
from geoseg.sample import generate_scene


def test_an_unwritable_output_is_one_line_before_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from geoseg.cli import main

    generate_scene(tmp_path / "scene", 128)
    out = tmp_path / "bundle"

    class Denied:  # what a read-only folder (chmod 555, as a user) gives the probe file
        def __init__(self, dir: str | Path) -> None:
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    monkeypatch.setattr(loop.tempfile, "TemporaryFile", Denied)
    stepped: list[int] = []
    monkeypatch.setattr(loop, "_fit", lambda *a, **k: stepped.append(1))  # must not be reached
    rc = main(["-q", "train", "--task", "landcover", "--scene", str(tmp_path / "scene"),
               "-o", str(out), "--steps", "1", "--batch-size", "1", "--chip-size", "32"])
    err = capsys.readouterr().err
    assert rc == StorageError.exit_code and "Traceback" not in err, err
    assert err.startswith(f"error: permission denied writing {out}") and err.count("\n") == 1
    assert not stepped
