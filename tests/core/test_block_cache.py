"""The source block cache: a read through it equals a direct read (values, nodata, internal
masks, NaN pixels, partial edge blocks), each block is decoded once however many windows and
threads want it, the budget holds, and a replaced file is never served from the cache."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.blockcache import BlockCache
from geoseg.grid import Window
from geoseg.io import RasterInfo, open_info, read_window
from tests.conftest import CRS_UTM

H, W, B = 70, 90, 16  # 5 x 6 blocks of 16 px, the last row and column partial
TRANSFORM = rasterio.Affine(0.5, 0, 500000.0, 0, -0.5, 5100000.0)


def tiled(path: Path, data: np.ndarray, *, nodata: float | None = None,
          mask: np.ndarray | None = None, block: int = B, **extra: object) -> Path:
    profile: dict[str, object] = {
        "driver": "GTiff", "width": data.shape[2], "height": data.shape[1],
        "count": data.shape[0], "dtype": data.dtype.name, "transform": TRANSFORM,
        "crs": CRS_UTM, "compress": "deflate", "tiled": True, "blockxsize": block,
        "blockysize": block, **extra}
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if mask is not None:
            dst.write_mask(mask)
    return path


@pytest.fixture(scope="module")
def rasters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RasterInfo]:
    root = tmp_path_factory.mktemp("block-cache")
    rng = np.random.default_rng(11)
    img = rng.integers(1, 4000, (3, H, W)).astype(np.uint16)
    holes = img.copy()
    holes[:, 10:20, 30:50] = 7
    floats = rng.random((2, H, W)).astype(np.float32)
    floats[0, 33:37, 15:70] = np.nan
    mask = np.full((H, W), 255, np.uint8)
    mask[40:, :25] = 0
    return {"plain": open_info(tiled(root / "plain.tif", img)),
            "nodata": open_info(tiled(root / "nodata.tif", holes, nodata=7)),
            "mask": open_info(tiled(root / "mask.tif", img, mask=mask)),
            "nan": open_info(tiled(root / "nan.tif", floats)),
            "pixel": open_info(tiled(root / "pixel.tif", img, interleave="pixel"))}


SHARED = BlockCache(max_bytes=8 << 10)  # small: eviction runs during the examples


@settings(max_examples=80, deadline=None)
@given(kind=st.sampled_from(["plain", "nodata", "mask", "nan", "pixel"]),
       row=st.integers(-20, H + 3), col=st.integers(-20, W + 3), h=st.integers(1, 50),
       w=st.integers(1, 50), bands=st.sampled_from([(1, 2, 3), (3, 1), (2,)]))
def test_a_cached_read_is_the_direct_read(rasters: dict[str, RasterInfo], kind: str, row: int,
                                          col: int, h: int, w: int,
                                          bands: tuple[int, ...]) -> None:
    info = rasters[kind]
    bands = tuple(b for b in bands if b <= info.count) or (1,)
    want_data, want_valid = read_window(info, Window(row, col, h, w), bands, fill=-5.0)
    data, valid = read_window(info, Window(row, col, h, w), bands, fill=-5.0, cache=SHARED)
    assert np.array_equal(valid, want_valid)
    assert np.array_equal(data, want_data, equal_nan=True)
    assert data.dtype == want_data.dtype


def test_each_block_is_decoded_once_across_windows_and_threads(
        rasters: dict[str, RasterInfo]) -> None:
    info = rasters["mask"]
    cache = BlockCache()
    # 3 x 3 chunks of 32 px with a halo of 8, read by 4 threads at once
    windows = [Window(r - 8, c - 8, 48, 48) for r in range(0, H, 32) for c in range(0, W, 32)]
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    start = threading.Barrier(4)

    def work(k: int) -> None:
        start.wait()
        for i in range(k, len(windows), 4):
            results[i] = read_window(info, windows[i], (1, 2, 3), cache=cache)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, win in enumerate(windows):
        want = read_window(info, win, (1, 2, 3))
        assert np.array_equal(results[i][0], want[0]) and np.array_equal(results[i][1], want[1])
    assert any(not v.all() for _, v in results.values())  # the mask came through the cache
    blocks = -(-H // B) * -(-W // B)
    assert cache.misses == blocks  # every block of the image once, none twice
    assert cache.hits > 0


def test_the_budget_bounds_what_is_kept(rasters: dict[str, RasterInfo]) -> None:
    info = rasters["plain"]
    cache = BlockCache(max_bytes=4 * B * B * 3 * 2)  # four 3-band uint16 blocks
    window_bytes = 3 * 20 * 20 * 3 * 2  # budget for a 20 x 20 window: max(floor, 3 windows)
    for r in range(0, H, 10):
        for c in range(0, W, 10):
            read_window(info, Window(r, c, 20, 20), (1, 2, 3), cache=cache)
            assert cache.bytes <= max(cache.max_bytes, window_bytes)
    cache.clear()
    assert cache.bytes == 0


def test_a_replaced_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "scene.tif"
    first = np.full((1, 40, 40), 10, np.uint8)
    info = open_info(tiled(path, first))
    cache = BlockCache()
    assert read_window(info, Window(0, 0, 40, 40), (1,), cache=cache)[0].max() == 10
    tiled(tmp_path / "new.tif", first + 5)
    os.replace(tmp_path / "new.tif", path)
    assert read_window(info, Window(0, 0, 40, 40), (1,), cache=cache)[0].max() == 15


def test_strips_read_directly(tmp_path: Path) -> None:
    img = np.arange(3 * 300 * 40, dtype=np.uint16).reshape(3, 300, 40)
    with rasterio.open(tmp_path / "strips.tif", "w", driver="GTiff", width=40, height=300,
                       count=3, dtype="uint16", transform=TRANSFORM, crs=CRS_UTM,
                       blockysize=1) as dst:
        dst.write(img)
    info = open_info(tmp_path / "strips.tif")
    cache = BlockCache()
    data, _ = read_window(info, Window(0, 0, 300, 40), (1, 2, 3), cache=cache)
    assert np.array_equal(data, img.astype(np.float32))
    assert cache.misses == 0  # 300 one-row strips: more block reads than a direct read saves


def test_a_remote_image_is_cached_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A URL (a COG over HTTP on 127.0.0.1) is served from the cache as a local file is: each
    block decoded once for overlapping windows, the same pixels as reads without it."""
    from tests.range_server import RangeServer

    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)  # 127.0.0.1 only: never through a proxy
    img = np.random.default_rng(5).integers(1, 4000, (3, H, W)).astype(np.uint16)
    tiled(tmp_path / "remote.tif", img)
    server = RangeServer(tmp_path).start()
    try:
        info = open_info(server.url("remote.tif"))
        windows = [Window(r, c, 40, 40) for r in (-8, 32) for c in (-8, 24, 56)]
        cache = BlockCache()
        cache.expect(info.path, [(w.row_off, w.col_off, w.height, w.width) for w in windows])
        for win in windows:
            direct, ok = read_window(info, win, (1, 2, 3))
            cached, ok2 = read_window(info, win, (1, 2, 3), cache=cache)
            assert np.array_equal(direct, cached) and np.array_equal(ok, ok2)
        assert cache.misses == 5 * 6  # every block of the image, each decoded once
        assert cache.bytes == 0  # announced: each went after its last read
    finally:
        server.shutdown()
        server.server_close()


