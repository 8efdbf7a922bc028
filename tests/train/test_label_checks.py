"""Label rasters are checked when training opens them, before any step: class ids beyond the
run's classes (F4: torch crashed with "index 7 is out of bounds", or a rare id let a short run
pass and a long one crash late) and labels in another CRS than the image (F7: trained
silently). Each refusal is one line that names the file and says what to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import CRS

from geoseg.cli import main
from geoseg.errors import LabelError
from geoseg.training import BUILDING_CLASSES, ChipSampler, SceneFiles, scene_files
from geoseg.training.data import check_class_ids
from tests.conftest import write_raster
from tests.train.conftest import write_scene
from tests.train.test_band_layouts import _one_error_line

NAMES = ("bare", "building", "road", "vegetation", "water")
BANDS = (1, 2, 3, 4)


def _labels(scene: Path) -> np.ndarray:
    with rasterio.open(scene / "landcover_t0.tif") as ds:
        return np.asarray(ds.read(1))


def _write_like(scene: Path, name: str, data: np.ndarray, **changes: object) -> Path:
    """A label raster with the profile of the scene's (tiled 64 px), ``changes`` applied."""
    with rasterio.open(scene / "landcover_t0.tif") as src:
        profile = {**src.profile, "dtype": data.dtype.name, **changes}
    out = scene.parent / name
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data, 1)
    return out


def _sampler(scene: Path, labels: Path, names: tuple[str, ...] = NAMES,
             task: str = "landcover") -> ChipSampler:
    return ChipSampler([SceneFiles(scene / "image_t0.tif", labels)], task,  # type: ignore[arg-type]
                       BANDS, 64, (0, 0, 0, 0), 0.25, class_names=names)


def _refusal(scene: Path, labels: Path, names: tuple[str, ...] = NAMES) -> str:
    with pytest.raises(LabelError) as info:
        _sampler(scene, labels, names)
    message = str(info.value)
    assert "\n" not in message and str(labels) in message
    return message


def test_ids_beyond_the_classes_are_refused_when_the_labels_open(tiny_scene: Path) -> None:
    land = _labels(tiny_scene)
    assert {0, 1, 2, 3, 4, 255} == set(np.unique(land).tolist())  # 255: a nodata corner
    with _sampler(tiny_scene, tiny_scene / "landcover_t0.tif") as s:  # 0..4 and 255 train
        assert len(s.labels) == 1
    seven = land.copy()
    seven[seven == 3] = 7
    message = _refusal(tiny_scene, _write_like(tiny_scene, "lab7.tif", seven))
    assert "label id 7 (" in message and "5 classes" in message and "ids 0..4" in message
    assert "--classes" in message and "fix the labels" in message
    message = _refusal(tiny_scene, tiny_scene / "landcover_t0.tif", ("a", "b"))
    assert "label ids 2, 3, 4 (" in message and "2 classes (ids 0..1" in message
    message = _refusal(tiny_scene, _write_like(tiny_scene, "lab200.tif",
                                               np.full_like(land, 200)))
    assert f"label id 200 ({land.size} px)" in message


def test_a_rare_id_anywhere_is_found(tiny_scene: Path) -> None:
    """One pixel in the validation stripe's last row: no training chip reads it."""
    land = _labels(tiny_scene)
    land[-1, -1] = 9
    message = _refusal(tiny_scene, _write_like(tiny_scene, "rare.tif", land))
    assert "label id 9 (1 px)" in message


def test_wide_label_types_do_not_wrap_into_classes(tiny_scene: Path) -> None:
    """uint16 256 and 259 used to become classes 0 and 3 (cast to uint8); the raster's nodata
    (999) is left out, as evaluation leaves it out, so it is no bad id."""
    land = _labels(tiny_scene).astype(np.uint16)
    land[40:44, 40:44] = 256
    land[100, 100] = 259
    land[land == 255] = 999
    message = _refusal(tiny_scene, _write_like(tiny_scene, "wide.tif", land, nodata=999))
    assert "label ids 256, 259 (17 px)" in message and "999" not in message


