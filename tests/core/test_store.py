"""The store opens with the exact grid in real clients: GDAL (rasterio), xarray + rioxarray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyproj import CRS

from geoseg.bundle import ClassSpec
from geoseg.grid import ChunkGrid, GeoBox, Window
from geoseg.store import (
    FILL,
    LayerSpec,
    init_store,
    mark_complete,
    read_layer,
    store_attrs,
    write_chunk,
)

CLASSES = (ClassSpec(id=0, name="bare", color="#c8b48c"),
           ClassSpec(id=1, name="water", color="#3182bd"))


def _store(tmp_path: Path, crs: CRS) -> tuple[str, GeoBox, ChunkGrid]:
    t = Affine(0.5, 0, 500010.0, 0, -0.5, 5100020.0)
    grid = GeoBox((70, 90), t, crs)
    path = str(tmp_path / "p.zarr")
    init_store(path, grid, 32, [LayerSpec("landcover", CLASSES, "m@1")], {"k": "v"})
    cg = ChunkGrid(grid.shape, 32)
    for ch in cg:
        block = np.full(ch.window.shape, (ch.index[0] + ch.index[1]) % 2, np.uint8)
        write_chunk(path, ch, {"landcover": block,
                               "landcover_confidence": np.full(ch.window.shape, 200, np.uint8)}, 32)
    return path, grid, cg


def test_gdal_reads_exact_grid(tmp_path: Path) -> None:
    crs = CRS.from_epsg(32633)
    path, grid, _ = _store(tmp_path, crs)
    with rasterio.open(f'ZARR:"{path}":/landcover') as src:
        assert src.shape == grid.shape
        assert src.transform.almost_equals(grid.transform, precision=1e-9)
        assert CRS.from_wkt(src.crs.to_wkt()) == crs
        assert src.nodata == FILL
        arr = src.read(1)
    assert arr[0, 0] == 0 and arr[0, 40] == 1 and arr[40, 40] == 0


def test_rioxarray_reads_exact_grid(tmp_path: Path) -> None:
    import rioxarray  # noqa: F401
    import xarray as xr

    crs = CRS.from_epsg(2056)  # Swiss LV95: not a UTM zone
    path, grid, _ = _store(tmp_path, crs)
    ds = xr.open_zarr(path, decode_coords="all", mask_and_scale=False)
    da = ds["landcover"]
    assert da.shape == grid.shape and da.dtype == np.uint8
    assert CRS.from_wkt(da.rio.crs.to_wkt()) == crs
    assert da.rio.transform().almost_equals(grid.transform, precision=1e-9)
    assert int(da.isel(y=0, x=40)) == 1


def test_a_lat_lon_store_has_cf_longitude_and_latitude(tmp_path: Path) -> None:
    """CF names the coordinates of a geographic grid longitude / latitude, in degrees east /
    north (projection_x_coordinate in "degree" is not CF); rioxarray and GDAL still see the
    exact grid."""
    import rioxarray  # noqa: F401
    import xarray as xr

    t = Affine(1e-5, 0, 15.0, 0, -1e-5, 46.0)
    grid = GeoBox((40, 50), t, CRS.from_epsg(4326))
    path = str(tmp_path / "ll.zarr")
    init_store(path, grid, 32, [LayerSpec("landcover", CLASSES, "m@1")], {})
    ds = xr.open_zarr(path, decode_coords="all", mask_and_scale=False)
    assert (ds.x.attrs["standard_name"], ds.x.attrs["units"]) == ("longitude", "degrees_east")
    assert (ds.y.attrs["standard_name"], ds.y.attrs["units"]) == ("latitude", "degrees_north")
    assert ds["landcover"].rio.transform().almost_equals(t, precision=1e-12)
    with rasterio.open(f'ZARR:"{path}":/landcover') as src:
        assert src.transform.almost_equals(t, precision=1e-12) and src.crs.to_epsg() == 4326


def test_incomplete_until_marked(tmp_path: Path) -> None:
    path, _, _ = _store(tmp_path, CRS.from_epsg(32633))
    assert store_attrs(path)["geoseg_complete"] is False
    mark_complete(path, {"x": 1})
    assert store_attrs(path)["geoseg_complete"] is True
    # consolidated metadata reflects the final attributes
    assert zarr.open_group(path, mode="r").attrs["geoseg_complete"] is True


def test_misaligned_write_refused(tmp_path: Path) -> None:
    import pytest

    from geoseg.errors import InputError
    from geoseg.grid import Chunk, Window

    path, _, _ = _store(tmp_path, CRS.from_epsg(32633))
    with pytest.raises(InputError, match="not aligned"):
        write_chunk(path, Chunk((0, 0), Window(5, 0, 10, 10)),
                    {"landcover": np.zeros((10, 10), np.uint8)}, 32)


def test_a_node_without_the_store_writes_nothing_and_says_why(tmp_path: Path) -> None:
    """A Ray task on a node that does not mount the driver's --out: no chunk file is made on
    that node's own disk (it would look written and be lost), and the error names the cause."""
    from geoseg.errors import InputError

    path, _, cg = _store(tmp_path, CRS.from_epsg(32633))
    elsewhere = tmp_path / "not-mounted" / "p.zarr"
    chunk = next(iter(cg))
    block = np.ones(chunk.window.shape, np.uint8)
    with pytest.raises(InputError, match=r"not on .*'s disks: on a cluster --out must be"):
        write_chunk(str(elsewhere), chunk, {"landcover": block}, 32)
    with pytest.raises(InputError, match=r"not on .*'s disks"):
        read_layer(str(elsewhere), "landcover", chunk.window)
    assert not (tmp_path / "not-mounted").exists()
    with pytest.raises(InputError, match="roads is not an array in"):
        read_layer(path, "roads", chunk.window)


