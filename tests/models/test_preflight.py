"""Bad model files are refused on the driver, in one line, before Ray starts (issue 13 A)."""

from __future__ import annotations

import pickle
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load, save_file

from geoseg.bundle import builtin_bundle, read_spec
from geoseg.cli import main
from geoseg.errors import BundleError
from geoseg.models.preflight import check_model_file, check_weights, expected_shapes
from tests.conftest import write_raster
from tests.pipeline.conftest import textured, tiny_bundle


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("pf"), "landcover", 0)


@pytest.fixture
def bundle(tmp_path: Path, good_bundle: Path) -> Path:
    """A fresh copy of a good tiny bundle, to break."""
    return Path(shutil.copytree(good_bundle, tmp_path / "bundle"))


def _weights(bundle: Path) -> Path:
    return bundle / "weights.safetensors"


def _state(bundle: Path) -> dict[str, torch.Tensor]:
    """The bundle's tensors, in memory (load_file maps the file, which the tests overwrite)."""
    return load(_weights(bundle).read_bytes())


def _refused(bundle: Path, *needles: str) -> str:
    with pytest.raises(BundleError) as info:
        check_model_file(read_spec(bundle), bundle, "torch")
    msg = str(info.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


def _edit_yaml(bundle: Path, **changes: object) -> None:
    path = bundle / "bundle.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_good_bundle_passes(bundle: Path) -> None:
    check_model_file(read_spec(bundle), bundle, "torch")


@pytest.mark.parametrize("name", ["landcover", "buildings"])
def test_builtin_bundles_pass_quickly(name: str) -> None:
    path = builtin_bundle(name)
    spec = read_spec(path)
    expected_shapes(spec)  # warm: torch / smp imports are a one-off cost of the driver
    t0 = time.perf_counter()
    check_model_file(spec, path, "torch")
    assert time.perf_counter() - t0 < 2.0


def test_zip_checkpoint_is_refused(bundle: Path) -> None:
    state = _state(bundle)
    torch.save(state, _weights(bundle))  # torch's zip format, named as safetensors
    _refused(bundle, "pickle/PyTorch checkpoint", "Bring your own model")


def test_raw_pickle_is_refused(bundle: Path) -> None:
    _weights(bundle).write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=4))
    _refused(bundle, "pickle/PyTorch checkpoint")


def test_other_file_is_refused(bundle: Path) -> None:
    _weights(bundle).write_text("not weights at all, just some text")
    _refused(bundle, "not a safetensors file")


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_data_is_refused(bundle: Path, keep: float) -> None:
    raw = _weights(bundle).read_bytes()
    _weights(bundle).write_bytes(raw[: int(len(raw) * keep)])
    _refused(bundle, "is truncated", "bytes of tensor data")


