"""Test-time augmentation: each view's probabilities are mapped back before averaging, so a
pixel-wise model is unchanged, a model that looks at its neighbourhood is averaged over the
symmetries, and tiled prediction still equals whole-window prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from geoseg.config import validate_job
from geoseg.errors import InputError
from geoseg.job import run_job
from geoseg.runtime.serial import SerialBackend
from geoseg.stitch import tta_proba


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def pixelwise(x: np.ndarray) -> np.ndarray:
    """Probabilities that depend on each pixel alone: every view gives the same answer."""
    return _softmax(np.stack([x[:, 0], x[:, 1] - x[:, 0], -x[:, 1]], axis=1))


def looks_right(x: np.ndarray) -> np.ndarray:
    """Probabilities of a pixel depend on its right neighbour: not symmetric."""
    shifted = np.roll(x, -1, axis=3)
    return pixelwise(shifted)


@pytest.mark.parametrize("mode", ["flips", "d4"])
def test_pixelwise_model_is_unchanged(mode: str) -> None:
    x = np.random.default_rng(0).normal(size=(2, 2, 64, 64)).astype(np.float32)
    assert np.allclose(tta_proba(pixelwise, mode)(x), pixelwise(x), atol=1e-6)


def test_views_are_mapped_back() -> None:
    x = np.random.default_rng(1).normal(size=(1, 2, 32, 64)).astype(np.float32)
    got = tta_proba(looks_right, "flips")(x)
    # by hand: the x-flipped view sees the left neighbour, the y flip changes nothing here
    left = pixelwise(np.roll(x, 1, axis=3))
    want = (looks_right(x) + left + left + looks_right(x)) / 4
    assert np.allclose(got, want, atol=1e-6)
    assert np.allclose(got.sum(axis=1), 1, atol=1e-5)


def test_unknown_mode() -> None:
    with pytest.raises(InputError, match="none, flips or d4"):
        tta_proba(pixelwise, "mirror")


@pytest.mark.parametrize("mode", ["flips", "d4"])
def test_tiled_equals_whole_with_tta(tmp_path: Path, scene_tif_for_tta: Path,
                                     tiny_bundle_lc: str, mode: str) -> None:
    stores = {}
    for chunk in (64, 512):  # 16 chunks vs the whole 200x264 window in one chunk
        out = tmp_path / f"c{chunk}"
        cfg = validate_job({"image": str(scene_tif_for_tta), "output": str(out),
                            "models": [tiny_bundle_lc], "vectors": {"enabled": False},
                            "outputs": {"cog": False, "quicklook": False},
                            "inference": {"chunk_size": chunk, "halo": 64, "tta": mode,
                                          "engine": "torch"},
                            "runtime": {"threads_per_worker": 1}})
        assert run_job(cfg, backend=SerialBackend()).ok
        stores[chunk] = np.asarray(zarr.open_group(str(out / "predictions.zarr"))["landcover"][:])
    agree = float(np.mean(stores[64] == stores[512]))
    assert agree >= 0.999, agree


@pytest.fixture()
def scene_tif_for_tta(tmp_path: Path) -> Path:
    from tests.conftest import write_raster
    from tests.pipeline.conftest import textured

    return write_raster(tmp_path / "img.tif", textured(200, 264, seed=3),
                        descriptions=["red", "green", "blue", "nir"])


@pytest.fixture(scope="module")
def tiny_bundle_lc(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.pipeline.conftest import tiny_bundle

    return str(tiny_bundle(tmp_path_factory.mktemp("tta"), "landcover", 1))
