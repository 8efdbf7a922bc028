"""Where a Ray job's model actors go, and which chunks each node takes (no Ray here).

On a cluster of several nodes a CPU job runs one model actor per node by default, each with its
node's cores (one actor on one node used one node's cores whatever the cluster's size). Chunks
are handed out in bands: each node takes the chunks of its own contiguous share of the raster
order first, so that neighbouring chunks, which share their halo's source blocks, are read by
the same node's reader (a chunk handed to whichever actor was least loaded alternated between
nodes, and each node decoded the blocks its neighbours had decoded already). A node that runs
out takes the last chunk of the longest other share: nobody idles while chunks are left.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field

from geoseg.grid import Chunk


@dataclass(frozen=True)
class ActorPlace:
    node: str | None  # the node the actor should run on (None: wherever Ray puts it)
    threads: int      # its intra-op threads


def place_actors(node_cpus: Mapping[str, float], workers: int, threads: int
                 ) -> list[ActorPlace]:
    """CPU model actors over the cluster's nodes (``node_cpus``: node id → CPUs): round robin,
    most CPUs first, so that ``workers`` = the number of nodes gives one actor per node. Each
    actor gets ``threads`` intra-op threads when that is given (> 0), else its node's CPUs
    shared among the actors placed there. Actors are pinned (softly: a replacement goes
    elsewhere when the node is gone) to their node; with no node known, nowhere."""
    nodes = sorted(node_cpus, key=lambda n: (-node_cpus[n], n))
    if not nodes:
        return [ActorPlace(None, max(1, threads))] * workers
    on = [nodes[k % len(nodes)] for k in range(workers)]
    count = {n: on.count(n) for n in nodes}
    return [ActorPlace(n, threads if threads > 0 else max(1, int(node_cpus[n] // count[n])))
            for n in on]


@dataclass
class ChunkQueues:
    """The chunks still to run, in one queue per node: contiguous shares of ``todo`` (raster
    order) in proportion to each node's weight (its model actors). ``take(node)`` gives the
    node's next chunk, or the last chunk of the longest other queue when its own is empty."""

    queues: dict[Hashable, deque[Chunk]]
    home: dict[str, Hashable] = field(default_factory=dict)  # chunk id → its share's node
    stolen: int = 0

    @classmethod
    def split(cls, todo: Iterable[Chunk], weights: Mapping[Hashable, int]) -> ChunkQueues:
        chunks = list(todo)
        total = sum(weights.values())
        queues: dict[Hashable, deque[Chunk]] = {}
        start = done = 0
        for node, w in weights.items():
            done += w
            end = round(len(chunks) * done / total) if total else len(chunks)
            queues[node] = deque(chunks[start:end])
            start = end
        if not queues:
            queues[None] = deque(chunks)
        return cls(queues, {c.id: n for n, q in queues.items() for c in q})

    def share(self, node: Hashable) -> list[Chunk]:
        """The chunks left in ``node``'s own queue, in the order it takes them."""
        return list(self.queues.get(node, ()))

    def take(self, node: Hashable) -> Chunk | None:
        own = self.queues.get(node)
        if own:
            return own.popleft()
        victim = max(self.queues.values(), key=len)
        if not victim:
            return None
        self.stolen += 1
        return victim.pop()

    def put_back(self, chunk: Chunk) -> None:
        """A chunk to run again (a retry): at the end of its share's queue."""
        self.queues[self.home.get(chunk.id, next(iter(self.queues)))].append(chunk)

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())
