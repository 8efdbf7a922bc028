"""Building footprints from a building / boundary class map, owned by exactly one chunk.

A *cluster* is a 4-connected component of building ∪ boundary pixels. Its reference pixel is its
first pixel in global raster order (min row, then min col); the chunk whose core window holds
that pixel owns the cluster and is the only one to emit it, so a building straddling chunk
borders comes out once, whole, as long as the halo is larger than the building (a cluster cut by
the context edge is still emitted, with a warning that asks for a larger halo).

Touching buildings inside a cluster are split by watershed: markers are the 4-connected
components of the building (interior) class, grown back over the boundary pixels by distance to
the nearest marker, so a predicted boundary line is shared halfway between the buildings it
separates. With ``split_confidence`` t > 0 the markers are the components of the interior
pixels whose building probability is >= t (a faint party wall between terraced houses lowers
it even where the boundary class does not win), plus every interior component that has no such
pixel, so no building loses its marker. Everything is computed on the cluster's own bounding
box and mask, so a cluster gives the same footprints (geometry, attributes, ``id``) whatever
context window contains it.
"""

from __future__ import annotations

import logging
import math
from typing import cast

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import CRS
from scipy import ndimage
from shapely.geometry import Polygon
from skimage import measure
from skimage.segmentation import watershed

from geoseg.area import area_perimeter_m, local_scale
from geoseg.errors import InputError
from geoseg.grid import Chunk, GeoBox, Window
from geoseg.vectorize.features import (
    CROSS,
    Feature,
    apply_affine,
    check_class_map,
    check_confidence,
    pixel_to_world,
)
from geoseg.vectorize.regularize import regularize_polygons
from geoseg.vectorize.trace import gdal_ring_order, trace_regions

logger = logging.getLogger(__name__)

_EARTH_RADIUS_M = 6_371_008.8


def extract_buildings(classes: np.ndarray, probability: np.ndarray, context: Window, chunk: Chunk,
                      grid: GeoBox, *, building_id: int, boundary_id: int | None, fill: int = 255,
                      min_area_m2: float = 4.0, regularize: bool = True,
                      split_confidence: float = 0.0) -> list[Feature]:
    """Footprints of the building clusters owned by ``chunk``, in the grid CRS.

    ``classes`` and ``probability`` (building probability, uint8 0..255 or float 0..1) cover
    ``context``: ``chunk.window`` grown by the halo and clipped to ``grid``. ``boundary_id`` is
    the class of predicted instance boundaries, or None when the model has none; ``fill``
    (nodata) pixels never belong to a building. Footprints under ``min_area_m2`` (measured on
    the raw pixel outline; on the ellipsoid where :func:`geoseg.area.geodesic`) are dropped.
    Features come in global raster order of their reference pixel.
    """
    _check_inputs(classes, probability, context, chunk, grid, building_id, boundary_id, fill,
                  min_area_m2)
    if probability is None:
        raise InputError("extract_buildings needs the building probability map")
    scale = check_confidence(probability, classes.shape, "probability")
    member = classes == building_id
    if boundary_id is not None:
        member |= classes == boundary_id
    clusters, count = ndimage.label(member, structure=CROSS)
    if count == 0:
        return []
    # every owned cluster's instances, numbered apart, in one map: traced together (one call
    # per chunk instead of one per cluster); clusters never share a pixel
    instances = np.zeros(classes.shape, dtype=np.int32)
    n_instances = 0
    cut: list[tuple[int, int]] = []
    for lab, box in enumerate(ndimage.find_objects(clusters), start=1):
        if box is None:
            continue
        ref = _reference_pixel(clusters[box] == lab, box, context)
        w = chunk.window
        if not (w.row_off <= ref[0] < w.row_end and w.col_off <= ref[1] < w.col_end):
            continue                                      # another chunk owns this cluster
        if _cut_by_context(box, context, grid):
            cut.append(ref)
        strong = (probability[box] >= split_confidence / scale if split_confidence > 0
                  else None)
        split = _split_cluster(clusters[box] == lab, classes[box] == building_id, strong)
        inside = split > 0
        instances[box][inside] = split[inside] + n_instances
        n_instances += int(split.max())
    with rasterio.Env():        # one GDAL environment for the many small rasterio calls
        found = _footprints(instances, n_instances, probability, scale, context, chunk, grid,
                            building_id, min_area_m2, regularize)
    if cut:
        logger.warning("chunk %s: %d building cluster(s) reach the context edge (first at pixel "
                       "%s) and may be cut or duplicated: enlarge the vectorize halo",
                       chunk.id, len(cut), cut[0])
    return [feature for _, feature in sorted(found, key=lambda item: item[0])]


