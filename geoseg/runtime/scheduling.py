"""Backend-neutral bookkeeping: when may a chunk be vectorized?"""

from __future__ import annotations

from geoseg.grid import Chunk, ChunkGrid


class NeighbourGate:
    """Releases a chunk for vectorization once it and its 8 neighbours are settled (written or
    failed). Chunks settled before this run (resume) count as settled."""

    def __init__(self, grid: ChunkGrid, wanted: list[Chunk], settled: set[tuple[int, int]]):
        self.grid = grid
        self.settled = set(settled)
        self.waiting = {c.index: c for c in wanted}

    def settle(self, index: tuple[int, int] | None = None) -> list[Chunk]:
        """Mark ``index`` settled; return chunks that became ready (in raster order)."""
        if index is not None:
            self.settled.add(index)
            candidates = [index, *self.grid.neighbours(index)]
        else:
            candidates = list(self.waiting)
        ready = []
        for idx in sorted(candidates):
            c = self.waiting.get(idx)
            if c is None or idx not in self.settled:
                continue
            if all(n in self.settled for n in self.grid.neighbours(idx)):
                ready.append(self.waiting.pop(idx))
        return ready