def _files(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*"))
            if f.is_file()}


def test_chunk_files_are_the_bytes_zarr_writes(tmp_path: Path) -> None:
    """write_chunk writes local chunk files itself (encoded in the calling thread, not on
    zarr's one event-loop thread): the same files zarr-python writes for the same blocks,
    edge chunks padded with the fill value, no file for a chunk of fill value only (zarr's
    write_empty_chunks=False), a chunk written again replaced, a uint16 layer too."""
    grid = GeoBox((70, 90), Affine(0.5, 0, 500010.0, 0, -0.5, 5100020.0),
                  CRS.from_epsg(32633))
    stores = {}
    for how in ("geoseg", "zarr"):
        rng = np.random.default_rng(4)  # the same blocks for both
        path = tmp_path / f"{how}.zarr"
        init_store(str(path), grid, 32, [LayerSpec("landcover", CLASSES, "m@1")], {},
                   sources=[{"id": "a"}])
        g = zarr.open_group(str(path), mode="r+", zarr_format=2, use_consolidated=False)
        for rnd in range(2):  # every chunk written twice: the second write replaces the first
            for ch in ChunkGrid(grid.shape, 32):
                k = ch.index[0] * 3 + ch.index[1] + rnd
                blocks = {"landcover": rng.integers(0, 2, ch.window.shape).astype(np.uint8),
                          "landcover_confidence": np.full(ch.window.shape, 7 * k % 256,
                                                          np.uint8),
                          "source": rng.integers(0, 3, ch.window.shape).astype(np.uint16)}
                if k % 4 == 1:  # no pixel: the fill value everywhere, so no chunk file
                    blocks["landcover"][:] = FILL
                    blocks["source"][:] = 0
                if how == "geoseg":
                    write_chunk(str(path), ch, blocks, 32)
                else:
                    rs, cs = ch.window.slices()
                    for name, block in blocks.items():
                        g[name][rs, cs] = block
        stores[how] = _files(path)
    assert stores["geoseg"].keys() == stores["zarr"].keys()
    assert "landcover/0.0" not in stores["geoseg"]  # written, then all fill: removed
    assert "landcover/2.1" in stores["geoseg"]      # an edge chunk (6 × 32 pixels)
    assert stores["geoseg"] == stores["zarr"]
    assert not [n for n in stores["geoseg"] if n.endswith(".partial")]


