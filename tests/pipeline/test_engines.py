"""`geoseg run` with the onnx engine: same tiling and stitching, the same classes as torch, the
engine recorded and part of the result key."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import zarr

from geoseg.cli import build_parser, main
from geoseg.config import JobConfig, validate_job
from geoseg.errors import ResumeError
from geoseg.job import run_job
from geoseg.runtime.serial import SerialBackend
from geoseg.store import store_attrs

LAYERS = ("landcover", "buildings")


@pytest.fixture(scope="module")
def onnx_bundles(tmp_path_factory: pytest.TempPathFactory,
                 tiny_bundles: tuple[str, str]) -> tuple[str, str]:
    """Copies of the tiny bundles with an ONNX export beside their weights."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from geoseg.models import export_onnx

    root = tmp_path_factory.mktemp("onnx-bundles")
    out: list[str] = []
    for b in tiny_bundles:
        dest = root / Path(b).name
        shutil.copytree(b, dest)
        export_onnx(dest)
        out.append(str(dest))
    return out[0], out[1]


def _cfg(image: Path, out: Path, bundles: tuple[str, ...], engine: str,
         chunk: int = 64) -> JobConfig:
    return validate_job({"image": str(image), "output": str(out), "models": list(bundles),
                         "inference": {"chunk_size": chunk, "halo": 64, "engine": engine},
                         "vectors": {"enabled": False}, "outputs": {"quicklook": False},
                         "runtime": {"threads_per_worker": 1}})


def _arr(out: Path, name: str) -> np.ndarray:
    return np.asarray(zarr.open_group(str(out / "predictions.zarr"), mode="r")[name][:])


def test_onnx_run_agrees_with_torch_run(tmp_path: Path, scene_tif: Path,
                                        onnx_bundles: tuple[str, str],
                                        record_property: pytest.RecordProperty) -> None:
    runs = {e: run_job(_cfg(scene_tif, tmp_path / e, onnx_bundles, e), backend=SerialBackend())
            for e in ("torch", "onnx")}
    for engine, res in runs.items():
        assert res.ok
        assert res.summary["engines"] == dict.fromkeys(LAYERS, engine)
        manifest = json.loads((res.output / "manifest.json").read_text())
        assert {m["engine"] for m in manifest["models"].values()} == {engine}
        assert manifest["config"]["inference"]["engine"] == engine
        zattrs = json.loads((res.output / "predictions.zarr" / "landcover" / ".zattrs")
                            .read_text())
        assert zattrs["engine"] == engine and zattrs["model_id"] == "tiny-landcover@0.0.1"
    assert runs["torch"].summary["tiling"] == runs["onnx"].summary["tiling"]
    for name in LAYERS:
        a, b = _arr(tmp_path / "torch", name), _arr(tmp_path / "onnx", name)
        assert a.shape == b.shape and np.all(a != 255)
        agree = float(np.mean(a == b))
        conf = np.abs(_arr(tmp_path / "torch", f"{name}_confidence").astype(int)
                      - _arr(tmp_path / "onnx", f"{name}_confidence"))
        print(f"{name}: onnx vs torch class agreement {agree:.6f} over {a.size} px, "
              f"max confidence difference {conf.max()}/255")
        record_property(f"agreement_{name}", agree)
        assert agree >= 0.999, f"{name}: onnx agrees with torch on {agree:.5f} of pixels"
        assert conf.max() <= 1


def test_resume_refuses_another_engine(tmp_path: Path, scene_tif: Path,
                                       onnx_bundles: tuple[str, str]) -> None:
    from geoseg.engine import onnx_fits

    out = tmp_path / "o"
    lc = onnx_bundles[:1]
    first = run_job(_cfg(scene_tif, out, lc, "onnx"), backend=SerialBackend())
    with pytest.raises(ResumeError, match="--overwrite"):
        run_job(_cfg(scene_tif, out, lc, "torch"), resume=True, backend=SerialBackend())
    if not onnx_fits("auto"):
        pytest.skip("a GPU host: auto resolves to torch here")
    # on a CPU, auto runs the ONNX graph of a bundle that has one: the same key as onnx
    again = run_job(_cfg(scene_tif, out, lc, "auto"), resume=True, backend=SerialBackend())
    assert again.summary["chunks"]["computed_this_run"] == 0
    assert store_attrs(out / "predictions.zarr")["result_key"] == \
        json.loads((out / "manifest.json").read_text())["result_key"]
    assert first.summary["engines"] == again.summary["engines"] == {"landcover": "onnx"}


