"""Write a two-date synthetic aerial scene with exact ground truth to a directory.

The vector plan is laid out once; the rasters are then rendered and written block by block, so
memory stays bounded by the plan plus one block whatever the scene size, and the output does not
depend on the block size. The same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import rasterio
import shapely
from numpy.typing import NDArray
from rasterio.crs import CRS as RioCRS
from rasterio.enums import ColorInterp
from rasterio.windows import Window as RioWindow

from geoseg.errors import CRSError, InputError, OutputExistsError
from geoseg.grid import ChunkGrid, normalize_crs
from geoseg.outdir import atomic_write_text, holder_alive, process_start, storage_errors
from geoseg.sample.city_plan import Plan, build_plan
from geoseg.sample.palette import CLASSES, LANDCOVER_NODATA
from geoseg.sample.render import render_block

log = logging.getLogger(__name__)
Counts = NDArray[np.int64]

DATES: tuple[str, str] = ("2019-06-01", "2024-06-01")
GENERATOR_VERSION = "1.0.0"
BANDS = ("red", "green", "blue", "nir")
TILE = 512


@dataclass(frozen=True)
class SceneFiles:
    """Paths of one generated scene (two dates of imagery and truth)."""

    root: Path
    image_t0: Path
    image_t1: Path
    landcover_t0: Path
    landcover_t1: Path
    instances_t0: Path
    instances_t1: Path
    buildings_t0: Path
    buildings_t1: Path
    changes: Path
    metadata: Path

    @classmethod
    def at(cls, root: Path) -> SceneFiles:
        r = Path(root)
        return cls(root=r, image_t0=r / "image_t0.tif", image_t1=r / "image_t1.tif",
                   landcover_t0=r / "landcover_t0.tif", landcover_t1=r / "landcover_t1.tif",
                   instances_t0=r / "instances_t0.tif", instances_t1=r / "instances_t1.tif",
                   buildings_t0=r / "buildings_t0.gpkg", buildings_t1=r / "buildings_t1.gpkg",
                   changes=r / "changes.gpkg", metadata=r / "scene.json")

    def named(self) -> dict[str, Path]:
        """Every file by its field name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "root"}

    def paths(self) -> list[Path]:
        return list(self.named().values())


def _shape(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, bool):
        raise InputError("size must be an int or (height, width), not a bool")
    if isinstance(size, int | np.integer):
        h = w = int(size)
    elif isinstance(size, tuple | list) and len(size) == 2 and all(
            isinstance(v, int | np.integer) and not isinstance(v, bool) for v in size):
        h, w = int(size[0]), int(size[1])
    else:
        raise InputError(f"size must be an int or (height, width) of ints, got {size!r}")
    if h < 64 or w < 64:
        raise InputError(f"scene size {h}x{w} is too small: give at least 64 px per side")
    return h, w


