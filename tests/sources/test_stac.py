"""STAC inputs: Item, ItemCollection and Catalog documents written with pystac over generated
COGs; bands chosen by common name; relative hrefs resolved."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely

from geoseg.errors import InputError
from geoseg.grid import Window
from geoseg.sources import open_source
from geoseg.sources.mosaic import Mosaic, read_window_sources
from geoseg.sources.stac import read_stac
from tests.sources.conftest import Scene
from tests.sources.stac_fixtures import Stac, make_stac


@pytest.fixture(scope="module")
def stac(scene: Scene, tmp_path_factory: pytest.TempPathFactory) -> Stac:
    return make_stac(scene, tmp_path_factory.mktemp("stac"))


def test_item_bands_by_common_name_with_relative_hrefs(stac: Stac) -> None:
    (item,) = read_stac([str(stac.item_a)], ["red", "NIR"])
    folder = stac.root / "items" / "a"
    assert item.id == "scene-a" and item.datetime == "2020-01-01T00:00:00Z"
    assert [(b.href, b.index) for b in item.bands] == [(str(folder / "B04.tif"), 1),
                                                       (str(folder / "B08.tif"), 1)]
    assert item.footprint is not None and item.footprint.contains(shapely.Point(12.004, 44.997))


def test_item_collection_hrefs_resolve_against_the_collection(stac: Stac) -> None:
    items = read_stac([str(stac.collection)], ["red"])
    assert [it.id for it in items] == ["scene-a", "scene-c"]
    assert items[1].bands[0].href == str(stac.root / "items" / "c" / "B04.tif")


def test_percent_encoded_hrefs_name_the_files(stac: Stac, tmp_path: Path) -> None:
    """A STAC href is a URI: ``my%20scene/B04.tif`` and ``file:///.../my%20scene/B08.tif`` are
    the files in the folder ``my scene`` (a .txt list's lines are paths, kept as written)."""
    import shutil

    from geoseg.sources.items import resolve_href

    folder = tmp_path / "my scene"
    shutil.copytree(stac.root / "items" / "a", folder)
    doc = json.loads(stac.item_a.read_text())
    doc["assets"]["B04"]["href"] = "./my%20scene/B04.tif"
    doc["assets"]["B08"]["href"] = (folder.parent.as_uri() + "/my%20scene/B08.tif")
    item = tmp_path / "item.json"
    item.write_text(json.dumps(doc))
    (read,) = read_stac([str(item)], ["red", "nir"])
    assert [b.href for b in read.bands] == [str(folder / "B04.tif"), str(folder / "B08.tif")]
    m = open_source([str(item)], bands=["red", "nir"])
    assert isinstance(m, Mosaic) and m.count == 2
    assert resolve_href("my%20x.tif", str(item)) == str(tmp_path / "my%20x.tif")


def test_band_in_a_multiband_asset_and_by_asset_or_band_name(stac: Stac) -> None:
    (item,) = read_stac([str(stac.item_a)], ["green", "B04"])
    assert item.bands[0].href.endswith("visual.tif") and item.bands[0].index == 2
    assert item.bands[1].href.endswith("B04.tif")  # its own single-band COG beats 'visual'


def test_catalog_to_mosaic_reads_the_band_files(stac: Stac, scene: Scene) -> None:
    m = open_source([str(stac.catalog)], bands=("red", "nir"), mosaic="latest")
    assert isinstance(m, Mosaic)
    assert m.band_names == ("red", "nir") and m.count == 2
    assert [it.id for it in m.items] == ["scene-a", "scene-c"] and m.order == (1, 0)
    assert m.acquisition_date == "2020-01-01/2020-02-01"
    data, _, source, used = read_window_sources(m, Window(0, 0, 64, 64), (1, 2))
    # the window is A's extent: C (latest) where it has pixels, A elsewhere
    assert np.array_equal(data[:, source == 1], scene.a_data[:, source == 1])
    assert set(np.unique(source)) == {0, 1, 2}  # A's nodata hole stays empty (C is elsewhere)
    assert [(u.id, u.datetime) for u in used] == [("scene-a", "2020-01-01T00:00:00Z"),
                                                  ("scene-c", "2020-02-01T10:30:00Z")]
    nir_only = open_source([str(stac.catalog)], bands=("nir",))  # first: A before C
    assert isinstance(nir_only, Mosaic)
    nir, _, src, _ = read_window_sources(nir_only, Window(0, 0, 64, 64), (1,))
    a_valid = scene.a_data.any(axis=0)
    assert np.array_equal(src == 1, a_valid) and np.array_equal(nir[0][a_valid],
                                                                scene.a_data[1][a_valid])


def test_missing_band_names_the_assets_it_has(stac: Stac) -> None:
    with pytest.raises(InputError, match=r"no asset for band 'swir16'.*B04 \(B04, red\)"):
        read_stac([str(stac.catalog)], ["swir16"])
    with pytest.raises(InputError, match="need band names"):
        open_source([str(stac.catalog)])
    with pytest.raises(InputError, match="not a STAC"):
        bad = stac.root / "region.json"
        bad.write_text('{"type": "Polygon", "coordinates": []}')
        read_stac([str(bad)], ["red"])


def test_unreadable_document(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="cannot read STAC document"):
        read_stac([str(broken)], ["red"])
    # a document in object storage: one line with what to do (was "Not supported URL scheme")
    with pytest.raises(InputError, match=r"local files or http\(s\) only; copy it locally"):
        read_stac(["s3://bucket/catalog.json?sig=SECRET"], ["red"])


def test_region_filters_items_by_their_stac_footprint(stac: Stac) -> None:
    from geoseg.errors import RegionError
    from geoseg.grid import Bounds, normalize_crs

    near_c = Bounds(12.0110, 44.9940, 12.0120, 44.9950, normalize_crs("EPSG:4326"))
    m = open_source([str(stac.catalog)], bands=("red",), region=near_c)
    assert isinstance(m, Mosaic) and [it.id for it in m.items] == ["scene-c"]
    far = Bounds(13.0, 46.0, 13.1, 46.1, normalize_crs("EPSG:4326"))
    with pytest.raises(RegionError, match="none of the 2 item"):
        open_source([str(stac.catalog)], bands=("red",), region=far)


def test_an_empty_asset_href_is_named(stac: Stac) -> None:
    """An asset whose href is empty is one line naming the item and asset, not a later
    'not a raster' about the item's folder."""
    doc = json.loads(stac.item_a.read_text())
    doc["assets"]["B04"]["href"] = ""
    bad = stac.item_a.parent / "empty-href.json"
    bad.write_text(json.dumps(doc))
    try:
        with pytest.raises(InputError, match=r"scene-a: asset 'B04' \(band 'red'\) has an empty"):
            read_stac([str(bad)], ["red"])
    finally:
        bad.unlink()
