"""Seam-free land-cover polygons: per-chunk parts, then a union-find merge across chunk seams.

A land-cover region can span any number of chunks, so no halo is ever large enough to own it.
Instead each chunk task traces its own 4-connected regions (:func:`landcover_parts`): regions
away from the chunk edge are final; regions on the edge are returned as *border parts* with their
local labels along the four edges. :func:`merge_landcover` joins border parts whose edge pixels
touch across a seam with the same class (4-connectivity) and unions each group into one polygon.
Border geometry stays in global pixel coordinates (exact integers) until after the union, so the
result equals a whole-array polygonization whatever the chunk size, order or worker count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS
from shapely.geometry import Polygon

from geoseg.area import area_perimeter_m, geodesic
from geoseg.errors import InputError
from geoseg.grid import Chunk, ChunkGrid
from geoseg.vectorize import trace
from geoseg.vectorize.features import (
    Feature,
    FeatureTable,
    apply_affine_many,
    as_polygon,
    check_class_map,
    check_confidence,
    drop_collinear_many,
    trace_labels,
)
from geoseg.vectorize.seam_union import stitched_unions
from geoseg.vectorize.trace import trace_regions

logger = logging.getLogger(__name__)

ChunkIndex = tuple[int, int]
PartKey = tuple[ChunkIndex, int]


@dataclass(frozen=True, slots=True)
class ChunkEdges:
    """Local component labels (int32, 0 = nodata) along a chunk's four edges."""

    top: np.ndarray
    bottom: np.ndarray
    left: np.ndarray
    right: np.ndarray


class MergedGroup(NamedTuple):
    """One seam group merged: its polygon (seam vertices not yet dropped), pixels, first
    pixel ``(row, col)`` and confidence sum."""

    polygon: Polygon
    class_id: int
    pixels: int
    ref: tuple[int, int]
    confidence_sum: float | None


@dataclass(slots=True)
class BorderPart:
    """A region touching its chunk's edge; may continue in a neighbour.

    ``geometry`` is in global pixel coordinates (x = column, y = row); ``ref`` is the region's
    first pixel (row, col) in global raster order within this chunk.
    """

    label: int
    class_id: int
    geometry: Polygon
    pixels: int
    confidence_sum: float | None
    ref: tuple[int, int]


@dataclass(slots=True)
class LandcoverParts:
    """Everything a chunk task returns: small and picklable."""

    chunk_index: ChunkIndex
    interior: Sequence[Feature]  # a FeatureTable from landcover_parts
    border: list[BorderPart]
    edges: ChunkEdges
    transform: Affine
    min_pixels: int = 0
    crs: CRS | None = None

    @property
    def settings(self) -> tuple[Affine, int, CRS | None]:
        """What every chunk of one merge must share."""
        return self.transform, self.min_pixels, self.crs


def landcover_parts(classes: np.ndarray, confidence: np.ndarray | None, chunk: Chunk,
                    transform: Affine, *, fill: int = 255, min_pixels: int = 0,
                    crs: CRS | None = None) -> LandcoverParts:
    """Trace the 4-connected class regions of one chunk's core array.

    ``transform`` is the *grid's* affine (not the chunk's); ``confidence`` is uint8 0..255 or
    float 0..1 on the same window. Pixels equal to ``fill`` are nodata and yield no polygon.
    Interior regions smaller than ``min_pixels`` are dropped here; border regions are judged by
    their merged size in :func:`merge_landcover`. With the grid's ``crs``, features also get
    ``area_m2`` and ``perimeter_m`` (geodesic for geographic CRSs).
    """
    check_class_map(classes, chunk.window.shape)
    scale = check_confidence(confidence, classes.shape, "confidence")
    if min_pixels < 0:
        raise InputError(f"min_pixels must be >= 0, got {min_pixels}")
    labels, n, pixels, conf_sum, first_index = label_stats(classes, fill, confidence, scale)
    edges = ChunkEdges(top=labels[0].copy(), bottom=labels[-1].copy(),
                       left=labels[:, 0].copy(), right=labels[:, -1].copy())
    if n == 0:
        return LandcoverParts(chunk.index, [], [], edges, transform, min_pixels, crs)

    class_of = classes.ravel()[first_index]
    width = classes.shape[1]
    row0, col0 = chunk.window.row_off, chunk.window.col_off

    on_edge = np.zeros(n + 1, dtype=bool)
    on_edge[np.concatenate([edges.top, edges.bottom, edges.left, edges.right])] = True
    on_edge[0] = False
    small = (pixels < min_pixels) & ~on_edge
    small[0] = False
    if small.any():
        labels = np.where(small[labels], 0, labels)

    traced = trace_regions(labels, row0, col0)
    if traced is None:  # (cannot happen for skimage's 4-connected labels; GDAL traces any)
        pairs = list(trace_labels(labels, row0, col0))
        traced = (np.array([v for v, _ in pairs], np.int64),
                  np.array([p for _, p in pairs], dtype=object))
    labs, polys = traced
    rows_a = row0 + first_index[labs] // width
    cols_a = col0 + first_index[labs] % width
    edge = on_edge[labs]
    at = np.flatnonzero(edge)
    rows, cols = rows_a[at].tolist(), cols_a[at].tolist()
    sums = conf_sum[labs[at]].tolist() if conf_sum is not None else [None] * len(at)
    classes_of, pixels_of = class_of[labs[at]].tolist(), pixels[labs[at]].tolist()
    border = [BorderPart(lab, classes_of[k], polys[i], pixels_of[k], sums[k], (rows[k], cols[k]))
              for k, (i, lab) in enumerate(zip(at.tolist(), labs[at].tolist(), strict=True))]
    inside = np.flatnonzero(~edge)
    li = labs[inside]
    interior = _features(polys[inside], class_of[li], pixels[li],
                         conf_sum[li] if conf_sum is not None else None, rows_a[inside],
                         cols_a[inside], transform, crs)
    logger.debug("chunk %s: %d interior regions, %d border parts", chunk.id, len(interior),
                 len(border))
    return LandcoverParts(chunk.index, interior, border, edges, transform, min_pixels, crs)


