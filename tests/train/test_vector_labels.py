"""Vector labels (any CRS) rasterized per chip, unusable-label errors, grid and nodata-aware
chip sampling. Vector labels are made by polygonizing the generated label rasters, so the
raster path is the reference."""

from __future__ import annotations

import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.features import shapes

from geoseg.bundle import ClassSpec, read_spec
from geoseg.cli import main
from geoseg.errors import LabelError
from geoseg.grid import Window
from geoseg.training import ChipSampler, SceneFiles, TrainConfig, train
from geoseg.training.data import valid_fraction
from geoseg.training.labels import VectorLabels, is_vector
from geoseg.training.targets import IGNORE
from tests.train.conftest import CLASSES, write_scene
from tests.train.test_train import BUILDINGS, TINY

BANDS = (1, 2, 3, 4)
NAMES = [c.name for c in CLASSES]


def polygonize(tif: Path, field: str = "class_id") -> gpd.GeoDataFrame:
    """One polygon per connected region of equal value (255 / 0-instances left out)."""
    with rasterio.open(tif) as ds:
        arr, transform, crs = ds.read(1), ds.transform, ds.crs
    instances = arr.dtype == np.uint32
    arr = arr.astype(np.int32) if instances else arr
    mask = arr > 0 if instances else arr != IGNORE
    recs = [(shapely.geometry.shape(g), int(v))
            for g, v in shapes(arr, mask=mask, transform=transform)]
    return gpd.GeoDataFrame({field: [v for _, v in recs]}, geometry=[g for g, _ in recs],
                            crs=crs)


def write_vector(df: gpd.GeoDataFrame, path: Path, crs: str | None = None) -> Path:
    (df.to_crs(crs) if crs else df).to_file(path, driver="GPKG")
    return path


def sampler(image: Path, labels: Path, task: str = "landcover", **kw: object) -> ChipSampler:
    scene_kw = {k: kw.pop(k) for k in ("label_field", "background") if k in kw}
    return ChipSampler([SceneFiles(image, labels, **scene_kw)],  # type: ignore[arg-type]
                       task, BANDS, 64, [100.0] * 4, 0.25,  # type: ignore[arg-type]
                       class_names=NAMES, **kw)  # type: ignore[arg-type]


WINDOWS = [Window(0, 0, 128, 128), Window(0, 0, 64, 64), Window(37, 11, 64, 64),
           Window(64, 64, 64, 64)]


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3857"])
def test_vector_landcover_chip_equals_raster_chip(tiny_scene: Path, tmp_path: Path,
                                                  crs: str) -> None:
    vec = write_vector(polygonize(tiny_scene / "landcover_t0.tif"), tmp_path / "lc.gpkg", crs)
    image = tiny_scene / "image_t0.tif"
    with sampler(image, tiny_scene / "landcover_t0.tif") as ras, sampler(image, vec) as v:
        assert isinstance(v.labels[0], VectorLabels)
        for win in WINDOWS:
            a, b = ras.read(0, win), v.read(0, win)
            assert np.array_equal(a[0], b[0])
            # measured: 100.00 % equal for both CRSs (polygon edges lie on pixel edges, pixel
            # centres 0.25 m away, far beyond the reprojection round-trip error)
            assert (a[1] == b[1]).mean() >= 0.999, (crs, win, (a[1] == b[1]).mean())


