"""What a backend is told to do and how it reports back (backend-neutral)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from geoseg.grid import Chunk
from geoseg.plan import Plan


@dataclass
class ChunkFailure:
    chunk_id: str
    window: tuple[int, int, int, int]  # row_off, col_off, height, width (output grid pixels)
    error: str
    attempts: int
    retryable: bool = True  # False: bad input or model, a rerun cannot fix it

    @classmethod
    def of(cls, chunk: Chunk, error: str, attempts: int, retryable: bool = True) -> ChunkFailure:
        w = chunk.window
        return cls(chunk.id, (w.row_off, w.col_off, w.height, w.width), error, attempts,
                   retryable)


@dataclass
class StageReport:
    done: int = 0
    failed: list[ChunkFailure] = field(default_factory=list)
    vectorized: int = 0
    load_s: float = 0.0  # loading the models (where the backend knows it)


class Callbacks(Protocol):
    def chunk_done(self, chunk: Chunk, stats: dict[str, Any]) -> None: ...
    def chunk_failed(self, failure: ChunkFailure) -> None: ...
    def vectors_done(self, chunk: Chunk, result: Any) -> None: ...


VectorFn = Callable[[Plan, str, Chunk], Any]


class Backend(Protocol):
    def run(self, plan: Plan, store: str, todo: list[Chunk], vectorize: list[Chunk] | None,
            vector_fn: VectorFn | None, cb: Callbacks, *, workers: int, threads: int,
            device: str, gpus_per_worker: float, max_in_flight: int, retries: int) -> StageReport:
        """Predict and write every chunk in ``todo``; vectorize each chunk of ``vectorize`` once it
        and its neighbours are written (or failed)."""
        ...