def _check(shape: tuple[int, int], seed: int, pixel_size: float, origin: tuple[float, float],
           nodata_collar: int, block: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"seed must be a non-negative int, got {seed!r}")
    if not (isinstance(pixel_size, int | float) and math.isfinite(pixel_size)
            and 0 < pixel_size <= 10):
        raise InputError(f"pixel_size must be in (0, 10] metres, got {pixel_size!r}")
    if len(origin) != 2 or not all(math.isfinite(float(v)) for v in origin):
        raise InputError(f"origin must be (x of left edge, y of top edge), got {origin!r}")
    if isinstance(block, bool) or not isinstance(block, int | np.integer) or block < 16:
        raise InputError(f"block must be an int >= 16 px, got {block!r}")
    if not isinstance(nodata_collar, int | np.integer) or nodata_collar < 0:
        raise InputError(f"nodata_collar must be a non-negative int, got {nodata_collar!r}")
    extra = max(1, nodata_collar // 4) if nodata_collar else 0
    if 2 * (nodata_collar + extra) + 64 > min(shape):
        raise InputError(f"nodata_collar={nodata_collar} leaves too little scene inside "
                         f"{shape[0]}x{shape[1]} px: use a smaller collar or a larger size")


def _profile(plan: Plan, crs: RioCRS, count: int, dtype: str, nodata: float | None) -> dict[
        str, Any]:
    h, w = plan.shape
    prof: dict[str, Any] = {
        "driver": "GTiff", "width": w, "height": h, "count": count, "dtype": dtype, "crs": crs,
        "transform": plan.transform, "tiled": True, "blockxsize": TILE, "blockysize": TILE,
        "compress": "deflate", "predictor": 2, "nodata": nodata}
    if count == 4:
        prof["photometric"] = "RGB"
    return prof


def _cache_bytes(width: int, block: int) -> int:
    """GDAL block cache for writing: blocks aligned to the 512 px tiles complete their tiles at
    once; other block sizes need a row of tiles of all six files kept until completed."""
    if block % TILE == 0:
        return 128 << 20
    rows = (math.ceil(block / TILE) + 1) * TILE
    return max(128 << 20, rows * width * 2 * (4 + 1 + 4))


def _tags(date: str) -> dict[str, str]:
    return {"ACQUISITION_DATE": date, "TIFFTAG_DATETIME": date.replace("-", ":") + " 00:00:00"}


def _write_rasters(plan: Plan, files: SceneFiles, block: int) -> list[Counts]:
    crs = RioCRS.from_wkt(plan.crs.to_wkt())
    nodata_img = 0 if plan.collar > 0 else None
    colormap = {cid: (*(int(c[i:i + 2], 16) for i in (1, 3, 5)), 255) for cid, _, c in CLASSES}
    paths = [(files.image_t0, files.landcover_t0, files.instances_t0),
             (files.image_t1, files.landcover_t1, files.instances_t1)]
    counts = [np.zeros(256, np.int64), np.zeros(256, np.int64)]
    dsts = []
    with ExitStack() as stack:
        for d, (img, lc, ins) in enumerate(paths):
            di = stack.enter_context(
                rasterio.open(img, "w", **_profile(plan, crs, 4, "uint8", nodata_img)))
            di.descriptions = BANDS
            di.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue,
                              ColorInterp.undefined]
            dl = stack.enter_context(
                rasterio.open(lc, "w", **_profile(plan, crs, 1, "uint8", LANDCOVER_NODATA)))
            dl.write_colormap(1, colormap)
            dl.descriptions = ("land cover class id",)
            dn = stack.enter_context(
                rasterio.open(ins, "w", **_profile(plan, crs, 1, "uint32", None)))
            dn.descriptions = ("building instance id",)
            for ds in (di, dl, dn):
                ds.update_tags(**_tags(DATES[d]))
            dsts.append((di, dl, dn))
        grid = ChunkGrid(plan.shape, block)
        t0 = time.perf_counter()
        for k, chunk in enumerate(grid):
            win = chunk.window
            rw = RioWindow(win.col_off, win.row_off, win.width, win.height)
            for d, out in enumerate(render_block(plan, win)):
                di, dl, dn = dsts[d]
                di.write(out.image, window=rw)
                dl.write(out.landcover, 1, window=rw)
                dn.write(out.instances, 1, window=rw)
                counts[d] += np.bincount(out.landcover.ravel(), minlength=256)
            log.debug("block %d/%d done (%.1f s)", k + 1, len(grid), time.perf_counter() - t0)
    return counts


def _write_vectors(plan: Plan, files: SceneFiles) -> None:
    crs = plan.crs
    # GeoPackages record a "last change" time; pin it so that files are byte-identical per seed
    old = pyogrio.get_gdal_config_option("OGR_CURRENT_DATE")
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": DATES[1] + "T00:00:00.000Z"})
    try:
        for d, path in enumerate((files.buildings_t0, files.buildings_t1)):
            layer = plan.layers[d]
            df = gpd.GeoDataFrame({
                "id": layer.ids.astype(np.int64),
                "area_m2": np.round(shapely.area(layer.geoms).astype(np.float64), 3),
                "kind": pd.Series(layer.kinds, dtype=object)},
                geometry=gpd.GeoSeries(layer.geoms, crs=crs), crs=crs)
            pyogrio.write_dataframe(df, path, layer="buildings", driver="GPKG",
                                    geometry_type="Polygon")
        ch = plan.changes
        df = gpd.GeoDataFrame({
            "change": pd.Series([c[0] for c in ch], dtype=object),
            "id_t0": pd.array([c[1] for c in ch], dtype="Int64"),
            "id_t1": pd.array([c[2] for c in ch], dtype="Int64"),
            "area_m2": np.round(np.array([c[3].area for c in ch], np.float64), 3)},
            geometry=gpd.GeoSeries([c[3] for c in ch], crs=crs), crs=crs)
        pyogrio.write_dataframe(df, files.changes, layer="building_changes", driver="GPKG",
                                geometry_type="Polygon")
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": old})