def test_class_names_and_ignore_background(tiny_scene: Path, tmp_path: Path) -> None:
    df = polygonize(tiny_scene / "landcover_t0.tif")
    by_name = df.assign(kind=[NAMES[i].upper() for i in df["class_id"]]).drop(columns="class_id")
    names = write_vector(by_name, tmp_path / "names.gpkg", "EPSG:4326")
    ids = write_vector(df, tmp_path / "ids.gpkg", "EPSG:4326")
    image, win = tiny_scene / "image_t0.tif", Window(0, 0, 128, 128)
    with sampler(image, ids) as a, sampler(image, names, label_field="kind") as b:
        assert np.array_equal(a.read(0, win)[1], b.read(0, win)[1])
    no_veg = write_vector(df[df["class_id"] != 3], tmp_path / "noveg.gpkg", "EPSG:3857")
    with sampler(image, ids) as full, sampler(image, no_veg, background=IGNORE) as part, \
            sampler(image, no_veg) as zero:
        t_full, t_part, t_zero = (s.read(0, win)[1] for s in (full, part, zero))
    veg = t_full == 3
    assert veg.any() and (t_part[veg] == IGNORE).all() and (t_zero[veg] == 0).all()
    assert np.array_equal(t_part[~veg], t_full[~veg])


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3857"])
def test_vector_buildings_target_equals_raster(tiny_scene: Path, tmp_path: Path,
                                               crs: str) -> None:
    vec = write_vector(polygonize(tiny_scene / "instances_t0.tif", "building"),
                       tmp_path / "b.gpkg", crs)
    image = tiny_scene / "image_t0.tif"
    with sampler(image, tiny_scene / "instances_t0.tif", "buildings") as ras, \
            sampler(image, vec, "buildings") as v:
        for win in [*WINDOWS, Window(44, 54, 64, 64), Window(0, 64, 64, 64)]:
            a, b = ras.read(0, win)[1], v.read(0, win)[1]
            assert (a == b).mean() >= 0.999, (crs, win, (a == b).mean())  # measured: 100 %
            ia, ib = ras.read_labels(0, win), v.read_labels(0, win)
            assert len(np.unique(ia)) == len(np.unique(ib))
            # the same partition into buildings, whatever the ids
            assert len(np.unique(ia.astype(np.int64) * 10_000 + ib)) == len(np.unique(ia))


def test_invalid_polygons_are_repaired(tiny_scene: Path, tmp_path: Path) -> None:
    x0, y0 = 500010.0, 4999990.0  # a self-intersecting "bow tie" inside the scene
    bowtie = shapely.Polygon([(x0, y0), (x0 + 20, y0 - 20), (x0 + 20, y0), (x0, y0 - 20)])
    assert not bowtie.is_valid
    df = gpd.GeoDataFrame({"class_id": [4]}, geometry=[bowtie], crs="EPSG:32633")
    path = write_vector(df, tmp_path / "bowtie.gpkg", "EPSG:4326")
    with sampler(tiny_scene / "image_t0.tif", path) as s:
        target = s.read(0, Window(0, 0, 64, 64))[1]
    # both lobes kept (two triangles of 400 px; pixel centres on the diagonals are ambiguous),
    # where buffer(0) would keep one
    assert 700 < np.count_nonzero(target == 4) <= 800


@pytest.mark.parametrize("task", ["landcover", "buildings"])
def test_two_steps_on_vector_labels_write_a_bundle(tiny_scene: Path, tmp_path: Path,
                                                   landcover_classes: tuple[ClassSpec, ...],
                                                   task: str) -> None:
    raster = "landcover_t0.tif" if task == "landcover" else "instances_t0.tif"
    vec = write_vector(polygonize(tiny_scene / raster), tmp_path / "l.gpkg", "EPSG:4326")
    classes = landcover_classes if task == "landcover" else BUILDINGS
    cfg = TrainConfig(name="vec", task=task, classes=classes,  # type: ignore[arg-type]
                      architecture=TINY, steps=2, batch_size=2, chip_size=64, tile_size=64,
                      val_fraction=0.25, val_windows_per_scene=2, log_every=1, sampling="grid")
    result = train(cfg, [SceneFiles(tiny_scene / "image_t0.tif", vec)], tmp_path / "bundle")
    spec = read_spec(result.bundle_dir)
    assert spec.training is not None and spec.training["steps"] == 2
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    val = spec.training["val"]
    assert isinstance(val, dict) and val["windows"] == 2
    assert ("objects_iou50" in val) == (task == "buildings")


# --- unusable labels ------------------------------------------------------------------------

def _bad_labels(case: str, scene: Path, tmp: Path) -> Path:
    df = polygonize(scene / "landcover_t0.tif")
    path = tmp / f"{case}.gpkg"
    if case == "empty":
        empty = gpd.GeoDataFrame({"class_id": np.array([], dtype=np.int64)},
                                 geometry=gpd.GeoSeries([], crs="EPSG:4326"))
        empty.to_file(path, driver="GPKG", geometry_type="Polygon")
    elif case == "points":
        write_vector(df.set_geometry(df.geometry.centroid), path, "EPSG:4326")
    elif case == "no_overlap":
        far = df.to_crs("EPSG:4326")
        write_vector(far.set_geometry(far.geometry.translate(2.0, 1.0)), path)
    elif case == "no_crs":
        path = tmp / "no_crs.shp"
        with warnings.catch_warnings():  # pyogrio warns that the file will have no CRS
            warnings.simplefilter("ignore", UserWarning)
            df.set_crs(None, allow_override=True).to_file(path)
    elif case == "no_field":
        write_vector(df.rename(columns={"class_id": "klass"}), path, "EPSG:3857")
    elif case == "unknown_values":
        bad = df.assign(class_id=df["class_id"].astype(object))
        bad.loc[bad.index[:2], "class_id"] = ["forest", "lake"]
        bad["class_id"] = bad["class_id"].astype(str)
        write_vector(bad, path, "EPSG:4326")
    return path


