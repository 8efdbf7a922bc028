"""``geoseg export``: what a review of it found (missing onnx, lost bundle.yaml keys, a kill
between graph and bundle.yaml, read-only bundles, unchecked images, misstated window counts,
unchecked flags, weights outside the bundle)."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from geoseg.bundle import BundleSpec, read_spec, write_spec
from geoseg.cli import main
from geoseg.errors import (
    BandMismatchError,
    BundleError,
    GeoSegWarning,
    InputError,
    MissingDependencyError,
    StorageError,
)
from geoseg.models import build_model, save_bundle
from geoseg.models.halo import HaloCheck
from tests.conftest import write_raster

NAMES = ["red", "green", "blue", "nir"]


def _image(path: Path, size: int, names: list[str] | None = None, scale: int = 1,
           seed: int = 0) -> Path:
    """A 4-band image of ``size`` px on the scale of the tiny bundles (0-255), ``scale``
    times it as uint16 when ``scale`` > 1."""
    x = np.random.default_rng(seed).uniform(20, 230, (4, size, size))
    data = (x * scale).astype(np.uint16) if scale > 1 else x.astype(np.uint8)
    return write_raster(path, data, descriptions=names or NAMES)


@pytest.fixture
def bundle(tmp_path: Path, unet_spec: BundleSpec) -> Path:
    torch.manual_seed(0)
    return save_bundle(build_model(unet_spec), unet_spec, tmp_path / "b")


def _one_error(err: str) -> str:
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1, err
    return errors[0]


def _fake_halo(chunk: int = 64, windows: int = 1) -> HaloCheck:
    return HaloCheck({0: 0.9, 16: 1.0}, {0: 0.9, 16: 1.0}, 16, chunk, windows,
                     windows * chunk * chunk)


# 1 ------------------------------------------------------------------------------------------

def test_export_onnx_without_the_onnx_package_is_one_line_before_any_work(
        bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import geoseg.models.onnx as onnx_mod

    before = (bundle / "bundle.yaml").read_bytes()
    monkeypatch.setitem(sys.modules, "onnx", None)  # import fails as if not installed
    image = _image(tmp_path / "img.tif", 64)
    rc = main(["export", str(bundle), "--onnx", "--bf16-check", str(image)])
    line = _one_error(capsys.readouterr().err)
    assert rc == MissingDependencyError.exit_code
    assert "needs the onnx package" in line and "pip install 'geoseg[onnx]'" in line
    assert (bundle / "bundle.yaml").read_bytes() == before   # the bf16 check did not run either
    assert sorted(p.name for p in bundle.iterdir()) == ["bundle.yaml", "weights.safetensors"]
    monkeypatch.setattr(onnx_mod, "build_model", None)  # no model is built before the check
    with pytest.raises(MissingDependencyError, match=r"pip install 'geoseg\[onnx\]'"):
        onnx_mod.export_onnx(bundle)


# 3 ------------------------------------------------------------------------------------------

def test_checks_keep_keys_another_export_wrote_while_they_measured(
        bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import geoseg.models.bf16 as bf16_mod
    import geoseg.models.halo as halo_mod

    def parallel(key: str, value: object) -> None:  # another geoseg export, meanwhile
        write_spec(read_spec(bundle).model_copy(update={key: value}), bundle)

    def measure(*_a: Any, **_k: Any) -> HaloCheck:
        parallel("onnx", "model.onnx")
        return _fake_halo()

    monkeypatch.setattr(halo_mod, "measure", measure)
    halo_mod.check_bundle(bundle, "unused.tif")
    spec = read_spec(bundle)
    assert spec.onnx == "model.onnx" and spec.halo == 16 and spec.halo_check is not None

    def agreement(*_a: Any) -> tuple[int, int]:
        parallel("halo", 48)
        return 999, 1000

    monkeypatch.setattr(bf16_mod, "agreement", agreement)
    bf16_mod.check_bundle(bundle, _image(tmp_path / "img.tif", 64), windows=1)
    spec = read_spec(bundle)
    assert (spec.bf16_agreement, spec.halo, spec.onnx) == (0.999, 48, "model.onnx")


def test_export_onnx_keeps_keys_a_check_wrote_while_it_exported(
        bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnx")
    import geoseg.models.onnx as onnx_mod

    def export(model: Any, spec: Any, path: Path, opset: int, half: bool) -> None:
        write_spec(read_spec(bundle).model_copy(update={"bf16_agreement": 0.5}), bundle)
        path.write_bytes(b"graph")

    monkeypatch.setattr(onnx_mod, "_export", export)
    onnx_mod.export_onnx(bundle)
    spec = read_spec(bundle)
    assert (spec.onnx, spec.bf16_agreement) == ("model.onnx", 0.5)


_KILLED_EXPORT = """
import os, signal, sys
import geoseg.models.onnx as m