def test_truncated_header_is_refused(bundle: Path) -> None:
    raw = _weights(bundle).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    _weights(bundle).write_bytes(raw[: 8 + n // 2])
    _refused(bundle, "is truncated", "header")


def test_corrupt_header_is_refused(bundle: Path) -> None:
    raw = bytearray(_weights(bundle).read_bytes())
    raw[20:40] = b"#" * 20  # still starts with '{', no longer JSON
    _weights(bundle).write_bytes(bytes(raw))
    _refused(bundle, "corrupt safetensors header")


def test_missing_and_unexpected_tensors_are_named(bundle: Path) -> None:
    state = _state(bundle)
    state.pop("segmentation_head.0.bias")
    state["head.extra"] = torch.zeros(2)
    save_file(state, str(_weights(bundle)))
    _refused(bundle, "missing 1: segmentation_head.0.bias", "unexpected 1: head.extra")


def test_many_missing_tensors_are_summarised(bundle: Path) -> None:
    state = _state(bundle)
    save_file({k: v for k, v in state.items() if not k.startswith("decoder.")},
              str(_weights(bundle)))
    msg = _refused(bundle, "missing")
    assert "more" in msg and len(msg) < 400


def test_wrong_shape_names_tensor_and_both_shapes(bundle: Path) -> None:
    state = _state(bundle)
    key = next(k for k in state if k.startswith("decoder.") and k.endswith(".weight")
               and state[k].ndim == 4)
    good = tuple(state[key].shape)
    bad = (good[0] * 2, *good[1:])
    state[key] = torch.zeros(bad, dtype=state[key].dtype)
    save_file(state, str(_weights(bundle)))
    _refused(bundle, f"tensor {key} has shape {bad}", f"needs {good}")


def test_class_count_mismatch(bundle: Path) -> None:
    classes = yaml.safe_load((bundle / "bundle.yaml").read_text())["classes"][:4]
    _edit_yaml(bundle, classes=classes)  # the weights output 5 classes
    _refused(bundle, "outputs 5 classes", "lists 4", "'classes'")


def test_band_count_mismatch(bundle: Path) -> None:
    _edit_yaml(bundle, bands=[1, 2, 3], band_names=["red", "green", "blue"],
               normalization={"mean": [100.0] * 3, "std": [50.0] * 3})
    _refused(bundle, "reads 4 band(s)", "lists 3 band(s)")


def test_architecture_mismatch(bundle: Path) -> None:
    data = yaml.safe_load((bundle / "bundle.yaml").read_text())
    _edit_yaml(bundle, architecture={**data["architecture"], "decoder_channels": [32, 16, 8]})
    _refused(bundle, "has shape", "needs")


def test_maskrcnn_spec_with_unet_weights(bundle: Path) -> None:
    _edit_yaml(bundle, task="buildings", architecture={"name": "maskrcnn", "encoder": "resnet18"},
               classes=[{"id": 0, "name": "background", "color": "#000000"},
                        {"id": 1, "name": "building", "color": "#d7301f"}])
    _refused(bundle, "does not fit the architecture", "missing", "backbone")


def test_maskrcnn_expected_shapes_are_cheap(maskrcnn_spec: object) -> None:
    shapes = expected_shapes(maskrcnn_spec)  # type: ignore[arg-type]
    assert shapes["backbone.body.conv1.weight"] == (64, 4, 7, 7)


def test_check_weights_reads_no_tensor_data(bundle: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("tensor data read")

    monkeypatch.setattr(safetensors.torch, "load_file", boom)
    monkeypatch.setattr(safetensors.torch, "load", boom)
    check_weights(read_spec(bundle), _weights(bundle))


# ONNX-only bundles ------------------------------------------------------------------------------

def _onnx_bundle(bundle: Path, channels: int, classes: int) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [classes, channels, 1, 1],
                           np.zeros(classes * channels, np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["logits"])], "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, "H", "W"])],
        [w])
    onnx.save(helper.make_model(graph), str(bundle / "model.onnx"))
    _weights(bundle).unlink()
    _edit_yaml(bundle, onnx="model.onnx")
    return bundle


def test_onnx_bundle_passes(bundle: Path) -> None:
    b = _onnx_bundle(bundle, 4, 5)
    check_model_file(read_spec(b), b, "onnx")


def test_onnx_class_mismatch(bundle: Path) -> None:
    b = _onnx_bundle(bundle, 4, 3)
    with pytest.raises(BundleError, match=r"outputs 3 classes but bundle\.yaml lists 5"):
        check_model_file(read_spec(b), b, "onnx")


def test_onnx_band_mismatch(bundle: Path) -> None:
    b = _onnx_bundle(bundle, 3, 5)
    with pytest.raises(BundleError, match="reads 3 band"):
        check_model_file(read_spec(b), b, "onnx")


def test_onnx_garbage(bundle: Path) -> None:
    b = _onnx_bundle(bundle, 4, 5)
    (b / "model.onnx").write_bytes(b"\x08\x07garbage that is not protobuf" * 3)
    with pytest.raises(BundleError, match="not a readable ONNX model"):
        check_model_file(read_spec(b), b, "onnx")


# Through the CLI: one line, exit 2, before Ray ----------------------------------------------------

@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Fail the test if anything tries to start or join Ray."""
    ray = pytest.importorskip("ray")
    calls: list[object] = []

    def init(*a: object, **k: object) -> None:
        calls.append((a, k))
        raise AssertionError("ray.init called before the bundle was checked")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    return calls


def _cli(capsys: pytest.CaptureFixture[str], tmp_path: Path, bundle: Path) -> tuple[int, str]:
    tif = write_raster(tmp_path / "img.tif", textured(64, 64),
                       descriptions=["red", "green", "blue", "nir"])
    rc = main(["-q", "run", str(tif), "-o", str(tmp_path / "out"), "-m", str(bundle)])
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing half-made
    return rc, lines[0]


BREAKERS: dict[str, Callable[[Path], object]] = {
    "pickle": lambda b: torch.save(_state(b), _weights(b)),
    "truncated": lambda b: _weights(b).write_bytes(_weights(b).read_bytes()[:5000]),
    "classes": lambda b: _edit_yaml(
        b, classes=yaml.safe_load((b / "bundle.yaml").read_text())["classes"][:3]),
    "shape": lambda b: save_file(
        {**_state(b), "segmentation_head.0.bias": torch.zeros(9)},
        str(_weights(b))),
}
NEEDLES = {"pickle": "pickle/PyTorch checkpoint", "truncated": "truncated",
           "classes": "outputs 5 classes", "shape": "outputs 9 classes"}


@pytest.mark.parametrize("what", sorted(BREAKERS))
def test_cli_refuses_in_one_line_before_ray(what: str, tmp_path: Path, bundle: Path,
                                            capsys: pytest.CaptureFixture[str],
                                            no_ray: list[object]) -> None:
    BREAKERS[what](bundle)
    t0 = time.perf_counter()
    rc, line = _cli(capsys, tmp_path, bundle)
    assert rc == 2 and NEEDLES[what] in line
    assert no_ray == []
    assert time.perf_counter() - t0 < 10  # not the 11–17 s of a model actor's failure
