"""A bounded cache of decoded source blocks, so that overlapping chunk windows decode each block
of a tiled GeoTIFF once instead of once per window.

A chunk window with its halo (1152² for chunk 1024 + halo 64) over 512² source tiles touches 16
tiles for 5 tiles' worth of pixels of its own, and GDAL drops its decoded blocks with the
dataset handle, so every tile of a 4096² image was decoded ~4 times (3.1 ms of deflate per
512² 4-band tile, measured). The cache keeps decoded blocks of local and remote files (a URL:
GDAL's process-wide cache holds the fetched bytes, but decodes them again) under a byte
budget that does not grow with the raster: ``max(64 MiB, 3 windows)``. A job announces the
windows its reads will cover (:meth:`BlockCache.expect`), so a block is dropped right after its
last read; what the budget then holds is what will be read again, and least recently used
blocks go first only when that does not fit (or for reads not announced).
A block another thread is decoding is waited for, not decoded twice (the two reader threads
usually read neighbouring chunks, which share their halo blocks).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from rasterio.windows import Window as RioWindow

from geoseg.sources.remote import is_remote

log = logging.getLogger(__name__)

#: The cache's floor in bytes; a window three times larger raises it for that read.
DEFAULT_BYTES = 64 << 20
#: The most an announced schedule may raise the budget to, so that the blocks shared by two
#: chunk rows stay (two tile rows of the image width: 64 blocks of 1 MiB at 16384² with 4-band
#: 512² tiles and a mask); wider images fall back to least recently used eviction.
SCHEDULE_MAX_BYTES = 256 << 20
#: Windows that would take more block reads than this are read by GDAL in one call (striped
#: files with a few rows per strip: a block read per strip would cost more than it saves).
MAX_BLOCKS_PER_WINDOW = 256

#: The most windows (chunks) and block reads a schedule is made for: beyond them (a region of
#: 50,000 chunks and more) the reads use least-recently-used eviction, as unannounced reads do.
#: The schedule holds a counter per block, which grows with the region: 16 KB per 1024² chunk
#: of 128² blocks, 61 GB for a 2,000,000² image, which killed such a job at its first read.
MAX_SCHEDULED_WINDOWS = 50_000
MAX_SCHEDULED_READS = 500_000

BlockKey = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Block:
    data: np.ndarray             # (C, h, w) in the source dtype
    mask: np.ndarray | None      # (h, w) uint8 dataset mask, when the reader asked for one

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (self.mask.nbytes if self.mask is not None else 0)


class BlockCache:
    """Decoded blocks by ``(file identity, bands, mask, block row, block col)``; thread-safe."""

    def __init__(self, max_bytes: int = DEFAULT_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = self.peak_bytes = 0
        self.hits = self.misses = 0
        self._blocks: OrderedDict[BlockKey, Block] = OrderedDict()
        self._pending: dict[BlockKey, threading.Event] = {}
        self._lock = threading.Lock()
        # the reads a job announced (expect): windows by file until the first read gives the
        # block shape, then reads still to come per (file, block row, block col)
        self._expected: dict[Any, list[tuple[int, int, int, int]]] = {}
        self._uses: dict[tuple[Any, int, int], int] = {}
        self._needed = 0  # bytes the announced reads hold at most at once (capped)
        self._unscheduled: set[Any] = set()  # files announced beyond the schedule's limits

    def expect(self, path: str, windows: Iterable[tuple[int, int, int, int]]) -> None:
        """The windows ``(row_off, col_off, height, width)`` of ``path`` that the job's reads
        will cover, each once, in the order it will read them. A block is then dropped as
        soon as the last of them has read it, and the budget is raised to what those reads
        hold at once (at most :data:`SCHEDULE_MAX_BYTES`): the band that the next chunk row
        shares stays instead of going as the least recently used blocks (at 16384² LRU
        decoded 1984 blocks for 1024 tiles). Reads not announced (a retry) are served as
        before."""
        ident = file_identity(path)
        if ident is None:
            return
        announced = list(itertools.islice((w for w in windows if w[2] > 0 < w[3]),
                                          MAX_SCHEDULED_WINDOWS + 1))
        with self._lock:
            if ident in self._unscheduled:
                return
            known = self._expected.setdefault(ident, [])
            if len(known) + len(announced) > MAX_SCHEDULED_WINDOWS:
                self._unschedule(ident, f"more than {MAX_SCHEDULED_WINDOWS} windows")
                return
            known.extend(announced)

    def _unschedule(self, ident: Any, why: str) -> None:
        """No schedule for the file ``ident`` (too large to keep one): LRU eviction."""
        log.info("source blocks: %s announced for one image, read with LRU eviction", why)
        self._expected.pop(ident, None)
        self._unscheduled.add(ident)

    def stats(self) -> dict[str, int]:
        """Blocks decoded and reused so far, and the most bytes the cache held at once."""
        return {"decoded": self.misses, "reused": self.hits, "peak_bytes": self.peak_bytes}

    def clear(self) -> None:
        """Drop every block (the job's last read is done)."""
        with self._lock:
            if self.hits or self.misses:
                log.debug("source blocks: %d decoded, %d reused", self.misses, self.hits)
            self._blocks.clear()
            self.bytes = 0
            self._expected.clear()
            self._uses.clear()
            self._unscheduled.clear()
            self._needed = 0

    def read(self, src: Any, path: str, window: RioWindow, bands: tuple[int, ...],
             with_mask: bool) -> tuple[np.ndarray, np.ndarray | None] | None:
        """``src.read(bands, window)`` (and ``src.dataset_mask(window)`` when ``with_mask``)
        assembled from cached blocks, or None where the cache does not apply (the caller reads
        directly): a file that is not local, bands with different block shapes or data types
        (a VRT may mix them), or a window of more than :data:`MAX_BLOCKS_PER_WINDOW` blocks."""
        ident = file_identity(path)
        shapes = {src.block_shapes[b - 1] for b in bands}
        if ident is None or len(shapes) != 1 or len({src.dtypes[b - 1] for b in bands}) != 1:
            return None
        bh, bw = shapes.pop()
        r0, c0 = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        rows = range(r0 // bh, (r0 + h - 1) // bh + 1)
        cols = range(c0 // bw, (c0 + w - 1) // bw + 1)
        if len(rows) * len(cols) > MAX_BLOCKS_PER_WINDOW:
            return None
        itemsize = np.dtype(src.dtypes[bands[0] - 1]).itemsize
        if ident in self._expected:
            self._count_uses(ident, bh, bw, bh * bw * (len(bands) * itemsize + int(with_mask)))
        budget = max(self.max_bytes, 3 * h * w * (len(bands) * itemsize + int(with_mask)),
                     self._needed)
        data = np.empty((len(bands), h, w), dtype=src.dtypes[bands[0] - 1])
        mask = np.empty((h, w), dtype=np.uint8) if with_mask else None
        for br in rows:
            for bc in cols:
                key = (ident, bands, with_mask, br, bc)
                block = self._get(key, src, bands, with_mask, br * bh, bc * bw, bh, bw, budget)
                # the block's part inside the window, in window and in block coordinates
                y0, x0 = max(r0, br * bh), max(c0, bc * bw)
                y1 = min(r0 + h, br * bh + block.data.shape[1])
                x1 = min(c0 + w, bc * bw + block.data.shape[2])
                data[:, y0 - r0:y1 - r0, x0 - c0:x1 - c0] = \
                    block.data[:, y0 - br * bh:y1 - br * bh, x0 - bc * bw:x1 - bc * bw]
                if mask is not None and block.mask is not None:
                    mask[y0 - r0:y1 - r0, x0 - c0:x1 - c0] = \
                        block.mask[y0 - br * bh:y1 - br * bh, x0 - bc * bw:x1 - bc * bw]
                self._used(ident, (ident, bands, with_mask, br, bc))
        return data, mask

    def _count_uses(self, ident: Any, bh: int, bw: int, block_bytes: int) -> None:
        """Turn the windows announced for a file into reads to come per block, and find how
        many blocks those reads, in their order, hold at once."""
        with self._lock:
            announced = self._expected.pop(ident, [])
            reads = sum(((r0 + h - 1) // bh - r0 // bh + 1) * ((c0 + w - 1) // bw - c0 // bw + 1)
                        for r0, c0, h, w in announced)
            if reads > MAX_SCHEDULED_READS:
                self._unschedule(ident, f"{reads} block reads (more than {MAX_SCHEDULED_READS})")
                return
            windows = [[(ident, br, bc) for br in range(r0 // bh, (r0 + h - 1) // bh + 1)
                        for bc in range(c0 // bw, (c0 + w - 1) // bw + 1)]
                       for r0, c0, h, w in announced]
            uses: dict[tuple[Any, int, int], int] = {}
            for keys in windows:
                for key in keys:
                    uses[key] = uses.get(key, 0) + 1
            for key, n in uses.items():
                self._uses[key] = self._uses.get(key, 0) + n
            held: set[tuple[Any, int, int]] = set()
            peak = 0
            for keys in windows:  # blocks decoded and still to be read again, window by window
                held.update(keys)
                peak = max(peak, len(held))
                for key in keys:
                    uses[key] -= 1
                    if not uses[key]:
                        held.discard(key)
            self._needed = max(self._needed, min(peak * block_bytes, SCHEDULE_MAX_BYTES))

    def _used(self, ident: Any, key: BlockKey) -> None:
        """One announced read of the block is done; after its last one the block goes."""
        use = (ident, key[3], key[4])
        with self._lock:
            left = self._uses.get(use)
            if left is None:
                return
            if left > 1:
                self._uses[use] = left - 1
                return
            del self._uses[use]
            block = self._blocks.pop(key, None)
            if block is not None:
                self.bytes -= block.nbytes

    def _get(self, key: BlockKey, src: Any, bands: tuple[int, ...], with_mask: bool, row: int,
             col: int, bh: int, bw: int, budget: int) -> Block:
        while True:
            with self._lock:
                block = self._blocks.get(key)
                if block is not None:
                    self._blocks.move_to_end(key)
                    self.hits += 1
                    return block
                waiting = self._pending.get(key)
                if waiting is None:  # this thread decodes it
                    done = self._pending[key] = threading.Event()
                    self.misses += 1
                    break
            waiting.wait()  # another thread is decoding it; then look again
        try:
            win = RioWindow(col, row, min(bw, src.width - col), min(bh, src.height - row))
            block = Block(src.read(list(bands), window=win),
                          src.dataset_mask(window=win) if with_mask else None)
            with self._lock:
                self._blocks[key] = block
                self.bytes += block.nbytes
                self.peak_bytes = max(self.peak_bytes, self.bytes)
                while self.bytes > budget and len(self._blocks) > 1:
                    _, old = self._blocks.popitem(last=False)
                    self.bytes -= old.nbytes
            return block
        finally:
            with self._lock:
                del self._pending[key]
            done.set()


def file_identity(path: str) -> tuple[str, ...] | tuple[str, int, int, int] | None:
    """A local file's path, inode, size and modification time (a file replaced or rewritten
    between two reads is another file); a URL (``https://``, ``s3://``, GDAL's network
    paths) as it is written: a cache lives for one job, and within a process GDAL's own
    cache of fetched bytes takes a remote file for unchanged as well. None for anything else
    (other ``/vsi`` paths, files that are not there)."""
    if is_remote(path):
        return ("remote", str(path))
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns)

