"""The GPU path's logic, tested on CPUs (its CUDA tests skip without a GPU).

Tiles blended on the model's device (what a PyTorch model on a GPU does) give what the host's
numpy blend gives: the same classes and confidence for a window, and the same store for a job.
On the CPU the two paths run the same float32 arithmetic, so they agree bit for bit; on CUDA
autocast may flip near-ties. Several chunks are in flight per GPU (callers on CUDA streams of
their own, as many I/O threads as cores) and give the same results as one at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from geoseg.config import validate_job
from geoseg.job import default_in_flight, run_job
from geoseg.plan import Plan
from geoseg.runtime import local
from geoseg.runtime.base import GPU_PASSES, model_callers
from geoseg.runtime.local import LocalBackend, default_io_threads
from geoseg.stitch import classify, predict_window
from tests.cluster.conftest import assert_same_store


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize(("tile", "overlap", "shape"),
                         [(64, 32, (150, 170)), (96, 32, (128, 224)), (128, 16, (100, 90))])
def test_device_blend_equals_the_host_blend(tiny_bundles: tuple[str, str], device: str,
                                            tile: int, overlap: int,
                                            shape: tuple[int, int]) -> None:
    torch = pytest.importorskip("torch")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from geoseg.models.predictor import Predictor

    pred = Predictor(tiny_bundles[0], device=device, engine="torch")
    assert pred.blends_on_device == (device == "cuda")
    x = (np.random.default_rng(5).random((4, *shape)) * 200).astype(np.float32)
    crop = (slice(8, shape[0] - 8), slice(16, shape[1] - 4))
    cls, conf = pred.predict_tiles_core(x, crop, tile=tile, overlap=overlap, batch_size=3)
    probs = predict_window(x, pred.predict_proba, pred.num_classes, tile=tile,
                           overlap=overlap, batch_size=3)[:, crop[0], crop[1]]
    ref_cls, ref_conf = classify(probs, np.ones(probs.shape[1:], bool))
    assert cls.shape == ref_cls.shape and cls.dtype == conf.dtype == np.uint8
    if device == "cpu":
        assert np.array_equal(cls, ref_cls) and np.array_equal(conf, ref_conf)
    else:
        assert np.mean(cls == ref_cls) > 0.99
        assert np.abs(conf.astype(int) - ref_conf.astype(int)).max() <= 8


def test_device_blend_refuses_a_window_of_other_bands(tiny_bundles: tuple[str, str]) -> None:
    from geoseg.errors import InputError
    from geoseg.models.predictor import Predictor

    pred = Predictor(tiny_bundles[0], engine="torch")
    with pytest.raises(InputError, match="reads a window"):
        pred.predict_tiles_core(np.zeros((3, 64, 64), np.float32), (slice(0, 64),) * 2,
                                tile=64, overlap=16, batch_size=1)


def test_a_job_blended_on_the_device_writes_the_same_store(
        tmp_path: Path, scene_tif: Path, tiny_bundles: tuple[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunk loop takes the device path whenever the model offers it (forced here on a
    CPU model), and the store is byte-identical to the host blend's."""
    def cfg(out: Path) -> Any:
        return validate_job({"image": str(scene_tif), "output": str(out),
                             "models": list(tiny_bundles),
                             "inference": {"chunk_size": 64, "halo": 32, "tile_size": 64,
                                           "tile_overlap": 32, "engine": "torch"},
                             "vectors": {"enabled": False},
                             "runtime": {"threads_per_worker": 1}})

    assert run_job(cfg(tmp_path / "host"), backend=LocalBackend()).ok
    calls = []
    load = local.load_models

    def on_device(*args: Any) -> dict[str, Any]:
        models = load(*args)
        for m in models.values():
            m.blends_on_device = m.semantic
            real = m.predict_tiles_core

            def spy(*a: Any, _real: Any = real, **kw: Any) -> Any:
                calls.append(kw["tile"])
                return _real(*a, **kw)

            m.predict_tiles_core = spy
        return models

    monkeypatch.setattr(local, "load_models", on_device)
    assert run_job(cfg(tmp_path / "device"), backend=LocalBackend()).ok
    assert calls and set(calls) == {64}
    assert_same_store(tmp_path / "host", tmp_path / "device")


def _plan(*engines: str) -> Plan:
    """What model_callers reads of a plan: its models' engines."""
    from types import SimpleNamespace

    models = [SimpleNamespace(engine=e) for e in engines]
    return SimpleNamespace(models=models)  # type: ignore[return-value]


def test_chunks_in_flight_per_gpu() -> None:
    torch_plan, onnx_plan = _plan("torch"), _plan("onnx", "onnx")
    # a GPU: two passes at once by default, or what runtime.passes_at_once says, any engine
    assert model_callers(torch_plan, "cuda", 2, None) == GPU_PASSES == 2
    assert model_callers(onnx_plan, "cuda", 2, 3) == 3
    assert model_callers(torch_plan, "cuda", 8, 1) == 1
    # CPUs: one pass unless asked, and several only for onnxruntime, at most one per thread
    assert model_callers(onnx_plan, "cpu", 2, None) == 1
    assert model_callers(onnx_plan, "cpu", 2, 4) == 2
    assert model_callers(torch_plan, "cpu", 2, 2) == 1
    # the host feeds a GPU with every core; beside a CPU model a few threads
    assert default_io_threads("cuda", 16) == 16
    assert default_io_threads("cpu", 16) == 4 and default_io_threads("cpu", 1) == 2


def test_default_chunks_in_the_air(tmp_path: Path) -> None:
    def cfg(**runtime: Any) -> Any:
        return validate_job({"image": str(tmp_path / "x.tif"), "output": str(tmp_path / "o"),
                             "runtime": runtime})

    assert default_in_flight(cfg(), "cpu", 1) == 4
    assert default_in_flight(cfg(num_cpus=16), "cuda", 1) == 16  # a read per core
    assert default_in_flight(cfg(num_cpus=4), "cuda", 2) == 2 * 2 * GPU_PASSES + 2
    assert default_in_flight(cfg(num_cpus=4, passes_at_once=3), "cuda", 1) == 8


@pytest.mark.gpu
def test_concurrent_callers_on_cuda_agree_with_one(tiny_bundles: tuple[str, str]) -> None:
    """Two threads on their own CUDA streams (pinned, non-blocking uploads) get what one
    thread gets, call for call."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from concurrent.futures import ThreadPoolExecutor

    from geoseg.models.predictor import Predictor

    pred = Predictor(tiny_bundles[0], device="cuda", engine="torch")
    rng = np.random.default_rng(9)
    xs = [(rng.random((4, 160, 192)) * 200).astype(np.float32) for _ in range(8)]
    crop = (slice(16, 144), slice(32, 160))

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return pred.predict_tiles_core(x, crop, tile=96, overlap=32, batch_size=2)

    alone = [run(x) for x in xs]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(run, xs))
    for (a_cls, a_conf), (b_cls, b_conf) in zip(alone, together, strict=True):
        assert np.array_equal(a_cls, b_cls) and np.array_equal(a_conf, b_conf)