def label_stats(classes: np.ndarray, fill: int, confidence: np.ndarray | None, scale: float
                ) -> tuple[np.ndarray, int, np.ndarray, np.ndarray | None, np.ndarray]:
    """``(labels, n, pixels, conf_sum, first_index)``: the 4-connected regions of equal class
    (int32 labels ``1..n`` in the raster order of their first pixels, 0 for ``fill``) and per
    label (index 0: the fill pixels) its pixel count, the sum of its confidence times
    ``scale`` (None without confidence) and the flat index of its first pixel. One compiled
    pass where numba is installed (:func:`~geoseg.vectorize._trace_jit.label_stats`), else
    skimage's labelling and numpy counts: the same arrays."""
    jit = trace.compiled()
    if jit is None or classes.ndim != 2 or not np.issubdtype(classes.dtype, np.integer):
        return _label_stats_numpy(classes, fill, confidence, scale)
    conf = (np.zeros((0, 0), np.float32) if confidence is None
            else np.ascontiguousarray(confidence))
    labels, n, pixels, conf_sum, first = jit.label_stats(
        np.ascontiguousarray(classes), fill, conf, float(scale), confidence is not None)
    return labels, int(n), pixels, conf_sum if confidence is not None else None, first


def _label_stats_numpy(classes: np.ndarray, fill: int, confidence: np.ndarray | None,
                       scale: float
                       ) -> tuple[np.ndarray, int, np.ndarray, np.ndarray | None, np.ndarray]:
    from skimage.measure import label as label_regions  # (scipy.ndimage: 0.2 s to import)

    labels = label_regions(classes, background=fill, connectivity=1).astype(np.int32)
    n = int(labels.max())
    flat = labels.ravel()
    pixels = np.bincount(flat, minlength=n + 1)
    conf_sum = (np.bincount(flat, weights=confidence.ravel().astype(np.float64) * scale,
                            minlength=n + 1) if confidence is not None else None)
    return labels, n, pixels, conf_sum, first_pixels(flat, n)


def first_pixels(flat: np.ndarray, n: int) -> np.ndarray:
    """Index of each label's first pixel in ``flat`` (labels ``1..n``; entry 0 is 0).

    skimage numbers regions in the raster order of their first pixel, so those pixels are
    where the running maximum of the labels grows: one pass instead of the sort of
    ``np.unique(return_index=True)`` (1M pixels: 5 ms against 35). Any other numbering is
    found by the check and falls back to the sort."""
    grows = np.empty(len(flat), dtype=bool)
    grows[:1] = flat[:1] != 0
    np.greater(flat[1:], np.maximum.accumulate(flat)[:-1], out=grows[1:])
    pos = np.flatnonzero(grows)
    first_index = np.zeros(n + 1, dtype=np.int64)
    if len(pos) == n and np.array_equal(flat[pos], np.arange(1, n + 1)):
        first_index[1:] = pos
    else:
        present, first = np.unique(flat, return_index=True)
        first_index[present] = first
        first_index[0] = 0
    return first_index


