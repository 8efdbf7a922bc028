"""Vector outputs of a job: per-chunk vectorization (a Ray task) and the GeoPackage sink.

Workers return features; the driver is the single writer of the GeoPackage. Building footprints
and interior land-cover polygons are appended as chunks finish; land-cover parts that touch a
chunk edge are held (only those) until their region is complete, i.e. every chunk it reaches and
those chunks' neighbours are done (:class:`~geoseg.vectorize.landcover.SeamMerger`), so the
driver holds the seams of the chunks in flight, not of the raster. The GeoPackage is written
under a temporary name and renamed when complete, so a partial file never looks finished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.config import VectorConfig
from geoseg.gpkg_stream import LAYERS, LayerStream, copy_layer, drain, gdal_temporary_files
from geoseg.grid import Chunk
from geoseg.outdir import storage_errors
from geoseg.plan import Plan
from geoseg.store import FILL, SOURCE, read_layer
from geoseg.vectorize.features import FeatureTable
from geoseg.vectorize.landcover import LandcoverParts, SeamMerger, landcover_parts

log = logging.getLogger(__name__)


@dataclass
class ChunkVectors:
    chunk: Chunk
    landcover: LandcoverParts | None
    buildings: list[Any] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class PackedVectors:
    """A chunk's :class:`ChunkVectors` pickled where they were made, for a GeoPackage writer in
    another process: the job's process, which hands them on, moves bytes (a memory copy, ~0.5
    MB a chunk) instead of unpickling every polygon and pickling it again (~2.7 ms a chunk of
    the replay map's, holding the interpreter lock the model's caller needs)."""

    chunk: Chunk
    blob: bytes
    seconds: float

    def unpack(self) -> ChunkVectors:
        import pickle

        vectors = pickle.loads(self.blob)  # (bytes this job's own vector task made)
        if not isinstance(vectors, ChunkVectors):
            raise TypeError(f"packed vectors of chunk {self.chunk.id} hold {type(vectors)}")
        return vectors


def vectorize_chunk(plan: Plan, store: str, chunk: Chunk, *, vcfg: VectorConfig,
                    packed: bool = False) -> ChunkVectors | PackedVectors:
    """Vectorize one chunk from the stored class maps (needs its neighbours written);
    ``packed``: pickled for a writer in another process (:class:`PackedVectors`)."""
    import time

    t0 = time.perf_counter()
    lc_parts = None
    lc = plan.model("landcover")
    if lc is not None and vcfg.landcover_polygons:
        cls = read_layer(store, lc.name, chunk.window)
        conf = read_layer(store, f"{lc.name}_confidence", chunk.window)
        lc_parts = landcover_parts(cls, conf, chunk, plan.grid.transform, fill=FILL,
                                   crs=plan.grid.crs)
    feats: list[Any] = []
    bd = plan.model("buildings")
    if bd is not None:
        from geoseg.vectorize.footprints import extract_buildings  # scipy, skimage: on first use

        ctx = chunk.window.pad(vcfg.halo).intersect(plan.grid.window)
        cls = read_layer(store, bd.name, ctx)
        conf = read_layer(store, f"{bd.name}_confidence", ctx).astype("float32") / 255.0
        names = {c.name for c in bd.spec.classes}
        feats = extract_buildings(
            cls, conf, ctx, chunk, plan.grid, building_id=bd.spec.class_id("building"),
            boundary_id=bd.spec.class_id("boundary") if "boundary" in names else None,
            fill=FILL, min_area_m2=vcfg.min_building_area_m2, regularize=vcfg.regularize,
            split_confidence=vcfg.split_confidence)
    vectors = ChunkVectors(chunk, lc_parts, feats, time.perf_counter() - t0)
    if not packed:
        return vectors
    import pickle

    return PackedVectors(chunk, pickle.dumps(vectors, protocol=pickle.HIGHEST_PROTOCOL),
                         time.perf_counter() - t0)


class SourceDates:
    """A mosaic's feature dates: the acquisition date of the item that produced the pixel at the
    feature's representative point (the store's ``source`` layer, read a chunk at a time)."""

    def __init__(self, store: str, plan: Plan, cached: int = 16) -> None:
        self.store, self.plan, self.cached = store, plan, cached
        items = getattr(plan.image, "items", ())
        self.dates = {i: (it.datetime or "")[:10] for i, it in enumerate(items, start=1)}
        self.blocks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def date(self, geom: Any) -> str:
        p = geom.representative_point()
        col, row = ~self.plan.grid.transform @ (p.x, p.y)
        r, c = int(row), int(col)
        size = self.plan.chunks.chunk
        key = (r // size, c // size)
        block = self.blocks.get(key)
        if block is None:
            block = read_layer(self.store, SOURCE, self.plan.chunks.get(*key).window)
            self.blocks[key] = block
            if len(self.blocks) > self.cached:
                self.blocks.popitem(last=False)
        else:
            self.blocks.move_to_end(key)
        return self.dates.get(int(block[r - key[0] * size, c - key[1] * size]), "")


class GeoPackageSink:
    """Appends features to layers of one GeoPackage (single writer: the driver)."""

    def __init__(self, path: Path, plan: Plan, common: dict[str, Any], batch: int = 10000,
                 dates: SourceDates | None = None, split_px: int = 0):
        self.final = Path(path)
        self.partial = self.final.with_name(f".partial-{self.final.name}")
        for temp in (self.partial, *(self._layer_file(name) for name in LAYERS)):
            # geoseg's own temporary names, and those GDAL gave its index files beside them
            # when a job was killed while writing (a link there is not followed)
            for own in (temp, *gdal_temporary_files(temp)):
                if own.exists() or own.is_symlink():
                    own.unlink()
        self.streams: dict[str, LayerStream] = {}
        self.plan = plan
        self.common = common
        self.dates = dates  # a mosaic: each feature's own acquisition date
        self.batch = batch
        # per layer, in arrival order: lists of records, and column blocks (chunk interiors)
        self.buffers: dict[str, list[list[dict[str, Any]] | dict[str, Any]]] = {}
        self.pending: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self.seams = SeamMerger(plan.chunks, tile=split_tile(plan.chunks.chunk, split_px))

    def add(self, result: ChunkVectors | PackedVectors) -> None:
        if isinstance(result, PackedVectors):
            result = result.unpack()
        bd = self.plan.model("buildings")
        for f in result.buildings:
            rec = f.to_record()
            rec.update(self.common)
            if self.dates is not None:
                rec["acquisition_date"] = self.dates.date(rec["geometry"])
            if bd is not None:
                rec["model_id"] = bd.model_id
            self._push("buildings", rec)
        if result.landcover is not None:  # interiors at once, seam groups once complete
            for block in self.seams.add_blocks(result.landcover):
                if isinstance(block, FeatureTable) and self.dates is None:
                    self._push_columns("landcover", self._lc_columns(block), len(block))
                else:
                    for f in block:
                        self._push("landcover", self._lc_record(f))

    def _lc_columns(self, table: FeatureTable) -> dict[str, Any]:
        """:meth:`_lc_record` of a whole table, as columns in the records' order (a scalar
        stands for a column of one value)."""
        lc = self.plan.model("landcover")
        cols: dict[str, Any] = table.columns()
        cols["region_id"] = table.id
        cols.update(self.common)
        if lc is not None:
            names = np.empty(max(c.id for c in lc.spec.classes) + 1, dtype=object)
            for c in lc.spec.classes:
                names[c.id] = c.name
            cols["class_name"] = names[table.class_id]
            cols["model_id"] = lc.model_id
        return cols

    def _lc_record(self, f: Any) -> dict[str, Any]:
        lc = self.plan.model("landcover")
        rec = f.to_record()
        rec["region_id"] = rec["id"]  # pieces of a region cut at split lines: set in finish
        rec.update(self.common)
        if self.dates is not None:
            rec["acquisition_date"] = self.dates.date(rec["geometry"])
        if lc is not None:
            rec["class_name"] = lc.spec.classes[rec["class_id"]].name
            rec["model_id"] = lc.model_id
        return rec

    def _push(self, layer: str, rec: dict[str, Any]) -> None:
        buf = self.buffers.setdefault(layer, [])
        last = buf[-1] if buf else None
        if isinstance(last, list):
            last.append(rec)
        else:
            buf.append([rec])
        self._count(layer, 1)

    def _push_columns(self, layer: str, columns: dict[str, Any], n: int) -> None:
        if n:
            self.buffers.setdefault(layer, []).append(columns)
            self._count(layer, n)

    def _count(self, layer: str, n: int) -> None:
        self.pending[layer] = self.pending.get(layer, 0) + n
        if self.pending[layer] >= self.batch:
            self._flush(layer)

    def _layer_file(self, layer: str) -> Path:
        """Where ``layer`` is streamed: land cover to the GeoPackage's temporary name, every
        other layer to a file of its own until :meth:`finish` copies it in (one writer per
        SQLite file)."""
        if layer == "landcover":
            return self.partial
        return self.final.with_name(f".partial-{layer}-{self.final.name}")

    def _flush(self, layer: str) -> None:
        buf = self.buffers.get(layer)
        if not buf:
            return
        stream = self.streams.get(layer)
        if stream is None:
            stream = self.streams[layer] = LayerStream(self._layer_file(layer), layer,
                                                       self.plan.grid.crs.to_wkt())
        with storage_errors(stream.path):  # disk full while writing: one line
            for piece in buf:
                if isinstance(piece, list):  # records
                    keys = dict.fromkeys(k for rec in piece for k in rec)
                    stream.put({k: [rec.get(k) for rec in piece] for k in keys}, len(piece))
                else:
                    stream.put(piece, len(piece["geometry"]))
        self.counts[layer] = stream.rows
        self.buffers[layer] = []
        self.pending[layer] = 0

    def close(self) -> None:
        """End the layers' streams, dropping what is queued (the job is stopping; the files
        keep their temporary names)."""
        for stream in self.streams.values():
            with contextlib.suppress(Exception):
                stream.close(abort=True)

    def finish(self) -> dict[str, int]:
        """Merge land-cover parts across chunk seams, flush, and publish the file."""
        try:
            for f in self.seams.finish():
                self._push("landcover", self._lc_record(f))
            for layer in list(self.buffers):
                self._flush(layer)
        except BaseException:
            self.close()  # the layers stay under their temporary names
            raise
        with storage_errors(self.partial):
            try:
                for stream in self.streams.values():
                    stream.close()
            except BaseException:
                self.close()
                raise
            for layer in sorted(self.streams, key=lambda name: name != "landcover"):
                own = self._layer_file(layer)
                if own == self.partial:
                    continue
                if self.partial.exists():
                    copy_layer(own, self.partial, layer)
                    own.unlink()
                else:
                    os.replace(own, self.partial)
        regions = self.seams.regions()
        if regions and self.counts.get("landcover"):
            with storage_errors(self.partial):
                set_region_ids(self.partial, "landcover", regions)
            log.info("%d land-cover pieces belong to regions cut at split lines", len(regions))
        if self.partial.exists():
            os.replace(self.partial, self.final)
        return dict(self.counts)


def split_tile(chunk: int, split_px: int) -> int:
    """``VectorConfig.landcover_split_px`` in whole chunks (0: never cut)."""
    return max(1, split_px // chunk) if split_px else 0


def set_region_ids(path: Path, layer: str, regions: dict[str, str]) -> None:
    """Set ``region_id`` of the features whose ``id`` is a key of ``regions`` (a GeoPackage is
    SQLite; an attribute update touches neither geometries nor the spatial index).

    GDAL's R-tree triggers name SpatiaLite-style functions that plain SQLite lacks. An update
    that keeps the fid and the geometry runs none of their bodies, but SQLite must find every
    function to prepare them: ``ST_IsEmpty`` reads the GeoPackage blob's empty flag, and the
    envelope functions fail loudly should a trigger body ever run."""
    import sqlite3

    def envelope(_blob: bytes) -> float:
        raise RuntimeError("a region id update touched a geometry")

    with sqlite3.connect(path) as db:
        db.create_function("ST_IsEmpty", 1, _gpkg_is_empty, deterministic=True)
        for name in ("ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY"):
            db.create_function(name, 1, envelope)
        db.execute("CREATE TEMP TABLE cut (id TEXT PRIMARY KEY, region TEXT NOT NULL)")
        db.executemany("INSERT INTO cut VALUES (?, ?)", regions.items())
        db.execute(f'UPDATE "{layer}" SET region_id = (SELECT region FROM cut '
                   f'WHERE cut.id = "{layer}".id) WHERE id IN (SELECT id FROM cut)')
    db.close()


def _gpkg_is_empty(blob: bytes | None) -> int:
    """GeoPackage binary header: magic 'GP', version, flags (bit 4: empty geometry)."""
    return int(blob is None or len(blob) < 4 or bool(blob[3] & 0x10))


class BackgroundSink:
    """Runs a sink's ``add`` calls in one thread of their own, in arrival order, so the thread
    that feeds the model never waits on seam merges and GeoPackage writes (6.2 s of a 4096²
    land-cover run on 2 cores, measured). Still a single writer; the queue is bounded, so a slow
    writer holds the producers back instead of growing memory. An error in the writer surfaces
    at the next ``add`` or at ``finish``."""

    def __init__(self, sink: GeoPackageSink, depth: int = 8) -> None:
        import threading

        self.sink = sink
        self.busy_s = 0.0  # time the writer spent in the sink
        self._queue: queue.Queue[ChunkVectors | PackedVectors | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._abort = False
        self._thread = threading.Thread(target=self._work, name="geoseg-gpkg", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        import time

        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None or self._abort:
                continue  # drain: the error is reported to the producer
            t0 = time.perf_counter()
            try:
                self.sink.add(item)
            except BaseException as exc:  # handed to the producer thread
                self._error = exc
            self.busy_s += time.perf_counter() - t0

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def add(self, result: ChunkVectors | PackedVectors) -> None:
        self._raise()
        self._queue.put(result)

    def close(self, abort: bool = False) -> None:
        """Stop the writer thread after what is queued, or (``abort``: the job is stopping)
        after the item in hand, dropping the rest (idempotent)."""
        if self._thread.is_alive():
            if abort:
                self._abort = True
                drain(self._queue)
            self._queue.put(None)
            self._thread.join()
        if abort:
            self.sink.close()

    def finish(self) -> dict[str, int]:
        self.close()
        self._raise()
        return self.sink.finish()
