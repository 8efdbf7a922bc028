"""Engine ``torch-bf16``: bfloat16 autocast on CPUs, chosen by ``auto`` only for bundles whose
recorded class agreement with float32 is >= 99.9 % and only on CPUs with bf16 units (AMX or
AVX512-BF16)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from geoseg.bundle import builtin_bundle, read_spec, write_spec
from geoseg.cli import main
from geoseg.config import validate_job
from geoseg.engine import cpu_has_bf16_units, resolve_engine
from geoseg.errors import BundleError
from geoseg.job import run_job
from geoseg.models import Predictor
from geoseg.models.bf16 import check_bundle
from geoseg.runtime.serial import SerialBackend


def _with_agreement(src: str, dest: Path, share: float | None) -> Path:
    shutil.copytree(src, dest)
    spec = read_spec(dest)
    write_spec(spec.model_copy(update={"bf16_agreement": share}), dest)
    return dest


def test_auto_picks_bf16_only_for_checked_bundles_on_bf16_hosts(
        tmp_path: Path, tiny_bundles: tuple[str, str]) -> None:
    checked = _with_agreement(tiny_bundles[0], tmp_path / "checked", 0.9995)
    weak = _with_agreement(tiny_bundles[0], tmp_path / "weak", 0.997)
    unknown = _with_agreement(tiny_bundles[0], tmp_path / "unknown", None)
    pick = {name: resolve_engine(read_spec(b), b, "auto", onnx_ok=False, bf16_ok=True)
            for name, b in (("checked", checked), ("weak", weak), ("unknown", unknown))}
    assert pick == {"checked": "torch-bf16", "weak": "torch", "unknown": "torch"}
    # a host without bf16 units (bf16_ok False) keeps the float32 engines
    assert resolve_engine(read_spec(checked), checked, "auto", bf16_ok=False) == "torch"
    # asked for by name, any semantic bundle runs in bf16
    assert resolve_engine(read_spec(weak), weak, "torch-bf16") == "torch-bf16"


def test_small_regions_stay_off_bf16() -> None:
    from geoseg.engine import BF16_MIN_PIXELS, bf16_fits

    assert not bf16_fits("cpu", pixels=4096 * 4096)   # the import costs more than bf16 saves
    assert not bf16_fits("cpu", remote=True, pixels=BF16_MIN_PIXELS)
    assert bf16_fits("cpu", pixels=BF16_MIN_PIXELS) == bf16_fits("cpu") == cpu_has_bf16_units()


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    amx = tmp_path / "amx"
    amx.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    zen4 = tmp_path / "zen4"
    zen4.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    assert cpu_has_bf16_units(amx) and cpu_has_bf16_units(zen4)
    assert not cpu_has_bf16_units(plain)
    assert not cpu_has_bf16_units(tmp_path / "missing")


def test_maskrcnn_refuses_bf16(tmp_path: Path) -> None:
    from geoseg.models import save_bundle
    from geoseg.models.factory import build_model
    from tests.models.conftest import make_spec

    spec = make_spec("maskrcnn", ("background", "building", "boundary"), task="buildings",
                     depth=5, decoder=None)
    save_bundle(build_model(spec), spec, tmp_path / "mr")
    with pytest.raises(BundleError, match="maskrcnn: its detection heads run in float32"):
        resolve_engine(spec, tmp_path / "mr", "torch-bf16")
    assert resolve_engine(spec, tmp_path / "mr", "auto", bf16_ok=True) == "torch"


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from geoseg.sample import generate_scene

    root = tmp_path_factory.mktemp("bf16-scene")
    generate_scene(root, 512, seed=5)
    return root / "image_t0.tif"


@pytest.mark.parametrize("name", ["landcover", "buildings"])
def test_builtin_bundles_keep_their_classes_in_bf16(name: str, demo_like: Path) -> None:
    import rasterio

    bundle = builtin_bundle(name)
    assert (read_spec(bundle).bf16_agreement or 0) >= 0.999  # what auto relies on
    with rasterio.open(demo_like) as src:
        x = src.read().astype(np.float32)[None]
    crop = (slice(0, 512), slice(0, 512))
    full, _ = Predictor(bundle, engine="torch", num_threads=2).predict_core(x, crop)
    half, _ = Predictor(bundle, engine="torch-bf16", num_threads=2).predict_core(x, crop)
    agree = float(np.mean(full == half))
    print(f"{name}: bf16 = float32 on {agree:.5f} of {full.size} px")
    assert agree >= 0.999


def test_run_in_bf16_records_the_engine_and_tiles_equal_whole(tmp_path: Path,
                                                              demo_like: Path) -> None:
    def cfg(out: Path, chunk: int, engine: str) -> object:
        return validate_job({"image": str(demo_like), "output": str(out),
                             "models": ["landcover"],
                             "inference": {"chunk_size": chunk, "halo": 64, "engine": engine},
                             "vectors": {"enabled": False}, "outputs": {"quicklook": False},
                             "runtime": {"threads_per_worker": 2}})

    runs = {(c, e): run_job(cfg(tmp_path / f"{e}-{c}", c, e),  # type: ignore[arg-type]
                            backend=SerialBackend())
            for c, e in ((128, "torch-bf16"), (512, "torch-bf16"), (512, "torch"))}
    assert all(r.ok for r in runs.values())
    assert runs[(128, "torch-bf16")].summary["engines"] == {"landcover": "torch-bf16"}
    manifest = json.loads((tmp_path / "torch-bf16-128" / "manifest.json").read_text())
    assert manifest["models"]["landcover"]["engine"] == "torch-bf16"
    # the engine is part of the result: a bf16 run's model digest differs from a float32 run's
    torch_manifest = json.loads((tmp_path / "torch-512" / "manifest.json").read_text())
    assert manifest["models"]["landcover"]["digest"] != \
        torch_manifest["models"]["landcover"]["digest"]

    def classes(run: str) -> np.ndarray:
        layer = zarr.open_group(str(tmp_path / run / "predictions.zarr"), mode="r")["landcover"]
        assert isinstance(layer, zarr.Array)
        return np.asarray(layer[:])

    tiled, whole, fp32 = classes("torch-bf16-128"), classes("torch-bf16-512"), \
        classes("torch-512")
    assert float(np.mean(tiled == whole)) >= 0.999   # 16 chunks = one chunk, in bf16 too
    assert float(np.mean(whole == fp32)) >= 0.999    # and bf16 = float32


def test_training_and_export_record_the_agreement(tmp_path: Path, demo_like: Path,
                                                  tiny_bundles: tuple[str, str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bundle = _with_agreement(tiny_bundles[0], tmp_path / "b", None)
    share = check_bundle(bundle, demo_like, windows=2, size=256)
    assert 0.0 < share <= 1.0 and read_spec(bundle).bf16_agreement == round(share, 6)
    assert main(["export", str(bundle), "--bf16-check", str(demo_like), "--windows", "1"]) == 0
    out = capsys.readouterr().out
    assert "bf16 classes equal float32's on" in out and "recorded in bundle.yaml" in out
    assert main(["export", str(bundle)]) != 0
    err = capsys.readouterr().err
    assert "--onnx" in err and "--bf16-check" in err and "Traceback" not in err
