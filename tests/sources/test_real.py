"""Real data: the blue band (B2) of two adjacent, overlapping Landsat-8 rows (path 224, rows 077
and 078, 2020-05-18, EPSG:32621, 30 m), mosaicked. Neither declares nodata: their zero collars
are made holes with ``nodata=0``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from geoseg.grid import Window
from geoseg.io import open_info, read_window
from geoseg.sources import open_source
from geoseg.sources.mosaic import Mosaic, read_window_sources

pytestmark = pytest.mark.real

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"
FOLDER = REAL / "landsat8_paraguay"
ROW77 = FOLDER / "LC08_224077_20200518_B2.tif"  # B2 only
ROW78 = FOLDER / "LC08_224078_20200518_rgb.tif"  # bands 2-3-4: B2 is band 1


@pytest.fixture(scope="module")
def strips() -> tuple[Path, Path]:
    if not (ROW77.is_file() and ROW78.is_file()):
        pytest.skip(f"{FOLDER} not present")
    return ROW77, ROW78


def _own(path: Path, m: Mosaic) -> tuple[Window, np.ndarray, np.ndarray]:
    """The strip's window in the mosaic grid and its B2 values/validity (zeros = nodata)."""
    info = open_info(path)
    col, row = ~m.geobox.transform @ (info.geobox.transform.c, info.geobox.transform.f)
    assert col == round(col) and row == round(row)  # same 30 m grid
    win = Window(round(row), round(col), *info.geobox.shape)
    data, _ = read_window(info, info.geobox.window, (1,))
    return win, data[0], data[0] != 0


@pytest.mark.filterwarnings("ignore::geoseg.errors.GeoSegWarning")
def test_two_landsat_rows_mosaic(strips: tuple[Path, Path]) -> None:
    t0 = time.perf_counter()
    m = open_source([str(p) for p in strips], bands=[1], nodata=0, mosaic="first")
    assert isinstance(m, Mosaic) and m.count == 1
    g = m.geobox
    assert g.crs.to_epsg() == 32621 and g.resolution == (30.0, 30.0)
    b = g.bounds  # exactly the union of the two strips' extents
    assert (b.left, b.bottom, b.right, b.top) == (694005.0, -2832795.0, 778575.0, -2766615.0)
    data, valid, source, used = read_window_sources(m, g.window, (1,))
    elapsed = time.perf_counter() - t0
    (w77, d77, v77), (w78, d78, v78) = _own(strips[0], m), _own(strips[1], m)
    r77, r78 = w77.slices(), w78.slices()
    # both footprints are covered wherever their strip has data
    assert valid[r77][v77].all() and valid[r78][v78].all()
    # rule "first": row 077 wherever it has data, row 078 fills the rest
    assert np.all(source[r77][v77] == 1) and np.array_equal(data[0][r77][v77], d77[v77])
    only78 = (source[r78] == 2)
    assert np.array_equal(data[0][r78][only78], d78[only78])
    overlap = w77.intersect(w78)
    both = (source[overlap.slices()] > 0)
    assert both.mean() > 0.5
    # inside the overlap 078 contributes only where 077 is nodata
    o77 = v77[overlap.relative_to(w77).slices()]
    o78 = v78[overlap.relative_to(w78).slices()]
    assert np.all(source[overlap.slices()][o77] == 1)
    assert np.all(source[overlap.slices()][~o77 & o78] == 2)
    assert [u.id for u in used] == [strips[0].stem, strips[1].stem]
    print(f"\n{g.height}x{g.width} mosaic of 2 Landsat rows read in {elapsed:.2f} s; "
          f"{valid.mean():.1%} valid, {np.mean(source == 2):.1%} from row 078")


@pytest.mark.slow  # least-nodata reads both strips whole (they have no overviews)
@pytest.mark.filterwarnings("ignore::geoseg.errors.GeoSegWarning")
def test_rule_decides_the_overlap(strips: tuple[Path, Path]) -> None:
    """Rows given 078 first: ``first`` takes 078 in the overlap; ``least-nodata`` takes 077
    (2.4 % zeros against 078's 16.5 %)."""
    paths = [str(strips[1]), str(strips[0])]
    first = open_source(paths, bands=[1], nodata=0, mosaic="first")
    least = open_source(paths, bands=[1], nodata=0, mosaic="least-nodata")
    assert isinstance(first, Mosaic) and isinstance(least, Mosaic)
    assert least.order == (1, 0) and first.geobox == least.geobox
    w77, _, v77 = _own(strips[0], first)
    w78, _, v78 = _own(strips[1], first)
    overlap = w77.intersect(w78)
    both = v77[overlap.relative_to(w77).slices()] & v78[overlap.relative_to(w78).slices()]
    assert both.sum() > 100_000
    for m, winner in ((first, 1), (least, 2)):  # 1-based positions: 078 is 1, 077 is 2
        _, _, source, _ = read_window_sources(m, overlap, (1,))
        assert np.all(source[both] == winner)
