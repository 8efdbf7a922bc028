"""Benchmark helpers that touch files: they remove only what they wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.rv_predict import clear_own_labels


def test_rv_predict_replaces_only_its_own_labels(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "labels.tif").write_bytes(b"a user's file")
    with pytest.raises(SystemExit, match="not written by this script"):
        clear_own_labels(theirs)
    assert (theirs / "labels.tif").read_bytes() == b"a user's file"

    ours = tmp_path / "ours"
    clear_own_labels(ours)  # a new folder: marked as ours
    (ours / "labels.tif").write_bytes(b"an earlier run")
    clear_own_labels(ours)
    assert not (ours / "labels.tif").exists() and (ours / ".written-by-rv_predict").exists()
