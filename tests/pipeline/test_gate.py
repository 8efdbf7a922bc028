"""When a chunk may be vectorized: after every chunk its vector context reaches is settled."""

from __future__ import annotations

from geoseg.grid import ChunkGrid
from geoseg.runtime.scheduling import NeighbourGate


def _release_order(reach: int) -> dict[tuple[int, int], int]:
    """Settle a 5x5 chunk grid in raster order; when (step) each chunk is released."""
    grid = ChunkGrid((320, 320), 64)
    chunks = list(grid)
    gate = NeighbourGate(grid, chunks, set(), neighbours=True, reach=reach)
    released: dict[tuple[int, int], int] = {}
    for step, c in enumerate(chunks):
        for r in gate.settle(c.index):
            released[r.index] = step
    assert len(released) == len(chunks)
    return released


def test_a_context_wider_than_a_chunk_waits_for_the_second_ring() -> None:
    one, two = _release_order(1), _release_order(2)
    # chunk (1, 1): its 8 neighbours are settled at (2, 2) = step 12, its second ring at
    # (3, 3) = step 18
    assert one[(1, 1)] == 12 and two[(1, 1)] == 18
    assert all(two[k] >= one[k] for k in one)