BAD = {"empty": "has no features", "points": "are Point, training needs polygons",
       "no_overlap": "do not overlap the image", "no_crs": "has no CRS",
       "no_field": "has no field 'class_id'", "unknown_values": "forest, lake"}


@pytest.mark.parametrize("case", sorted(BAD))
def test_unusable_labels_raise_label_error(tiny_scene: Path, tmp_path: Path, case: str) -> None:
    path = _bad_labels(case, tiny_scene, tmp_path)
    assert is_vector(path)
    with pytest.raises(LabelError, match=BAD[case]) as info:
        sampler(tiny_scene / "image_t0.tif", path)
    assert "\n" not in str(info.value) and ":" in str(info.value)


def _cli(capsys: pytest.CaptureFixture[str], tmp: Path, *args: str) -> tuple[int, str]:
    rc = main(["-q", "train", "--task", "landcover", "-o", str(tmp / "out"), "--steps", "1",
               *args])
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: ")
    return rc, lines[0]


@pytest.mark.parametrize("case", sorted(BAD))
def test_cli_reports_unusable_labels_in_one_line(tiny_scene: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 case: str) -> None:
    path = _bad_labels(case, tiny_scene, tmp_path)
    rc, line = _cli(capsys, tmp_path, "--image", str(tiny_scene / "image_t0.tif"),
                    "--labels", str(path))
    assert rc != 0 and BAD[case] in line


