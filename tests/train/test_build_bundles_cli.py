"""``python -m workflows.build_bundles`` on bad input: one ``error:`` line and the error's exit
status (as ``geoseg``'s commands), with ``--out`` / ``--init-from`` checked before any scene is
generated; and the version a build gives its bundles names the recipe it followed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from workflows.build_bundles import (
    LOCAL_VERSION,
    RECIPES,
    check_inputs,
    config_for,
    parser,
    recipe_version,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--size", "256", "--train-seeds", "1", "--steps", "1", "--eval-size", "256",
        "--max-minutes", "0"]


def _build_bundles(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workflows.build_bundles", *argv],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("case", ["score-only-missing", "init-from-missing"])
def test_missing_bundles_are_found_before_any_scene(tmp_path: Path, case: str) -> None:
    from geoseg.errors import BundleError

    if case == "score-only-missing":
        argv = ["--score-only", "--out", str(tmp_path / "none"), "--eval-size", "256"]
        said = f"no bundle.yaml in {tmp_path / 'none' / 'landcover'}"
    else:
        argv = ["--only", "landcover", "--init-from", str(tmp_path / "nope"),
                "--out", str(tmp_path / "o"), *TINY]
        said = f"model bundle not found: {tmp_path / 'nope' / 'landcover'}"
    args = parser().parse_args([*argv, "--scenes", str(tmp_path / "scenes")])
    with pytest.raises(BundleError, match=re.escape(said)):
        check_inputs(["landcover"], args)


def test_bad_input_is_one_error_line_before_any_scene(tmp_path: Path) -> None:
    """The script as users run it: a foreign --out folder is one line, exit 2, no scene made,
    the folder left as it was."""
    case = "foreign-out"
    scenes = tmp_path / "scenes"
    (tmp_path / "o" / "landcover").mkdir(parents=True)
    (tmp_path / "o" / "landcover" / "notes.txt").write_text("a user's notes")
    argv = ["--only", "landcover", "--out", str(tmp_path / "o"), *TINY]
    said = "holds files geoseg did not write (e.g. notes.txt)"
    res = _build_bundles(*argv, "--scenes", str(scenes))
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and said in errors[0], res.stderr
    assert not scenes.exists()  # checked before any scene was generated
    assert not (tmp_path / "o" / "landcover" / "checkpoints").exists()
    if case == "foreign-out":  # a folder geoseg did not write is left as it was
        assert [p.name for p in (tmp_path / "o" / "landcover").iterdir()] == ["notes.txt"]
        assert (tmp_path / "o" / "landcover" / "notes.txt").read_text() == "a user's notes"


def test_init_from_a_bundle_of_another_task_is_refused_before_any_scene(tmp_path: Path) -> None:
    """--init-from DIR whose landcover is really the buildings bundle (3 classes, not 5): the
    check training makes, made before the scenes (in-process: no subprocess needed)."""
    import shutil

    from geoseg.bundle import builtin_bundle
    from geoseg.errors import ConfigError

    shutil.copytree(builtin_bundle("buildings"), tmp_path / "start" / "landcover")
    args = parser().parse_args(["--only", "landcover", "--init-from", str(tmp_path / "start"),
                                "--out", str(tmp_path / "o"), *TINY])
    with pytest.raises(ConfigError, match="predicts 3 classes, the run trains 5"):
        check_inputs(["landcover"], args)
    assert not (tmp_path / "o").exists()


def _versions(*argv: str, start: str | None) -> dict[str, str]:
    args = parser().parse_args(["--out", "x", *argv])
    return {name: recipe_version(name, args, start) for name in ("landcover", "buildings")}


def test_a_build_claims_a_published_version_only_with_its_recipe() -> None:
    """The defaults are the 1.0.0 recipe (from random weights); the README's command that
    fine-tunes 1.0.0 gives 1.1.0 (landcover 40 min, buildings 55 min); anything else, e.g.
    fine-tuning the shipped 1.1.0 or a steps-only build, is a local build."""
    readme = ["--init-from", "v100", "--lr", "1.5e-3", "--steps", "6000",
              "--train-seeds", "101", "102", "103", "104", "105", "106"]
    assert _versions(start=None) == {"landcover": "1.0.0", "buildings": "1.0.0"}
    assert _versions(*readme, "--max-minutes", "40", start="1.0.0")["landcover"] == "1.1.0"
    assert _versions(*readme, "--max-minutes", "55", start="1.0.0")["buildings"] == "1.1.0"
    assert _versions(*readme, "--max-minutes", "55", start="1.0.0")["landcover"] == LOCAL_VERSION
    assert set(_versions(*readme, "--max-minutes", "55", start="1.1.0").values()) == {
        LOCAL_VERSION}
    for other in (["--max-minutes", "0"], ["--steps", "1"], ["--size", "256"], ["--lr", "1e-3"],
                  ["--contact-weight", "0.5"], ["--train-seeds", "1"]):
        assert set(_versions(*other, start=None).values()) == {LOCAL_VERSION}, other
    assert LOCAL_VERSION not in RECIPES
    assert config_for("landcover", 1, 0, 1, None).version == LOCAL_VERSION  # no claim unasked


def test_the_version_comes_from_the_starting_bundle(tmp_path: Path) -> None:
    """check_inputs reads the version of --init-from DIR/<name>: fine-tuning the shipped
    bundles (1.1.0) with the 1.1.0 recipe is not 1.1.0; fine-tuning a 1.0.0 bundle is."""
    import shutil

    import yaml

    from geoseg.bundle import builtin_bundle

    for version in ("1.1.0", "1.0.0"):
        start = tmp_path / version / "landcover"
        shutil.copytree(builtin_bundle("landcover"), start)
        spec = yaml.safe_load((start / "bundle.yaml").read_text(encoding="utf-8"))
        (start / "bundle.yaml").write_text(yaml.safe_dump({**spec, "version": version}),
                                           encoding="utf-8")
    argv = ["--only", "landcover", "--out", str(tmp_path / "o"), "--lr", "1.5e-3", "--steps",
            "6000", "--max-minutes", "40", "--train-seeds", "101", "102", "103", "104", "105",
            "106"]
    for version, expect in (("1.1.0", LOCAL_VERSION), ("1.0.0", "1.1.0")):
        args = parser().parse_args([*argv, "--init-from", str(tmp_path / version)])
        assert check_inputs(["landcover"], args) == {"landcover": expect}


@pytest.mark.parametrize("flag, value, said", [
    ("--steps", "0", "--steps: should be at least 1, not 0"),
    ("--lr", "-1", "--lr: should be more than 0.0, not -1.0"),
])
def test_bad_training_values_are_found_before_any_scene(tmp_path: Path, flag: str, value: str,
                                                        said: str) -> None:
    from geoseg.errors import ConfigError

    args = parser().parse_args(["--only", "landcover", "--out", str(tmp_path / "o"),
                                "--scenes", str(tmp_path / "scenes"), *TINY, flag, value])
    with pytest.raises(ConfigError) as err:
        check_inputs(["landcover"], args)
    assert str(err.value) == said
    assert not (tmp_path / "scenes").exists()