def _partial(path: Path) -> Path:
    return path.with_name(f".partial-{path.name}")


def _is_generated(meta: Path) -> bool:
    """Whether ``meta`` is a scene.json that geoseg's generator wrote (not a link, not foreign)."""
    if meta.is_symlink() or not meta.is_file():
        return False
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("generator") == "geoseg.sample"


def is_scene(root: Path) -> bool:
    """Whether ``root`` holds a finished scene geoseg generated (its ``scene.json`` says so)."""
    return _is_generated(SceneFiles.at(root).metadata)


def _is_unfinished(root: Path) -> bool:
    """Whether ``root`` holds a scene geoseg was renaming into place when it was stopped: its
    pending ``.partial-scene.json`` is there (the files are geoseg's, but not all of them)."""
    return _is_generated(_partial(SceneFiles.at(root).metadata))


def _check_folder(root: Path) -> None:
    """Refuse, in one line, a scene folder that is a file, a broken link or under a file."""
    if root.is_symlink() and not root.exists():
        raise InputError(f"{root} is a broken symbolic link: choose a directory for the scene")
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} is a file: choose a directory for the scene")
    for up in root.parents:
        if up.exists():
            if not up.is_dir():
                raise InputError(f"{up} is a file, so {root} cannot be a directory: choose "
                                 "another directory for the scene")
            break


def _prepare(root: Path, overwrite: bool) -> SceneFiles:
    """The scene's files in ``root``, created. Refuses a file, a scene unless ``overwrite``, and,
    ``overwrite`` or not, any of its names in a folder that is not a geoseg scene (its
    ``scene.json``, or the pending one of an interrupted scene, is geoseg's mark): geoseg only
    ever replaces files it wrote. Other names in the folder are left alone."""
    files = SceneFiles.at(root)
    _check_folder(root)
    taken = [p for p in files.paths() if p.exists() or p.is_symlink()]
    unfinished = _is_unfinished(root)
    mark = _partial(files.metadata)
    if not unfinished and (mark.exists() or mark.is_symlink()):
        raise OutputExistsError(
            f"{root} holds {mark.name}, which geoseg did not write (it is the name of the mark "
            "of a scene being written): move it or choose another directory (geoseg never "
            "replaces files it did not write)")
    if taken and not (is_scene(root) or unfinished):
        raise OutputExistsError(
            f"{root} holds {taken[0].name}, which geoseg did not write (no scene.json of a "
            "generated scene): choose another directory (geoseg never replaces files it did "
            "not write)")
    if (taken or unfinished) and not overwrite:
        what = "a scene" if is_scene(root) else "an unfinished scene (stopped while written)"
        raise OutputExistsError(f"{root} already holds {what}: pass --overwrite "
                                "(overwrite=True in Python) or choose another directory")
    with storage_errors(root):
        root.mkdir(parents=True, exist_ok=True)
    return files


def _metadata(plan: Plan, files: SceneFiles, counts: list[Counts]) -> dict[str, Any]:
    h, w = plan.shape
    t = plan.transform
    names = {cid: name for cid, name, _ in CLASSES}
    pixels = {}
    for d, c in enumerate(counts):
        per = {names[i]: int(c[i]) for i in sorted(names)}
        per["nodata"] = int(c[LANDCOVER_NODATA])
        pixels[DATES[d]] = per
    kinds = ("new", "demolished", "extended")
    return {
        "generator": "geoseg.sample", "version": GENERATOR_VERSION, "seed": plan.seed,
        "size": [h, w], "pixel_size": plan.pixel_size, "crs": plan.crs.to_wkt(),
        "epsg": plan.crs.to_epsg(), "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "bounds": [t.c, t.f + h * t.e, t.c + w * t.a, t.f], "nodata_collar": plan.collar,
        "dates": list(DATES),
        "classes": [{"id": cid, "name": name, "colour": col} for cid, name, col in CLASSES],
        "landcover_nodata": LANDCOVER_NODATA,
        "image_nodata": 0 if plan.collar > 0 else None,
        "bands": list(BANDS),
        "files": {k: p.name for k, p in files.named().items()},
        "counts": {
            "buildings": {DATES[d]: len(plan.layers[d].ids) for d in (0, 1)},
            "changes": {k: sum(1 for c in plan.changes if c[0] == k) for k in kinds},
            "pixels": pixels},
        "illumination": {DATES[d]: {"sun_azimuth": round(i.azimuth, 3),
                                    "sun_elevation": round(i.elevation, 3)}
                         for d, i in enumerate(plan.illum)},
    }