bundle, when = sys.argv[1], sys.argv[2]
m._export = lambda model, spec, path, opset, half: path.write_bytes(b"graph")
real = os.replace

class Os:  # os for geoseg.models.onnx: the graph's rename is where the kill lands
    def __getattr__(self, name):
        return getattr(os, name)

    def replace(self, src, dst):
        if when == "after":
            real(src, dst)
        os.kill(os.getpid(), signal.SIGKILL)

m.os = Os()
m.export_onnx(bundle)
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_an_export_killed_around_the_graph_rename_is_completed_by_a_rerun(
        bundle: Path, when: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """SIGKILL just before or just after the graph is renamed into place: the bundle still
    runs, a rerun of ``export --onnx`` completes it (never "geoseg did not write it") and
    removes the temporary graph the killed export left."""
    pytest.importorskip("onnx")
    import geoseg.models.onnx as onnx_mod
    from geoseg.models import Predictor

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", _KILLED_EXPORT, str(bundle), when], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == -9, done.stderr
    left = [p.name for p in bundle.iterdir() if p.name.startswith(".tmp-")]
    assert len(left) == (when == "before")   # the killed export's graph, under its temp name
    assert all(re.fullmatch(r"\.tmp-\d+-model\.onnx", name) for name in left)
    if when == "before":   # bundle.yaml names a graph that is not there: auto runs the weights
        assert Predictor(bundle).engine == "torch"
        with pytest.raises(BundleError, match=r"is missing: export it with `geoseg export"):
            Predictor(bundle, engine="onnx")
    monkeypatch.setattr(onnx_mod, "_export",
                        lambda model, spec, path, opset, half: path.write_bytes(b"new graph"))
    assert main(["-q", "export", str(bundle), "--onnx"]) == 0, capsys.readouterr().err
    assert read_spec(bundle).onnx == "model.onnx"
    assert (bundle / "model.onnx").read_bytes() == b"new graph"
    assert not [p for p in bundle.iterdir() if p.name.startswith(".tmp-")]


def test_a_failed_rename_leaves_bundle_yaml_as_it_was(
        bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnx")
    import geoseg.models.onnx as onnx_mod

    class Os:  # os for geoseg.models.onnx: renaming the graph into place fails
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def replace(self, src: object, dst: object) -> None:
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))

    before = (bundle / "bundle.yaml").read_bytes()
    monkeypatch.setattr(onnx_mod, "_export",
                        lambda model, spec, path, opset, half: path.write_bytes(b"graph"))
    monkeypatch.setattr(onnx_mod, "os", Os())
    with pytest.raises(StorageError, match="permission denied"):
        onnx_mod.export_onnx(bundle)
    assert (bundle / "bundle.yaml").read_bytes() == before   # no onnx: naming a missing graph
    assert sorted(p.name for p in bundle.iterdir()) == ["bundle.yaml", "weights.safetensors"]


def test_only_leftovers_of_dead_exports_are_removed(tmp_path: Path) -> None:
    from geoseg.models.onnx import remove_stale_temps

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    names = [f".tmp-{gone.pid}-model.onnx", f".tmp-{os.getpid()}-model.onnx",
             ".tmp-abc-model.onnx", f".tmp-{gone.pid}-notes.txt", "model.onnx", ".tmp-0-x.onnx"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / f".tmp-{gone.pid}-link.onnx").symlink_to(tmp_path / "model.onnx")
    assert [p.name for p in remove_stale_temps(tmp_path)] == [names[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*names[1:], f".tmp-{gone.pid}-link.onnx"])


# 5 ------------------------------------------------------------------------------------------

