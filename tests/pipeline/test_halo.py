"""The halo measured per bundle (``geoseg export --halo-check``) and ``inference.halo: auto``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

from geoseg.bundle import BundleSpec, read_spec, write_spec
from geoseg.cli import main
from geoseg.config import validate_job
from geoseg.models.halo import REFERENCE, candidates, check_bundle, measure, pick
from geoseg.plan import DEFAULT_HALO, job_halo, make_plan
from tests.conftest import write_raster
from tests.pipeline.conftest import textured


@pytest.fixture(scope="module")
def wide_tif(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """704² px: a 192-px chunk with the check's 256-px reference context around it."""
    root = tmp_path_factory.mktemp("halo")
    return write_raster(root / "wide.tif", textured(704, 704, seed=3),
                        descriptions=["red", "green", "blue", "nir"])


def _with_halo(src: str, dest: Path, halo: int | None) -> Path:
    shutil.copytree(src, dest)
    write_spec(read_spec(dest).model_copy(update={"halo": halo}), dest)
    return dest


class BoxModel:
    """A model whose class at a pixel depends on the pixels within ``radius`` of it and on
    nothing further (a box mean of band 1, thresholded): the halo it needs is known exactly."""

    def __init__(self, radius: int) -> None:
        self.radius = radius

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        size = 2 * self.radius + 1
        # zero beyond the pass, as a model's padding: pixels within radius of the cut change
        mean = ndimage.uniform_filter(x[:, 0].astype(np.float64), size=(1, size, size),
                                      mode="constant", cval=0.0)
        hi = (mean > 120.0).astype(np.float32)
        return np.stack([1 - hi, hi], axis=1)


def test_the_check_finds_a_known_receptive_field(wide_tif: Path,
                                                 tiny_bundles: tuple[str, str]) -> None:
    spec = read_spec(tiny_bundles[0])  # halos in steps of 16 (stride 8)
    res = measure(BoxModel(radius=20), spec, wide_tif, chunk=160, windows=2,
                  halos=[0, 16, 32, 48, 256])
    assert res.chunk == 160 and res.windows == 2 and res.pixels == 2 * 160 * 160
    # 32 px of context covers the 20-px radius: every pixel equals the reference's
    assert res.agreement[32] == res.agreement[48] == res.agreement[256] == 1.0
    # 16 px leaves a 4-px band along the cut that sees padding: some of it flips
    assert res.agreement[16] < 1.0 and res.agreement[0] < res.agreement[16]
    assert pick(res.worst, 1.0) == 32 == res.halo
    assert all(res.worst[h] <= res.agreement[h] for h in res.agreement)   # least of 2 windows


def test_a_real_bundle_equals_itself_at_the_reference_context(
        wide_tif: Path, tiny_bundles: tuple[str, str]) -> None:
    from geoseg.models import Predictor

    spec = read_spec(tiny_bundles[0])
    res = measure(Predictor(tiny_bundles[0], num_threads=2), spec, wide_tif, chunk=64,
                  windows=1, halos=[0, 32, REFERENCE])
    assert res.agreement[REFERENCE] == 1.0   # the same pass as the reference
    assert 0.5 < res.agreement[0] <= 1.0 and 0.5 < res.agreement[32] <= 1.0


@given(st.dictionaries(st.sampled_from(range(0, 257, 16)), st.floats(0.99, 1.0), min_size=1),
       st.floats(0.99, 1.0))
def test_pick_is_the_smallest_halo_from_which_all_reach_the_minimum(
        agreement: dict[int, float], minimum: float) -> None:
    got = pick(agreement, minimum)
    if got is None:
        assert agreement[max(agreement)] < minimum
    else:
        assert all(a >= minimum for h, a in agreement.items() if h >= got)
        below = [h for h in agreement if h < got]
        assert not below or agreement[max(below)] < minimum


def test_candidates_follow_the_model_stride(tiny_bundles: tuple[str, str]) -> None:
    spec = read_spec(tiny_bundles[0])
    deep = spec.model_copy(update={"architecture": spec.architecture.model_copy(
        update={"encoder_depth": 5})})
    assert candidates(spec, 48) == [0, 16, 32, 48]
    assert candidates(deep, 96) == [0, 32, 64, 96]
    with pytest.raises(Exception, match="must be multiples of 32"):
        measure(BoxModel(2), deep, "unused.tif", halos=[16])


def test_export_records_the_halo_and_auto_runs_it(
        tmp_path: Path, wide_tif: Path, tiny_bundles: tuple[str, str],
        capsys: pytest.CaptureFixture[str]) -> None:
    bundle = _with_halo(tiny_bundles[0], tmp_path / "b", None)
    assert main(["export", str(bundle), "--halo-check", str(wide_tif), "--chunk", "64",
                 "--windows", "1"]) == 0
    out, err = capsys.readouterr()
    assert "halo    0 px:" in out and "halo check: window 1/1 compared" in err
    spec = read_spec(bundle)
    res = check_bundle(bundle, wide_tif, chunk=64, windows=1, record=False)
    assert spec.halo == res.halo   # the same windows measure the same
    if spec.halo is not None:
        assert "<- recorded in bundle.yaml" in out and spec.halo_check is not None
        assert spec.halo_check.chunk == 64 and spec.halo_check.windows == 1
        assert spec.halo_check.worst == {h: round(a, 6) for h, a in res.worst.items()}
        assert spec.halo_check.worst[spec.halo] >= 0.999
    else:
        assert "recorded without a halo" in out and spec.halo_check is not None
    measured = _with_halo(tiny_bundles[0], tmp_path / "m", 16)
    cfg = validate_job({"image": str(wide_tif), "output": str(tmp_path / "run"),
                        "models": [str(measured)], "inference": {"chunk_size": 128}})
    plan = make_plan(cfg)
    assert plan.halo == 16 and plan.tile == 128 + 2 * 16   # one pass per chunk + halo
    explicit = cfg.with_overrides(halo=40)
    assert make_plan(explicit).halo == 40
    capsys.readouterr()
    assert main(["-q", "run", str(wide_tif), "-o", str(tmp_path / "r"), "-m", str(measured),
                 "--chunk-size", "128", "--no-vectors"]) == 0
    lines = [ln.strip() for ln in capsys.readouterr().out.splitlines()]
    assert "tiling: 128-px chunks + 16-px halo, 160-px model tiles" in lines


