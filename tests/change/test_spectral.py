"""The image check of land-cover change: a class flip counts only where the two images differ
(change-vector magnitude of standardised bands), so one date's misclassification of unchanged
ground is ``no_image_change``, not a change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from geoseg.change import compare_runs
from geoseg.change.defaults import MIN_SPECTRAL_CHANGE
from geoseg.change.raster import NO_IMAGE_CHANGE
from geoseg.change.spectral import SCALE, UNKNOWN, SpectralInputs, magnitude, spectral_threshold
from geoseg.errors import GeoSegWarning, InputError
from tests.change.conftest import SHAPE, T_A, make_run, shifted
from tests.conftest import write_raster

CHANGED_IMAGE = (slice(10, 30), slice(20, 50))  # the image changes here (and the classes)
SAME_IMAGE = (slice(50, 80), slice(70, 110))  # the classes flip here, the image does not


def _image(shape: tuple[int, int], seed: int, origin: tuple[float, float] = (0, 0)
           ) -> np.ndarray:
    """4-band texture of one ground (a smooth pattern in A's pixel coordinates, the image's
    pixel (0, 0) at A's ``origin`` (row, col)), plus noise drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    yy, xx = yy + origin[0], xx + origin[1]
    base = np.stack([400 + 150 * np.sin(xx / (12 + k)) * np.cos(yy / (17 + k)) for k in range(4)])
    return (base + rng.normal(0, 5, base.shape)).astype(np.float32)


def _pair(tmp_path: Path, b_shape: tuple[int, int] = SHAPE,
          b_origin: tuple[float, float] = (0, 0)) -> tuple[Path, Path]:
    """Images of one place on two dates: b is a's ground under another illumination (gain
    and offset per band) on a grid whose pixel (0, 0) is at A's ``b_origin``, with one block
    really changed."""
    a = _image(SHAPE, 0)
    b = _image(b_shape, 1, b_origin) * np.array([1.15, 0.9, 1.05, 1.2])[:, None, None] + 30
    dr, dc = int(b_origin[0]), int(b_origin[1])
    rs, cs = CHANGED_IMAGE
    b[:, rs.start - dr:rs.stop - dr, cs.start - dc:cs.stop - dc] = 2500  # a new roof
    pa = write_raster(tmp_path / "a.tif", a.astype(np.uint16), transform=T_A)
    pb = write_raster(tmp_path / "b.tif", b.astype(np.uint16),
                      transform=shifted(b_origin[1], b_origin[0]))
    return pa, pb


def _classes() -> tuple[np.ndarray, np.ndarray]:
    a_cls = np.full(SHAPE, 3, np.uint8)
    b_cls = a_cls.copy()
    b_cls[CHANGED_IMAGE] = 1  # vegetation -> building, and the image changed
    b_cls[SAME_IMAGE] = 0  # vegetation -> bare, the image did not: a misclassification
    return a_cls, b_cls


def _layer(out: Path, name: str) -> np.ndarray:
    return np.asarray(zarr.open_group(str(out / "change.zarr"), mode="r")[name][...])  # type: ignore[index]


def test_magnitude_ignores_gain_and_offset_and_sees_change() -> None:
    a = _image((40, 40), 0)
    b = a * np.array([1.3, 0.8, 1.0, 1.1], np.float32)[:, None, None] + 50
    b[:, 10:20, 10:20] += 800
    valid = np.ones((40, 40), bool)
    valid[0:5, 30:40] = False
    ma, sa = a.mean(axis=(1, 2)), a.std(axis=(1, 2))
    mb, sb = b.mean(axis=(1, 2)), b.std(axis=(1, 2))
    # statistics of the unchanged ground: exactly a gain and an offset apart
    keep = np.ones((40, 40), bool)
    keep[10:20, 10:20] = False
    mb, sb = b[:, keep].mean(axis=1), b[:, keep].std(axis=1)
    ma, sa = a[:, keep].mean(axis=1), a[:, keep].std(axis=1)
    spec = SpectralInputs(None, None, (1, 2, 3, 4), tuple(ma), tuple(sa), tuple(mb), tuple(sb))
    code = magnitude(a, b, valid, spec)
    assert code.shape == (38, 38)
    inner = code[12:16, 12:16]  # inside the changed block, away from its edge
    assert (inner >= 2.0 / SCALE).all()
    far = code.copy()
    far[6:22, 6:22] = 0
    assert (far[far != UNKNOWN] <= 1).all()  # unchanged ground: ~0 σ
    assert (code[0:4, 29:38] == UNKNOWN).all()


def test_flip_without_image_change_is_not_a_change(tmp_path: Path) -> None:
    pa, pb = _pair(tmp_path)
    a_cls, b_cls = _classes()
    a = make_run(tmp_path / "a", a_cls, image=pa)
    b = make_run(tmp_path / "b", b_cls, image=pb, date="2024-06-01")
    res = compare_runs(a, b, tmp_path / "out", min_change_confidence=0.0)  # images recorded
    changed = _layer(res.output, "changed")
    assert (changed[CHANGED_IMAGE][2:-2, 2:-2] == 1).all()
    assert (changed[SAME_IMAGE] == NO_IMAGE_CHANGE).all()
    assert (changed[(a_cls == b_cls)] == 0).all()
    sp = res.summary["spectral"]
    assert sp["min_spectral_change"] == MIN_SPECTRAL_CHANGE and sp["image_b"] == str(pb)
    assert sp["bands"] == [1, 2, 3, 4] and len(sp["sigma_a"]) == 4
    mag = _layer(res.output, "spectral_change")
    gate = spectral_threshold(MIN_SPECTRAL_CHANGE)
    assert mag[SAME_IMAGE].max() < gate <= mag[CHANGED_IMAGE][2:-2, 2:-2].min()
    # only the real change is in the transitions; the flip counts with the uncertain area
    m = res.summary["transitions_m2"]
    assert m["vegetation"]["building"] == pytest.approx((changed == 1).sum() * 0.25)
    assert m["vegetation"]["bare"] == 0
    assert res.summary["areas"]["uncertain"]["pixels"] == (changed == NO_IMAGE_CHANGE).sum()
    # the check off: both flips are changes, as before
    off = compare_runs(a, b, tmp_path / "off", min_change_confidence=0.0, min_spectral_change=0)
    assert (_layer(off.output, "changed")[SAME_IMAGE] == 1).all()
    assert "spectral_change" not in zarr.open_group(str(off.output / "change.zarr"), mode="r")


def test_images_on_another_lattice_are_resampled(tmp_path: Path) -> None:
    """b's image lies 3.5 px off a's lattice and is larger: read by nearest-neighbour
    resampling onto the change grid; explicit --images win over what the runs recorded."""
    pa, pb = _pair(tmp_path, (110, 140), (-2.5, -3.5))
    a_cls, b_cls = _classes()
    a = make_run(tmp_path / "a", a_cls)  # records no usable image
    b = make_run(tmp_path / "b", b_cls, date="2024-06-01")
    res = compare_runs(a, b, tmp_path / "out", min_change_confidence=0.0,
                       images=(str(pa), str(pb)))
    changed = _layer(res.output, "changed")
    assert (changed[SAME_IMAGE][3:-3, 3:-3] == NO_IMAGE_CHANGE).all()


def test_missing_images_warn_and_skip_the_check(tmp_path: Path) -> None:
    a_cls, b_cls = _classes()
    a = make_run(tmp_path / "a", a_cls)
    b = make_run(tmp_path / "b", b_cls, date="2024-06-01")
    with pytest.warns(GeoSegWarning, match="not checked against the images"):
        res = compare_runs(a, b, tmp_path / "out", min_change_confidence=0.0)
    assert "cannot be used" in res.summary["spectral"]["skipped"]
    assert (_layer(res.output, "changed")[SAME_IMAGE] == 1).all()


def test_bad_threshold_is_one_clear_error(tmp_path: Path) -> None:
    a_cls, b_cls = _classes()
    a = make_run(tmp_path / "a", a_cls)
    b = make_run(tmp_path / "b", b_cls, date="2024-06-01")
    with pytest.raises(InputError, match="min_spectral_change"):
        compare_runs(a, b, tmp_path / "out", min_spectral_change=-1)


def test_a_mosaic_of_tiles_is_one_image(tmp_path: Path) -> None:
    """--images takes what `geoseg run` takes: here date b as a quoted glob of two tiles."""
    import rasterio

    pa, pb = _pair(tmp_path)
    with rasterio.open(pb) as src:
        full = src.read()
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    write_raster(tiles / "b_left.tif", full[:, :, :64], transform=T_A)
    write_raster(tiles / "b_right.tif", full[:, :, 64:], transform=shifted(64, 0))
    a_cls, b_cls = _classes()
    a = make_run(tmp_path / "a", a_cls)
    b = make_run(tmp_path / "b", b_cls, date="2024-06-01")
    res = compare_runs(a, b, tmp_path / "out", min_change_confidence=0.0,
                       images=(str(pa), str(tiles / "b_*.tif")))
    whole = compare_runs(a, b, tmp_path / "whole", min_change_confidence=0.0,
                         images=(str(pa), str(pb)))
    np.testing.assert_array_equal(_layer(res.output, "spectral_change"),
                                  _layer(whole.output, "spectral_change"))
    assert (_layer(res.output, "changed")[SAME_IMAGE] == NO_IMAGE_CHANGE).all()


def test_evaluation_draws_the_image_change_curve(tmp_path: Path) -> None:
    """With a scene's truth, the evaluation also scores confident flips by their image change
    magnitude (the curve a user picks --min-spectral-change from) and draws both curves."""
    from PIL import Image

    from geoseg.change import evaluate_change
    from geoseg.change.change_scores import CURVE_COLORS

    pa, pb = _pair(tmp_path)
    a_cls, b_cls = _classes()
    a = make_run(tmp_path / "a", a_cls, image=pa, buildings=None,  # land cover only
                 building_model=False)
    b = make_run(tmp_path / "b", b_cls, image=pb, date="2024-06-01", buildings=None,
                 building_model=False)
    res = compare_runs(a, b, tmp_path / "out", min_change_confidence=0.0)
    truth_b = a_cls.copy()
    truth_b[CHANGED_IMAGE] = 1  # the real change only: the flip on unchanged ground is wrong
    scene = tmp_path / "scene"
    scene.mkdir()
    write_raster(scene / "landcover_t0.tif", a_cls, transform=T_A)
    write_raster(scene / "landcover_t1.tif", truth_b, transform=T_A)
    px = evaluate_change(res, scene)["pixels"]
    assert px["fp"] == 0 and px["precision"] == 1.0
    curve = px["by_spectral_change"]
    assert curve["precision"][0] < 0.7  # no gate: the 1200-px false flip against 600 true
    assert curve["precision_0.8_at"]["min_spectral_change"] <= MIN_SPECTRAL_CHANGE
    assert curve["recall"][0] == pytest.approx(1.0)
    with Image.open(px["pr_curve_png"]) as im:
        rgb = np.asarray(im.convert("RGB"))
    assert (rgb == CURVE_COLORS[1]).all(axis=2).any()  # the image change curve is drawn
