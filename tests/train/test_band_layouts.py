"""Training on any band layout (issue 14): 1-band uint16, 3-band uint8 and 6-band float scenes
on real projected grids, through ``geoseg train`` and ``geoseg run``; the bundle's bands, names
and normalisation (nodata excluded, optional percentile clipping applied at inference too); and
the one-line refusals of images with too few bands."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import zarr
from affine import Affine
from scipy import ndimage

from geoseg.bundle import BundleSpec, Normalization, read_spec
from geoseg.cli import main
from geoseg.cli.app import build_parser
from geoseg.models import Predictor
from geoseg.training.bands import resolve_layout, training_normalization
from tests.conftest import write_raster

SIZE = 128
NODATA_BOX = (slice(0, 24), slice(0, 24))  # a nodata corner in every generated image


def _labels(seed: int) -> np.ndarray:
    """Two classes in smooth blobs (0 other, 1 target)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(SIZE, SIZE)), 6)
    return (field > np.median(field)).astype(np.uint8)


def _image(labels: np.ndarray, bands: int, dtype: str, seed: int) -> np.ndarray:
    """``bands`` bands whose values depend on the label, in the range of ``dtype``."""
    rng = np.random.default_rng(seed)
    lo, span = {"uint16": (800.0, 2400.0), "uint8": (40.0, 150.0),
                "float32": (0.05, 0.4)}[dtype]
    out = np.stack([lo + span * (0.3 + 0.4 * labels * (1 if b % 2 else -1) + 0.5)
                    + rng.normal(0, 0.05 * span, labels.shape) for b in range(bands)])
    return out.astype(dtype)


def _scene(root: Path, name: str, bands: int, dtype: str, crs: str, nodata: float,
           seed: int = 0, descriptions: list[str] | None = None) -> tuple[Path, Path]:
    """Image (nodata corner) and its label raster (255 there)."""
    labels = _labels(seed)
    img = _image(labels, bands, dtype, seed)
    img[(slice(None), *NODATA_BOX)] = nodata
    labels[NODATA_BOX] = 255
    t = Affine(2.0, 0, 600000.0, 0, -2.0, 5200000.0)
    root.mkdir(parents=True, exist_ok=True)
    image = write_raster(root / f"{name}.tif", img, crs=crs, transform=t, nodata=nodata,
                         descriptions=descriptions)
    label = write_raster(root / f"{name}_labels.tif", labels, crs=crs, transform=t, nodata=255)
    return image, label


def _valid_mean(image: Path, bands: tuple[int, ...]) -> np.ndarray:
    import rasterio

    with rasterio.open(image) as ds:
        data = ds.read(list(bands)).astype(np.float64)
    keep = np.ones(data.shape[1:], bool)
    keep[NODATA_BOX] = False
    return data[:, keep].mean(axis=1)


def _train(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> tuple[int, str]:
    rc = main(["-q", "train", "--task", "landcover", "--classes", "other,target",
               "-o", str(out), "--steps", "2", "--batch-size", "2", "--chip-size", "64",
               "--threads", "1", *args])
    return rc, capsys.readouterr().err.strip()


def _run(capsys: pytest.CaptureFixture[str], image: Path, bundle: Path,
         out: Path) -> tuple[int, str]:
    rc = main(["-q", "run", str(image), "-o", str(out), "-m", str(bundle), "--no-vectors",
               "--workers", "1", "--threads", "1", "--chunk-size", "64", "--halo", "16"])
    return rc, capsys.readouterr().err.strip()


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("error: ")
    return lines[0]


LAYOUTS = [  # (bands, dtype, CRS, nodata, descriptions, extra train flags, names expected)
    pytest.param(1, "uint16", "EPSG:32632", 0, None, ["--band-names", "pan"], ("pan",),
                 id="1-band-uint16"),
    pytest.param(3, "uint8", "EPSG:2056", 0, ["red", "green", "blue"], [],
                 ("red", "green", "blue"), id="3-band-uint8"),
    pytest.param(6, "float32", "EPSG:32618", float("nan"), None, [],
                 tuple(f"b{i}" for i in range(1, 7)), id="6-band-float"),
]


@pytest.mark.parametrize(("bands", "dtype", "crs", "nodata", "desc", "flags", "names"), LAYOUTS)
def test_train_and_run_any_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  bands: int, dtype: str, crs: str, nodata: float,
                                  desc: list[str] | None, flags: list[str],
                                  names: tuple[str, ...]) -> None:
    image, labels = _scene(tmp_path / "s", "a", bands, dtype, crs, nodata,
                              descriptions=desc)
    bundle = tmp_path / "bundle"
    rc, err = _train(capsys, bundle, "--image", str(image), "--labels", str(labels), *flags)
    assert rc == 0, err
    spec = read_spec(bundle)
    assert spec.bands == tuple(range(1, bands + 1)) and spec.band_names == names
    assert spec.normalization.clip is None
    # nodata excluded: the mean is that of the valid pixels, not pulled by the nodata corner
    want = _valid_mean(image, spec.bands)
    assert np.allclose(spec.normalization.mean, want, rtol=1e-5)
    assert spec.training is not None and "nodata excluded" in str(
        spec.training["normalization"])
    # a run with the bundle on a new image of the same layout
    other, _ = _scene(tmp_path / "s2", "b", bands, dtype, crs, nodata, seed=1,
                         descriptions=desc)
    rc, err = _run(capsys, other, bundle, tmp_path / "run")
    assert rc == 0, err
    lc = np.asarray(zarr.open_group(str(tmp_path / "run" / "predictions.zarr"),
                                    mode="r")["landcover"][:])  # type: ignore[index]
    assert lc.shape == (SIZE, SIZE)
    assert (lc[NODATA_BOX] == 255).all() and set(np.unique(lc[40:, 40:])) <= {0, 1}


