"""The synthetic two-date scene: determinism, exact truth, geo-metadata, nodata, changes."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from PIL import Image
from pyproj import CRS
from rasterio import features

from geoseg.errors import CRSError, InputError, OutputExistsError
from geoseg.sample import CLASSES, DATES, SceneFiles, generate_scene

COLLAR = 10
KINDS = {"rect", "L", "T", "courtyard", "apartment", "row-house", "semi-detached", "shed", "round",
         "octagonal", "office", "hut", "garage"}


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> SceneFiles:
    """A 512² demo-seed scene with a nodata collar (about one second)."""
    return generate_scene(tmp_path_factory.mktemp("scene"), 512, seed=0, nodata_collar=COLLAR)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def rasterized(gpkg: Path, like: Path) -> np.ndarray:
    """The building polygons of ``gpkg`` burnt with their ids on the grid of ``like``."""
    df = gpd.read_file(gpkg, layer="buildings").sort_values("id")
    with rasterio.open(like) as src:
        return features.rasterize(zip(df.geometry, df["id"].tolist(), strict=True),
                                  out_shape=src.shape, transform=src.transform, fill=0,
                                  dtype="uint32", all_touched=False)


def test_same_seed_same_bytes_other_seed_other_scene(tmp_path: Path) -> None:
    a = generate_scene(tmp_path / "a", 256, seed=3)
    b = generate_scene(tmp_path / "b", 256, seed=3)
    for pa, pb in zip(a.paths(), b.paths(), strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
    c = generate_scene(tmp_path / "c", 256, seed=4)
    assert not np.array_equal(read(a.image_t0), read(c.image_t0))
    assert not np.array_equal(read(a.landcover_t0), read(c.landcover_t0))


def test_block_size_does_not_change_the_output(tmp_path: Path) -> None:
    shape = (300, 340)  # not a multiple of either block size: partial edge blocks
    a = generate_scene(tmp_path / "a", shape, seed=11, block=128, nodata_collar=6)
    b = generate_scene(tmp_path / "b", shape, seed=11, block=256, nodata_collar=6)
    for name, pa in a.named().items():
        pb = b.named()[name]
        if pa.suffix == ".tif":
            assert np.array_equal(read(pa), read(pb)), name
        else:
            assert pa.read_bytes() == pb.read_bytes(), name


@pytest.mark.parametrize("date", [0, 1])
def test_raster_truth_is_the_rasterized_polygons(scene: SceneFiles, date: int) -> None:
    gpkg = (scene.buildings_t0, scene.buildings_t1)[date]
    ins_path = (scene.instances_t0, scene.instances_t1)[date]
    inst = read(ins_path)[0]
    lc = read((scene.landcover_t0, scene.landcover_t1)[date])[0]
    df = gpd.read_file(gpkg, layer="buildings")
    assert df.crs == CRS.from_epsg(32633)
    assert df["id"].is_unique and len(set(df["kind"])) >= 3
    assert set(df["kind"]) <= KINDS
    assert np.allclose(df["area_m2"], df.geometry.area, atol=1e-2)
    assert np.array_equal(rasterized(gpkg, ins_path), inst)
    assert set(np.unique(inst)) - {0} == set(df["id"])
    assert np.array_equal(lc == 1, inst > 0)


def test_geo_metadata(scene: SceneFiles) -> None:
    for d, date in enumerate(DATES):
        path = (scene.image_t0, scene.image_t1)[d]
        with rasterio.open(path) as src:
            assert src.count == 4 and src.dtypes == ("uint8",) * 4
            assert CRS.from_wkt(src.crs.to_wkt()) == CRS.from_epsg(32633)
            assert src.res == (0.5, 0.5)
            assert (src.transform.c, src.transform.f) == (500000.0, 5100000.0)
            assert src.block_shapes == [(512, 512)] * 4
            assert src.compression.name == "deflate"
            assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
            assert src.tags()["ACQUISITION_DATE"] == date
            assert src.tags()["TIFFTAG_DATETIME"].startswith(date.replace("-", ":"))
            assert src.descriptions == ("red", "green", "blue", "nir")
        with Image.open(path) as im:  # a real tiled TIFF, not strips
            assert im.tag_v2.get(322) == 512 and im.tag_v2.get(323) == 512
        for p in ((scene.landcover_t0, scene.instances_t0),
                  (scene.landcover_t1, scene.instances_t1))[d]:
            with rasterio.open(p) as src:
                assert src.crs == rasterio.open(path).crs
                assert src.transform == rasterio.open(path).transform
                assert src.compression.name == "deflate" and src.tags()["ACQUISITION_DATE"] == date
    with rasterio.open(scene.instances_t0) as src:
        assert src.dtypes == ("uint32",)
    meta = json.loads(scene.metadata.read_text())
    assert meta["seed"] == 0 and meta["size"] == [512, 512] and meta["dates"] == list(DATES)
    assert CRS.from_wkt(meta["crs"]) == CRS.from_epsg(32633)
    assert [(c["id"], c["name"], c["colour"]) for c in meta["classes"]] == CLASSES
    lc = read(scene.landcover_t1)[0]
    assert meta["counts"]["pixels"][DATES[1]]["water"] == int((lc == 4).sum())
    assert meta["counts"]["buildings"][DATES[0]] == len(gpd.read_file(scene.buildings_t0))


def test_nodata_collar(scene: SceneFiles) -> None:
    img = read(scene.image_t0)
    lc = read(scene.landcover_t0)[0]
    with rasterio.open(scene.image_t0) as src:
        assert src.nodata == 0
    with rasterio.open(scene.landcover_t0) as src:
        assert src.nodata == 255
    nodata = lc == 255
    assert nodata[:COLLAR].all() and nodata[-COLLAR:].all()
    assert nodata[:, :COLLAR].all() and nodata[:, -COLLAR:].all()
    assert not nodata[COLLAR * 2:-COLLAR * 2, COLLAR * 2:-COLLAR * 2].any()
    assert len({int(nodata[r].argmin()) for r in range(100, 400)}) > 1  # irregular edge
    assert (img[:, nodata] == 0).all()
    assert (img[:, ~nodata] >= 1).all()
    assert (read(scene.instances_t0)[0][nodata] == 0).all()


def test_without_collar_no_nodata_and_no_zero_pixels(tmp_path: Path) -> None:
    files = generate_scene(tmp_path, (128, 192), seed=5)
    with rasterio.open(files.image_t1) as src:
        assert src.nodata is None
        assert src.read().min() >= 1
    assert (read(files.landcover_t1) != 255).all()


def test_all_classes_and_touching_buildings(scene: SceneFiles) -> None:
    for path in (scene.landcover_t0, scene.landcover_t1):
        lc = read(path)[0]
        assert set(np.unique(lc)) == {0, 1, 2, 3, 4, 255}
    inst = read(scene.instances_t0)[0]
    right = (inst[:, 1:] != inst[:, :-1]) & (inst[:, 1:] > 0) & (inst[:, :-1] > 0)
    down = (inst[1:] != inst[:-1]) & (inst[1:] > 0) & (inst[:-1] > 0)
    assert right.any() or down.any()


def test_nir_separates_vegetation_and_water(scene: SceneFiles) -> None:
    img = read(scene.image_t0).astype(float)
    lc = read(scene.landcover_t0)[0]
    nir = {c: img[3][lc == c].mean() for c in range(5)}
    assert nir[3] > max(nir[0], nir[2]) and nir[4] < min(nir[0], nir[1], nir[2], nir[3])


def test_changes_match_the_two_dates(scene: SceneFiles) -> None:
    ch = gpd.read_file(scene.changes, layer="building_changes")
    assert set(ch["change"]) == {"new", "demolished", "extended"}
    i0, i1 = read(scene.instances_t0)[0], read(scene.instances_t1)[0]
    l0, l1 = read(scene.landcover_t0)[0], read(scene.landcover_t1)[0]
    b0 = gpd.read_file(scene.buildings_t0).set_index("id")
    b1 = gpd.read_file(scene.buildings_t1).set_index("id")
    ids0, ids1 = set(np.unique(i0)) - {0}, set(np.unique(i1)) - {0}
    changed = set()
    for row in ch.itertuples():
        if row.change == "new":
            assert np.isnan(row.id_t0) and row.id_t1 in ids1 and row.id_t1 not in ids0
            assert set(np.unique(l0[i1 == row.id_t1])) <= {0, 3}  # on bare or vegetation
            assert row.geometry.equals_exact(b1.geometry[row.id_t1], 0)
        elif row.change == "demolished":
            assert np.isnan(row.id_t1) and row.id_t0 in ids0 and row.id_t0 not in ids1
            assert (l1[i0 == row.id_t0] == 0).all()  # bare ground now
        else:
            assert row.id_t0 == row.id_t1 and row.id_t0 in ids0 and row.id_t1 in ids1
            assert (i1 == row.id_t1).sum() > (i0 == row.id_t0).sum()
            assert b1.geometry[row.id_t1].buffer(1e-6).covers(b0.geometry[row.id_t0])
        changed |= {int(v) for v in (row.id_t0, row.id_t1) if not np.isnan(v)}
    same = sorted((ids0 & ids1) - changed)
    assert same and set(b0.index) - set(b1.index) == set(ch.id_t0[ch.change == "demolished"])
    for i in same:
        assert b0.geometry[i].equals_exact(b1.geometry[i], 0)
        assert np.array_equal(i0 == i, i1 == i)


def test_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least 64"):
        generate_scene(tmp_path, 32)
    with pytest.raises(InputError, match="seed"):
        generate_scene(tmp_path, 128, seed=-1)
    with pytest.raises(InputError, match="pixel_size"):
        generate_scene(tmp_path, 128, pixel_size=0)
    with pytest.raises(InputError, match="nodata_collar"):
        generate_scene(tmp_path, 128, nodata_collar=40)
    with pytest.raises(CRSError, match="projected"):
        generate_scene(tmp_path, 128, crs="EPSG:4326")
    generate_scene(tmp_path, (64, 96), seed=1)
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        generate_scene(tmp_path, (64, 96), seed=1)
    files = generate_scene(tmp_path, (64, 96), seed=2, overwrite=True)
    assert json.loads(files.metadata.read_text())["seed"] == 2


def test_files_geoseg_did_not_write_are_never_replaced(tmp_path: Path) -> None:
    """A folder with a scene's file names but no scene.json of a generated scene is refused,
    --overwrite or not; the user's file stays."""
    (tmp_path / "image_t0.tif").write_bytes(b"my image")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="did not write"):
            generate_scene(tmp_path, 64, overwrite=overwrite)
        assert (tmp_path / "image_t0.tif").read_bytes() == b"my image"
    (tmp_path / "image_t0.tif").unlink()
    (tmp_path / "notes.txt").write_text("kept")  # other names are no obstacle, and stay
    files = generate_scene(tmp_path, 64)
    assert (tmp_path / "notes.txt").read_text() == "kept" and files.image_t0.stat().st_size
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        generate_scene(afile, 64)