def test_cli_reports_unusable_images_and_pairs(tiny_scene: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    lc = str(tiny_scene / "landcover_t0.tif")
    rc, line = _cli(capsys, tmp_path, "--image", str(tmp_path / "nope.tif"), "--labels", lc)
    assert rc != 0 and "image not found" in line
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    rc, line = _cli(capsys, tmp_path, "--image", str(text), "--labels", lc)
    assert rc != 0 and "not a raster" in line
    with rasterio.open(tiny_scene / "image_t0.tif") as src:
        profile, data = src.profile, src.read()
    profile.pop("crs")
    with rasterio.open(tmp_path / "nocrs.tif", "w", **profile) as dst:
        dst.write(data)
    rc, line = _cli(capsys, tmp_path, "--image", str(tmp_path / "nocrs.tif"), "--labels", lc)
    assert rc != 0 and "has no CRS" in line
    rc, line = _cli(capsys, tmp_path, "--image", str(tiny_scene / "image_t0.tif"))
    assert rc != 0 and "--labels" in line
    rc, line = _cli(capsys, tmp_path, "--pair", f"{tiny_scene / 'image_t0.tif'}:"
                    f"{_bad_labels('no_field', tiny_scene, tmp_path)}")
    assert rc != 0 and BAD["no_field"] in line  # --pair takes vector labels too
    rc, line = _cli(capsys, tmp_path, "--image", str(tiny_scene / "image_t0.tif"),
                    "--labels", str(tmp_path / "missing.gpkg"))
    assert rc != 0 and "labels not found" in line


# --- sampling --------------------------------------------------------------------------------

def test_grid_sampling_covers_the_training_area(tiny_scene: Path, tmp_path: Path) -> None:
    image = tiny_scene / "image_t0.tif"
    with sampler(image, tiny_scene / "landcover_t0.tif", sampling="grid") as s:
        cells = s.grid_windows()
        cover = np.zeros((128, 128), dtype=int)
        for _, win in cells:
            cover[win.slices()] += 1
        split = s.splits[0]
        assert split == 96 and (cover[:, :split] > 0).all() and (cover[:, split:] == 0).all()
        seen: list[tuple[int, Window]] = []
        read = s.read

        def recording(scene: int, win: Window) -> tuple[np.ndarray, np.ndarray]:
            seen.append((scene, win))
            return read(scene, win)

        s.read = recording  # type: ignore[method-assign]
        rng = np.random.default_rng(0)
        for _ in range(2 * len(cells)):
            s.train_chip(rng)
    assert sorted(seen[:len(cells)], key=str) == sorted(cells, key=str)  # every cell once a pass
    assert sorted(seen[len(cells):], key=str) == sorted(cells, key=str)
    assert seen[:len(cells)] != seen[len(cells):]  # a new order each pass


def _sparse_scene(root: Path) -> Path:
    """The tiny scene with its image nodata over the top-left 96 x 64 px."""
    write_scene(root)
    with rasterio.open(root / "image_t0.tif", "r+") as ds:
        data = ds.read()
        data[:, :96, :64] = 0
        ds.write(data)
    return root


@pytest.fixture(scope="module")
def sparse_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = _sparse_scene(tmp_path_factory.mktemp("sparse") / "scene")
    df = polygonize(root / "landcover_t0.tif")
    write_vector(df[df["class_id"] != 2], root / "noroad.gpkg", "EPSG:4326")
    return root


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(threshold=st.floats(0.0, 1.0), seed=st.integers(0, 2**16),
       sampling=st.sampled_from(["random", "grid"]))
def test_nodata_rejection_never_returns_a_chip_below_threshold(
        sparse_scene: Path, threshold: float, seed: int, sampling: str) -> None:
    with sampler(sparse_scene / "image_t0.tif", sparse_scene / "noroad.gpkg", sampling=sampling,
                 min_valid_fraction=threshold, background=IGNORE, max_tries=20) as s:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(4):
                _, target = s.train_chip(rng)
                assert valid_fraction(target) >= threshold
        except LabelError as exc:  # only when no chip can pass
            assert threshold > 0.5 and "valid pixels" in str(exc)


def test_rejection_is_deterministic(sparse_scene: Path) -> None:
    def chips(seed: int) -> list[np.ndarray]:
        with sampler(sparse_scene / "image_t0.tif", sparse_scene / "landcover_t0.tif",
                     min_valid_fraction=0.5) as s:
            rng = np.random.default_rng(seed)
            return [s.train_chip(rng)[1] for _ in range(5)]

    a, b = chips(7), chips(7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(valid_fraction(x) >= 0.5 for x in a)

def test_cli_reports_bad_settings_in_one_line(tiny_scene: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    pair = ["--image", str(tiny_scene / "image_t0.tif"),
            "--labels", str(tiny_scene / "landcover_t0.tif")]
    rc, line = _cli(capsys, tmp_path, *pair, "--chip-size", "100")
    assert rc == 2 and line == "error: --chip-size: should be a multiple of 32, not 100", line
    rc, line = _cli(capsys, tmp_path, *pair, "--chip-size", "64", "--encoder", "nosuch",
                    "--steps", "1")
    assert rc == 2 and "unknown encoder 'nosuch'" in line


def test_labels_layer_picks_a_layer_of_a_geopackage(tiny_scene: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A GeoPackage of several layers trains on the one ``--labels-layer`` names; without it on
    the first, with a warning that names the others."""
    df = polygonize(tiny_scene / "landcover_t0.tif")
    gpkg = tmp_path / "survey.gpkg"
    df.assign(class_id=0).to_file(gpkg, layer="draft", driver="GPKG")  # all one class
    df.to_file(gpkg, layer="landcover", driver="GPKG")
    image, win = tiny_scene / "image_t0.tif", Window(0, 0, 128, 128)
    with sampler(image, tiny_scene / "landcover_t0.tif") as ras:
        truth = ras.read(0, win)[1]
    with ChipSampler([SceneFiles(image, gpkg, label_layer="landcover")], "landcover", BANDS,
                     64, [100.0] * 4, 0.25, class_names=NAMES) as picked:
        assert np.array_equal(picked.read(0, win)[1], truth)
    with caplog.at_level("WARNING"), sampler(image, gpkg) as first:  # (nodata: IGNORE)
        drafted = first.read(0, win)[1]
    assert set(np.unique(drafted)) <= {0, IGNORE} and set(np.unique(truth)) - {0, IGNORE}
    assert "using the first, 'draft' (--labels-layer NAME picks another: landcover)" \
        in caplog.text
    rc, line = _cli(capsys, tmp_path, "--image", str(image), "--labels", str(gpkg),
                    "--labels-layer", "buildings")
    assert rc == 2 and "has no layer 'buildings' (layers: draft, landcover)" in line