def test_a_job_runs_the_largest_halo_its_bundles_need(tiny_bundles: tuple[str, str]) -> None:
    spec = read_spec(tiny_bundles[0])
    specs: list[BundleSpec] = [spec.model_copy(update={"halo": h}) for h in (16, None, 0)]
    assert job_halo("auto", specs, 1024) == DEFAULT_HALO        # one bundle was never measured
    assert job_halo("auto", [specs[0], specs[2]], 1024) == 16   # halos written by hand
    assert job_halo(32, specs, 1024) == 32


def test_smaller_chunks_need_more_halo() -> None:
    """Differing pixels lie in a band along a chunk's edges: their share grows as 1/chunk."""
    from geoseg.bundle import HaloRecord, builtin_bundle

    # the buildings bundle's table on the seed-11 scene (8 windows, 1024-px chunks)
    worst = {0: 0.998931, 16: 0.999478, 32: 0.999827, 48: 0.999938, 64: 0.999990, 80: 1.0}
    spec = read_spec(builtin_bundle("buildings")).model_copy(update={
        "halo": 16, "halo_check": HaloRecord(chunk=1024, windows=8, worst=worst)})
    assert [job_halo("auto", [spec], c) for c in (4096, 1024, 512, 192, 128, 64)] == \
        [16, 16, 32, 32, 48, 48]   # 1 - share <= 0.001 x chunk / 1024
    never = spec.model_copy(update={"halo_check": HaloRecord(chunk=1024, windows=1,
                                                             worst={0: 0.99, 16: 0.995})})
    assert job_halo("auto", [never], 1024) == DEFAULT_HALO    # none measured is enough


def test_the_check_refuses_what_it_cannot_measure(
        tmp_path: Path, tiny_bundles: tuple[str, str],
        capsys: pytest.CaptureFixture[str]) -> None:
    small = write_raster(tmp_path / "small.tif", textured(300, 300))
    assert main(["export", tiny_bundles[0], "--halo-check", str(small)]) != 0
    err = capsys.readouterr().err
    assert "the halo check needs at least 576 px on each side" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    one_band = write_raster(tmp_path / "one.tif", textured(704, 704)[:1])
    for check in ("--halo-check", "--bf16-check"):
        assert main(["export", tiny_bundles[0], check, str(one_band)]) != 0
        err = capsys.readouterr().err
        assert "reads bands [1, 2, 3, 4] but" in err and "has 1 band(s)" in err
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert "Traceback" not in err and len(errors) == 1   # beside the no-nodata warning
    with pytest.raises(SystemExit) as exc:   # argparse's usage line and one error line
        main(["run", str(small), "-o", str(tmp_path / "r"), "--halo", "wide"])
    assert exc.value.code == 2
    assert "not a number of pixels or auto" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["landcover", "buildings"])
def test_builtin_bundles_record_a_measured_halo(name: str) -> None:
    from geoseg.bundle import builtin_bundle

    spec = read_spec(builtin_bundle(name))
    assert spec.halo is not None and spec.halo % 16 == 0 and spec.halo_check is not None
    assert spec.halo_check.chunk == 1024 and spec.halo_check.windows == 8
    assert min(a for h, a in spec.halo_check.worst.items() if h >= spec.halo) >= 0.999
    assert job_halo("auto", [spec], 1024) == spec.halo


@pytest.mark.real
def test_the_check_reads_real_uint16_imagery(tmp_path: Path, real_data: Path) -> None:
    """Landsat-8 bands 2-3-4 (uint16 DN, no nodata declared, EPSG:32621 with negative
    northings): a random 3-band U-Net measured on two 1024-px windows of it."""
    import torch

    from geoseg.bundle import ArchitectureSpec, ClassSpec, Normalization
    from geoseg.models import Predictor, build_model, save_bundle

    image = real_data / "landsat8_paraguay" / "LC08_224078_20200518_rgb.tif"
    if not image.is_file():
        pytest.skip(f"{image} not present")
    spec = BundleSpec(
        name="landsat-rgb", version="0.0.1", task="landcover",
        architecture=ArchitectureSpec(name="unet", encoder="resnet18", encoder_depth=3,
                                      decoder_channels=(16, 8, 8)),
        bands=(1, 2, 3), normalization=Normalization(mean=(9000.0,) * 3, std=(1500.0,) * 3),
        classes=tuple(ClassSpec(id=i, name=n, color="#123456")
                      for i, n in enumerate(("water", "crop", "tree"))),
        tile_size=256, pixel_size=30.0)
    torch.manual_seed(0)
    bundle = save_bundle(build_model(spec), spec, tmp_path / "b")
    res = measure(Predictor(bundle, num_threads=2), spec, image, chunk=512, windows=2,
                  halos=[0, 64, REFERENCE])
    assert res.chunk == 512 and res.windows == 2
    assert res.agreement[REFERENCE] == res.worst[REFERENCE] == 1.0
    assert all(0.5 < res.worst[h] <= res.agreement[h] <= 1.0 for h in (0, 64))