def test_the_labels_nodata_is_left_out_of_training(tiny_scene: Path) -> None:
    """Declared nodata that is also a class id (0, bare) trained as bare while `geoseg eval`
    left it out; an instance raster's nodata (uint32 max) became one huge building. Both are
    left out of the targets now."""
    from geoseg.training.data import IGNORE

    land = _labels(tiny_scene)
    land[:40] = 0
    lab = _write_like(tiny_scene, "nd0.tif", land, nodata=0)
    with _sampler(tiny_scene, lab) as s:
        _, target = s.read(0, s.images[0].geobox.window)
    assert (target[:40] == IGNORE).all() and (target[40:][land[40:] == 0] == IGNORE).all()
    assert (target[land != 0] == land[land != 0]).all()
    with rasterio.open(tiny_scene / "instances_t0.tif") as src:
        inst = src.read(1).astype(np.uint32)
    inst[:, :60] = np.iinfo(np.uint32).max
    lab = _write_like(tiny_scene, "inst_nd.tif", inst, nodata=int(np.iinfo(np.uint32).max))
    names = tuple(n for _, n, _ in BUILDING_CLASSES)
    with _sampler(tiny_scene, lab, names, task="buildings") as s:
        _, target = s.read(0, s.images[0].geobox.window)
    assert (target[:, :60] == IGNORE).all()
    assert (target[:, 60:] != IGNORE).any() and set(np.unique(target[:, 60:])) <= {0, 1, 2, IGNORE}


def test_the_scan_reads_window_by_window(tmp_path: Path) -> None:
    land = np.zeros((128, 128), np.uint8)
    land[127, 127] = 5  # in the last window read
    path = write_raster(tmp_path / "lab.tif", land, nodata=255)  # 128-px tiles
    reads: list[tuple[int, int]] = []

    class Spy:
        def __init__(self, ds: rasterio.io.DatasetReader) -> None:
            self.ds, self.nodata = ds, ds.nodata
            self.block_shapes, self.width, self.height = ds.block_shapes, ds.width, ds.height

        def read(self, band: int, window: rasterio.windows.Window) -> np.ndarray:
            reads.append((window.height, window.width))
            return np.asarray(self.ds.read(band, window=window))

    with rasterio.open(path) as ds:
        assert ds.block_shapes == [(128, 128)]
        with pytest.raises(LabelError, match=r"label id 5 \(1 px\)"):
            check_class_ids(Spy(ds), path, 5, pixels_per_read=1)  # type: ignore[arg-type]
    assert reads == [(128, 128)]  # whole blocks: never less than one
    path = tmp_path / "tiled.tif"
    land = np.zeros((300, 512), np.uint8)  # 64-px tiles, read 128 x 128 at a time
    land[299, 511] = 7
    with rasterio.open(path, "w", driver="GTiff", width=512, height=300, count=1,
                       dtype="uint8", crs="EPSG:32633", tiled=True, blockxsize=64,
                       blockysize=64, transform=Affine(0.5, 0, 500000, 0, -0.5, 5e6)) as dst:
        dst.write(land, 1)
    reads.clear()
    with rasterio.open(path) as ds, pytest.raises(LabelError, match=r"label id 7 \(1 px\)"):
        check_class_ids(Spy(ds), path, 5, pixels_per_read=128 * 128)  # type: ignore[arg-type]
    assert len(reads) == 12 and all(h * w <= 128 * 128 for h, w in reads)
    assert sum(h * w for h, w in reads) == 300 * 512


def test_buildings_instance_ids_are_not_class_ids(tiny_scene: Path) -> None:
    """Instance ids 1..5 with 3 building classes train (and landcover ids 7 do not)."""
    with _sampler(tiny_scene, tiny_scene / "instances_t0.tif",
                  tuple(n for _, n, _ in BUILDING_CLASSES), task="buildings") as s:
        assert s.task == "buildings"
    land = _labels(tiny_scene)
    land[0, 127] = 7
    _refusal(tiny_scene, _write_like(tiny_scene, "lab7.tif", land))