def merge_landcover(parts: Iterable[LandcoverParts], grid: ChunkGrid) -> Iterator[Feature]:
    """Yield the final land-cover features of all chunks.

    Interior features are yielded as parts arrive; border parts are held until every part has
    been read, grouped by union-find over seam-adjacent edge pixels of equal class, and each
    group is unioned into one polygon (yielded in global raster order of their first pixel).
    A driver that writes interiors as chunks finish may pass only the parts with border parts,
    interiors stripped (``dataclasses.replace(p, interior=[])``); a chunk without border parts
    cannot join anything and may be left out, every other chunk must be given.
    """
    border: dict[PartKey, BorderPart] = {}
    edges: dict[ChunkIndex, ChunkEdges] = {}
    settings: tuple[Affine, int, CRS | None] | None = None
    for part in parts:
        _check_part(part, grid, edges)
        if settings is None:
            settings = part.settings
        elif part.settings != settings:
            raise InputError(f"chunk {part.chunk_index} was vectorized with another transform, "
                             "min_pixels or CRS than the others: rerun it with the job's settings")
        edges[part.chunk_index] = part.edges
        for b in part.border:
            border[(part.chunk_index, b.label)] = b
        yield from part.interior
    if settings is None:
        return
    transform, min_pixels, crs = settings
    _log_open_seams(edges, grid)

    parent: dict[PartKey, PartKey] = {k: k for k in border}
    for (iy, ix), e in edges.items():
        if (iy, ix + 1) in edges:
            _join(parent, border, (iy, ix), e.right, (iy, ix + 1), edges[(iy, ix + 1)].left)
        if (iy + 1, ix) in edges:
            _join(parent, border, (iy, ix), e.bottom, (iy + 1, ix), edges[(iy + 1, ix)].top)

    groups: dict[PartKey, list[BorderPart]] = {}
    for key, b in border.items():
        groups.setdefault(_find(parent, key), []).append(b)
    merged = sorted(_merge_groups(list(groups.values()), grid.chunk), key=lambda m: m.ref)
    yield from _merged_features([m for m in merged if m.pixels >= min_pixels], transform, crs)


def _features(polys: np.ndarray, class_ids: np.ndarray, pixels: np.ndarray,
              conf_sums: np.ndarray | None, rows: np.ndarray, cols: np.ndarray,
              transform: Affine, crs: CRS | None) -> FeatureTable:
    """Features of many regions at once, as columns: the affine, normalisation and planar
    measures run over the whole array in shapely's C loops (the same arithmetic per vertex,
    so the same coordinates as one by one). ``rows``/``cols``: each region's first pixel."""
    area: np.ndarray | None = None
    perimeter: np.ndarray | None = None
    world = shapely.normalize(apply_affine_many(polys, transform)) if len(polys) else polys
    geographic = crs is not None and geodesic(crs)  # (cached per CRS) on the ellipsoid
    if crs is not None and not geographic:  # measured before any repair, as one by one
        unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        area = np.asarray(shapely.area(world), dtype=np.float64) * unit * unit
        perimeter = np.asarray(shapely.length(world), dtype=np.float64) * unit
    for i in np.flatnonzero(shapely.get_type_id(world) != shapely.GeometryType.POLYGON).tolist():
        world[i] = as_polygon(world[i])
    if crs is not None and geographic:
        measures = [area_perimeter_m(g, crs) for g in world]
        area = np.array([m[0] for m in measures], dtype=np.float64)
        perimeter = np.array([m[1] for m in measures], dtype=np.float64)
    pixels = np.asarray(pixels, dtype=np.int64)
    confidence = (np.asarray(conf_sums, dtype=np.float64) / pixels if conf_sums is not None
                  else None)
    ids = np.empty(len(polys), dtype=object)
    ids[:] = [f"lc{r}_{c}" for r, c in zip(np.asarray(rows).tolist(), np.asarray(cols).tolist(),
                                             strict=True)]
    return FeatureTable(world, np.asarray(class_ids, dtype=np.int64), pixels, confidence, ids,
                        area, perimeter)


def _feature(poly: Polygon, class_id: int, pixels: int, conf_sum: float | None,
             ref: tuple[int, int], transform: Affine, crs: CRS | None) -> Feature:
    polys = np.empty(1, dtype=object)
    polys[0] = poly
    return _features(polys, np.array([class_id]), np.array([pixels]),
                     None if conf_sum is None else np.array([conf_sum]), np.array([ref[0]]),
                     np.array([ref[1]]), transform, crs)[0]


def _merged_features(merged: list[MergedGroup], transform: Affine,
                     crs: CRS | None) -> Sequence[Feature]:
    """Features of merged seam groups as one table: one :func:`drop_collinear_many` and one
    :func:`_features` call for all of them."""
    polys = np.empty(len(merged), dtype=object)
    for i, m in enumerate(merged):
        polys[i] = m.polygon
    polys = drop_collinear_many(polys)  # the seam vertices (traced outlines have none)
    sums = [m.confidence_sum for m in merged]
    if not merged or (None in sums and any(s is not None for s in sums)):
        return [_feature(p, m.class_id, m.pixels, m.confidence_sum, m.ref, transform, crs)
                for p, m in zip(polys, merged, strict=True)]
    return _features(polys, np.array([m.class_id for m in merged]),
                     np.array([m.pixels for m in merged]),
                     None if sums[0] is None else np.array(sums, dtype=np.float64),
                     np.array([m.ref[0] for m in merged]), np.array([m.ref[1] for m in merged]),
                     transform, crs)


