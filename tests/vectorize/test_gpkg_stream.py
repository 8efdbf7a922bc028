"""GeoPackage layers written as one Arrow stream each (geoseg.gpkg_stream), read back by GDAL
(pyogrio), geopandas and SQLite."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import shapely
from pyproj import CRS
from shapely.geometry import LineString, Polygon, box

from geoseg.gpkg_stream import LayerStream, copy_layer

CRS_WKT = CRS.from_epsg(32633).to_wkt()


def _boxes(n: int, start: int = 0) -> np.ndarray:
    return np.array([box(500000 + i, 5100000, 500001 + i, 5100001) for i in range(start,
                                                                                    start + n)],
                    dtype=object)


def _rtree_rows(path: Path, layer: str) -> int:
    with sqlite3.connect(path) as db:
        ext = db.execute("SELECT extension_name FROM gpkg_extensions WHERE table_name = ?",
                         (layer,)).fetchall()
        assert ("gpkg_rtree_index",) in ext
        rows = int(db.execute(f'SELECT count(*) FROM "rtree_{layer}_geom"').fetchone()[0])
    db.close()
    return rows


def test_batches_of_columns_and_records_become_one_layer_in_order(tmp_path: Path) -> None:
    path = tmp_path / "f.gpkg"
    stream = LayerStream(path, "landcover", CRS_WKT)
    stream.put({"geometry": _boxes(3), "class_id": np.array([1, 2, 3], dtype=np.uint8),
                "pixels": np.array([4, 5, 6]), "confidence": np.full(3, None, dtype=object),
                "id": np.array(["a", "b", "c"], dtype=object), "model_id": "m@1"}, 3)
    # records: the same fields, given as lists, in another order; a missing one is null
    stream.put({"model_id": ["m@1", "m@1"], "geometry": list(_boxes(2, start=3)),
                "class_id": [4, 5], "pixels": [7, 8], "confidence": [0.5, None],
                "id": ["d", None]}, 2)
    stream.put({"geometry": _boxes(0)}, 0)  # nothing to write: no batch
    stream.close()
    assert stream.rows == 5
    info = pyogrio.read_info(path, layer="landcover")
    assert info["geometry_type"] == "Polygon" and info["geometry_name"] == "geom"
    assert dict(zip(info["fields"], info["dtypes"], strict=True)) == {
        "class_id": "int64", "pixels": "int64", "confidence": "float64", "id": "object",
        "model_id": "object"}
    assert CRS.from_user_input(info["crs"]) == CRS.from_epsg(32633)
    df = pyogrio.read_dataframe(path, layer="landcover", fid_as_index=True)
    assert df.index.tolist() == [1, 2, 3, 4, 5]
    assert df.class_id.tolist() == [1, 2, 3, 4, 5] and df.pixels.tolist() == [4, 5, 6, 7, 8]
    assert df.id.tolist()[:4] == ["a", "b", "c", "d"] and df.id.isna().tolist()[4]
    assert df.confidence.isna().tolist() == [True, True, True, False, True]
    assert df.confidence[4] == 0.5 and (df.model_id == "m@1").all()
    assert shapely.equals_exact(df.geometry.values, _boxes(5), 0).all()
    assert _rtree_rows(path, "landcover") == 5
    assert info["capabilities"]["fast_spatial_filter"]
    hit = pyogrio.read_dataframe(path, layer="landcover", bbox=(500003.2, 5100000.2,
                                                                 500003.4, 5100000.4))
    assert hit.id.tolist() == ["d"]


def test_a_column_the_layer_lacks_is_refused_and_the_stream_still_ends(tmp_path: Path) -> None:
    stream = LayerStream(tmp_path / "f.gpkg", "buildings", CRS_WKT)
    stream.put({"geometry": _boxes(1), "class_id": [1]}, 1)
    with pytest.raises(ValueError, match="'extra' is not a field"):
        stream.put({"geometry": _boxes(1), "class_id": [1], "extra": ["x"]}, 1)
    with pytest.raises(ValueError, match="polygons only"):
        stream.put({"geometry": [LineString([(0, 0), (1, 1)])], "class_id": [1]}, 1)
    with pytest.raises(ValueError, match="2 values for 1 features"):
        stream.put({"geometry": _boxes(1), "class_id": [1, 2]}, 1)
    stream.close()
    assert pyogrio.read_info(tmp_path / "f.gpkg", layer="buildings")["features"] == 1


def test_a_writer_error_reaches_the_producer(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the GeoPackage's folder should be")
    stream = LayerStream(blocker / "f.gpkg", "landcover", CRS_WKT)
    with pytest.raises(Exception, match=r"f\.gpkg"):
        for start in range(0, 50, 10):  # the error comes at a later put or at close
            stream.put({"geometry": _boxes(10, start), "class_id": list(range(10))}, 10)
        stream.close()
    assert blocker.read_text().startswith("a file where")


def test_copy_layer_adds_a_layer_with_its_rows_fields_and_index(tmp_path: Path) -> None:
    main, other = tmp_path / "main.gpkg", tmp_path / "other.gpkg"
    for path, layer, n in ((main, "landcover", 4), (other, "buildings", 3)):
        stream = LayerStream(path, layer, CRS_WKT)
        stream.put({"geometry": _boxes(n), "class_id": list(range(n)),
                    "chunk_id": [f"0_{i}" for i in range(n)],
                    "area_m2": np.ones(n)}, n)
        stream.close()
    copy_layer(other, main, "buildings")
    assert dict(pyogrio.list_layers(main)) == {"landcover": "Polygon", "buildings": "Polygon"}
    info = pyogrio.read_info(main, layer="buildings")
    assert info["geometry_name"] == "geom"
    assert list(info["fields"]) == ["class_id", "chunk_id", "area_m2"]
    assert CRS.from_user_input(info["crs"]) == CRS.from_epsg(32633)
    got = pyogrio.read_dataframe(main, layer="buildings")
    assert got.chunk_id.tolist() == ["0_0", "0_1", "0_2"]
    assert shapely.equals_exact(got.geometry.values, _boxes(3), 0).all()
    assert _rtree_rows(main, "buildings") == 3 and _rtree_rows(main, "landcover") == 4


def test_an_empty_polygon_is_written_as_one(tmp_path: Path) -> None:
    stream = LayerStream(tmp_path / "f.gpkg", "landcover", CRS_WKT)
    stream.put({"geometry": np.array([Polygon(), box(0, 0, 1, 1)], dtype=object),
                "class_id": [1, 2]}, 2)
    stream.close()
    df = pyogrio.read_dataframe(tmp_path / "f.gpkg", layer="landcover")
    assert df.geometry.is_empty.tolist() == [True, False]


def test_disk_full_while_streaming_is_one_line(tmp_path: Path) -> None:
    from geoseg.errors import StorageError
    from geoseg.outdir import storage_errors

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        path = disk / "f.gpkg"
        stream = LayerStream(path, "landcover", CRS_WKT)
        with pytest.raises(StorageError, match=r"^disk full writing .*f\.gpkg: free some space"), \
                storage_errors(path):
            for k in range(20):
                stream.put({"geometry": _boxes(5000, 5000 * k),
                            "id": [f"region-{i}" for i in range(5000)]}, 5000)
            stream.close()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


_CHILD = """
import sys
import numpy as np
from pathlib import Path
from pyproj import CRS
from shapely.geometry import box
from geoseg.gpkg_stream import LayerStream
stream = LayerStream(Path(sys.argv[1]), "landcover", CRS.from_epsg(32633).to_wkt())
for k in range(40):
    geoms = np.array([box(i, k, i + 1, k + 1) for i in range(2000)], dtype=object)
    stream.put({"geometry": geoms, "class_id": np.ones(2000, np.int64)}, 2000)
