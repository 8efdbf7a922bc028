from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from geoseg.bundle import BundleSpec, read_spec
from geoseg.errors import BundleError, InputError, OutputExistsError, StorageError
from geoseg.models import Predictor, build_model, save_bundle
from geoseg.models.maskrcnn import instances_to_proba, touching_pixels


def _raw(n: int = 2, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, 4, size, size)).astype(np.float32)


@pytest.fixture
def unet_bundle(tmp_path: Path, unet_spec: BundleSpec) -> Path:
    torch.manual_seed(0)
    return save_bundle(build_model(unet_spec), unet_spec, tmp_path / "unet")


def test_round_trip_through_float16_safetensors(unet_bundle: Path, unet_spec: BundleSpec,
                                                ) -> None:
    torch.manual_seed(0)
    original = build_model(unet_spec)
    assert read_spec(unet_bundle) == unet_spec
    with safe_open(str(unet_bundle / "weights.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 - not a dict
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    loaded = Predictor(unet_bundle).model.state_dict()
    for name, t in original.state_dict().items():
        want = t.half().float() if t.is_floating_point() else t
        assert torch.equal(loaded[name], want), name
        assert loaded[name].dtype == t.dtype


def test_predict_proba_is_deterministic_and_sums_to_one(unet_bundle: Path) -> None:
    x = _raw()
    a = Predictor(unet_bundle).predict_proba(x)
    b = Predictor(unet_bundle).predict_proba(x.copy())
    assert a.dtype == np.float32 and a.shape == (2, 3, 64, 64)
    assert np.array_equal(a, b)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, atol=1e-5)


def test_normalisation_happens_inside(unet_bundle: Path, unet_spec: BundleSpec) -> None:
    pred = Predictor(unet_bundle)
    mean = np.asarray(unet_spec.normalization.mean, dtype=np.float32)[None, :, None, None]
    x = np.broadcast_to(mean, (1, 4, 64, 64)).copy()
    with torch.no_grad():
        ref = torch.softmax(pred.model(torch.zeros(1, 4, 64, 64)), dim=1).numpy()
    np.testing.assert_allclose(pred.predict_proba(x), ref, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (1, 4, 60, 64), (4, 64, 64)])
def test_bad_input_is_refused(unet_bundle: Path, shape: tuple[int, ...]) -> None:
    with pytest.raises(InputError):
        Predictor(unet_bundle).predict_proba(np.zeros(shape, dtype=np.float32))


def test_bundle_problems_are_bundle_errors(unet_bundle: Path, unet_spec: BundleSpec,
                                           spec_factory: object, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"no bundle\.yaml"):
        Predictor(tmp_path / "nowhere")
    (unet_bundle / "weights.safetensors").unlink()
    with pytest.raises(BundleError, match="missing"):
        Predictor(unet_bundle)
    escaped = unet_spec.model_copy(update={"weights": "../w.safetensors"})
    with pytest.raises(BundleError, match="outside"):
        save_bundle(build_model(unet_spec), escaped, tmp_path / "esc")
    with pytest.raises(InputError):
        Predictor(tmp_path / "unet", device="tpu")


def test_weights_must_fit_architecture(tmp_path: Path, unet_spec: BundleSpec) -> None:
    other = unet_spec.model_copy(update={"classes": unet_spec.classes[:2]})
    save_bundle(build_model(other), unet_spec, tmp_path / "b")
    with pytest.raises(BundleError, match="shape"):
        Predictor(tmp_path / "b")


def test_maskrcnn_predict_proba(tmp_path: Path, maskrcnn_spec: BundleSpec) -> None:
    torch.manual_seed(0)
    model = build_model(maskrcnn_spec)
    spec = maskrcnn_spec.model_copy(update={"architecture": maskrcnn_spec.architecture.model_copy(
        update={"score_threshold": 0.0})})
    save_bundle(model, spec, tmp_path / "mrcnn")
    pred = Predictor(tmp_path / "mrcnn")
    # random weights keep torchvision's 200 detections per tile at threshold 0: each one's mask
    # head is what takes the time, and 20 show the same (4 s a call instead of 0.4)
    pred.model.roi_heads.detections_per_img = 20  # type: ignore[union-attr]
    proba = pred.predict_proba(_raw())
    assert proba.shape == (2, 3, 64, 64) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert np.array_equal(proba, pred.predict_proba(_raw()))
    inst = pred.predict_instances(_raw())
    assert len(inst) == 2 and len(inst[0]) > 0
    for obj in inst[0]:
        assert obj["mask"].dtype == bool and obj["mask"].shape == (64, 64)
        assert 0.0 <= obj["score"] <= 1.0 and len(obj["box"]) == 4