def test_labels_in_another_crs_are_refused(tiny_scene: Path) -> None:
    land = _labels(tiny_scene)
    labels = _write_like(tiny_scene, "wgs84.tif", land, crs="EPSG:4326")
    message = _refusal(tiny_scene, labels)
    assert "is in EPSG:4326 but" in message and "is in EPSG:32633" in message
    assert "reproject the labels onto the image grid" in message
    assert ("gdalwarp -r near -t_srs EPSG:32633 -te 500000 4999936 500064 5000000 -ts 128 128 "
            f"{labels} ") in message
    message = _refusal(tiny_scene, _write_like(tiny_scene, "utm34.tif", land, crs="EPSG:32634"))
    assert "is in EPSG:32634 but" in message


@pytest.mark.parametrize("crs", [
    pytest.param("+proj=utm +zone=33 +datum=WGS84 +units=m +no_defs", id="proj4"),
    pytest.param(CRS("EPSG:32633").to_wkt("WKT1_ESRI"), id="esri-wkt"),
    pytest.param(None, id="no-crs"),
])
def test_the_same_crs_written_differently_trains(tiny_scene: Path, crs: str | None) -> None:
    """The same CRS in other words, or none (then the image's), is the image's grid; the check
    runs on the same call that refuses another CRS."""
    land = _labels(tiny_scene)
    labels = _write_like(tiny_scene, "same.tif", land, crs=crs)
    with _sampler(tiny_scene, labels) as s:
        assert len(s.labels) == 1
    _refusal(tiny_scene, _write_like(tiny_scene, "wgs84.tif", land, crs="EPSG:4326"))


def _train(capsys: pytest.CaptureFixture[str], image: Path, labels: Path, out: Path,
           *extra: str) -> tuple[int, str]:
    rc = main(["-q", "train", "--task", "landcover", "--image", str(image), "--labels",
               str(labels), "-o", str(out), "--steps", "1", "--batch-size", "1",
               "--chip-size", "32", "--threads", "1", *extra])
    return rc, capsys.readouterr().err.strip()


def test_geoseg_train_refuses_bad_labels_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Through the CLI: exit 2, one line, no checkpoint (no training step ran), and no empty
    ``-o`` folder left behind; a folder the user made stays."""
    scene = write_scene(tmp_path / "scene")
    image, land = scene / "image_t0.tif", _labels(scene)
    rare = land.copy()
    rare[-1, -1] = 7  # a short run used to exit 0 here
    for labels, extra, expect in [
        (_write_like(scene, "rare.tif", rare), [], "label id 7 (1 px)"),
        (scene / "landcover_t0.tif", ["--classes", "a,b"], "label ids 2, 3, 4"),
        (_write_like(scene, "wgs84.tif", land, crs="EPSG:4326"), [], "is in EPSG:4326"),
    ]:
        out = tmp_path / f"out-{labels.stem}"
        rc, err = _train(capsys, image, labels, out, *extra)
        line = _one_error_line(err)
        assert rc == 2 and expect in line and str(labels) in line, err
        assert not out.exists()
    mine = tmp_path / "made-by-the-user"
    mine.mkdir()
    rc, err = _train(capsys, image, scene / "landcover_t0.tif", mine, "--classes", "a,b")
    assert rc == 2 and mine.is_dir() and not any(mine.iterdir()), err
    rc, err = _train(capsys, image, scene / "landcover_t0.tif", tmp_path / "good")
    assert rc == 0, err
    assert (tmp_path / "good" / "bundle.yaml").is_file()


def test_generated_scene_labels_pass(tmp_path: Path) -> None:
    """The generator's scenes (nodata 255) pass the check with its five classes."""
    from geoseg.sample import generate_scene

    root = tmp_path / "gen"
    generate_scene(root, 128)
    with ChipSampler(scene_files(root, "landcover", ["t0"]), "landcover", BANDS, 64,
                     (0, 0, 0, 0), 0.25, class_names=NAMES) as s:
        assert s.pixel_size == 0.5
    seven = _labels(root)
    seven[5, 5] = 7
    _refusal(root, _write_like(root, "lab7.tif", seven))