def _read_only(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """New files in ``bundle`` fail as in a read-only folder (root passes a chmod 555)."""
    real = tempfile.mkstemp

    def mkstemp(*args: Any, **kw: Any) -> tuple[int, str]:
        if Path(kw.get("dir", "")).resolve() == bundle.resolve():
            raise PermissionError(errno.EACCES, "Permission denied", str(bundle))
        return real(*args, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("check", ["--halo-check", "--bf16-check"])
def test_a_read_only_bundle_is_refused_before_measuring(
        bundle: Path, tmp_path: Path, check: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import geoseg.models.bf16 as bf16_mod
    import geoseg.models.halo as halo_mod

    measured: list[str] = []
    monkeypatch.setattr(halo_mod, "measure",
                        lambda *a, **k: measured.append("halo") or _fake_halo())
    monkeypatch.setattr(bf16_mod, "agreement",
                        lambda *a: measured.append("bf16") or (1, 1))
    image = _image(tmp_path / "img.tif", 64)
    before = (bundle / "bundle.yaml").read_bytes()
    _read_only(bundle, monkeypatch)
    rc = main(["export", str(bundle), check, str(image)])
    line = _one_error(capsys.readouterr().err)
    assert rc == StorageError.exit_code and line.startswith("error: permission denied writing")
    assert measured == [] and (bundle / "bundle.yaml").read_bytes() == before


@pytest.mark.parametrize("check", ["--halo-check", "--bf16-check"])
def test_what_was_measured_is_printed_before_it_is_recorded(
        bundle: Path, tmp_path: Path, check: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import geoseg.models.bf16 as bf16_mod
    import geoseg.models.halo as halo_mod

    monkeypatch.setattr(halo_mod, "measure", lambda *a, **k: _fake_halo())
    monkeypatch.setattr(bf16_mod, "agreement", lambda *a: (999, 1000))

    def fails(*_a: Any, **_k: Any) -> None:
        raise StorageError(f"disk full writing {bundle / 'bundle.yaml'}: free some space, "
                           "then rerun")

    monkeypatch.setattr(halo_mod, "update_spec", fails)
    monkeypatch.setattr(bf16_mod, "update_spec", fails)
    rc = main(["export", str(bundle), check, str(_image(tmp_path / "img.tif", 64))])
    out, err = capsys.readouterr()
    assert rc == StorageError.exit_code and "disk full" in _one_error(err)
    assert ("halo   16 px: 100.0000%" in out if check == "--halo-check"
            else "bf16 classes equal float32's on 99.9000%" in out), out


# 2 ------------------------------------------------------------------------------------------

class _NeverCalled:
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        raise AssertionError("measured an image that should have been refused")


def test_checks_refuse_images_run_refuses(bundle: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from geoseg.models.bf16 import image_batches
    from geoseg.models.halo import measure

    spec = read_spec(bundle)
    swapped = _image(tmp_path / "swapped.tif", 64, names=NAMES[::-1])
    scaled = _image(tmp_path / "u16.tif", 64, scale=40)
    with pytest.raises(BandMismatchError, match=r"expects bands \['red'"):
        measure(_NeverCalled(), spec, swapped, chunk=64, windows=1)
    with pytest.raises(BandMismatchError, match=r"expects bands \['red'"):
        image_batches(spec, swapped, 1, 64)
    for fn in (lambda: measure(_NeverCalled(), spec, scaled, chunk=64, windows=1),
               lambda: image_batches(spec, scaled, 1, 64)):
        with pytest.raises(InputError, match=r"far from those model tiny-unet@0\.0\.1 "
                                             r"was trained on") as e:
            fn()
        assert "\n" not in str(e.value)
    before = (bundle / "bundle.yaml").read_bytes()
    for check in ("--halo-check", "--bf16-check"):
        for image in (swapped, scaled):
            assert main(["export", str(bundle), check, str(image)]) == 2
            _one_error(capsys.readouterr().err)
    assert (bundle / "bundle.yaml").read_bytes() == before   # nothing recorded


# 4 ------------------------------------------------------------------------------------------

def test_windows_are_distinct_and_the_number_measured_is_recorded(
        bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from geoseg.io import open_info, valid_windows
    from geoseg.models.halo import measure

    class Box:   # classes from band 1 alone: cheap
        def predict_proba(self, x: np.ndarray) -> np.ndarray:
            hi = (x[:, 0] > 120).astype(np.float32)
            return np.stack([1 - hi, hi], axis=1)

    small = _image(tmp_path / "small.tif", 64)
    assert len(valid_windows(open_info(str(small)), (1, 2), 64, 4, 32)) == 1   # one place
    assert len(valid_windows(open_info(str(small)), (1, 2), 62, 4, 32)) == 4   # nine places
    spec = read_spec(bundle)
    exact = _image(tmp_path / "exact.tif", 576)   # the 64-px chunk + 2 x 256 px: one window
    with pytest.warns(GeoSegWarning, match="only 1 distinct 576-px window"):
        res = measure(Box(), spec, exact, chunk=64, windows=3, halos=[0, 16])
    assert res.windows == 1 and res.pixels == 64 * 64
    rc = main(["export", str(bundle), "--bf16-check", str(small), "--windows", "3"])
    out, err = capsys.readouterr()
    assert rc == 0 and "of the pixels of 1 64-px window of" in out, out
    assert "only 1 distinct 64-px window(s) without nodata found of the 3 asked" in err
    assert "bf16 check measures 64-px windows, not 512-px ones" in err


# 7 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("flag", "value"), [("--chunk", "0"), ("--chunk", "-64"),
                                             ("--chunk", "32"), ("--windows", "0"),
                                             ("--windows", "-2"), ("--windows", "two")])
def test_bad_chunk_and_windows_are_refused_naming_the_flag(
        bundle: Path, tmp_path: Path, flag: str, value: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    image = _image(tmp_path / "img.tif", 64)
    with pytest.raises(SystemExit) as e:
        main(["export", str(bundle), "--halo-check", str(image), flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {flag}: '{value}': give a whole number" in err


def test_flags_of_a_check_not_asked_for_are_refused(bundle: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--chunk", "--windows"):
        assert main(["export", str(bundle), "--onnx", flag, "64"]) == 2
        line = _one_error(capsys.readouterr().err)
        assert line.startswith(f"error: {flag} is") and "--halo-check" in line
    assert not (bundle / "model.onnx").exists()


# 8 ------------------------------------------------------------------------------------------

def test_bf16_check_resolves_weights_as_run_does(bundle: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    image = _image(tmp_path / "img.tif", 64)
    outside = tmp_path / "s7"
    outside.mkdir()
    spec = read_spec(bundle).model_copy(update={"weights": "../b/weights.safetensors"})
    write_spec(spec, outside)
    assert main(["export", str(outside), "--bf16-check", str(image)]) == 2
    assert "lies outside" in _one_error(capsys.readouterr().err)
    assert read_spec(outside).bf16_agreement is None

    only = tmp_path / "only"   # an ONNX-only bundle: a graph and no weights, by design
    write_spec(read_spec(bundle).model_copy(update={"onnx": "model.onnx"}), only)
    (only / "model.onnx").write_bytes(b"a graph")
    for flag in (["--bf16-check", str(image)], ["--onnx"]):
        if flag == ["--onnx"]:
            pytest.importorskip("onnx")
        assert main(["export", str(only), *flag]) == 2
        line = _one_error(capsys.readouterr().err)
        assert "ships only an ONNX graph (model.onnx), no torch weights" in line, line


def test_recording_keys_keeps_a_hand_written_bundle_yaml(tmp_path: Path) -> None:
    """A check or an export changes only the lines of its keys: the user's comments, order
    and layout stay (they were lost, and every default written out); a file whose text does
    not allow that (one flow mapping) is written whole, with the same content."""
    import shutil

    import yaml

    from geoseg.bundle import BUNDLE_FILE, HaloRecord, builtin_bundle, read_spec, update_spec

    bundle = tmp_path / "b"
    shutil.copytree(builtin_bundle("landcover"), bundle)
    path = bundle / BUNDLE_FILE
    data = yaml.safe_load(path.read_text())
    data.pop("halo", None)
    data.pop("halo_check", None)
    text = "# my bundle, written by hand\n" + yaml.safe_dump(data, sort_keys=False).replace(
        "\nclasses:", "\n# the survey's classes\nclasses:")
    path.write_text(text)
    record = HaloRecord(chunk=1024, windows=4, worst={0: 0.99, 16: 0.9995})
    update_spec(bundle, halo=16, halo_check=record, onnx=None)
    new = path.read_text()
    spec = read_spec(bundle)
    assert spec.halo == 16 and spec.halo_check == record and spec.onnx is None
    kept = [ln for ln in text.splitlines() if not ln.startswith("onnx:")]
    assert new.splitlines()[:len(kept)] == kept  # every other line as the user wrote it
    update_spec(bundle, halo=32)
    assert read_spec(bundle).halo == 32 and read_spec(bundle).halo_check == record
    assert "# the survey's classes" in path.read_text()
    path.write_text(path.read_text().replace("\nhalo: 32", "\n'halo': 32"))  # quoted key
    assert "\n'halo': 32" in path.read_text()
    update_spec(bundle, halo=24)
    assert path.read_text().count("halo:") + path.read_text().count("'halo':") == 1
    assert read_spec(bundle).halo == 24
    path.write_text(yaml.safe_dump(data, default_flow_style=True))  # one flow mapping
    update_spec(bundle, halo=48)
    assert read_spec(bundle).halo == 48
    assert read_spec(bundle).model_copy(update={"halo": None}) == \
        type(spec).model_validate(data)