def test_bands_of_different_types_read_directly(tmp_path: Path) -> None:
    """A VRT may mix band data types: read band by band (rasterio reads one type per call),
    never through the cache (a block holds one type)."""
    a = tiled(tmp_path / "a.tif", np.full((1, 40, 40), 200, np.uint8))
    b = tiled(tmp_path / "b.tif", np.full((1, 40, 40), 3000, np.uint16))
    bands = "".join(
        f'<VRTRasterBand dataType="{dt}" band="{i}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="1">{src.name}</SourceFilename><SourceBand>1</SourceBand>'
        f'</SimpleSource></VRTRasterBand>'
        for i, (dt, src) in enumerate((("Byte", a), ("UInt16", b)), start=1))
    vrt = tmp_path / "mixed.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="40" rasterYSize="40"><SRS>{CRS_UTM}</SRS>'
                   f'<GeoTransform>500000, 0.5, 0, 5100000, 0, -0.5</GeoTransform>{bands}'
                   '</VRTDataset>')
    info = open_info(vrt)
    cache = BlockCache()
    data, _ = read_window(info, Window(0, 0, 40, 40), (1, 2), cache=cache)
    assert cache.misses == 0
    assert data[0].max() == 200 and data[1].max() == 3000


def test_announced_reads_keep_the_shared_band_and_drop_each_block_after_its_last_read(
        tmp_path: Path) -> None:
    """Two chunk rows of 8 chunks (32 px, halo 8) over 16 px tiles: under a budget of 24
    blocks, least-recently-used eviction drops the tile rows both chunk rows share before the
    second row needs them; with the reads announced the budget rises to what they hold at once
    (the shared band: 2 tile rows of 16 blocks, plus a window's), each block is decoded once,
    and dropped after the last window that covers it (nothing is left at the end)."""
    rng = np.random.default_rng(5)
    info = open_info(tiled(tmp_path / "wide.tif", rng.integers(0, 255, (3, 64, 256), np.uint8)))
    windows = [Window(r - 8, c - 8, 48, 48) for r in range(0, 64, 32) for c in range(0, 256, 32)]
    inside = info.geobox.window
    budget = 24 * B * B * 3
    counts = {}
    for announce in (False, True):
        cache = BlockCache(max_bytes=budget)
        if announce:
            cache.expect(info.path, [(w.row_off, w.col_off, w.height, w.width)
                                     for w in (win.intersect(inside) for win in windows)])
        for win in windows:
            got = read_window(info, win, (1, 2, 3), cache=cache)
            want = read_window(info, win, (1, 2, 3))
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
            assert cache.bytes <= (budget if not announce else 36 * B * B * 3)
        counts[announce] = cache.misses
        if announce:
            assert cache.bytes == 0  # every block went after its last announced read
            assert cache.peak_bytes > budget  # the schedule raised the budget
            again = read_window(info, windows[3], (1, 2, 3), cache=cache)  # a retry: not
            assert np.array_equal(again[0], read_window(info, windows[3], (1, 2, 3))[0])
    assert counts[True] == 4 * 16  # every tile once
    assert counts[False] > counts[True]  # LRU decoded the shared band again