def _check_inputs(classes: np.ndarray, probability: np.ndarray, context: Window, chunk: Chunk,
                  grid: GeoBox, building_id: int, boundary_id: int | None, fill: int,
                  min_area_m2: float) -> None:
    check_class_map(classes, context.shape)
    if not grid.window.contains(context):
        raise InputError(f"context window {context} reaches outside the {grid.shape} grid: clip "
                         "it with chunk.window.pad(halo).intersect(grid.window)")
    if not context.contains(chunk.window):
        raise InputError(f"context window {context} does not contain chunk {chunk.id} "
                         f"({chunk.window}): pass the chunk's own padded window")
    if building_id in (fill, boundary_id) or boundary_id == fill:
        raise InputError(f"building_id {building_id}, boundary_id {boundary_id} and fill {fill} "
                         "must all differ")
    if not (math.isfinite(min_area_m2) and min_area_m2 >= 0):
        raise InputError(f"min_area_m2 must be a number >= 0, got {min_area_m2}")


def _reference_pixel(mask: np.ndarray, box: tuple[slice, slice],
                     context: Window) -> tuple[int, int]:
    """Global (row, col) of the first pixel of ``mask`` (cropped at ``box``) in raster order."""
    first = int(np.argmax(mask.ravel()))
    row, col = divmod(first, mask.shape[1])
    return context.row_off + box[0].start + row, context.col_off + box[1].start + col


def _cut_by_context(box: tuple[slice, slice], context: Window, grid: GeoBox) -> bool:
    """Whether a cluster's box touches a context edge that is not the grid's edge."""
    rows, cols = box
    return ((rows.start == 0 and context.row_off > 0)
            or (rows.stop == context.height and context.row_end < grid.height)
            or (cols.start == 0 and context.col_off > 0)
            or (cols.stop == context.width and context.col_end < grid.width))


def split_buildings(classes: np.ndarray, building_id: int, boundary_id: int | None, *,
                    min_pixels: int = 0) -> np.ndarray:
    """Instance labels ``(H, W)`` int32 (0 = none) of a whole class map, split as
    :func:`extract_buildings` splits them with ``split_confidence`` 0 (a class map has no
    probabilities: each cluster by :func:`_split_cluster` from its interior components), before
    its area filter; instances under ``min_pixels`` pixels are dropped. For training
    validation, which scores instances without tracing polygons."""
    if classes.ndim != 2:
        raise InputError(f"class map must be 2-D, got shape {classes.shape}")
    check_class_map(classes, (classes.shape[0], classes.shape[1]))
    member = classes == building_id
    if boundary_id is not None:
        member |= classes == boundary_id
    clusters, _ = ndimage.label(member, structure=CROSS)
    out = np.zeros(classes.shape, dtype=np.int32)
    n = 0
    for lab, box in enumerate(ndimage.find_objects(clusters), start=1):
        if box is None:
            continue
        instances = _split_cluster(clusters[box] == lab, classes[box] == building_id)
        if min_pixels > 1:
            sizes = np.bincount(instances.ravel())
            small = sizes < min_pixels
            small[0] = True
            instances = np.where(small[instances], 0, instances)
        ids = np.unique(instances[instances > 0])
        if ids.size:
            view = out[box]
            keep = instances > 0
            view[keep] = n + np.searchsorted(ids, instances[keep]) + 1
            n += ids.size
    return out


