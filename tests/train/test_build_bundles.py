"""Published bundle scores come from the path a user runs: ``workflows.build_bundles`` scores
bundles with ``geoseg run`` + ``geoseg eval``, and replaying the commands it records in
``metrics.json`` gives the same numbers."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from geoseg.bundle import ClassSpec
from geoseg.cli import main
from geoseg.sample import generate_scene
from geoseg.training import BUILDING_CLASSES, TrainConfig, scene_files, train
from tests.train.test_train import TINY
from workflows.build_bundles import score, write_metrics

SEED, SIZE = 1, 256


def _bundle(tmp_path: Path, scene: Path, task: str, classes: tuple[ClassSpec, ...]) -> Path:
    config = TrainConfig(name=task, task=task, classes=classes, architecture=TINY, steps=2,
                         batch_size=2, chip_size=64, tile_size=64, val_windows_per_scene=0)
    return train(config, scene_files(scene, task, ["t0"]), tmp_path / task).bundle_dir  # type: ignore[arg-type]


def test_scores_are_what_geoseg_run_and_eval_give(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from geoseg.sample import CLASSES

    scene = tmp_path / "eval-scene"
    generate_scene(scene, size=SIZE, seed=SEED)
    bundles = {
        "landcover": _bundle(tmp_path, scene, "landcover",
                             tuple(ClassSpec(id=i, name=n, color=c) for i, n, c in CLASSES)),
        "buildings": _bundle(tmp_path, scene, "buildings",
                             tuple(ClassSpec(id=i, name=n, color=c)
                                   for i, n, c in BUILDING_CLASSES)),
    }
    scores = score(bundles, scene, tmp_path / "work", seed=SEED, size=SIZE)
    assert set(scores["landcover"]["headline"]) == {"landcover mIoU", "landcover boundary F1"}
    assert set(scores["buildings"]["headline"]) == {"building F1@0.5", "building AP",
                                                    "building PQ"}
    assert {"coco", "panoptic", "f1"} <= set(scores["buildings"]["buildings"])
    m = write_metrics("buildings", bundles["buildings"], scores["buildings"], threads=1,
                      timed=False)
    assert json.loads((bundles["buildings"] / "metrics.json").read_text()) == m
    assert m["eval"]["scene"] == {"seed": SEED, "size": SIZE, "date": "t0"}

    # a user replays the recorded commands (one job with both bundles) and gets the numbers
    user = tmp_path / "user"
    user.mkdir()
    monkeypatch.chdir(user)
    commands = m["eval"]["commands"]
    assert commands == scores["landcover"]["eval"]["commands"]
    for cmd in commands:
        argv = shlex.split(cmd)
        assert argv[0] == "geoseg"
        assert main(argv[1:] + (["--json", "eval.json"] if argv[1] == "eval" else [])) == 0
    report = json.loads((user / "eval.json").read_text())
    for name in bundles:
        for key, value in scores[name]["headline"].items():
            assert report["headline"][key] == pytest.approx(value, abs=1e-6)
