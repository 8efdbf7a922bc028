"""Chunk reads with and without the source block cache, measured in one run.

Reads every chunk window (chunk + halo, row-major, as the local backend does) of the bench
scene twice per repetition: once straight through GDAL, once through a run's
:class:`~geoseg.blockcache.BlockCache`, and prints CPU seconds, tile decodes and the ratio.

    python -m benchmarks.bench_reads --size 4096 --chunk-size 1024 --halo 64

The cached reads run twice: least recently used blocks out first, and with the windows
announced to the cache first (what a run does: each block dropped after its last read).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

from benchmarks.bench_pipeline import scene
from geoseg.blockcache import BlockCache
from geoseg.grid import ChunkGrid
from geoseg.io import open_info, read_window


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--halo", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "geoseg-bench"))
    a = p.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bench scene declares no nodata value
        info = open_info(scene(a.size, Path(a.work)))
    grid = ChunkGrid((info.geobox.height, info.geobox.width), a.chunk_size)
    windows = [c.window.pad(a.halo) for c in grid]
    bands = tuple(range(1, min(3, info.count) + 1))
    mpx = info.geobox.height * info.geobox.width / 1e6
    print(f"{info.path}: {info.geobox.width}x{info.geobox.height}, {len(windows)} windows of "
          f"chunk {a.chunk_size} + halo {a.halo}")
    inside = info.geobox.window
    announced = [(w.row_off, w.col_off, w.height, w.width)
                 for w in (win.intersect(inside) for win in windows)]
    for rep in range(a.repeat):
        row = []
        told = BlockCache()
        told.expect(info.path, announced)
        caches = (None, BlockCache(), told)
        for cache in caches:
            t0 = time.process_time()
            for win in windows:
                read_window(info, win, bands, cache=cache)
            row.append(time.process_time() - t0)
            if cache is not None:
                cache.clear()  # (keeps its counts and peak for the lines below)
        print(f"  rep {rep + 1}: direct {row[0]:.3f} CPU-s ({row[0] / mpx:.4f}/Mpx)")
        for name, cache, t in (("cached (LRU)", caches[1], row[1]),
                               ("cached, reads announced", caches[2], row[2])):
            assert cache is not None
            print(f"    {name:24s} {t:.3f} ({t / mpx:.4f}/Mpx; {cache.misses} decodes, "
                  f"{cache.hits} reuses, peak {cache.peak_bytes / 2**20:.0f} MiB) -> "
                  f"{row[0] / t:.2f}x")


if __name__ == "__main__":
    main()