WORK_PREFIX = ".partial-scene-"  # a run's own folder in the scene folder, renamed from
OWNER = ".owner.json"  # in it: the host, PID and start of the process writing it


def _remove_stale_work(root: Path) -> None:
    """Remove the work folders of earlier runs that were killed (SIGKILL, power loss): those
    whose owner file names a process of this host that is gone. A folder without one, or of
    a process alive or on another host, is left alone."""
    for work in root.glob(f"{WORK_PREFIX}*"):
        try:
            owner = json.loads((work / OWNER).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(owner, dict) and not work.is_symlink() and not holder_alive(owner):
            log.info("removing %s, left by a stopped geoseg sample (pid %s)", work,
                     owner.get("pid"))
            shutil.rmtree(work, ignore_errors=True)


def generate_scene(out_dir: str | Path, size: int | tuple[int, int] = 4096, seed: int = 0, *,
                   pixel_size: float = 0.5, crs: str = "EPSG:32633",
                   origin: tuple[float, float] = (500000.0, 5100000.0), nodata_collar: int = 0,
                   block: int = 1024, overwrite: bool = False) -> SceneFiles:
    """Generate a two-date synthetic aerial scene with exact land-cover and building truth.

    ``size`` is pixels per side or ``(height, width)``; ``origin`` is (x of the left edge,
    y of the top edge) in ``crs``, which must be projected in metres. Same arguments give
    byte-identical files; ``block`` only trades memory for speed.
    """
    shape = _shape(size)
    _check(shape, seed, pixel_size, origin, nodata_collar, block)
    crs_obj = normalize_crs(crs)
    unit = crs_obj.axis_info[0].unit_name if crs_obj.axis_info else ""
    if not crs_obj.is_projected or unit not in ("metre", "meter"):
        raise CRSError(f"the scene needs a projected CRS in metres (e.g. 'EPSG:32633'), got "
                       f"{crs_obj.name!r}")
    files = _prepare(Path(out_dir), overwrite)
    t0 = time.perf_counter()
    plan = build_plan(shape, float(pixel_size), (float(origin[0]), float(origin[1])), crs_obj,
                      int(seed), int(nodata_collar))
    log.info("scene plan laid out in %.1f s: %d/%d buildings", time.perf_counter() - t0,
             len(plan.layers[0].ids), len(plan.layers[1].ids))
    # written in a new hidden folder of this run's own (no name in the scene folder is taken,
    # so no file of the user's is written over or removed) and renamed into place, scene.json
    # (the mark of a finished scene) last: an interrupted scene never leaves files that look
    # finished. Its pending .partial-scene.json is written before the first rename and kept if
    # a rename is interrupted (or kept from an earlier such run): it marks the files as
    # geoseg's, so that --overwrite may replace them.
    with storage_errors(files.root):
        _remove_stale_work(files.root)
        work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=files.root))
        (work / OWNER).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                              "started": process_start(os.getpid())}))
    partial = SceneFiles(work, **{k: work / p.name for k, p in files.named().items()
                                  if k != "metadata"}, metadata=_partial(files.metadata))
    keep_mark = _is_unfinished(files.root)
    try:
        with storage_errors(files.root), \
                rasterio.Env(GDAL_CACHEMAX=_cache_bytes(shape[1], int(block))):
            counts = _write_rasters(plan, partial, int(block))
            _write_vectors(plan, partial)
            atomic_write_text(partial.metadata,
                              json.dumps(_metadata(plan, files, counts), indent=2) + "\n")
            keep_mark = True
            files.metadata.unlink(missing_ok=True)  # an earlier scene's: no longer true
            for name, path in files.named().items():
                if name != "metadata":
                    os.replace(getattr(partial, name), path)
            os.replace(partial.metadata, files.metadata)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # this run's folder: nothing in it is the user's
        if not keep_mark:
            partial.metadata.unlink(missing_ok=True)
    log.info("scene %dx%d seed %d written to %s in %.1f s", shape[0], shape[1], seed,
             files.root, time.perf_counter() - t0)
    return files