def _log_open_seams(edges: dict[ChunkIndex, ChunkEdges], grid: ChunkGrid) -> None:
    """Note seams with regions on one side whose neighbour was not merged: fine when that
    neighbour had no border parts (all nodata at the seam), a split region otherwise."""
    ny, nx = grid.counts
    open_seams = 0
    for (iy, ix), e in edges.items():
        for (dy, dx), edge in (((-1, 0), e.top), ((1, 0), e.bottom), ((0, -1), e.left),
                               ((0, 1), e.right)):
            other = (iy + dy, ix + dx)
            if 0 <= other[0] < ny and 0 <= other[1] < nx and other not in edges and edge.any():
                open_seams += 1
    if open_seams:
        logger.debug("%d seam(s) face chunks without parts (nodata there, or parts missing)",
                     open_seams)


def _check_part(part: LandcoverParts, grid: ChunkGrid, seen: dict[ChunkIndex, ChunkEdges]) -> None:
    try:
        chunk = grid.get(*part.chunk_index)
    except IndexError as exc:
        raise InputError(f"parts of chunk {part.chunk_index} do not belong to a grid of "
                         f"{grid.counts} chunks: merge parts of one job only") from exc
    if part.chunk_index in seen:
        raise InputError(f"chunk {part.chunk_index} was given twice: pass each chunk's parts once")
    h, w = chunk.window.shape
    e = part.edges
    if (e.top.shape, e.bottom.shape, e.left.shape, e.right.shape) != ((w,), (w,), (h,), (h,)):
        raise InputError(f"edges of chunk {part.chunk_index} do not match its {h}x{w} window: "
                         "vectorize each chunk's core window")


def _find(parent: dict[PartKey, PartKey], key: PartKey) -> PartKey:
    root = key
    while parent[root] != root:
        root = parent[root]
    while parent[key] != root:
        parent[key], key = root, parent[key]
    return root


def _seam_pairs(border: dict[PartKey, BorderPart], a_index: ChunkIndex, a_edge: np.ndarray,
                b_index: ChunkIndex, b_edge: np.ndarray) -> Iterator[tuple[PartKey, PartKey]]:
    """The pairs of parts whose pixels face each other across one seam with the same class."""
    both = (a_edge > 0) & (b_edge > 0)
    if not both.any():
        return
    # the distinct (a, b) label pairs in (a, b) order, as one int64 key each (labels are
    # positive int32): a plain sort, where np.unique(axis=0) sorted rows as byte strings
    keys = np.unique((a_edge[both].astype(np.int64) << 32) | b_edge[both].astype(np.int64))
    pairs = np.stack([keys >> 32, keys & 0xFFFFFFFF], axis=1)
    for la, lb in pairs.tolist():
        ka, kb = (a_index, la), (b_index, lb)
        if ka not in border or kb not in border:
            raise InputError(f"edge labels of chunks {a_index}/{b_index} have no border part: "
                             "the parts are inconsistent, vectorize these chunks again")
        if border[ka].class_id == border[kb].class_id:
            yield ka, kb


def _join(parent: dict[PartKey, PartKey], border: dict[PartKey, BorderPart], a_index: ChunkIndex,
          a_edge: np.ndarray, b_index: ChunkIndex, b_edge: np.ndarray) -> None:
    """Union the parts whose pixels face each other across one seam with the same class."""
    for ka, kb in _seam_pairs(border, a_index, a_edge, b_index, b_edge):
        ra, rb = _find(parent, ka), _find(parent, kb)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)


def _coverage_union(geoms: list[Polygon], seam: int) -> shapely.Geometry | None:
    """Union of seam parts as a polygon coverage: the parts never overlap (chunks are disjoint
    pixel sets) and, with a vertex at every pixel corner of their seam edges, they share those
    edges vertex for vertex, which is what a coverage union needs: the shared edges cancel
    (:func:`~geoseg.vectorize.seam_union.stitched_unions`, linear time; GEOS's coverage union
    where that gives up), without noding every edge against every other (overlay union: 4.2
    of 6.8 s of a 4096² run's seam merging on the 2-core machine). Holes that touch no seam
    cannot change in a union: they are set aside and put back into the result (a
    raster-spanning road network has hundreds of thousands; with them the union of its 3.5 k
    parts at 16384² took 70 s). The extra corner vertices stay, for the caller to drop
    (:func:`drop_collinear_many`; traced holes have none, so dropping after the set-aside holes
    joined changes nothing in them). None when the parts are not such a coverage."""
    return _coverage_unions([geoms], seam)[0]