def _split_cluster(cluster: np.ndarray, interior: np.ndarray,
                   strong: np.ndarray | None = None) -> np.ndarray:
    """Instance labels (int32, 0 outside) of one cluster: watershed from the markers over the
    cluster mask by distance to the nearest marker. Markers: the interior components, or, with
    ``strong`` (interior pixels of high building probability), the strong components plus the
    interior components without a strong pixel."""
    interior = interior & cluster
    markers, count = ndimage.label(interior, structure=CROSS)
    if strong is not None and count:
        markers, count = _strong_markers(strong & interior, markers, count)
    if count <= 1:
        return cluster.astype(np.int32)
    distance = ndimage.distance_transform_edt(markers == 0)
    return np.asarray(watershed(distance, markers, mask=cluster, connectivity=1), dtype=np.int32)


def _strong_markers(strong: np.ndarray, parts: np.ndarray,
                    n_parts: int) -> tuple[np.ndarray, int]:
    """Markers from the strong pixels' components, and the interior components (``parts``)
    that hold no strong pixel as markers of their own."""
    markers, count = ndimage.label(strong, structure=CROSS)
    has_strong = np.zeros(n_parts + 1, dtype=bool)
    has_strong[parts[strong]] = True
    has_strong[0] = True
    weak = ~has_strong[parts]
    if weak.any():
        ids = np.unique(parts[weak])
        remap = np.zeros(n_parts + 1, dtype=np.int32)
        remap[ids] = count + 1 + np.arange(ids.size, dtype=np.int32)
        markers[weak] = remap[parts[weak]]
        count += int(ids.size)
    return markers, count