if sys.argv[2] == "abort":
    stream.close(abort=True)
"""


@pytest.mark.parametrize("ending", ["abort", "exit"])
def test_a_stopped_writer_leaves_no_gdal_file_behind(tmp_path: Path, ending: str) -> None:
    """GDAL builds the spatial index in ``<file>.tmp_rtree_<layer>.db`` while a layer is
    written and removes it when the file is closed. A writer stopped with ``abort`` (a
    stopping job) closes it; so does a process that exits with a stream still open, which
    would otherwise abort at exit ("Fatal Python error") and leave that file behind."""
    import sys

    from geoseg.gpkg_stream import gdal_temporary_files

    path = tmp_path / ".partial-features.gpkg"
    res = subprocess.run([sys.executable, "-c", _CHILD, str(path), ending],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "Fatal" not in res.stderr, res.stderr[-2000:]
    assert not [p for p in gdal_temporary_files(path) if p.exists()]
    assert pyogrio.read_info(path, layer="landcover")["features"] > 0


def test_a_new_sink_removes_the_leftovers_of_a_killed_job_only(tmp_path: Path) -> None:
    """A job killed (SIGKILL) while writing leaves its temporary GeoPackages and GDAL's index
    files beside them; the next sink in that folder removes those, and nothing else."""
    from geoseg.gpkg_stream import gdal_temporary_files
    from geoseg.grid import ChunkGrid
    from geoseg.vector_outputs import GeoPackageSink

    ours = [tmp_path / ".partial-features.gpkg", tmp_path / ".partial-buildings-features.gpkg"]
    ours += [g for p in ours for g in gdal_temporary_files(p)]
    theirs = [tmp_path / "features.gpkg.tmp_rtree_landcover.db",
              tmp_path / ".partial-features.gpkg.tmp_rtree_roads.db", tmp_path / "notes.txt"]
    for p in (*ours, *theirs):
        p.write_bytes(b"x")

    class _Plan:
        chunks = ChunkGrid((8, 8), 4)

    GeoPackageSink(tmp_path / "features.gpkg", _Plan(), {})  # type: ignore[arg-type]
    assert not [p for p in ours if p.exists()]
    assert all(p.read_bytes() == b"x" for p in theirs)


@pytest.mark.parametrize("configured", [None, "1000"])
def test_the_index_memory_of_a_stream_is_bounded_unless_the_user_says(
        tmp_path: Path, configured: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """GDAL's default RAM for building a layer's index grows with the host's RAM (~80 bytes a
    feature up to it); a stream bounds it, unless OGR_GPKG_MAX_RAM_USAGE_RTREE is set. GDAL
    reads the value in bytes ("128MB" read as 128 bytes sent every layer to the slow path):
    its own log says whether the index left RAM, here for 4,000 features (~320 kB of index):
    they fit the stream's bound, not a user's 1000 bytes."""
    import sys

    from geoseg.gpkg_stream import INDEX_RAM

    log = tmp_path / "cpl.log"
    child = _CHILD.replace("if sys.argv[2]", "stream.close()\nimport pyogrio\nprint("
                           "pyogrio.get_gdal_config_option('OGR_GPKG_MAX_RAM_USAGE_RTREE'))\n"
                           "if sys.argv[2]").replace("range(40)", "range(2)")
    if configured is None:
        monkeypatch.delenv("OGR_GPKG_MAX_RAM_USAGE_RTREE", raising=False)
    else:
        monkeypatch.setenv("OGR_GPKG_MAX_RAM_USAGE_RTREE", configured)
    monkeypatch.setenv("CPL_DEBUG", "ON")
    monkeypatch.setenv("CPL_LOG", str(log))
    res = subprocess.run([sys.executable, "-c", child, str(tmp_path / "f.gpkg"), "exit"],
                         capture_output=True, text=True, timeout=120, check=True)
    assert res.stdout.split() == [configured or INDEX_RAM]
    assert INDEX_RAM.isdigit() and int(INDEX_RAM) == 128 * 2**20
    text = log.read_text()
    assert "rows inserted" in text  # GDAL's log is read: the check below can fail
    spilled = "Max RAM reached" in text or "Too large in-memory RTree" in text
    assert spilled == (configured is not None), text