def test_instances_to_proba_marks_contact_ring() -> None:
    masks = np.zeros((2, 6, 8), dtype=np.float32)
    masks[0, 1:5, 1:4] = 1.0   # columns 1-3
    masks[1, 1:5, 4:7] = 0.8   # columns 4-6, touching the first
    proba = instances_to_proba(masks, np.array([0.9, 0.5]), 3, (0, 1, 2), ring=1)
    # pixels of each instance next to the other one (columns 3 and 4) are boundary
    assert np.allclose(proba[2, 1:5, 3], 0.9) and np.allclose(proba[2, 1:5, 4], 0.4)
    assert np.allclose(proba[1, 1:5, 1:3], 0.9) and np.allclose(proba[1, 1:5, 5:7], 0.4)
    assert proba[2, :, [0, 1, 2, 5, 6, 7]].sum() == 0  # free edges are not boundary
    np.testing.assert_allclose(proba.sum(axis=0), 1.0)
    assert np.allclose(proba[0, 0], 1.0)
    empty = instances_to_proba(np.zeros((0, 4, 4)), np.zeros(0), 2, (0, 1, None))
    assert np.array_equal(empty[0], np.ones((4, 4)))


def test_export_onnx_replaces_a_symlink_never_writes_through_it(unet_bundle: Path,
                                                                 tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from geoseg.models import export_onnx

    export_onnx(unet_bundle)  # bundle.yaml now names model.onnx: the bundle's own graph
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"precious user file")
    (unet_bundle / "model.onnx").unlink()
    (unet_bundle / "model.onnx").symlink_to(outside)
    path = export_onnx(unet_bundle)
    assert outside.read_bytes() == b"precious user file"
    assert not path.is_symlink() and path.stat().st_size > 1000
    assert not [p for p in unet_bundle.iterdir() if p.name.startswith(".tmp-")]
    with pytest.raises(BundleError, match="plain name"):
        export_onnx(unet_bundle, "../elsewhere.onnx")
    assert not (tmp_path / "elsewhere.onnx").exists()


def test_export_onnx_refuses_a_model_onnx_the_bundle_does_not_name(
        unet_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A user's ``model.onnx`` in a bundle whose bundle.yaml names no graph (or another one)
    is not geoseg's: refused in one line, the file and bundle.yaml untouched."""
    pytest.importorskip("onnx")
    from geoseg.cli import main

    mine = unet_bundle / "model.onnx"
    mine.write_bytes(b"my own graph")
    spec_before = (unet_bundle / "bundle.yaml").read_bytes()
    rc = main(["-q", "export", str(unet_bundle), "--onnx"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == OutputExistsError.exit_code and len(err) == 1, err
    assert "does not name it as the bundle's ONNX graph" in err[0], err
    assert mine.read_bytes() == b"my own graph"
    assert (unet_bundle / "bundle.yaml").read_bytes() == spec_before


def test_export_onnx_into_a_read_only_bundle_is_one_line(
        unet_bundle: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnx")
    import errno

    import geoseg.models.onnx as onnx_mod
    from geoseg.cli import main

    def read_only(*args: object, **kw: object) -> None:  # what chmod 555 gives a non-root user
        raise PermissionError(errno.EACCES, "Permission denied", str(unet_bundle / ".tmp-1"))

    monkeypatch.setattr(onnx_mod, "_export", read_only)
    rc = main(["-q", "export", str(unet_bundle), "--onnx"])
    err = capsys.readouterr().err
    assert rc == StorageError.exit_code and "Traceback" not in err, err
    assert err.startswith("error: permission denied writing") and err.count("\n") == 1, err
    assert not (unet_bundle / "model.onnx").exists()


def test_touching_pixels_ignores_background() -> None:
    labels = np.array([[1, 1, 0, 2], [1, 1, 2, 2]])
    assert touching_pixels(labels).tolist() == [[False, True, False, False],
                                                [False, True, True, False]]


def test_export_onnx_matches_torch(unet_bundle: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from geoseg.models import export_onnx

    path = export_onnx(unet_bundle)
    assert read_spec(unet_bundle).onnx == path.name
    pred = Predictor(unet_bundle)
    x = np.random.default_rng(1).standard_normal((1, 4, 96, 64)).astype(np.float32)
    with torch.no_grad():
        ref = pred.model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"image": x})
    np.testing.assert_allclose(out, ref, atol=1e-4)