def test_engine_flag_reaches_the_config(tmp_path: Path) -> None:
    from geoseg.cli.run_cmds import job_config

    a = build_parser().parse_args(["run", "img.tif", "-o", str(tmp_path), "--engine", "onnx"])
    assert job_config(a, a.image, a.out).inference.engine == "onnx"
    a = build_parser().parse_args(["run", "img.tif", "-o", str(tmp_path)])
    assert job_config(a, a.image, a.out).inference.engine == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "img.tif", "-o", str(tmp_path), "--engine", "trt"])


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("warning:")]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_cli_engine_errors_are_one_line(tmp_path: Path, scene_tif: Path,
                                        tiny_bundles: tuple[str, str],
                                        onnx_bundles: tuple[str, str],
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "o"
    rc = main(["-q", "run", str(scene_tif), "-o", str(out), "-m", tiny_bundles[0],
               "--engine", "onnx"])
    assert rc == 2 and "has no ONNX model" in _one_error_line(capsys)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    rc = main(["-q", "run", str(scene_tif), "-o", str(out), "-m", onnx_bundles[0],
               "--engine", "onnx"])
    assert rc == 2 and "pip install 'geoseg[onnx]'" in _one_error_line(capsys)
    assert not out.exists()  # refused before anything was written


def test_the_run_says_which_engine_ran(tmp_path: Path, scene_tif: Path,
                                       onnx_bundles: tuple[str, str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`auto` decides per host (bf16 on some CPUs, onnxruntime on others): the run's result
    lines name the model and engine of each layer."""
    out = tmp_path / "o"
    rc = main(["-q", "run", str(scene_tif), "-o", str(out), "-m", onnx_bundles[0],
               "--engine", "onnx", "--no-vectors", "--chunk-size", "128"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    lines = [ln.strip() for ln in capsys.readouterr().out.splitlines()]
    assert f"models: {summary['models']['landcover']} (onnx)" in lines


@pytest.mark.ray
def test_onnx_only_bundle_through_cli_on_ray(ray_cluster: None, tmp_path: Path,
                                             scene_tif: Path, onnx_bundles: tuple[str, str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A bundle that ships only bundle.yaml + model.onnx runs with the default engine (auto)."""
    only = tmp_path / "only"
    only.mkdir()
    for name in ("bundle.yaml", "model.onnx"):
        shutil.copy(Path(onnx_bundles[0]) / name, only / name)
    out = tmp_path / "run"
    rc = main(["-q", "run", str(scene_tif), "-o", str(out), "-m", str(only), "--chunk-size",
               "128", "--no-vectors", "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engines"] == {"landcover": "onnx"}
    ref = run_job(_cfg(scene_tif, tmp_path / "ref", onnx_bundles[:1], "onnx", chunk=128),
                  backend=SerialBackend())
    assert np.array_equal(_arr(out, "landcover"), _arr(ref.output, "landcover"))


def test_resume_with_auto_keeps_the_engine_of_the_run(tmp_path: Path, scene_tif: Path,
                                                      onnx_bundles: tuple[str, str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """auto depends on the host (onnxruntime, a GPU); a run resumed elsewhere with auto uses
    the engine the run was made with, so its chunks come from one computation."""
    import geoseg.plan

    out = tmp_path / "o"
    lc = onnx_bundles[:1]
    first = run_job(_cfg(scene_tif, out, lc, "onnx"), backend=SerialBackend())
    monkeypatch.setattr(geoseg.plan, "onnx_fits", lambda *a, **k: False)  # a "GPU host"
    again = run_job(_cfg(scene_tif, out, lc, "auto"), resume=True, backend=SerialBackend())
    assert again.summary["chunks"]["computed_this_run"] == 0
    assert first.summary["engines"] == again.summary["engines"] == {"landcover": "onnx"}
    fresh = run_job(_cfg(scene_tif, tmp_path / "new", lc, "auto"), backend=SerialBackend())
    assert fresh.summary["engines"] == {"landcover": "torch"}  # a new run: the host decides


def test_passes_at_once_write_the_same_bytes(tmp_path: Path, scene_tif: Path,
                                             onnx_bundles: tuple[str, str]) -> None:
    """Two single-thread ONNX passes at once (runtime.passes_at_once: 2) write what one
    two-thread pass at a time writes: store and features."""
    from geoseg.runtime.local import LocalBackend
    from tests.cluster.conftest import assert_same_store

    def cfg(out: Path, passes: int) -> JobConfig:
        return validate_job({"image": str(scene_tif), "output": str(out),
                             "models": list(onnx_bundles),
                             "inference": {"chunk_size": 64, "halo": 64, "engine": "onnx"},
                             "runtime": {"threads_per_worker": 2, "passes_at_once": passes}})

    backends = {n: LocalBackend(passes=n) for n in (1, 2)}
    for n, backend in backends.items():
        assert run_job(cfg(tmp_path / f"p{n}", n), backend=backend).ok
    assert backends[1].callers == 1 and backends[2].callers == 2
    assert_same_store(tmp_path / "p1", tmp_path / "p2")
    for layer in LAYERS:
        a, b = (pyogrio.read_dataframe(tmp_path / f"p{n}" / "features.gpkg", layer=layer)
                .sort_values("id").reset_index(drop=True) for n in (1, 2))
        assert len(a) == len(b) > 0
        assert (a.geometry.to_wkb() == b.geometry.to_wkb()).all()


@pytest.mark.ray
def test_a_cpu_cluster_joined_by_address_runs_the_onnx_graph(
        ray_cluster: None, tmp_path: Path, scene_tif: Path,
        onnx_bundles: tuple[str, str]) -> None:
    """Device auto on a cluster given by address: the driver asks the cluster for its GPUs
    (this one has none) and ``auto`` runs the ONNX graph, as it does on this host, where a
    cluster it knew nothing of had to be taken for a GPU cluster (PyTorch, 1.8x slower on
    CPUs than onnxruntime)."""
    import onnxruntime
    import ray

    from geoseg.plan import make_plan

    job = _cfg(scene_tif, tmp_path / "o", onnx_bundles[:1], "auto").model_dump()
    job["runtime"]["address"] = ray.get_runtime_context().gcs_address
    cfg = validate_job(job)
    cuda_build = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    unknown = {m.name: m.engine for m in make_plan(cfg).models}
    assert unknown == {"landcover": "onnx" if cuda_build else "torch"}
    assert {m.name: m.engine for m in make_plan(cfg, cluster_gpus=0).models} == \
        {"landcover": "onnx"}
    assert {m.name: m.engine for m in make_plan(cfg, cluster_gpus=1).models} == \
        {"landcover": "onnx" if cuda_build else "torch"}
    res = run_job(cfg)
    assert res.ok and res.summary["runtime"]["backend"] == "RayBackend"
    assert res.summary["engines"] == {"landcover": "onnx"}


@pytest.mark.parametrize(("engine", "tile"), [("onnx", "auto"), ("torch", "auto"),
                                              ("onnx", 64), ("torch", 64)])
def test_the_model_stage_is_split_into_its_parts(tmp_path: Path, scene_tif: Path,
                                                 onnx_bundles: tuple[str, str], engine: str,
                                                 tile: str | int) -> None:
    """Each chunk records normalize, forward, blend and classify seconds per model (summed in
    ``stage_cpu_s``); together they are the model stage, and blending happens only where
    tiles overlap (64-px tiles in a 192² chunk context), not in one pass per chunk."""
    cfg = _cfg(scene_tif, tmp_path / "out", onnx_bundles[:1], engine)
    cfg = cfg.model_copy(update={"inference": cfg.inference.model_copy(
        update={"tile_size": tile, "tile_overlap": 16})})
    stages = run_job(cfg, backend=SerialBackend()).summary["stage_cpu_s"]
    total = stages["predict_landcover_s"]
    parts = {p: stages[f"{p}_landcover_s"] for p in ("normalize", "forward", "blend", "classify")}
    assert parts["forward"] > 0 and parts["normalize"] > 0 and parts["classify"] > 0
    assert (parts["blend"] > 0) == (tile != "auto")
    # the parts are the stage's time: nothing counted twice, little left out
    assert 0.5 * total <= sum(parts.values()) <= total + 1e-3
    assert parts["forward"] > max(parts["normalize"], parts["classify"])
