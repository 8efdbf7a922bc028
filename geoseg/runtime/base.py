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
    # source blocks the reads decoded and reused (BlockCache.stats, summed over caches)
    blocks: dict[str, int] = field(default_factory=dict)
    # how the backend ran the models where it decided it itself (Ray: the actors' threads and
    # their nodes), for the summary's ``runtime``
    runtime: dict[str, Any] = field(default_factory=dict)


class Callbacks(Protocol):
    def chunk_done(self, chunk: Chunk, stats: dict[str, Any]) -> None: ...
    def chunk_failed(self, failure: ChunkFailure) -> None: ...
    def vectors_done(self, chunk: Chunk, result: Any) -> None: ...


VectorFn = Callable[[Plan, str, Chunk], Any]


def short_error(exc: BaseException) -> str:
    """``exc`` in one line for warnings and the summary: its type and its first message line,
    without URL secrets (an object store's error is a multi-line dump of its request)."""
    from geoseg.sources.remote import redact

    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return redact(f"{type(exc).__name__}: {lines[0] if lines else ''}")[:500]


def fail_vectors(report: StageReport, cb: Callbacks, chunk: Chunk, exc: BaseException) -> None:
    """A chunk's vectors failed (its raster stays): reported like a chunk that failed."""
    f = ChunkFailure.of(chunk, f"vectorize: {short_error(exc)}", 1)
    report.failed.append(f)
    cb.chunk_failed(f)


GPU_PASSES = 2  # chunks in flight per GPU model worker by default: one's copies and host work
# overlap the other's kernels (each caller has its own CUDA stream)


def model_callers(plan: Plan, device: str, threads: int, passes: int | None) -> int:
    """Model passes run at once (``runtime.passes_at_once``). On a GPU ``passes`` (default
    :data:`GPU_PASSES`) callers share the model, each on its own CUDA stream. On CPUs several
    only for ONNX Runtime (its sessions are safe to call from several threads and share their
    weights), each pass with ``threads // passes`` intra-op threads; PyTorch on CPUs runs one
    pass at a time."""
    if device != "cpu":
        return passes or GPU_PASSES
    if passes and passes > 1 and plan.models and all(m.engine == "onnx" for m in plan.models):
        return max(1, min(passes, threads))
    return 1


class Backend(Protocol):
    def run(self, plan: Plan, store: str, todo: list[Chunk], vectorize: list[Chunk] | None,
            vector_fn: VectorFn | None, cb: Callbacks, *, workers: int, threads: int,
            device: str, gpus_per_worker: float, max_in_flight: int, retries: int) -> StageReport:
        """Predict and write every chunk in ``todo``; vectorize each chunk of ``vectorize`` once it
        and its neighbours are written (or failed)."""
        ...