def test_a_schedule_too_large_to_keep_falls_back_to_lru(rasters: dict[str, RasterInfo],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A region of more windows or block reads than the limits gets no schedule (its counters
    grow with the region: 61 GB for a 2,000,000² image), and reads the same pixels."""
    import geoseg.blockcache as bc

    info = rasters["plain"]
    windows = [Window(r, c, 20, 20) for r in range(0, H, 10) for c in range(0, W, 10)]
    announce = [(w.row_off, w.col_off, w.height, w.width) for w in windows]
    for limit, value in (("MAX_SCHEDULED_WINDOWS", len(windows) - 1),
                         ("MAX_SCHEDULED_READS", len(windows))):
        with monkeypatch.context() as mp:
            mp.setattr(bc, limit, value)
            cache = BlockCache()
            consumed: list[tuple[int, int, int, int]] = []

            def counted(seen: list[tuple[int, int, int, int]]
                        ) -> Iterator[tuple[int, int, int, int]]:
                for w in announce:
                    seen.append(w)
                    yield w

            cache.expect(info.path, counted(consumed))
            if limit == "MAX_SCHEDULED_WINDOWS":
                assert len(consumed) == value + 1  # the rest is never generated
            for win in windows:
                got = read_window(info, win, (1, 2, 3), cache=cache)
                want = read_window(info, win, (1, 2, 3))
                assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
            assert not cache._uses and not cache._expected  # no per-block counters kept
            assert cache.hits > 0  # still a cache (LRU)