def _coverage_unions(groups: list[list[Polygon]], seam: int) -> list[shapely.Geometry | None]:
    """:func:`_coverage_union` of each group, with one ragged conversion and one vertex
    densification for all of them (per group, those Python-level steps were most of the seam
    merge's time: a closed chunk completes hundreds of small groups), and one stitching of
    all groups; GEOS's coverage union runs per group that stitching gave up on. Where some
    group is not a plain pixel coverage, each group is decided on its own."""
    flat = [g for group in groups for g in group]
    geoms = np.empty(len(flat), dtype=object)
    geoms[:] = flat
    parts = None if not flat or any(g.is_empty for g in flat) else _densified(geoms, seam)
    if parts is None:
        return [None] if len(groups) == 1 else [_coverage_union(g, seam) for g in groups]
    xy, ring_off, poly_off, ring_of, kept, (dxy, dring_off, dpoly_off) = parts
    sizes = np.diff(ring_off)
    first_poly = np.concatenate([[0], np.cumsum([len(group) for group in groups])])
    group_of = np.repeat(np.arange(len(groups)), np.diff(first_poly))
    unions = stitched_unions(dxy, dring_off, dpoly_off, group_of, len(groups), seam)
    dense: np.ndarray | None = None  # the parts as polygons, for GEOS where stitching gave up
    out: list[shapely.Geometry | None] = []
    for g in range(len(groups)):
        p0, p1 = int(first_poly[g]), int(first_poly[g + 1])
        union = unions[g]
        if union is None:
            if dense is None:
                dense = np.asarray(shapely.from_ragged_array(
                    shapely.GeometryType.POLYGON, dxy, (dring_off, dpoly_off)))
            try:
                union = shapely.coverage_union_all(dense[p0:p1])
            except shapely.errors.GEOSException:
                out.append(None)
                continue
        r0, r1 = int(poly_off[p0]), int(poly_off[p1])
        holes = ~kept[r0:r1]
        if isinstance(union, Polygon) and holes.any():  # the set-aside holes, in their order
            v0, v1 = int(ring_off[r0]), int(ring_off[r1])
            union = _with_holes(union, xy[v0:v1][holes[ring_of[v0:v1] - r0]],
                                sizes[r0:r1][holes])
        out.append(union)
    return out


def _densified(geoms: np.ndarray, seam: int) -> tuple[Any, ...] | None:
    """``(xy, ring_off, poly_off, ring_of, kept, dense)`` of seam parts: their ragged
    coordinates and each vertex's ring, which rings are kept for the union (shells, and holes
    with a vertex on a seam line) and, per part, its kept rings with a vertex at every pixel
    corner on a seam (ragged: coordinates, ring offsets, polygon offsets). None unless every
    vertex is an integer and every edge axis-parallel."""
    _kind, xy, (ring_off, poly_off) = shapely.to_ragged_array(geoms)
    if not np.array_equal(xy, np.rint(xy)):
        return None
    sizes = np.diff(ring_off)
    ring_of = np.repeat(np.arange(len(sizes)), sizes)
    touches = np.bincount(ring_of, weights=((xy[:, 0] % seam == 0) | (xy[:, 1] % seam == 0)),
                          minlength=len(sizes)) > 0
    shell = np.zeros(len(sizes), bool)
    shell[poly_off[:-1]] = True
    kept = shell | touches
    part_of_ring = np.repeat(np.arange(len(poly_off) - 1), np.diff(poly_off))
    kept_poly_off = np.concatenate([[0], np.cumsum(np.bincount(part_of_ring[kept],
                                                               minlength=len(poly_off) - 1))])
    dense = _unit_vertices(xy[kept[ring_of]], sizes[kept], kept_poly_off, seam)
    return None if dense is None else (xy, ring_off, poly_off, ring_of, kept, dense)


def _with_holes(poly: Polygon, xy: np.ndarray, sizes: np.ndarray) -> Polygon:
    """``poly`` with extra hole rings (closed coordinate runs of ``sizes``) added after its
    own: GEOS copies the rings it has and builds the new ones from the coordinates in C
    (through ragged arrays the union's coordinates went through Python objects ring by ring:
    0.24 → 0.10 CPU-s for the 2,528 unions of the replay map at 16384²)."""
    own = shapely.get_interior_ring(poly, np.arange(shapely.get_num_interior_rings(poly)))
    new = shapely.linearrings(xy, indices=np.repeat(np.arange(len(sizes)), sizes))
    return shapely.polygons(shapely.get_exterior_ring(poly), holes=np.concatenate([own, new]))


