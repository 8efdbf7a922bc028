"""The onnx engine: the same probabilities as torch, ONNX-only bundles, one-line errors."""

from __future__ import annotations

import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from geoseg.bundle import BundleSpec, read_spec, write_spec
from geoseg.errors import BundleError, GeoSegWarning, InputError, MissingDependencyError
from geoseg.models import Predictor, build_model, save_bundle


def _raw(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, 4, h, w)).astype(np.float32)


def _exported(root: Path, spec: BundleSpec) -> Path:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from geoseg.models import export_onnx

    torch.manual_seed(0)
    bundle = save_bundle(build_model(spec), spec, root / spec.architecture.name)
    export_onnx(bundle)
    return bundle


def _onnx_only(bundle: Path, dest: Path) -> Path:
    """The bundle as someone wrapping an external ONNX file ships it: yaml + graph, no weights."""
    dest.mkdir()
    for name in ("bundle.yaml", "model.onnx"):
        shutil.copy(bundle / name, dest / name)
    return dest


@pytest.mark.parametrize("arch", ["unet", "deeplabv3plus"])
def test_onnx_engine_matches_torch(tmp_path: Path, spec_factory: Callable[..., BundleSpec],
                                   arch: str) -> None:
    spec = spec_factory(arch) if arch == "unet" else spec_factory(arch, depth=5, decoder=None)
    bundle = _exported(tmp_path, spec)
    pt = Predictor(bundle, engine="torch")
    ox = Predictor(bundle, engine="onnx", num_threads=1)
    assert (pt.engine, ox.engine, Predictor(bundle).engine) == ("torch", "onnx", "torch")
    opts = ox._onnx.session.session.get_session_options()  # type: ignore[union-attr]
    assert opts.intra_op_num_threads == 1
    for n, h, w in ((3, 96, 128), (1, 64, 64)):  # dynamic batch, height and width
        x = _raw(n, h, w, seed=h)
        a, b = pt.predict_proba(x), ox.predict_proba(x)
        assert b.dtype == np.float32 and b.shape == (n, 3, h, w)
        np.testing.assert_allclose(b, a, atol=1e-5)
        agree = float(np.mean(pt.predict_classes(x) == ox.predict_classes(x)))
        assert agree >= 0.999, f"{arch} {h}x{w}: onnx agrees with torch on {agree:.5f}"


def test_onnx_only_bundle_runs_with_auto(tmp_path: Path, unet_spec: BundleSpec) -> None:
    bundle = _exported(tmp_path, unet_spec)
    only = _onnx_only(bundle, tmp_path / "only")
    pred = Predictor(only)
    assert pred.engine == "onnx"
    x = _raw(2, 64, 64)
    assert np.array_equal(pred.predict_proba(x),
                          Predictor(bundle, engine="onnx").predict_proba(x))
    with pytest.raises(InputError, match="no torch module"):
        _ = pred.model
    with pytest.raises(BundleError, match=r"weights file .* is missing"):
        Predictor(only, engine="torch")


def test_engine_errors_are_one_line_bundle_errors(tmp_path: Path, unet_spec: BundleSpec,
                                                  maskrcnn_spec: BundleSpec) -> None:
    torch.manual_seed(0)
    plain = save_bundle(build_model(unet_spec), unet_spec, tmp_path / "plain")
    with pytest.raises(BundleError, match=r"no ONNX model: export one with `geoseg export"):
        Predictor(plain, engine="onnx")
    write_spec(unet_spec.model_copy(update={"onnx": "gone.onnx"}), plain)
    with pytest.raises(BundleError, match=r"ONNX file .*gone\.onnx is missing"):
        Predictor(plain, engine="onnx")
    write_spec(unet_spec.model_copy(update={"onnx": "../x.onnx"}), plain)
    with pytest.raises(BundleError, match="outside"):
        Predictor(plain, engine="onnx")
    mrcnn = tmp_path / "mrcnn"
    write_spec(maskrcnn_spec.model_copy(update={"onnx": "model.onnx"}), mrcnn)
    (mrcnn / "model.onnx").write_bytes(b"not a graph")
    for engine in ("onnx", "auto"):  # auto: no weights, so it would be onnx
        with pytest.raises(BundleError, match="maskrcnn: ONNX inference supports only") as e:
            Predictor(mrcnn, engine=engine)  # type: ignore[arg-type]
        assert "\n" not in str(e.value)


def test_missing_onnxruntime_says_how_to_install(tmp_path: Path, unet_spec: BundleSpec,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tmp_path / "b"
    write_spec(unet_spec.model_copy(update={"onnx": "model.onnx"}), bundle)
    (bundle / "model.onnx").write_bytes(b"never read")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'geoseg\[onnx\]'") as e:
        Predictor(bundle)
    assert isinstance(e.value, ImportError) and "\n" not in str(e.value)


def test_unreadable_or_mismatched_graph(tmp_path: Path, unet_spec: BundleSpec,
                                        spec_factory: Callable[..., BundleSpec]) -> None:
    bundle = _exported(tmp_path, unet_spec)
    (bundle / "model.onnx").write_bytes(b"junk")
    with pytest.raises(BundleError, match="cannot be loaded by onnxruntime"):
        Predictor(bundle, engine="onnx")
    other = _exported(tmp_path / "k2", spec_factory(classes=("a", "b")))
    write_spec(read_spec(other).model_copy(update={"classes": unet_spec.classes}), other)
    with pytest.raises(BundleError, match=r"returns 2 classes, bundle\.yaml lists 3"):
        Predictor(other, engine="onnx")


def test_fixed_shape_graph_from_elsewhere(tmp_path: Path, unet_spec: BundleSpec) -> None:
    """A graph exported without dynamic axes (batch 1, 64x64): tiles run one at a time."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    bundle = save_bundle(build_model(unet_spec), unet_spec, tmp_path / "b")
    model = Predictor(bundle).model  # the float16-stored weights, as the torch engine runs them
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(1, 4, 64, 64),), str(tmp_path / "ext.onnx"),
                          dynamo=False, input_names=["x"], output_names=["y"])
    only = tmp_path / "only"
    write_spec(unet_spec.model_copy(update={"onnx": "ext.onnx"}), only)
    shutil.copy(tmp_path / "ext.onnx", only / "ext.onnx")
    x = _raw(3, 64, 64)
    np.testing.assert_allclose(Predictor(only).predict_proba(x),
                               Predictor(bundle).predict_proba(x), atol=1e-5)
    with pytest.raises(InputError, match=r"takes 64x64 px tiles, got 96x96: set "
                                         r"inference\.tile_size"):
        Predictor(only).predict_proba(_raw(1, 96, 96))


def test_cuda_provider_first_only_when_onnxruntime_has_it() -> None:
    from geoseg.models.onnx_session import providers_for

    cpu, cuda = "CPUExecutionProvider", "CUDAExecutionProvider"
    assert providers_for(torch.device("cpu"), [cuda, cpu]) == [cpu]
    assert providers_for(torch.device("cuda:1"), [cuda, cpu]) == [(cuda, {"device_id": 1}), cpu]
    with pytest.warns(GeoSegWarning, match="onnxruntime-gpu"):
        assert providers_for(torch.device("cuda"), [cpu]) == [cpu]
