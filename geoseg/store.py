"""The prediction store: a georeferenced Zarr (format 2) group, chunk = unit of work.

Why Zarr format 2 (written with zarr-python 3): GDAL reads Zarr v3 only from 3.11, while the GDAL
in rasterio's wheels (3.10) and Debian's gdal-bin (3.6) read v2. The store carries both GDAL's
``_CRS`` attribute and the CF ``grid_mapping``/``spatial_ref`` convention (plus 1-D ``x``/``y``
pixel-centre coordinates), so GDAL, xarray + rioxarray (``decode_coords="all"``) and plain zarr
all see the same CRS and transform.

Invariant: the store is initialised once by the driver; afterwards each chunk task writes exactly
one chunk-aligned block per array (a local chunk file is encoded and renamed into place by
:func:`write_chunk` itself, the bytes zarr would write; in object storage a chunk is one PUT
through zarr, atomic by nature). Nothing ever reads, modifies and rewrites a shared chunk.

``path`` is a local folder or an object-storage URL (``s3://bucket/run/predictions.zarr``, see
:mod:`geoseg.objstore`): the same bytes are written either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import Blosc

from geoseg.bundle import ClassSpec, flag_word
from geoseg.errors import InputError
from geoseg.grid import Chunk, GeoBox, Window
from geoseg.objstore import ObjectFolder, client, is_object_url, object_errors

FILL = 255
SOURCE = "source"  # a mosaic's provenance layer: 1-based item of each pixel (0: none)
COMPLETE_ATTR = "geoseg_complete"


@dataclass(frozen=True)
class LayerSpec:
    """One model output in the store: ``<name>`` (class ids) + ``<name>_confidence``."""

    name: str
    classes: tuple[ClassSpec, ...]
    model_id: str
    engine: str = "torch"  # the inference engine that produced it (torch / onnx)


def _zstore(path: str | Path) -> Any:
    """What zarr opens: the local path as before, or an object store for a URL."""
    if is_object_url(path):
        return zarr.storage.ObjectStore(client(str(path)))
    return str(path)


def _compressor() -> Blosc:
    return Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE)


def class_flags(ids: Sequence[int], names: Sequence[str],
                colors: Sequence[str]) -> dict[str, Any]:
    """A class layer's attributes: CF's ``flag_values`` / ``flag_meanings`` (space-separated
    words, so a space in a name is written ``_``), ``flag_colors``, and ``class_names``, the
    names as the bundle spells them (what the summary, the GeoPackage and the COGs show)."""
    return {"flag_values": list(ids),
            "flag_meanings": " ".join(flag_word(n) for n in names),
            "flag_colors": " ".join(colors), "class_names": list(names)}


def class_names_of(attrs: Mapping[str, Any]) -> list[str]:
    """The class names of a layer's attributes (:func:`class_flags`): ``class_names`` when it
    has one per value, else the words of ``flag_meanings`` (stores before it)."""
    values, names = attrs.get("flag_values"), attrs.get("class_names")
    if (isinstance(values, list) and isinstance(names, list) and len(names) == len(values)
            and all(isinstance(n, str) for n in names)):
        return list(names)
    return str(attrs.get("flag_meanings", "")).split()


def init_store(path: str | Path, grid: GeoBox, chunk: int, layers: list[LayerSpec],
               attrs: dict[str, Any], sources: list[dict[str, Any]] | None = None) -> None:
    """Create the store from the output grid (metadata only; no chunk is written). With
    ``sources`` (a mosaic's items: id, datetime, href) it also has a :data:`SOURCE` layer."""
    crs_wkt = grid.crs.to_wkt()
    t = grid.transform
    g = zarr.open_group(_zstore(path), mode="w", zarr_format=2)
    g.attrs.update({**attrs, COMPLETE_ATTR: False, "crs_wkt": crs_wkt,
                    "transform": [t.a, t.b, t.c, t.d, t.e, t.f], "chunk_size": chunk})
    h, w = grid.shape
    centres = pixel_centres(grid)
    units = (grid.crs.axis_info[0].unit_name if grid.crs.axis_info else "metre")
    if grid.crs.is_geographic:  # CF: longitude / latitude in degrees east / north
        xa = {"standard_name": "longitude", "units": "degrees_east"}
        ya = {"standard_name": "latitude", "units": "degrees_north"}
    else:
        xa = {"standard_name": "projection_x_coordinate", "units": units}
        ya = {"standard_name": "projection_y_coordinate", "units": units}
    x = g.create_array("x", shape=(w,), chunks=(w,), dtype="float64", fill_value=None,
                       attributes={"_ARRAY_DIMENSIONS": ["x"], **xa, "axis": "X"})
    y = g.create_array("y", shape=(h,), chunks=(h,), dtype="float64", fill_value=None,
                       attributes={"_ARRAY_DIMENSIONS": ["y"], **ya, "axis": "Y"})
    x[:] = centres["x"]
    y[:] = centres["y"]
    gt = f"{t.c!r} {t.a!r} {t.b!r} {t.f!r} {t.d!r} {t.e!r}"
    sr = g.create_array("spatial_ref", shape=(), dtype="int32", fill_value=None,
                        attributes={"_ARRAY_DIMENSIONS": [], "crs_wkt": crs_wkt,
                                    "spatial_ref": crs_wkt, "GeoTransform": gt})
    sr[...] = 0
    for layer in layers:
        common: dict[str, Any] = {"model_id": layer.model_id, "engine": layer.engine}
        flags = class_flags([c.id for c in layer.classes], [c.name for c in layer.classes],
                            [c.color for c in layer.classes])
        create_layer(g, layer.name, grid, chunk, FILL,
                     {**common, "long_name": f"{layer.name} class id", **flags})
        create_layer(g, f"{layer.name}_confidence", grid, chunk, 0,
                     {**common, "long_name": f"{layer.name} confidence (max class probability)",
                      "scale_factor": 1 / 255, "add_offset": 0.0})
    if sources is not None:
        create_layer(g, SOURCE, grid, chunk, 0,
                     {"long_name": "mosaic item that produced the pixel (1-based; 0 none)",
                      "items": sources}, dtype="uint16")
    zarr.consolidate_metadata(_zstore(path))


def create_layer(group: zarr.Group, name: str, grid: GeoBox, chunk: int, fill: int,
                 attributes: dict[str, Any], dtype: str = "uint8") -> None:
    """One georeferenced layer (uint8 unless ``dtype``) of a store made by
    :func:`init_store` (the run's layers and the change layers): chunked ``chunk`` ×
    ``chunk``, compressed, on the store's ``y``/``x`` with its CRS (CF ``grid_mapping`` and
    GDAL ``_CRS``), plus ``attributes``."""
    group.create_array(
        name, shape=grid.shape, chunks=(chunk, chunk), dtype=dtype, fill_value=fill,
        compressors=_compressor(),
        attributes={"_ARRAY_DIMENSIONS": ["y", "x"], "grid_mapping": "spatial_ref",
                    "_CRS": {"wkt": grid.crs.to_wkt()}, **attributes})


def pixel_centres(grid: GeoBox) -> dict[str, np.ndarray]:
    """The store's 1-D ``y``/``x`` coordinates: pixel centres in the grid's CRS."""
    t = grid.transform
    return {"y": t.f + t.e * (np.arange(grid.height) + 0.5),
            "x": t.c + t.a * (np.arange(grid.width) + 0.5)}


def store_grid(path: str | Path) -> tuple[GeoBox, int]:
    """The grid and chunk size of a store made by :func:`init_store`."""
    from affine import Affine

    from geoseg.grid import normalize_crs

    attrs = store_attrs(path) if is_object_url(path) else json.loads(
        (Path(path) / ".zattrs").read_text())
    g = zarr.open_group(_zstore(path), mode="r")
    arr = next(a for n, a in g.arrays() if n not in ("x", "y", "spatial_ref"))
    return (GeoBox(tuple(arr.shape), Affine(*attrs["transform"]),  # type: ignore[arg-type]
                   normalize_crs(attrs["crs_wkt"])), int(attrs["chunk_size"]))


def write_chunk(path: str | Path, chunk: Chunk, arrays: dict[str, np.ndarray],
                chunk_size: int) -> None:
    """Write one chunk-aligned block per array; refuses misaligned blocks."""
    win = chunk.window
    if win.row_off % chunk_size or win.col_off % chunk_size:
        raise InputError(f"chunk {chunk.id} window {win} is not aligned to {chunk_size}")
    for name, block in arrays.items():
        if block.shape != win.shape:
            raise InputError(f"block {name} has shape {block.shape}, chunk {chunk.id} is "
                             f"{win.shape}")
    index = (win.row_off // chunk_size, win.col_off // chunk_size)
    if not is_object_url(path):
        local = [(_local_array(Path(path), name), block) for name, block in arrays.items()]
        writable = [(a, block) for a, block in local
                    if a is not None and a.chunks == (chunk_size, chunk_size)]
        if len(writable) == len(local):
            for spec, block in writable:
                _write_local(spec, index, block)
            return
    # object storage: a missing bucket or denied access stops the job (one line); a network
    # error propagates as it is, and the chunk is retried
    with object_errors(str(path), fatal_only=True) if is_object_url(path) \
            else contextlib.nullcontext():
        # object storage: the arrays' metadata from .zmetadata, one request instead of two
        # per array (it is written once, by init_store, after every array)
        g = zarr.open_group(_zstore(path), mode="r+", zarr_format=2,
                            use_consolidated=None if is_object_url(path) else False)
        rs, cs = win.slices()
        for name, block in arrays.items():
            arr = g[name]
            if not isinstance(arr, zarr.Array):
                raise InputError(f"{name} is not an array in {path}")
            arr[rs, cs] = block


@dataclass(frozen=True)
class _LocalArray:
    """What writing or reading one chunk file of a local Zarr v2 array takes, from its
    ``.zarray``."""

    folder: Path
    shape: tuple[int, int]
    chunks: tuple[int, int]
    dtype: np.dtype[Any]
    fill: Any
    separator: str
    codec: Any  # a numcodecs codec, or None (uncompressed)

    def chunk_file(self, index: tuple[int, int]) -> Path:
        """The file of the chunk at ``index`` (row, column)."""
        return self.folder / self.separator.join(str(i) for i in index)


_LOCAL_ARRAYS: dict[tuple[str, int, int], _LocalArray | None] = {}


def _local_array(store: Path, name: str) -> _LocalArray | None:
    """The array ``name`` of a local store, for :func:`_write_local` and :func:`_read_local`;
    None for an array these fast paths do not handle (filters, Fortran order, not 2-D): zarr
    writes and reads those. Cached per ``.zarray`` version (a store made again is read
    again)."""
    meta_path = store / name / ".zarray"
    try:
        st = meta_path.stat()
    except OSError:
        if not store.is_dir():  # a Ray node without the driver's disk
            import socket

            raise InputError(
                f"{store} is not on {socket.gethostname()}'s disks: on a cluster --out must be "
                "on storage every node mounts at the same path, or an s3://, gs:// or az:// "
                "folder") from None
        raise InputError(f"{name} is not an array in {store}") from None
    key = (str(meta_path), st.st_mtime_ns, st.st_size)
    if key in _LOCAL_ARRAYS:
        return _LOCAL_ARRAYS[key]
    import numcodecs

    meta = json.loads(meta_path.read_text())
    ok = (meta.get("zarr_format") == 2 and not meta.get("filters") and meta.get("order") == "C"
          and len(meta.get("chunks", ())) == 2)
    arr = _LocalArray(meta_path.parent, tuple(meta["shape"]), tuple(meta["chunks"]),
                      np.dtype(meta["dtype"]),
                      meta["fill_value"], meta.get("dimension_separator") or ".",
                      numcodecs.get_codec(meta["compressor"]) if meta.get("compressor")
                      else None) if ok else None
    if len(_LOCAL_ARRAYS) > 256:  # a long-lived process writing many stores
        _LOCAL_ARRAYS.clear()
    _LOCAL_ARRAYS[key] = arr
    return arr


def _write_local(arr: _LocalArray, index: tuple[int, int], block: np.ndarray) -> None:
    """One chunk file, the bytes zarr-python would write (an edge chunk padded with the fill
    value; a chunk that is all fill value is no file, as zarr's ``write_empty_chunks=False``),
    encoded in the calling thread (Blosc releases the GIL) and renamed into place, instead
    of queueing on zarr's one event-loop thread (measured: 24 ms → 9 ms per 1024² chunk of
    two arrays, DESIGN.md)."""
    data = np.ascontiguousarray(block, dtype=arr.dtype)
    if data.shape != arr.chunks:
        full = np.full(arr.chunks, arr.fill, dtype=arr.dtype)
        full[:data.shape[0], :data.shape[1]] = data
        data = full
    target = arr.chunk_file(index)
    if arr.fill is not None and bool(np.all(data == arr.fill)):
        target.unlink(missing_ok=True)  # the store's own chunk: an empty one is no file
        return
    payload = arr.codec.encode(data) if arr.codec is not None else data.tobytes()
    target.parent.mkdir(parents=True, exist_ok=True)  # separator "/": a folder per row
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _read_local(arr: _LocalArray, window: Window) -> np.ndarray:
    """``window`` of a local array assembled from its chunk files, each decoded in the calling
    thread (Blosc releases the GIL): what zarr reads (a missing chunk file is the fill value),
    without zarr's event loop. Through zarr each read of a 1024² chunk cost 4.5 ms of CPU,
    mostly in zarr's loop and decoding threads, and was one GIL handoff after another; its
    decode alone takes ~0.9 ms (DESIGN.md, "Chunk files read in the caller")."""
    ch, cw = arr.chunks
    out = np.empty(window.shape, dtype=arr.dtype)
    for r in range(window.row_off // ch, (window.row_end - 1) // ch + 1):
        for c in range(window.col_off // cw, (window.col_end - 1) // cw + 1):
            y0, y1 = max(window.row_off, r * ch), min(window.row_end, (r + 1) * ch)
            x0, x1 = max(window.col_off, c * cw), min(window.col_end, (c + 1) * cw)
            dest = out[y0 - window.row_off:y1 - window.row_off,
                       x0 - window.col_off:x1 - window.col_off]
            try:
                raw = arr.chunk_file((r, c)).read_bytes()
            except FileNotFoundError:  # zarr stores no chunk that is all fill value
                dest[...] = arr.fill
                continue
            data = arr.codec.decode(raw) if arr.codec is not None else raw
            block = np.frombuffer(data, dtype=arr.dtype).reshape(arr.chunks)
            dest[...] = block[y0 - r * ch:y1 - r * ch, x0 - c * cw:x1 - c * cw]
    return out


def chunk_files(path: str | Path, chunk: Chunk, names: list[str]) -> dict[str, list[Any] | None]:
    """Fingerprint of the stored bytes of one chunk: ``{array: [size, blake2b] or None}``.

    None means no chunk file (zarr stores no chunk that equals the fill value). Recorded in the
    manifest after the write, checked by ``--resume`` before a chunk is trusted. In object
    storage each entry also carries the object's ETag: ``[size, blake2b, etag]`` (the bytes are
    read back once, so the hash is of what the bucket holds)."""
    out: dict[str, list[Any] | None] = {}
    if is_object_url(path):
        folder = ObjectFolder(str(path))
        for name in names:
            with object_errors(folder.url, "read", fatal_only=True):
                got = folder.get(_chunk_key(name, chunk))
            out[name] = None if got is None else [
                len(got[0]), hashlib.blake2b(got[0], digest_size=16).hexdigest(), got[1].e_tag]
        return out
    for name in names:
        f = _chunk_path(path, name, chunk)
        try:
            data = f.read_bytes()
        except FileNotFoundError:
            out[name] = None
            continue
        out[name] = [len(data), hashlib.blake2b(data, digest_size=16).hexdigest()]
    return out


def chunk_intact(path: str | Path, chunk: Chunk, expected: dict[str, Any]) -> bool:
    """Whether every array's chunk file is exactly what the manifest recorded."""
    return chunk_files(path, chunk, list(expected)) == expected


def damaged_chunks(path: str | Path, records: dict[str, tuple[Chunk, Any]]) -> list[str]:
    """Ids of the chunks whose stored files are not what their record says (``records``: id →
    (chunk, the record's ``files``, or None when there is no record)).

    A local store is re-read and re-hashed. In object storage one listing of the store (a
    request per 1000 objects, no download) gives every chunk object's size and ETag: an object
    that is missing, truncated or rewritten by anyone since geoseg wrote it has another size or
    ETag (S3, GCS and Azure all give a rewritten object a new ETag), so the comparison is as
    strict as re-hashing without reading the store back."""
    def bad_record(files: Any) -> bool:
        return not isinstance(files, dict)

    if not is_object_url(path):
        return [cid for cid, (chunk, files) in records.items()
                if bad_record(files) or not chunk_intact(path, chunk, files)]
    listing = ObjectFolder(str(path)).listing()
    bad = []
    for cid, (chunk, files) in records.items():
        if bad_record(files):
            bad.append(cid)
            continue
        for name, want in files.items():
            got = listing.get(_chunk_key(name, chunk))
            if (got is None) != (want is None) or (
                    got is not None and (not isinstance(want, list) or len(want) != 3
                                         or [got.size, got.e_tag] != [want[0], want[2]])):
                bad.append(cid)
                break
    return bad


def _chunk_key(name: str, chunk: Chunk) -> str:
    """The chunk file of ``name`` in a format-2 store (``.`` separator, as written)."""
    return f"{name}/{chunk.index[0]}.{chunk.index[1]}"


def _chunk_path(path: str | Path, name: str, chunk: Chunk) -> Path:
    """The chunk file of ``name`` in a local store."""
    return Path(path) / _chunk_key(name, chunk)


def read_layer(path: str | Path, name: str, window: Window) -> np.ndarray:
    """Read ``window`` (must lie inside the grid) of array ``name``: from a local store's chunk
    files in this thread (:func:`_read_local`), otherwise through zarr."""
    if not is_object_url(path):
        local = _local_array(Path(path), name)
        if local is not None and local.fill is not None and window.row_off >= 0 \
                and window.col_off >= 0 and window.row_end <= local.shape[0] \
                and window.col_end <= local.shape[1] and window.size > 0:
            return _read_local(local, window)
    g = zarr.open_group(_zstore(path), mode="r", zarr_format=2)
    arr = g[name]
    if not isinstance(arr, zarr.Array):
        raise InputError(f"{name} is not an array in {path}")
    rs, cs = window.slices()
    return np.asarray(arr[rs, cs])


def mark_complete(path: str | Path, extra: dict[str, Any]) -> None:
    g = zarr.open_group(_zstore(path), mode="r+", zarr_format=2)
    g.attrs.update({**extra, COMPLETE_ATTR: True})
    zarr.consolidate_metadata(_zstore(path))


def mark_incomplete(path: str | Path) -> None:
    """Take back the store's "complete" (a resumed run rewrites chunks): a no-op when it does
    not say so."""
    if not store_attrs(path).get(COMPLETE_ATTR):
        return
    g = zarr.open_group(_zstore(path), mode="r+", zarr_format=2)
    g.attrs.update({COMPLETE_ATTR: False})
    zarr.consolidate_metadata(_zstore(path))


def store_attrs(path: str | Path) -> dict[str, Any]:
    if is_object_url(path):
        data = ObjectFolder(str(path)).read(".zattrs")
        return dict(json.loads(data)) if data is not None else {}
    meta = Path(path) / ".zattrs"
    return dict(json.loads(meta.read_text())) if meta.exists() else {}
