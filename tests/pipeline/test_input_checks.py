"""Input the planner and workers must not misread (issue 13 C, E): NaN pixels through a whole
run, and an image with more bands than a model reads."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from geoseg.config import validate_job
from geoseg.errors import GeoSegWarning
from geoseg.job import run_job
from geoseg.plan import make_plan
from geoseg.runtime.serial import SerialBackend
from tests.conftest import write_raster
from tests.pipeline.conftest import textured


def _cfg(image: Path, out: Path, models: list[str]) -> object:
    return validate_job({"image": str(image), "output": str(out), "models": models,
                         "inference": {"chunk_size": 64, "halo": 32},
                         "vectors": {"enabled": False},
                         "runtime": {"threads_per_worker": 1}})


def test_nan_pixels_without_nodata_are_fill(tmp_path: Path,
                                            tiny_bundles: tuple[str, str]) -> None:
    img = textured(96, 96, seed=4).astype(np.float32)
    img[:, 10:20, 30:50] = np.nan
    img[2, 60, 60] = np.inf
    tif = write_raster(tmp_path / "f.tif", img, descriptions=["red", "green", "blue", "nir"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", ".*declares no nodata", GeoSegWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        res = run_job(_cfg(tif, tmp_path / "o", [tiny_bundles[0]]),  # type: ignore[arg-type]
                      backend=SerialBackend())
    assert res.ok
    lc = np.asarray(zarr.open_group(str(tmp_path / "o" / "predictions.zarr"),
                                    mode="r")["landcover"][:])  # type: ignore[index]
    assert (lc[10:20, 30:50] == 255).all() and lc[60, 60] == 255
    assert (lc != 255).sum() == 96 * 96 - 200 - 1


def _six_band(tmp_path: Path, names: list[str] | None) -> Path:
    img = np.concatenate([textured(64, 64), textured(64, 64, seed=1)[:2]])
    return write_raster(tmp_path / "six.tif", img, descriptions=names)


def test_more_image_bands_than_the_model_reads_warns(tmp_path: Path,
                                                     tiny_bundles: tuple[str, str]) -> None:
    tif = _six_band(tmp_path, None)
    with pytest.warns(GeoSegWarning) as rec:
        make_plan(_cfg(tif, tmp_path / "o", list(tiny_bundles)))  # type: ignore[arg-type]
    msgs = [str(w.message) for w in rec if "image bands" in str(w.message)]
    assert len(msgs) == 2, msgs  # one per model
    assert ("model tiny-landcover@0.0.1 reads bands 1, 2, 3, 4 (red, green, blue, nir) of 6 "
            "image bands: check the band order") in msgs[0]  # the bundle, not just its layer
    assert msgs[1].startswith("model tiny-buildings@0.0.1 reads bands 1, 2, 3, 4")


def test_named_matching_bands_do_not_warn(tmp_path: Path,
                                          tiny_bundles: tuple[str, str]) -> None:
    tif = _six_band(tmp_path, ["red", "green", "blue", "nir", "swir1", "swir2"])
    with pytest.warns(GeoSegWarning) as rec:  # only "declares no nodata"
        make_plan(_cfg(tif, tmp_path / "o", list(tiny_bundles)))  # type: ignore[arg-type]
    assert not [w for w in rec if "image bands" in str(w.message)]


def test_as_many_bands_as_read_does_not_warn(tmp_path: Path,
                                             tiny_bundles: tuple[str, str]) -> None:
    tif = write_raster(tmp_path / "four.tif", textured(64, 64))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        make_plan(_cfg(tif, tmp_path / "o", [tiny_bundles[0]]))  # type: ignore[arg-type]
    assert not [w for w in rec if "image bands" in str(w.message)]


# --- values on another scale than the model's training images (a meaningless map) ---

@pytest.mark.parametrize(("scale", "dtype", "warns"), [
    (1.0, np.uint8, False),            # what the built-in bundles were trained on: 0-255
    (1 / 255, np.float32, True),       # reflectance 0-1
    (40.0, np.uint16, True),           # 0-10000-like
])
def test_values_far_from_the_training_images_warn(tmp_path: Path, scale: float,
                                                  dtype: type, warns: bool) -> None:
    img = (textured(96, 96, seed=5).astype(np.float64) * scale).astype(dtype)
    tif = write_raster(tmp_path / "img.tif", img, descriptions=["red", "green", "blue", "nir"])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        make_plan(_cfg(tif, tmp_path / "o", ["landcover"]))  # type: ignore[arg-type]
    msgs = [str(w.message) for w in rec if "far from those model" in str(w.message)]
    assert len(msgs) == int(warns), msgs
    if warns:
        assert msgs[0].startswith(f"{tif}: band 1 values (mean ") and "scaling" in msgs[0]


def test_a_graph_that_normalises_by_itself_is_not_judged(tmp_path: Path,
                                                          tiny_bundles: tuple[str, str]) -> None:
    """normalization mean 0, std 1 (README: an ONNX graph that normalises by itself): the
    values it was trained on are unknown, so no "far from" warning for a 0-255 image."""
    import shutil

    import yaml

    bundle = Path(shutil.copytree(tiny_bundles[0], tmp_path / "own-norm"))
    spec = yaml.safe_load((bundle / "bundle.yaml").read_text())
    spec["normalization"] = {"mean": [0, 0, 0, 0], "std": [1, 1, 1, 1]}
    (bundle / "bundle.yaml").write_text(yaml.safe_dump(spec))
    tif = write_raster(tmp_path / "img.tif", textured(96, 96, seed=5),
                       descriptions=["red", "green", "blue", "nir"])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        make_plan(_cfg(tif, tmp_path / "o", [str(bundle)]))  # type: ignore[arg-type]
    assert not [w for w in rec if "far from those model" in str(w.message)]


def test_a_damaged_image_is_left_to_the_chunks(tmp_path: Path) -> None:
    """The sample read must not stop the plan: the chunks report a damaged file as they do
    (a COG whose header is whole and whose tiles are cut off)."""
    from affine import Affine

    from tests.sources.conftest import write_cog

    cog = write_cog(tmp_path / "cut.tif", textured(256, 256, seed=5), crs="EPSG:32633",
                    transform=Affine(0.5, 0, 500_000.0, 0, -0.5, 5_100_000.0), blocksize=128)
    data = cog.read_bytes()
    cog.write_bytes(data[: int(len(data) * 0.6)])
    plan = make_plan(_cfg(cog, tmp_path / "o", ["landcover"]))  # type: ignore[arg-type]
    assert plan.grid.shape == (256, 256)


def test_an_image_without_a_valid_pixel_warns_at_the_end(tmp_path: Path) -> None:
    tif = write_raster(tmp_path / "nd.tif", np.zeros((4, 64, 64), np.uint8), nodata=0,
                       descriptions=["red", "green", "blue", "nir"])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = run_job(_cfg(tif, tmp_path / "o", ["landcover"]),  # type: ignore[arg-type]
                      backend=SerialBackend())
    assert res.ok and res.summary["valid_fraction"] == 0.0
    msgs = [str(w.message) for w in rec if "was valid" in str(w.message)]
    assert msgs == [f"no pixel of {tif} was valid (all nodata, NaN or outside the region): the "
                    "maps hold only nodata; check the image's nodata value and the region"]
    cfg = validate_job({"image": str(tif), "output": str(tmp_path / "v"), "models": ["landcover"],
                        "inference": {"chunk_size": 64, "halo": 32},
                        "runtime": {"threads_per_worker": 1}})
    with warnings.catch_warnings(record=True) as rec:  # with vectors: says there is no file
        warnings.simplefilter("always")
        res = run_job(cfg, backend=SerialBackend())
    assert [str(w.message) for w in rec if "was valid" in str(w.message)] == [
        msgs[0].replace("only nodata;", "only nodata and no features.gpkg was written;")]
    assert res.ok and not (tmp_path / "v" / "features.gpkg").exists()


def test_a_halo_beyond_the_chunk_and_an_overlap_beyond_half_the_tile_warn(
        tmp_path: Path) -> None:
    """Accepted silently before: halo 1000 at chunk 128 made a 384² run take 116 s, not 3."""
    tif = write_raster(tmp_path / "img.tif", textured(96, 96, seed=5),
                       descriptions=["red", "green", "blue", "nir"])
    cfg = validate_job({"image": str(tif), "output": str(tmp_path / "o"),
                        "models": ["landcover"],
                        "inference": {"chunk_size": 64, "halo": 256, "tile_size": 128,
                                      "tile_overlap": 100}})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        plan = make_plan(cfg)
    msgs = [str(w.message) for w in rec]
    assert any(m.startswith("halo 256 px is larger than the chunk (64 px): each chunk's model "
                            "pass covers 81x its own pixels") for m in msgs), msgs
    assert plan.overlap < 100
    assert any(m == f"tile overlap 100 px is more than half the {plan.tile}-px tile: "
               f"{plan.overlap} px is used" for m in msgs), msgs
    # a measured halo (auto) above a small chunk is what the model needs: no warning
    auto = validate_job({"image": str(tif), "output": str(tmp_path / "o"),
                         "models": ["landcover"], "inference": {"chunk_size": 64}})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        make_plan(auto)
    assert not [w for w in rec if "larger than the chunk" in str(w.message)]


def _rgba(path: Path, data: np.ndarray, **extra: object) -> Path:
    import rasterio
    from affine import Affine

    c, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(0.5, 0, 500000.0, 0, -0.5, 5100000.0),
                       **extra) as dst:
        dst.write(data)
    return path


def test_an_alpha_band_read_as_data_is_refused(tmp_path: Path,
                                               tiny_bundles: tuple[str, str]) -> None:
    """An RGBA orthophoto given to an RGBN model: band 4 is transparency (opaque 255 where
    valid), not nir; the run is refused in one line instead of mapping nearly one class."""
    from geoseg.errors import BandMismatchError

    img = textured(96, 96)
    img[3] = 255
    img[:, :20, :20] = 0  # a transparent corner
    tif = _rgba(tmp_path / "rgba.tif", img, photometric="RGB", alpha="YES")
    with pytest.raises(BandMismatchError, match=r"band 4 is the image's alpha \(transparency\) "
                       r"band, but model tiny-landcover@0.0.1 reads it as its nir band"
                       r".*--bands 1,2,3\)"):
        make_plan(_cfg(tif, tmp_path / "o", [tiny_bundles[0]]))  # type: ignore[arg-type]
    assert not (tmp_path / "o").exists()


def test_a_data_band_tagged_alpha_by_default_runs(tmp_path: Path,
                                                  tiny_bundles: tuple[str, str]) -> None:
    """GDAL tags band 4 of a 4-band byte GeoTIFF alpha unless told otherwise: a varying nir
    band so tagged is data, and plans as before."""
    import rasterio
    from rasterio.enums import ColorInterp

    tif = _rgba(tmp_path / "rgbn.tif", textured(96, 96))
    with rasterio.open(tif) as src:
        assert src.colorinterp[3] == ColorInterp.alpha  # the premise: GDAL's default tag
    plan = make_plan(_cfg(tif, tmp_path / "o", [tiny_bundles[0]]))  # type: ignore[arg-type]
    assert plan.grid.shape == (96, 96)