def test_affine_grid_check_still_applies(tiny_scene: Path) -> None:
    """Same CRS but shifted by one pixel: refused as before; CRS is checked first."""
    land = _labels(tiny_scene)
    shifted = Affine(0.5, 0.0, 500000.5, 0.0, -0.5, 5000000.0)
    message = _refusal(tiny_scene, _write_like(tiny_scene, "shift.tif", land,
                                               transform=shifted))
    assert "is not on the grid of" in message and "not the image's (origin" in message
    assert "gdalwarp -r near" in message
    message = _refusal(tiny_scene, _write_like(tiny_scene, "both.tif", land, transform=shifted,
                                               crs="EPSG:4326"))
    assert "is in EPSG:4326" in message
    # the image's grid written by another tool, 1e-9 m off in its origin: the same grid
    with rasterio.open(tiny_scene / "image_t0.tif") as src:
        t = src.transform
    near = Affine(t.a, t.b, t.c + 1e-9, t.d, t.e, t.f - 1e-9)
    labels = _write_like(tiny_scene, "near.tif", land, transform=near)
    with ChipSampler([SceneFiles(tiny_scene / "image_t0.tif", labels)], "landcover", BANDS, 64,
                     (0, 0, 0, 0), 0.25, class_names=NAMES) as s:
        assert s.pixel_size == 0.5


def test_a_tile_too_small_for_the_chips_names_a_chip_size_that_fits(tiny_scene: Path) -> None:
    """A 256² tile at the default 256-px chips: the advice named a setting the CLI lacks; it
    now gives the --chip-size that fits left of the validation stripe."""
    with rasterio.open(tiny_scene / "image_t0.tif") as src:
        width = src.width
    with pytest.raises(LabelError, match=r"no room for 512-px chips left of its validation "
                       r"stripe .*--chip-size \d+\)") as info:
        ChipSampler([SceneFiles(tiny_scene / "image_t0.tif", tiny_scene / "landcover_t0.tif")],
                    "landcover", BANDS, 512, (0, 0, 0, 0), 0.25, class_names=NAMES)
    fits = int(str(info.value).split("--chip-size ")[1].split(")")[0])
    assert fits % 32 == 0 and fits <= round(width * 0.75)


@pytest.mark.parametrize(("classes", "expect"), [
    ("bare,tree,tree,water,built", "'tree' is given twice"),
    ("bare_soil,bare soil,tree,water,built", "'bare_soil' and 'bare soil' are one name"),
])
def test_two_classes_of_one_name_are_refused(tmp_path: Path, classes: str, expect: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The stores' ``flag_meanings`` name classes: two of one name would be one class to
    change and eval."""
    scene = write_scene(tmp_path / "scene")
    out = tmp_path / "out"
    rc, err = _train(capsys, scene / "image_t0.tif", scene / "landcover_t0.tif", out,
                     "--classes", classes)
    assert rc == 2 and expect in _one_error_line(err) and not out.exists(), err


def test_a_bundle_with_two_classes_of_one_name_is_refused() -> None:
    from geoseg.bundle import BundleSpec, ClassSpec, read_spec
    from geoseg.plan import resolve_bundle

    spec = read_spec(resolve_bundle("landcover"))
    twice = (*spec.classes[:2], ClassSpec(id=2, name=spec.classes[1].name, color="#000000"))
    with pytest.raises(ValueError, match=f"'{spec.classes[1].name}' is given twice"):
        BundleSpec(**{**spec.model_dump(), "classes": twice})


@pytest.mark.parametrize("minutes", ["0", "-5", "nan", "inf"])
def test_a_time_budget_must_be_above_zero(tmp_path: Path, minutes: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    scene = write_scene(tmp_path / "scene")
    with pytest.raises(SystemExit) as exit_:  # argparse: its usage line and one error line
        _train(capsys, scene / "image_t0.tif", scene / "landcover_t0.tif", tmp_path / "out",
               "--max-minutes", minutes)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"--max-minutes: {minutes!r}: give a number of minutes" in err
    assert not (tmp_path / "out").exists()