def _unit_vertices(xy: np.ndarray, sizes: np.ndarray, poly_off: np.ndarray,
                   seam: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Polygons (ragged: coordinates, ring sizes, polygon offsets into the rings) with a vertex
    at every integer point of their edges that lie on a chunk seam (a multiple of ``seam`` px:
    the only edges two parts can share), computed exactly in numpy (GEOS's ``segmentize``
    interpolates in floating point: 30.000000000000007), as ragged arrays (coordinates, ring
    offsets, polygon offsets). None unless every edge is axis-parallel."""
    ring_off = np.concatenate([[0], np.cumsum(sizes)])
    last = np.zeros(len(xy), bool)
    last[ring_off[1:] - 1] = True  # each ring's closing vertex starts no segment
    start = np.flatnonzero(~last)
    d = xy[start + 1] - xy[start]
    if np.any((d[:, 0] != 0) & (d[:, 1] != 0)):
        return None
    a = xy[start]
    on_seam = (((d[:, 0] == 0) & (a[:, 0] % seam == 0))
               | ((d[:, 1] == 0) & (a[:, 1] % seam == 0)))
    steps = np.where(on_seam, np.abs(d).sum(axis=1), 1).astype(np.int64)
    total = int(steps.sum())
    seg = np.repeat(np.arange(len(start)), steps)
    k = np.arange(total) - np.repeat(np.cumsum(steps) - steps, steps)
    unit = np.sign(d) * on_seam[:, None]  # off the seams: the segment's start only
    pts = a[seg] + unit[seg] * k[:, None]
    # each ring: its segments' points, then its closing vertex
    ring_of_seg = np.searchsorted(ring_off, start, side="right") - 1
    per_ring = np.bincount(ring_of_seg, weights=steps, minlength=len(sizes))
    new_off = np.concatenate([[0], np.cumsum(per_ring.astype(np.int64) + 1)])
    out = np.empty((int(new_off[-1]), 2))
    closing = new_off[1:] - 1
    mask = np.ones(len(out), bool)
    mask[closing] = False
    out[mask] = pts
    out[closing] = xy[ring_off[:-1]]
    return out, new_off, poly_off


def _merge_groups(groups: list[list[BorderPart]], seam: int) -> list[MergedGroup]:
    """Each seam group merged (:func:`_merge_group`), the coverage unions of all groups of
    several parts computed together (:func:`_coverage_unions`)."""
    ordered = [sorted(members, key=lambda m: m.ref) for members in groups]  # sums: any order
    multi = [i for i, members in enumerate(ordered) if len(members) > 1]
    unions = _coverage_unions([[m.geometry for m in ordered[i]] for i in multi], seam)
    union_of = dict(zip(multi, unions, strict=True))
    return [_merge_group(members, union_of.get(i)) for i, members in enumerate(ordered)]


def _merge_group(members: list[BorderPart], union: shapely.Geometry | None) -> MergedGroup:
    """One seam group merged, ``members`` in the order of their first pixels; ``union``: their
    coverage union (:func:`_coverage_unions`; None where that failed). The polygon of a group
    of several parts still has a vertex wherever the chunk grid crossed its boundary:
    :func:`_merged_features` drops those, for all groups at once."""
    pixels = sum(m.pixels for m in members)
    ref = min(m.ref for m in members)
    sums = [m.confidence_sum for m in members]
    csum = None if any(s is None for s in sums) else float(sum(s for s in sums if s is not None))
    if len(members) == 1:
        return MergedGroup(members[0].geometry, members[0].class_id, pixels, ref, csum)
    if isinstance(union, Polygon):
        return MergedGroup(union, members[0].class_id, pixels, ref, csum)
    # Pixel corners are exact integers, so the floating overlay is exact (and 3x faster than
    # snap-rounding, the last resort should a union ever come out in pieces).
    geoms = [m.geometry for m in members]
    union = shapely.union_all(geoms)
    if not isinstance(union, Polygon):
        union = shapely.union_all(geoms, grid_size=1.0)
    if not isinstance(union, Polygon):
        logger.error("region at pixel %s merged into %s; keeping its largest polygon",
                     ref, union.geom_type)
        union = as_polygon(union)
    return MergedGroup(union, members[0].class_id, pixels, ref, csum)


class SeamMerger:
    """:func:`merge_landcover`, incrementally: memory follows the chunks still in flight, not
    the raster.

    ``add`` takes each chunk's parts as it finishes (every chunk, also those without border
    parts, so that arrivals are known) and yields its interior features plus every seam group
    that can no longer grow: a group is complete when each chunk holding one of its parts is
    *closed* (all its in-grid 4-neighbours have arrived). A complete group is merged, yielded
    and forgotten, and a closed chunk's edge labels are dropped. ``finish`` yields the groups
    that stay open (neighbours that never came: failed chunks). The features are those of
    :func:`merge_landcover` on the same parts; only their order follows the arrivals.

    With ``tile`` (chunks per side, 0: none), regions are not merged across the lines of a grid
    of ``tile`` × ``tile`` chunks: a region that crosses them becomes one feature per tile, each
    the whole-array polygonization of that tile alone. A region spanning the raster (the road
    network of a large mosaic) would otherwise be held and merged whole at the end, O(raster)
    memory. :meth:`regions` then tells which pieces make one region: piece id → region id, the
    id the uncut region would have had (its first pixel in raster order).
    """

    def __init__(self, grid: ChunkGrid, tile: int = 0) -> None:
        if tile < 0:
            raise InputError(f"tile must be >= 0 chunks, got {tile}")
        self.grid = grid
        self.tile = tile
        self.settings: tuple[Affine, int, CRS | None] | None = None
        self.arrived: set[ChunkIndex] = set()
        self.edges: dict[ChunkIndex, ChunkEdges] = {}
        self.border: dict[PartKey, BorderPart] = {}
        self.parent: dict[PartKey, PartKey] = {}
        self.members: dict[PartKey, list[PartKey]] = {}   # root -> keys of its group
        self.keys_of: dict[ChunkIndex, list[PartKey]] = {}
        # across tile lines: edges waiting for the chunk on the other side, the class and
        # (once emitted) the piece of each part on such an edge, and the pairs that touch
        self.cross_edges: dict[ChunkIndex, ChunkEdges] = {}
        self.cross_class: dict[PartKey, int] = {}
        self.piece_of: dict[PartKey, tuple[int, int]] = {}
        self.links: list[tuple[PartKey, PartKey]] = []

    @property
    def held(self) -> int:
        """Border parts waiting for their neighbours (what this merger holds in memory)."""
        return len(self.border)

    def add(self, part: LandcoverParts) -> Iterator[Feature]:
        for block in self.add_blocks(part):
            yield from block

    def add_blocks(self, part: LandcoverParts) -> Iterator[Sequence[Feature]]:
        """:meth:`add` in blocks: the chunk's interior as it came (a :class:`FeatureTable`
        from :func:`landcover_parts`: columns, for a writer), then each completed group."""
        idx = part.chunk_index
        _check_part(part, self.grid, dict.fromkeys(self.arrived))  # type: ignore[arg-type]
        if self.settings is None:
            self.settings = part.settings
        elif part.settings != self.settings:
            raise InputError(f"chunk {idx} was vectorized with another transform, min_pixels "
                             "or CRS than the others: rerun it with the job's settings")
        yield part.interior
        self.arrived.add(idx)
        self.edges[idx] = part.edges
        keys = [(idx, b.label) for b in part.border]
        self.keys_of[idx] = keys
        for key, b in zip(keys, part.border, strict=True):
            self.border[key] = b
            self.parent[key] = key
            self.members[key] = [key]
        for other in self._neighbours(idx):
            if other in self.edges:
                self._join(*_facing(idx, part.edges, other, self.edges[other]))
        self._link_across(idx, part)
        for k in [idx, *self._neighbours(idx)]:
            if k in self.arrived and self._closed(k):
                yield self._emit_closed(k)

    def finish(self) -> Iterator[Feature]:
        """The groups still open (some neighbour never arrived), in raster order."""
        roots = {_find(self.parent, k) for k in self.border}
        yield from self._emit(sorted(roots, key=lambda r: min(self.border[k].ref
                                                             for k in self.members[r])))

    def regions(self) -> dict[str, str]:
        """After :meth:`finish`: the region id of every piece that is part of a larger region
        cut at tile lines (piece id → region id; pieces absent here are whole regions, or
        the piece holding their region's first pixel)."""
        parent: dict[tuple[int, int], tuple[int, int]] = {}

        def find(r: tuple[int, int]) -> tuple[int, int]:
            parent.setdefault(r, r)
            while parent[r] != r:
                parent[r] = parent[parent[r]]
                r = parent[r]
            return r

        for ka, kb in self.links:
            a, b = self.piece_of.get(ka), self.piece_of.get(kb)
            if a is None or b is None:  # a piece that never closed (its chunk failed)
                continue
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        return {_piece_id(r): _piece_id(find(r)) for r in list(parent) if find(r) != r}

    def _same_tile(self, a: ChunkIndex, b: ChunkIndex) -> bool:
        t = self.tile
        return not t or (a[0] // t == b[0] // t and a[1] // t == b[1] // t)

    def _grid_neighbours(self, idx: ChunkIndex) -> list[ChunkIndex]:
        ny, nx = self.grid.counts
        iy, ix = idx
        return [(y, x) for y, x in ((iy - 1, ix), (iy + 1, ix), (iy, ix - 1), (iy, ix + 1))
                if 0 <= y < ny and 0 <= x < nx]

    def _neighbours(self, idx: ChunkIndex) -> list[ChunkIndex]:
        """The 4-neighbours a region may continue into: those in the same tile."""
        return [o for o in self._grid_neighbours(idx) if self._same_tile(idx, o)]

    def _link_across(self, idx: ChunkIndex, part: LandcoverParts) -> None:
        """Record which parts face each other across a tile line (with the same class); the
        edges wait here for the chunk on the other side, and are dropped once it came."""
        across = [o for o in self._grid_neighbours(idx) if not self._same_tile(idx, o)]
        if not across:
            return
        facing = np.unique(np.concatenate([_edge_toward(idx, part.edges, o) for o in across]))
        class_of = {b.label: b.class_id for b in part.border}
        for label in facing[facing > 0].tolist():
            self.cross_class[(idx, label)] = class_of[label]
        waiting = False
        for other in across:
            if other not in self.cross_edges:
                waiting = True
                continue
            a_index, a_edge, b_index, b_edge = _facing(idx, part.edges, other,
                                                       self.cross_edges[other])
            both = (a_edge > 0) & (b_edge > 0)
            if both.any():
                pairs = np.unique(np.stack([a_edge[both], b_edge[both]], axis=1), axis=0)
                for la, lb in pairs.tolist():
                    ka, kb = (a_index, la), (b_index, lb)
                    if self.cross_class.get(ka) == self.cross_class.get(kb):
                        self.links.append((ka, kb))
            if all(n in self.arrived for n in self._grid_neighbours(other)
                   if not self._same_tile(other, n)):
                del self.cross_edges[other]
        if waiting:
            self.cross_edges[idx] = part.edges

    def _closed(self, idx: ChunkIndex) -> bool:
        return all(n in self.arrived for n in self._neighbours(idx))

    def _emit_closed(self, idx: ChunkIndex) -> Sequence[Feature]:
        """The complete groups with a part in closed chunk ``idx``; drop its edges once every
        neighbour is closed too (they may still need them to join)."""
        roots = {_find(self.parent, k) for k in self.keys_of.get(idx, []) if k in self.border}
        done = [r for r in roots
                if all(self._closed(k[0]) for k in self.members[r])]
        features = self._emit(sorted(done, key=lambda r: min(self.border[k].ref
                                                             for k in self.members[r])))
        left = [k for k in self.keys_of.pop(idx, []) if k in self.border]
        if left:
            self.keys_of[idx] = left
        # a closed chunk's edges are only read when a neighbour arrives: all have
        self.edges.pop(idx, None)
        return features

    def _emit(self, roots: list[PartKey]) -> Sequence[Feature]:
        """Merge and forget the groups of ``roots``: their features as one table."""
        if not roots or self.settings is None:  # nothing held (no land-cover part arrived)
            return []
        transform, min_pixels, crs = self.settings
        keysets = [self.members.pop(r) for r in roots]
        groups = _merge_groups([[self.border[k] for k in keys] for keys in keysets],
                               self.grid.chunk)
        for keys, group in zip(keysets, groups, strict=True):
            for k in keys:
                del self.border[k]
                del self.parent[k]
                if k in self.cross_class:
                    self.piece_of[k] = group.ref
        return _merged_features([g for g in groups if g.pixels >= min_pixels], transform, crs)

    def _join(self, a_index: ChunkIndex, a_edge: np.ndarray, b_index: ChunkIndex,
              b_edge: np.ndarray) -> None:
        for ka, kb in _seam_pairs(self.border, a_index, a_edge, b_index, b_edge):
            ra, rb = _find(self.parent, ka), _find(self.parent, kb)
            if ra != rb:
                keep, drop = min(ra, rb), max(ra, rb)
                self.parent[drop] = keep
                self.members[keep].extend(self.members.pop(drop))


def _piece_id(ref: tuple[int, int]) -> str:
    return f"lc{ref[0]}_{ref[1]}"


def _facing(a_index: ChunkIndex, a: ChunkEdges, b_index: ChunkIndex, b: ChunkEdges
            ) -> tuple[ChunkIndex, np.ndarray, ChunkIndex, np.ndarray]:
    """The two edges of 4-neighbour chunks that face each other, the upper or left one first."""
    if b_index < a_index:  # b is left of or above a
        a_index, a, b_index, b = b_index, b, a_index, a
    return a_index, _edge_toward(a_index, a, b_index), b_index, _edge_toward(b_index, b, a_index)


def _edge_toward(idx: ChunkIndex, edges: ChunkEdges, other: ChunkIndex) -> np.ndarray:
    """The edge of chunk ``idx`` that faces its 4-neighbour ``other``."""
    dy, dx = other[0] - idx[0], other[1] - idx[1]
    return {(0, 1): edges.right, (0, -1): edges.left, (1, 0): edges.bottom,
            (-1, 0): edges.top}[(dy, dx)]