def test_an_interrupted_scene_leaves_nothing_that_looks_finished(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import geoseg.sample.scene as scene_mod

    class Stop(Exception):
        """Stands for Ctrl-C (the same path: the scene's temporary files are removed)."""

    real = scene_mod.render_block
    calls = []

    def stop_after_one(*args: object, **kw: object) -> object:
        calls.append(1)
        if len(calls) > 1:
            raise Stop
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(scene_mod, "render_block", stop_after_one)
    with pytest.raises(Stop):
        generate_scene(tmp_path / "s", 256, block=128)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == []  # no blank "finished" files
    monkeypatch.setattr(scene_mod, "render_block", real)
    first = generate_scene(tmp_path / "done", 128, seed=1)
    monkeypatch.setattr(scene_mod, "render_block", stop_after_one)
    before = {p.name: p.read_bytes() for p in first.paths()}
    calls.clear()
    with pytest.raises(Stop):  # an interrupted --overwrite keeps the old scene
        generate_scene(tmp_path / "done", 256, seed=2, block=128, overwrite=True)
    assert {p.name: p.read_bytes() for p in first.paths()} == before


def test_a_killed_sample_leaves_no_folder_behind_the_next_one(tmp_path: Path) -> None:
    """SIGKILL mid-write left its hidden work folder (hundreds of MB at 4096²) for ever; the
    next sample into the folder removes it. A work folder without an owner, or of a live
    process, is left alone."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    root = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "geoseg", "sample", str(root), "--size",
                             "2048", "--seed", "2"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(root.glob(".partial-scene-*/*.tif")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (left,) = root.glob(".partial-scene-*")
    foreign = root / ".partial-scene-users"  # no owner file: not judged
    foreign.mkdir()
    live = root / ".partial-scene-live"
    live.mkdir()
    (live / ".owner.json").write_text(json.dumps({"host": socket.gethostname(),
                                                  "pid": os.getpid()}))
    generate_scene(root, 128, seed=1)
    assert not left.exists() and foreign.is_dir() and live.is_dir()


def test_cli_sample_and_demo_refusals_are_one_line(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from geoseg.cli import main

    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["sample", str(afile), "--size", "64"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file" in err, err
    assert main(["sample", str(tmp_path / "s"), "--size", "64"]) == 0
    assert main(["sample", str(tmp_path / "s"), "--size", "64"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err, err
    scene = tmp_path / "demo" / "scene"
    scene.mkdir(parents=True)
    (scene / "image_t0.tif").write_bytes(b"mine")
    assert main(["demo", "-o", str(tmp_path / "demo")]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did not write" in err, err
    assert (scene / "image_t0.tif").read_bytes() == b"mine"
