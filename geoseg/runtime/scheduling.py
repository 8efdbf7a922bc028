"""Backend-neutral bookkeeping: when may a chunk be vectorized?"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geoseg.grid import Chunk, ChunkGrid

if TYPE_CHECKING:
    from geoseg.plan import Plan


class NeighbourGate:
    """Releases a chunk for vectorization once it and the chunks its context reaches are
    settled (written or failed): ``reach`` rings of neighbours (1: the 8 around it; a vector
    halo wider than a chunk reaches further). With ``neighbours=False`` (land cover only: its
    vectors read the chunk alone, seams are joined later by the merger) as soon as the chunk
    itself is. Chunks settled before this run (resume) count as settled."""

    def __init__(self, grid: ChunkGrid, wanted: list[Chunk], settled: set[tuple[int, int]],
                 neighbours: bool = True, reach: int = 1):
        self.grid = grid
        self.settled = set(settled)
        self.waiting = {c.index: c for c in wanted}
        self.neighbours = neighbours
        self.reach = max(1, reach)

    @classmethod
    def for_plan(cls, plan: Plan, wanted: list[Chunk], todo: list[Chunk]) -> NeighbourGate:
        """The gate a job needs: building footprints read a context around the chunk."""
        todo_ids = {c.index for c in todo}
        return cls(plan.chunks, wanted, {c.index for c in plan.chunks if c.index not in todo_ids},
                   neighbours=plan.model("buildings") is not None,
                   reach=-(-plan.vector_halo // plan.chunks.chunk))

    def settle(self, index: tuple[int, int] | None = None) -> list[Chunk]:
        """Mark ``index`` settled; return chunks that became ready (in raster order)."""
        if index is not None:
            self.settled.add(index)
            candidates = [index, *self.grid.neighbours(index, self.reach)]
        else:
            candidates = list(self.waiting)
        ready = []
        for idx in sorted(candidates):
            c = self.waiting.get(idx)
            if c is None or idx not in self.settled:
                continue
            around = self.grid.neighbours(idx, self.reach)
            if not self.neighbours or all(n in self.settled for n in around):
                ready.append(self.waiting.pop(idx))
        return ready