def test_issue_example_buildings_on_a_panchromatic_image(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """``geoseg train --task buildings --image pan.tif --labels buildings.geojson -o B`` (the
    command of issue 14 that raised ``IndexError: band index 2 out of range``)."""
    import geopandas as gpd
    import shapely

    rng = np.random.default_rng(0)
    pan = rng.normal(300, 20, (SIZE, SIZE))
    t = Affine(0.5, 0, 500000.0, 0, -0.5, 5100000.0)
    boxes = []
    for r, c in [(20, 20), (20, 70), (70, 30), (80, 90)]:
        pan[r:r + 16, c:c + 16] = 900
        x0, top = t.c + t.a * c, t.f + t.e * r            # 16 px = 8 m
        boxes.append(shapely.box(x0, top - 8, x0 + 8, top))
    image = write_raster(tmp_path / "pan.tif", pan.astype(np.uint16), nodata=0)
    geojson = tmp_path / "buildings.geojson"
    gpd.GeoDataFrame(geometry=boxes, crs="EPSG:32633").to_crs("EPSG:4326").to_file(geojson)
    rc = main(["-q", "train", "--task", "buildings", "--image", str(image), "--labels",
               str(geojson), "-o", str(tmp_path / "B"), "--steps", "2", "--batch-size", "2",
               "--chip-size", "64", "--threads", "1", "--min-valid-fraction", "0"])
    assert rc == 0, capsys.readouterr().err
    spec = read_spec(tmp_path / "B")
    assert spec.bands == (1,) and spec.band_names == ("b1",)
    rc, err = _run(capsys, image, tmp_path / "B", tmp_path / "run")
    assert rc == 0, err


def test_image_with_fewer_bands_is_refused_in_one_line(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    image, labels = _scene(tmp_path / "s", "rgb", 3, "uint8", "EPSG:32633", 0,
                              descriptions=["red", "green", "blue"])
    bundle = tmp_path / "bundle"
    assert _train(capsys, bundle, "--image", str(image), "--labels", str(labels))[0] == 0
    pan, _ = _scene(tmp_path / "p", "pan", 1, "uint16", "EPSG:32633", 0)
    rc, err = _run(capsys, pan, bundle, tmp_path / "run")
    line = _one_error_line(err)
    assert rc != 0 and "reads bands [1, 2, 3] (red, green, blue)" in line
    assert "has 1 band(s)" in line and "--bands 1" in line
    assert not (tmp_path / "run" / "predictions.zarr").exists()


def test_training_images_that_disagree(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    rgb, rgb_labels = _scene(tmp_path / "s", "rgb", 3, "uint8", "EPSG:32633", 0)
    pan, pan_labels = _scene(tmp_path / "s", "pan", 1, "uint8", "EPSG:32633", 0)
    pairs = ["--image", str(rgb), "--labels", str(rgb_labels),
             "--image", str(pan), "--labels", str(pan_labels)]
    rc, err = _train(capsys, tmp_path / "b1", *pairs)
    line = _one_error_line(err)
    assert rc != 0 and "different band counts (rgb.tif: 3, pan.tif: 1)" in line
    assert "--bands 1" in line
    rc, err = _train(capsys, tmp_path / "b2", *pairs, "--bands", "3,1")
    line = _one_error_line(err)
    assert rc != 0 and "pan.tif has 1 band(s) but training reads bands [3, 1]" in line
    # the bands every image has: trains
    rc, err = _train(capsys, tmp_path / "b3", *pairs, "--bands", "1")
    assert rc == 0, err
    assert read_spec(tmp_path / "b3").bands == (1,)


def test_band_order_names_and_clipping(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    image, labels = _scene(tmp_path / "s", "ms", 6, "float32", "EPSG:32618", float("nan"))
    bundle = tmp_path / "bundle"
    rc, err = _train(capsys, bundle, "--image", str(image), "--labels", str(labels),
                     "--bands", "6,2,4", "--band-names", "swir,green,nir",
                     "--clip-percentiles", "2,98")
    assert rc == 0, err
    spec = read_spec(bundle)
    norm = spec.normalization
    assert spec.bands == (6, 2, 4) and spec.band_names == ("swir", "green", "nir")
    assert norm.clip_percentiles == (2.0, 98.0) and norm.clip is not None
    import rasterio

    with rasterio.open(image) as ds:
        data = ds.read([6, 2, 4]).astype(np.float64)
    keep = np.ones(data.shape[1:], bool)
    keep[NODATA_BOX] = False
    valid = data[:, keep]
    lo, hi = np.percentile(valid, [2, 98], axis=1)
    assert np.allclose(norm.clip[0], lo, rtol=1e-4) and np.allclose(norm.clip[1], hi, rtol=1e-4)
    clipped = np.clip(valid, lo[:, None], hi[:, None])
    assert np.allclose(norm.mean, clipped.mean(axis=1), rtol=1e-4)
    assert np.allclose(norm.std, clipped.std(axis=1), rtol=1e-3)
    # inference clips too: outliers beyond the bounds predict as the bounds themselves
    pred = Predictor(bundle)
    x = np.random.default_rng(0).uniform(0.0, 0.6, (1, 3, 64, 64)).astype(np.float32)
    x[0, :, :8] = 50.0
    x[0, :, 8:16] = -50.0
    bounded = np.clip(x, np.asarray(norm.clip[0], np.float32)[:, None, None],
                      np.asarray(norm.clip[1], np.float32)[:, None, None])
    assert np.allclose(pred.predict_proba(x), pred.predict_proba(bounded), atol=1e-6)


def test_normalization_apply_and_compatibility() -> None:
    norm = Normalization(mean=(10.0, 20.0), std=(2.0, 4.0), clip_min=(0.0, 10.0),
                         clip_max=(20.0, 30.0), clip_percentiles=(2.0, 98.0))
    x = np.array([[[-5.0]], [[100.0]]], dtype=np.float32)
    assert norm.apply(x).ravel().tolist() == [-5.0, 2.5]
    assert Normalization(mean=(10.0,), std=(2.0,)).apply(np.full((1, 1, 1), 14.0)).item() == 2.0
    with pytest.raises(ValueError, match="both clip_min and clip_max"):
        Normalization(mean=(1.0,), std=(1.0,), clip_min=(0.0,))
    with pytest.raises(ValueError, match="one per band"):
        Normalization(mean=(1.0,), std=(1.0,), clip_min=(0.0, 1.0), clip_max=(2.0, 3.0))
    # the built-in bundles (no clipping, named bands) read as before
    for name in ("landcover", "buildings"):
        spec = BundleSpec.model_validate(
            read_spec(Path(__file__).resolve().parents[2] / "geoseg" / "bundles" / name
                      ).model_dump())
        assert spec.normalization.clip is None
        assert spec.checked_band_names == ("red", "green", "blue", "nir")


def test_normalization_samples_windows_of_huge_images(tmp_path: Path) -> None:
    """At most ``max_windows`` windows per image are read; nodata never counts."""
    rng = np.random.default_rng(3)
    img = rng.normal(1000, 100, (2, 512, 512)).astype(np.int16)
    img[:, :256, :] = -9999                       # half the image is nodata
    path = write_raster(tmp_path / "big.tif", img, nodata=-9999)
    norm = training_normalization([path], (1, 2), max_windows=4, window=64, seed=0)
    assert np.allclose(norm.mean, 1000, atol=10) and np.allclose(norm.std, 100, rtol=0.1)
    layout = resolve_layout([path])
    assert layout.bands == (1, 2) and layout.names == ("b1", "b2")


def test_train_help_shows_every_default() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train = sub.choices["train"]
    text = train.format_help()
    for action in train._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{action.option_strings} has no help"
        if action.default not in (None, False) and not action.required:
            assert "default" in action.help or f"(default: {action.default})" in \
                " ".join(text.split()), action.option_strings
    flat = " ".join(text.split())
    for flag in ("--bands", "--band-names", "--clip-percentiles", "--classes"):
        assert flag in flat
    assert "(default: every band of the images" in flat
    assert "(default: no clipping)" in flat


def test_placeholder_band_names_are_not_checked(tmp_path: Path) -> None:
    """A bundle trained on undescribed bands (b1..bN) runs on an image that names its bands;
    real names must match."""
    from geoseg.errors import BandMismatchError
    from geoseg.io import open_info
    from geoseg.plan import ModelRef, check_bands

    image, _ = _scene(tmp_path, "named", 3, "uint8", "EPSG:32633", 0,
                      descriptions=["red", "green", "blue"])
    info = open_info(image)
    base = BundleSpec.model_validate({
        "name": "t", "version": "1", "task": "landcover",
        "architecture": {"name": "unet"}, "bands": [1, 2, 3],
        "normalization": {"mean": [1, 1, 1], "std": [1, 1, 1]},
        "classes": [{"id": 0, "name": "other", "color": "#000000"}]})
    for names, ok in ((("b1", "b2", "b3"), True), (("red", "green", "blue"), True),
                      (("nir", "red", "green"), False)):
        spec = base.model_copy(update={"band_names": names})
        ref = ModelRef("landcover", str(tmp_path), spec, "0")
        if ok:
            check_bands(info, (ref,))
        else:
            with pytest.raises(BandMismatchError, match="expects bands"):
                check_bands(info, (ref,))


def test_an_alpha_band_is_not_trained_on(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """An RGBA orthophoto: training read band 4 (opaque 255) as data with only a 'constant
    band' warning, and `geoseg run` then refused the bundle's own image. Refused up front
    now, naming the colour bands; with them, it trains."""
    import rasterio

    image, labels = _scene(tmp_path / "s", "rgb", 3, "uint8", "EPSG:32633", 0)
    with rasterio.open(image) as src:
        rgb, profile = src.read(), src.profile
    rgba = tmp_path / "rgba.tif"
    profile.update(count=4, photometric="RGB", alpha="YES", nodata=None)
    with rasterio.open(rgba, "w", **profile) as dst:
        dst.write(np.concatenate([rgb, np.full_like(rgb[:1], 255)]))
    rc, err = _train(capsys, tmp_path / "b", "--image", str(rgba), "--labels", str(labels))
    line = _one_error_line(err)
    assert rc == 2 and "band 4 is the image's alpha (transparency) band" in line
    assert "--bands 1,2,3" in line and not (tmp_path / "b").exists()
    rc, err = _train(capsys, tmp_path / "b", "--image", str(rgba), "--labels", str(labels),
                     "--bands", "1,2,3")
    assert rc == 0, err


def test_band_names_that_run_would_refuse_are_refused_before_training(tmp_path: Path) -> None:
    """Images whose band names disagree (red first in one, nir first in the other), or
    --band-names other than the image's own, trained a bundle that `geoseg run` then refused
    on its own training image."""
    from geoseg.errors import BandMismatchError

    a, _ = _scene(tmp_path / "a", "a", 3, "uint8", "EPSG:32633", 0,
                  descriptions=["red", "green", "blue"])
    b, _ = _scene(tmp_path / "b", "b", 3, "uint8", "EPSG:32633", 0,
                  descriptions=["nir", "red", "green"])
    plain, _ = _scene(tmp_path / "c", "c", 3, "uint8", "EPSG:32633", 0)  # names no band
    with pytest.raises(BandMismatchError, match=r"b\.tif names bands \[1, 2, 3\] \['nir', "
                       r"'red', 'green'\] but the bundle would read them as \['red', 'green', "
                       r"'blue'\]"):
        resolve_layout([a, b])
    with pytest.raises(BandMismatchError, match="--band-names that match"):
        resolve_layout([a], names=("r", "g", "b"))
    assert resolve_layout([a, plain]).names == ("red", "green", "blue")
    assert resolve_layout([a], names=("RED", "Green", "blue")).names == ("RED", "Green", "blue")
    assert resolve_layout([plain], names=("r", "g", "b")).names == ("r", "g", "b")