def _footprints(instances: np.ndarray, count: int, probability: np.ndarray, scale: float,
                context: Window, chunk: Chunk, grid: GeoBox, building_id: int,
                min_area_m2: float, regularize: bool) -> list[tuple[tuple[int, int], Feature]]:
    """One feature per instance label 1..``count`` of ``instances`` (covering ``context``),
    keyed by its reference pixel, in the grid CRS. An instance split into several 4-connected
    pieces keeps its largest (the first in raster order among equal ones)."""
    if count == 0:
        return []
    flat = instances.ravel()
    pixels = np.bincount(flat, minlength=count + 1)
    prob_sum = np.bincount(flat, weights=probability.ravel().astype(np.float64),
                           minlength=count + 1) * scale
    pieces, n_pieces = measure.label(instances, background=0, connectivity=1,
                                     return_num=True)
    traced = trace_regions(pieces, context.row_off, context.col_off)
    if traced is None:          # cannot happen for connected components; stay correct anyway
        raise RuntimeError("tracer found a piece with two outlines")
    _values, polys = traced
    owner = np.zeros(n_pieces + 1, dtype=np.int64)
    owner[pieces.ravel()] = flat                      # every pixel of a piece: the same instance
    owner = owner[1:]
    area = shapely.area(polys)
    # largest piece per instance; among equal areas the first piece (lowest label)
    order = np.lexsort((np.arange(n_pieces), -area, owner))
    first = np.ones(n_pieces, dtype=bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    chosen = order[first]
    outlines = gdal_ring_order(polys[chosen])
    # every piece label and every instance owning a piece is present: no None among these
    boxes = cast(list[tuple[slice, slice]], ndimage.find_objects(pieces))
    instance_boxes = cast(list[tuple[slice, slice]], ndimage.find_objects(instances))
    kept: list[tuple[int, tuple[int, int], Polygon]] = []      # (instance, ref, raw)
    local: list[tuple[Polygon, float, np.ndarray | None, Affine]] = []
    for piece, raw in zip(chosen.tolist(), outlines, strict=True):
        lab = int(owner[piece])
        box = instance_boxes[lab - 1]
        ref = _reference_pixel(instances[box] == lab, box, context)
        area_px, _ = area_perimeter_m(pixel_to_world(raw, grid.transform), grid.crs)
        if area_px < min_area_m2:
            continue
        kept.append((lab, ref, raw))
        if regularize:
            local.append(_local_frame(raw, ref, grid, pieces[boxes[piece]] == piece + 1))
    if regularize:          # all of the chunk's outlines at once (one tracing call)
        regular = regularize_polygons([item[0] for item in local], [item[1] for item in local],
                                      cells=[item[2] for item in local])
        shapes = [apply_affine(poly, ~item[3])
                  for poly, item in zip(regular, local, strict=True)]
    else:
        shapes = [raw for _, _, raw in kept]
    out = []
    for (lab, ref, _), pixel_poly in zip(kept, shapes, strict=True):
        geometry = pixel_to_world(_inside_grid(pixel_poly, grid), grid.transform)
        area_m2, perimeter_m = area_perimeter_m(geometry, grid.crs)
        out.append((ref, Feature(geometry, building_id, int(pixels[lab]),
                                 float(prob_sum[lab] / pixels[lab]), id=f"b{ref[0]}_{ref[1]}",
                                 area_m2=area_m2, perimeter_m=perimeter_m, chunk_id=chunk.id)))
    return out


def _inside_grid(poly: Polygon, grid: GeoBox) -> Polygon:
    """``poly`` (grid pixel coordinates) clipped to the grid: squaring a building up at the
    image's edge may push a corner past it (up to a few px), where the map has no pixel."""
    x0, y0, x1, y1 = poly.bounds
    if x0 >= 0 and y0 >= 0 and x1 <= grid.width and y1 <= grid.height:
        return poly
    clipped = poly.intersection(shapely.box(0, 0, grid.width, grid.height))
    parts = [g for g in getattr(clipped, "geoms", [clipped])
             if isinstance(g, Polygon) and not g.is_empty]
    return max(parts, key=lambda g: g.area) if parts else poly


def _local_frame(raw: Polygon, ref: tuple[int, int], grid: GeoBox, mask: np.ndarray
                 ) -> tuple[Polygon, float, np.ndarray | None, Affine]:
    """``raw`` in a local metric frame (origin at the reference pixel, axes scaled to ground
    metres), where regularizing makes right angles right on the ground: the polygon, its pixel
    size, its cells and the frame's transform from global pixels. ``mask`` holds the outline's
    pixels (rows down, over its bounds): where ground pixels are square, flipped, it is the
    outline's rasterization in that frame (whose y grows with the row)."""
    sx, sy = _ground_scale(grid, ref)
    to_local = Affine.scale(sx, sy) @ Affine.translation(-ref[1], -ref[0])
    pixel_size = math.sqrt(sx * sy)
    cells = mask[::-1] if sx == sy == pixel_size else None
    return apply_affine(raw, to_local), pixel_size, cells, to_local


def _ground_scale(grid: GeoBox, ref: tuple[int, int]) -> tuple[float, float]:
    """Approximate ground metres per pixel along x and y near pixel ``ref``."""
    rx, ry = grid.resolution
    crs: CRS = grid.crs
    if crs.is_geographic:
        lat = (grid.transform @ (ref[1] + 0.5, ref[0] + 0.5))[1]
        metres_per_degree = math.pi / 180.0 * _EARTH_RADIUS_M
        return (rx * metres_per_degree * max(math.cos(math.radians(lat)), 1e-6),
                ry * metres_per_degree)
    unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    k = local_scale(crs, *(grid.transform @ (ref[1] + 0.5, ref[0] + 0.5)))  # Web Mercator: >1
    return rx * unit / k, ry * unit / k
