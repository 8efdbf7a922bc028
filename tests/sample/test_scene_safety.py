"""Safety of ``geoseg sample`` / ``geoseg demo`` and of renamed outputs: geoseg replaces only
files it wrote, an interrupted scene never looks finished, bad folders are one line, and files
written by rename get the usual permissions."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

import geoseg.outdir as outdir
import geoseg.sample.scene as scene_mod
from geoseg.errors import InputError, OutputExistsError, StorageError
from geoseg.sample import SceneFiles, generate_scene
from geoseg.sample.scene import is_scene

NAMES = {p.name for p in SceneFiles.at(Path(".")).paths()}


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the CLI; its exit code and stderr, checked to be at most one line, no traceback."""
    from geoseg.cli import main

    capsys.readouterr()
    rc = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") <= 1, err
    return rc, err


def leftovers(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()} if root.exists() else set()


@pytest.fixture
def ctrl_c(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Ctrl-C when the block of rasters numbered ``["at"]`` (from 0; default 1) is rendered."""
    real = scene_mod.render_block
    state = {"at": 1, "done": 0}

    def render(*args: object, **kw: object) -> object:
        if state["done"] == state["at"]:
            raise KeyboardInterrupt
        state["done"] += 1
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(scene_mod, "render_block", render)
    return state


# --overwrite (and demo) only ever replace files geoseg wrote

def test_sample_overwrite_keeps_a_users_file(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "image_t0.tif").write_bytes(b"my own image")
    rc, err = cli(["sample", str(mine), "--size", "64", "--overwrite"], capsys)
    assert rc != 0 and "did not write" in err, err
    assert (mine / "image_t0.tif").read_bytes() == b"my own image"
    assert leftovers(mine) == {"image_t0.tif"}  # nothing written beside it


def test_a_scene_json_geoseg_did_not_write_is_no_licence(tmp_path: Path) -> None:
    (tmp_path / "scene.json").write_text('{"mine": true}')
    (tmp_path / "image_t0.tif").write_bytes(b"my own image")
    with pytest.raises(OutputExistsError, match="did not write"):
        generate_scene(tmp_path, 64, overwrite=True)
    assert (tmp_path / "scene.json").read_text() == '{"mine": true}'
    assert (tmp_path / "image_t0.tif").read_bytes() == b"my own image"


def test_demo_keeps_a_users_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scene = tmp_path / "d" / "scene"
    scene.mkdir(parents=True)
    (scene / "image_t0.tif").write_bytes(b"my own photo")
    rc, err = cli(["demo", "-o", str(tmp_path / "d"), "--size", "64", "--no-eval",
                   "-m", "landcover", "--no-vectors"], capsys)
    assert rc != 0 and "did not write" in err, err
    assert (scene / "image_t0.tif").read_bytes() == b"my own photo"
    assert not (tmp_path / "d" / "run").exists()


def test_demo_does_not_take_a_foreign_scene_json_for_its_scene(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A scene.json that geoseg did not write is not the demo scene: demo refuses the folder
    (one line) instead of running on whatever image_t0.tif is there."""
    scene = tmp_path / "d" / "scene"
    scene.mkdir(parents=True)
    (scene / "scene.json").write_text('{"mine": true}')
    rc, err = cli(["demo", "-o", str(tmp_path / "d"), "--size", "64", "--no-eval",
                   "-m", "landcover", "--no-vectors"], capsys)
    assert rc != 0 and "scene.json, which geoseg did not write" in err, err
    assert leftovers(scene) == {"scene.json"} and not (tmp_path / "d" / "run").exists()


def test_other_names_in_the_folder_stay(tmp_path: Path) -> None:
    """The rule: a scene's own names must be free or geoseg's; other files are left alone."""
    (tmp_path / "notes.txt").write_text("kept")
    files = generate_scene(tmp_path, 64)
    assert (tmp_path / "notes.txt").read_text() == "kept" and is_scene(files.root)
    assert leftovers(tmp_path) == NAMES | {"notes.txt"}


# an interrupted scene leaves nothing that looks finished

def test_ctrl_c_leaves_no_final_names(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         ctrl_c: dict[str, int]) -> None:
    ctrl_c["at"] = 0  # the CLI renders a small scene in one block
    out = tmp_path / "big"
    rc, err = cli(["sample", str(out), "--size", "256"], capsys)
    assert rc != 0 and err.startswith("interrupted"), err
    assert leftovers(out) == set()  # no blank rasters under final names, no temporary files


def test_scene_json_is_renamed_into_place_last(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        if Path(dst).parent == tmp_path and not Path(dst).name.startswith("."):
            # a rename inside the scene folder (from it or the run's own folder in it)
            assert tmp_path in (Path(src).parent, Path(src).parent.parent), src
            seen.append(Path(dst).name)
        real(src, dst)

    monkeypatch.setattr(scene_mod.os, "replace", replace)
    generate_scene(tmp_path, 64)
    assert set(seen) == NAMES and seen[-1] == "scene.json", seen


def test_a_failed_scene_json_leaves_nothing_that_looks_finished(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(path: Path, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(scene_mod, "atomic_write_text", full)
    with pytest.raises(StorageError, match="disk full"):
        generate_scene(tmp_path / "s", 64)
    assert leftovers(tmp_path / "s") == set()


def test_a_stop_while_renaming_leaves_a_scene_overwrite_can_replace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped between renames, the folder is a mix of two scenes without scene.json: it does
    not look finished, and its pending mark lets --overwrite (and demo) replace it."""
    generate_scene(tmp_path, 64, seed=1)
    real = os.replace
    done: list[int] = []

    def replace(src: str | Path, dst: str | Path) -> None:  # os's: scene.json's writer's too
        if len(done) == 3:
            raise KeyboardInterrupt
        done.append(1)
        real(src, dst)

    monkeypatch.setattr(scene_mod.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        generate_scene(tmp_path, 64, seed=2, overwrite=True)
    monkeypatch.setattr(scene_mod.os, "replace", real)
    assert not is_scene(tmp_path) and not (tmp_path / "scene.json").exists()
    assert leftovers(tmp_path) == (NAMES - {"scene.json"}) | {".partial-scene.json"}
    with pytest.raises(OutputExistsError, match=r"unfinished scene.*--overwrite"):
        generate_scene(tmp_path, 64, seed=3)
    generate_scene(tmp_path, 64, seed=3, overwrite=True)
    assert is_scene(tmp_path) and leftovers(tmp_path) == NAMES


def test_an_interrupted_rerun_keeps_the_pending_mark(
        tmp_path: Path, ctrl_c: dict[str, int]) -> None:
    (tmp_path / "image_t0.tif").write_bytes(b"half of an earlier scene")
    (tmp_path / ".partial-scene.json").write_text('{"generator": "geoseg.sample"}')
    with pytest.raises(KeyboardInterrupt):
        generate_scene(tmp_path, 256, block=128, overwrite=True)
    assert leftovers(tmp_path) == {"image_t0.tif", ".partial-scene.json"}


def test_a_users_partial_names_are_never_written_or_removed(
        tmp_path: Path, ctrl_c: dict[str, int]) -> None:
    """The files of a scene being written live in a new folder of the run's own: a user's
    ``.partial-image_t0.tif`` beside them is neither written over nor removed, whether the scene
    finishes or is stopped."""
    mine = tmp_path / ".partial-image_t0.tif"
    mine.write_bytes(b"my own file")
    ctrl_c["at"] = 10**9  # no Ctrl-C: a scene that finishes
    generate_scene(tmp_path, 64)
    assert mine.read_bytes() == b"my own file"
    assert leftovers(tmp_path) == NAMES | {mine.name}
    ctrl_c.update(at=1, done=0)
    with pytest.raises(KeyboardInterrupt):
        generate_scene(tmp_path, 256, block=128, overwrite=True)
    assert mine.read_bytes() == b"my own file"
    assert leftovers(tmp_path) == NAMES | {mine.name} and is_scene(tmp_path)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_foreign_pending_mark_is_refused_and_kept(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], overwrite: bool) -> None:
    mark = tmp_path / ".partial-scene.json"
    mark.write_text('{"mine": true}')
    rc, err = cli(["sample", str(tmp_path), "--size", "64"]
                  + (["--overwrite"] if overwrite else []), capsys)
    assert rc == OutputExistsError.exit_code, err
    assert ".partial-scene.json, which geoseg did not write" in err, err
    assert mark.read_text() == '{"mine": true}' and leftovers(tmp_path) == {mark.name}


# a file (or a broken link, or a path under a file) as the scene folder is one line

@pytest.mark.parametrize("what", ["file", "under-file", "broken-link"])
def test_a_folder_that_cannot_be_one(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        what: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("a file")
    target = {"file": afile, "under-file": afile / "sub",
              "broken-link": tmp_path / "link"}[what]
    if what == "broken-link":
        target.symlink_to(tmp_path / "nowhere")
    rc, err = cli(["sample", str(target), "--size", "64"], capsys)
    assert rc == InputError.exit_code, err
    assert ("is a file" if what != "broken-link" else "broken symbolic link") in err, err
    assert afile.read_text() == "a file" and not (tmp_path / "nowhere").exists()


# S10b: the refusal names the CLI flag for the CLI and the argument for Python

def test_refusal_names_the_flag_and_the_argument(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["sample", str(tmp_path), "--size", "64"], capsys)[0] == 0
    rc, err = cli(["sample", str(tmp_path), "--size", "64"], capsys)
    assert rc != 0 and "pass --overwrite" in err, err
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        generate_scene(tmp_path, 64)


# files written by rename get 0666 less the umask, as open() would give them

@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_renamed_outputs_follow_the_umask(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        outdir.atomic_write_bytes(tmp_path / "summary.json", b"{}")
        files = generate_scene(tmp_path / "s", 64)  # scene.json is written by rename
    finally:
        os.umask(old)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert files.metadata.stat().st_mode & 0o777 == 0o666 & ~mask
    assert files.image_t0.stat().st_mode & 0o777 == 0o666 & ~mask


def test_reading_the_umask_never_changes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without /proc the umask is read by setting it: threads reading at once must still leave
    the process's umask as it was."""
    def no_proc(*args: object, **kw: object) -> object:
        raise OSError(errno.ENOENT, "no /proc")

    monkeypatch.setattr(outdir, "open", no_proc, raising=False)
    old = os.umask(0o027)
    try:
        seen: list[int] = []
        threads = [threading.Thread(target=lambda: seen.extend(outdir._umask() for _ in range(200)))
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert set(seen) == {0o027} and os.umask(0o027) == 0o027
    finally:
        os.umask(old)
