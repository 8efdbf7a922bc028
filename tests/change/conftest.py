"""Tiny hand-made run directories (a store written chunk by chunk, a features.gpkg), no models."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import shapely
from affine import Affine
from pyproj import CRS
from shapely.geometry.base import BaseGeometry

from geoseg.bundle import ClassSpec
from geoseg.grid import ChunkGrid, GeoBox
from geoseg.store import LayerSpec, init_store, mark_complete, write_chunk

CLASSES = (ClassSpec(id=0, name="bare", color="#c8b48c"),
           ClassSpec(id=1, name="building", color="#d7301f"),
           ClassSpec(id=2, name="road", color="#636363"),
           ClassSpec(id=3, name="vegetation", color="#31a354"),
           ClassSpec(id=4, name="water", color="#3182bd"))
BD_CLASSES = (ClassSpec(id=0, name="background", color="#000000"),
              ClassSpec(id=1, name="building", color="#d7301f"))
SHAPE = (96, 128)
PIX = 0.5
ORIGIN = (500000.0, 5100000.0)
T_A = Affine(PIX, 0, ORIGIN[0], 0, -PIX, ORIGIN[1])
UTM = CRS.from_epsg(32633)


def shifted(cols: float, rows: float, pix: float = PIX) -> Affine:
    """A's transform with its origin moved by (cols, rows) of A's pixels (right / down)."""
    return Affine(pix, 0, ORIGIN[0] + cols * PIX, 0, -pix, ORIGIN[1] - rows * PIX)


def make_run(root: Path, cls: np.ndarray, conf: np.ndarray | int = 230, *,
             transform: Affine = T_A, crs: CRS = UTM, chunk: int = 32,
             date: str = "2019-06-01",
             buildings: Sequence[tuple[int, BaseGeometry]] | None = (),
             classes: tuple[ClassSpec, ...] = CLASSES, image: Path | None = None,
             building_model: bool = True) -> Path:
    """A ``geoseg run``-like output directory with the given land cover and footprints
    (``image``: the source image it records; default a name that does not exist;
    ``building_model``: False for a land-cover-only run, whose store has no buildings layer)."""
    root.mkdir(parents=True, exist_ok=True)
    conf_arr = (np.full(cls.shape, conf, np.uint8) if isinstance(conf, int)
                else conf.astype(np.uint8))
    grid = GeoBox(cls.shape, transform, crs)
    store = root / "predictions.zarr"
    layers = [LayerSpec("landcover", classes, "lc@1")]
    if building_model:
        layers.append(LayerSpec("buildings", BD_CLASSES, "bd@1"))
    init_store(store, grid, chunk, layers,
               {"source_image": str(image) if image else f"image_{date}.tif",
                "acquisition_date": date})
    for ch in ChunkGrid(grid.shape, chunk):
        rs, cs = ch.window.slices()
        write_chunk(store, ch, {"landcover": cls[rs, cs].astype(np.uint8),
                                "landcover_confidence": conf_arr[rs, cs]}, chunk)
    mark_complete(store, {})
    if buildings is not None:
        write_buildings(root / "features.gpkg", buildings, crs, date)
    return root


def write_buildings(path: Path, items: Sequence[tuple[int, BaseGeometry]], crs: CRS,
                    date: str) -> None:
    geoms = [g for _, g in items]
    df = gpd.GeoDataFrame({
        "id": np.array([i for i, _ in items], np.int64),
        "area_m2": np.array([g.area for g in geoms], np.float64),
        "perimeter_m": np.array([g.length for g in geoms], np.float64),
        "confidence": np.full(len(items), 0.9),
        "source_image": [f"image_{date}.tif"] * len(items),
        "acquisition_date": [date] * len(items),
        "model_id": ["bd@1"] * len(items),
        "chunk_id": ["0_0"] * len(items)},
        geometry=gpd.GeoSeries(geoms, crs=crs), crs=crs)
    pyogrio.write_dataframe(df, path, layer="buildings", driver="GPKG", geometry_type="Polygon")


def box_px(r0: float, c0: float, r1: float, c1: float) -> BaseGeometry:
    """A rectangle given in A's pixel coordinates (rows r0..r1, cols c0..c1)."""
    x0, y0 = T_A @ (c0, r0)
    x1, y1 = T_A @ (c1, r1)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def pattern(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Blocky classes 0..4 (8-px blocks): changes stay visible after decimation."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 5, size=(-(-shape[0] // 8), -(-shape[1] // 8)))
    return np.kron(blocks, np.ones((8, 8), np.int64))[:shape[0], :shape[1]].astype(np.uint8)