def test_a_failed_chunk_write_leaves_the_last_file_and_no_partial(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails before its rename (disk full) raises, removes its own temporary file
    and leaves the chunk file that was there: a half-written chunk never looks written."""
    import errno

    import geoseg.store as store

    path, _, cg = _store(tmp_path, CRS.from_epsg(32633))
    chunk = cg.get(0, 0)
    before = (tmp_path / "p.zarr" / "landcover" / "0.0").read_bytes()

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "replace", full)
    block = np.full(chunk.window.shape, 1, np.uint8)
    with pytest.raises(OSError, match="No space"):
        write_chunk(path, chunk, {"landcover": block, "landcover_confidence": block}, 32)
    assert (tmp_path / "p.zarr" / "landcover" / "0.0").read_bytes() == before
    assert not [p for p in (tmp_path / "p.zarr").rglob("*") if p.name.endswith(".partial")]


def _zarr_read(path: str, name: str, window: Window) -> np.ndarray:
    g = zarr.open_group(path, mode="r", zarr_format=2, use_consolidated=False)
    rs, cs = window.slices()
    return np.asarray(g[name][rs, cs])


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 70×90 store of 32² chunks: random classes, a chunk of fill only (no file), edge
    chunks, a uint16 source layer, and an uncompressed array with "/" chunk folders that
    zarr wrote itself."""
    path = str(tmp_path_factory.mktemp("mixed") / "p.zarr")
    grid = GeoBox((70, 90), Affine(0.5, 0, 500010.0, 0, -0.5, 5100020.0), CRS.from_epsg(32633))
    init_store(path, grid, 32, [LayerSpec("landcover", CLASSES, "m@1")], {},
               sources=[{"id": "a"}])
    rng = np.random.default_rng(7)
    for ch in ChunkGrid(grid.shape, 32):
        cls = rng.integers(0, 2, ch.window.shape).astype(np.uint8)
        if ch.index == (1, 1):
            cls[:] = FILL
        write_chunk(path, ch, {"landcover": cls,
                               "landcover_confidence": rng.integers(0, 256, ch.window.shape)
                               .astype(np.uint8),
                               "source": rng.integers(0, 3, ch.window.shape).astype(np.uint16)},
                    32)
    g = zarr.open_group(path, mode="r+", zarr_format=2, use_consolidated=False)
    plain = g.create_array("plain", shape=grid.shape, chunks=(16, 24), dtype="uint8",
                           compressors=None, fill_value=9, chunk_key_encoding={
                               "name": "v2", "separator": "/"})
    plain[:40, :50] = rng.integers(0, 9, (40, 50)).astype(np.uint8)
    return path


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["landcover", "landcover_confidence", "source", "plain"]),
       r0=st.integers(0, 69), c0=st.integers(0, 89), h=st.integers(1, 70), w=st.integers(1, 90))
def test_local_reads_equal_zarr_reads(mixed_store: str, name: str, r0: int, c0: int, h: int,
                                      w: int) -> None:
    """read_layer decodes a local store's chunk files itself (no zarr event loop): for any
    window inside the grid, the values and dtype zarr reads, missing chunks as the fill
    value, across chunk edges, compressed or not, "." or "/" chunk keys."""
    from geoseg.store import _local_array

    window = Window(r0, c0, min(h, 70 - r0), min(w, 90 - c0))
    assert _local_array(Path(mixed_store), name) is not None  # the fast path is taken
    got = read_layer(mixed_store, name, window)
    want = _zarr_read(mixed_store, name, window)
    assert got.dtype == want.dtype and np.array_equal(got, want)
