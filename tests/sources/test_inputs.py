"""open_source inputs (globs, lists) and its one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geoseg.errors import BandMismatchError, GeoSegWarning, InputError, RasterNotFoundError
from geoseg.grid import Bounds, normalize_crs
from geoseg.sources import open_source
from geoseg.sources.inputs import expand_inputs
from geoseg.sources.mosaic import Mosaic
from tests.conftest import write_raster
from tests.sources.conftest import UTM33, X0, Y0, Scene, make_scene


@pytest.fixture
def local_scene(tmp_path: Path) -> Scene:
    return make_scene(tmp_path / "imgs")


def test_glob_and_text_list(local_scene: Scene, tmp_path: Path) -> None:
    by_glob = open_source([str(local_scene.a.parent / "*.tif")])
    assert isinstance(by_glob, Mosaic) and [it.id for it in by_glob.items] == ["a", "b", "c"]
    listing = tmp_path / "lists" / "images.txt"
    listing.parent.mkdir()
    listing.write_text("# scenes, newest first\n../imgs/c.tif\n\n" + str(local_scene.a) + "\n")
    by_list = open_source([str(listing)], mosaic="first")
    assert isinstance(by_list, Mosaic) and [it.id for it in by_list.items] == ["c", "a"]
    assert expand_inputs([str(listing), str(local_scene.a)]) == [
        ("raster", str(local_scene.c)), ("raster", str(local_scene.a))]  # repeats dropped


def test_one_file_spelt_three_ways_is_one_input(local_scene: Scene,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(local_scene.a.parent)
    link = local_scene.a.parent / "a-link.tif"
    link.symlink_to(local_scene.a)
    spelt = ["a.tif", "./a.tif", str(local_scene.a), str(link), local_scene.a.as_uri(), "c.tif"]
    assert expand_inputs(spelt) == [("raster", "a.tif"), ("raster", "c.tif")]
    spaced = local_scene.a.with_name("my scene.tif")  # file:///.../my%20scene.tif
    spaced.write_bytes(local_scene.a.read_bytes())
    assert expand_inputs([spaced.as_uri()]) == [("raster", str(spaced))]


def test_unknown_rule_and_missing_inputs(local_scene: Scene, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown mosaic rule 'newest'"):
        open_source([str(local_scene.a)], mosaic="newest")
    with pytest.raises(RasterNotFoundError, match="no file matches"):
        open_source([str(tmp_path / "nothing*.tif")])
    with pytest.raises(RasterNotFoundError, match="input not found"):
        open_source([str(tmp_path / "gone.tif"), str(local_scene.a)])


def test_items_must_agree_on_bands_and_types(local_scene: Scene, tmp_path: Path) -> None:
    three = write_raster(tmp_path / "three.tif", np.ones((3, 16, 16), np.uint8), crs=UTM33,
                         nodata=0)
    with pytest.raises(BandMismatchError, match=r"has 3 band.*has 2.*--bands"):
        open_source([str(local_scene.a), str(three)])
    wide = write_raster(tmp_path / "wide.tif", np.ones((2, 16, 16), np.uint16), crs=UTM33,
                        nodata=0, descriptions=["red", "nir"])
    with pytest.raises(InputError, match=r"band red is uint16 in item wide but uint8"):
        open_source([str(local_scene.a), str(wide)])
    with pytest.raises(BandMismatchError, match=r"no band named 'swir'.*red, nir"):
        open_source([str(local_scene.a), str(local_scene.c)], bands=["swir"])
    with pytest.raises(BandMismatchError, match="has no band 5"):
        open_source([str(local_scene.a), str(local_scene.c)], bands=[5])


def test_region_drops_items_and_says_when_none_is_left(local_scene: Scene) -> None:
    paths = [str(local_scene.a), str(local_scene.b), str(local_scene.c)]
    near_c = Bounds(X0 + 900, Y0 - 800, X0 + 1000, Y0 - 700, normalize_crs(UTM33))
    m = open_source(paths, region=near_c)
    assert isinstance(m, Mosaic) and [it.id for it in m.items] == ["c"]
    far = Bounds(X0 + 50_000, Y0, X0 + 51_000, Y0 + 1000, normalize_crs(UTM33))
    with pytest.raises(InputError, match="none of the 3 image"):
        open_source(paths, region=far)


def test_images_without_nodata_warn_once_and_nodata_overrides(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        arr = np.full((1, 16, 16), i + 1, np.uint8)
        arr[0, :4] = 0  # a zero collar, not declared nodata
        paths.append(str(write_raster(tmp_path / f"n{i}.tif", arr, crs=UTM33)))
    with pytest.warns(GeoSegWarning, match="3 of 3 mosaic file") as rec:
        m = open_source(paths)
    assert len([w for w in rec if issubclass(w.category, GeoSegWarning)]) == 1
    assert isinstance(m, Mosaic)
    m0 = open_source(paths, nodata=0)
    assert isinstance(m0, Mosaic) and m0.nodata == 0
    from geoseg.io import read_window

    data, valid = read_window(m0, m0.geobox.window, (1,))
    assert not valid[:4].any() and np.all(data[0, 4:] == 1)


def test_lists_folders_and_odd_names_say_where_the_problem_is(local_scene: Scene,
                                                             tmp_path: Path) -> None:
    """An empty list and a missing line name their list; a folder of tiles is told to use a
    glob; a file named like a glob (scan[1].tif) is that file; a STAC document named .geojson
    is a STAC document, as .json is."""
    from geoseg.errors import NotARasterError
    from geoseg.plan import _expands

    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n")
    with pytest.raises(InputError, match=r"the input list .*empty.txt names no image"):
        expand_inputs([str(empty)])
    listing = tmp_path / "images.txt"
    listing.write_text(f"{local_scene.a}\nnothere.tif\n")
    with pytest.raises(RasterNotFoundError, match=r"nothere.tif \(check the path\) \(listed "
                                                  r"in .*images.txt\)"):
        expand_inputs([str(listing)])
    with pytest.raises(NotARasterError, match=r"imgs is a folder GDAL cannot read as one "
                                              r"raster: give its images as a quoted glob"):
        open_source([str(local_scene.a.parent)])
    odd = local_scene.a.with_name("scan[1].tif")
    odd.write_bytes(local_scene.a.read_bytes())
    assert expand_inputs([str(odd)]) == [("raster", str(odd))] and not _expands(str(odd))
    assert _expands("items/A.geojson") and _expands("s3://b/list.txt")
    assert not _expands("https://h/a.tif?sig=x")


def test_nodata_is_for_the_images_that_declare_none(tmp_path: Path) -> None:
    """``--nodata 0`` (as its help says) is the nodata of images that declare none; an image
    declaring 255 keeps it, so its 255 collar stays a hole and the next image fills it."""
    from geoseg.io import read_window

    own = np.full((1, 16, 16), 5, np.uint8)
    own[0, :, 8:] = 255  # its declared collar
    first = write_raster(tmp_path / "own.tif", own, crs=UTM33, nodata=255)
    under = np.full((1, 16, 16), 7, np.uint8)
    under[0, :4] = 0  # a zero collar, declared by nothing
    second = write_raster(tmp_path / "under.tif", under, crs=UTM33)
    with pytest.warns(GeoSegWarning, match=r"--nodata 0 is used for the images that declare "
                                           r"none; 1 declare their own, kept \(.*own.tif: "
                                           r"nodata 255\)"):
        m = open_source([str(first), str(second)], nodata=0)
    data, valid = read_window(m, m.geobox.window, (1,))
    assert np.all(data[0, :, :8] == 5)
    assert np.all(data[0, 4:, 8:] == 7) and not valid[:4, 8:].any()  # filled; both collars
    # 4 bands of 8 bits and no nodata: GDAL reads the 4th as alpha (a mask), which gives way
    # to --nodata as before; its 255 collar is a hole the next image fills
    rgbn = np.full((4, 16, 16), 50, np.uint8)
    rgbn[:, :, 8:] = 255
    a = write_raster(tmp_path / "rgbn.tif", rgbn, crs=UTM33)
    b = write_raster(tmp_path / "rgbn_b.tif", np.full((4, 16, 16), 80, np.uint8), crs=UTM33)
    m = open_source([str(a), str(b)], nodata=255)
    data, valid = read_window(m, m.geobox.window, (1, 2, 3, 4))
    assert valid.all() and np.all(data[:, :, 8:] == 80) and np.all(data[:, :, :8] == 50)


def test_a_vrt_is_one_raster(local_scene: Scene) -> None:
    """A GDAL VRT (here: A and C on one grid) is opened as a single raster, or as one item."""
    from geoseg.grid import Window
    from geoseg.io import RasterInfo, open_info, read_window

    wkt = open_info(local_scene.a).geobox.crs.to_wkt()
    bands = ""
    for b in (1, 2):
        srcs = "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="1">{n}.tif</SourceFilename>'
            f'<SourceBand>{b}</SourceBand><SrcRect xOff="0" yOff="0" xSize="64" ySize="64"/>'
            f'<DstRect xOff="{dx}" yOff="{dy}" xSize="64" ySize="64"/></SimpleSource>'
            for n, dx, dy in (("c", 40, 24), ("a", 0, 0)))
        bands += (f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>0</NoDataValue>'
                  f"{srcs}</VRTRasterBand>")
    vrt = local_scene.a.parent / "ac.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="104" rasterYSize="88"><SRS>{wkt}</SRS>'
                   f"<GeoTransform>{X0}, 10, 0, {Y0}, 0, -10</GeoTransform>{bands}</VRTDataset>")
    info = open_source([str(vrt)])
    assert isinstance(info, RasterInfo) and info.geobox.shape == (88, 104)
    plain = open_source([str(local_scene.a), str(local_scene.c)])
    both = open_source([str(vrt), str(local_scene.b)])
    assert isinstance(both, Mosaic) and isinstance(plain, Mosaic)
    win = Window(0, 0, 88, 104)
    data, valid = read_window(info, win, (1, 2))
    # where A or C has data, the VRT is A over C: as the "first" mosaic of A and C
    pdata, pvalid = read_window(plain, plain.geobox.window, (1, 2))
    assert pvalid.shape == valid.shape and np.array_equal(valid, pvalid)
    assert np.array_equal(data, pdata)
