"""One machine, one process: the same chunk functions as on Ray, in threads.

Reads, writes and vectorizing run in a small thread pool; the models run in the calling thread,
one chunk at a time, with every core for their own intra-op threads (onnxruntime and PyTorch
release the GIL while they compute, as do rasterio, numcodecs and most of shapely). Nothing is
serialised between processes and the model is loaded once, in this process.

Why it exists beside :mod:`geoseg.runtime.ray_backend`: on one machine Ray costs a start-up of
several seconds, a worker process per concurrent task (1.8 GB of idle workers' PSS at 4096² on
the 2-core benchmark machine), a second copy of the model's libraries in its actor, and object-
store copies of every chunk; none of it buys anything that one process cannot do. Results are
byte-identical to the Ray backend (same functions, same order-independent writes; tested).

Failures follow the Ray backend's rules: an error a retry cannot fix (bad input or model: a
:class:`~geoseg.errors.GeoSegError`) fails its chunk at once, a storage error stops the job,
anything else is retried ``retries`` times, then reported.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from geoseg.chunks import predict_chunk, read_chunk, write_output
from geoseg.errors import GeoSegError, StorageError
from geoseg.grid import Chunk
from geoseg.plan import Plan
from geoseg.runtime.base import Callbacks, ChunkFailure, StageReport, VectorFn
from geoseg.runtime.memory import release_free_memory
from geoseg.runtime.scheduling import NeighbourGate

log = logging.getLogger(__name__)


class LocalBackend:
    """Runs chunks in this process: models in the calling thread, I/O and vectors in threads."""

    def __init__(self, io_threads: int | None = None) -> None:
        self.io_threads = io_threads
        self.peak_in_flight = 0

    def run(self, plan: Plan, store: str, todo: list[Chunk], vectorize: list[Chunk] | None,
            vector_fn: VectorFn | None, cb: Callbacks, *, workers: int = 1, threads: int = 1,
            device: str = "cpu", gpus_per_worker: float = 1.0, max_in_flight: int = 4,
            retries: int = 0) -> StageReport:
        t0 = time.perf_counter()
        models: dict[str, Any] | None = load_models(plan, device, threads)
        report = StageReport(load_s=time.perf_counter() - t0)
        gate = NeighbourGate.for_plan(plan, vectorize or [], todo)
        n_io = self.io_threads or max(2, min(4, os.cpu_count() or 2))
        pending = deque(todo)
        attempts: dict[str, int] = {}
        reads: deque[tuple[Chunk, Future[Any]]] = deque()
        writes: dict[Future[Any], Chunk] = {}
        vectors: dict[Future[Any], Chunk] = {}
        ahead = max(1, max_in_flight // 2)  # chunks read ahead of the model

        def fail(chunk: Chunk, exc: BaseException) -> None:
            f = ChunkFailure.of(chunk, f"{type(exc).__name__}: {exc}"[:500], attempts[chunk.id],
                                retryable=not isinstance(exc, GeoSegError))
            report.failed.append(f)
            cb.chunk_failed(f)
            settle(chunk)

        def failed(chunk: Chunk, exc: BaseException) -> None:
            """A chunk's read, model or write raised: stop, fail it, or try it again."""
            if isinstance(exc, StorageError):
                raise exc
            if isinstance(exc, GeoSegError) or attempts[chunk.id] > retries:
                fail(chunk, exc)
            else:
                log.warning("chunk %s failed (attempt %d), retrying: %s", chunk.id,
                            attempts[chunk.id], exc)
                pending.append(chunk)

        ready: deque[Chunk] = deque()  # released for vectorizing, not yet submitted
        vec_limit = n_io  # vector tasks in flight (back pressure on their results)
        # A model on the CPU has every core: vector threads beside it stall its parallel
        # operators (each waits for its slowest thread) and hold the GIL that its glue code
        # needs, so they run when it waits for a read and after it is done (DESIGN.md).
        beside_model = device != "cpu"

        def settle(chunk: Chunk) -> None:
            if vector_fn is not None:
                ready.extend(gate.settle(chunk.index))

        def collect(done: Iterable[Future[Any]]) -> None:
            for fut in done:
                if fut in writes:
                    chunk = writes.pop(fut)
                    try:
                        stats = fut.result()
                    except Exception as exc:
                        failed(chunk, exc)
                    else:
                        report.done += 1
                        cb.chunk_done(chunk, stats)
                        settle(chunk)
                elif fut in vectors:
                    c = vectors.pop(fut)
                    try:
                        result = fut.result()
                    except StorageError:
                        raise
                    except Exception as exc:  # this chunk's vectors only
                        fail_vectors(report, cb, c, exc)
                        continue
                    cb.vectors_done(c, result)
                    report.vectorized += 1

        pool = ThreadPoolExecutor(n_io, thread_name_prefix="geoseg-io")
        vpool = ThreadPoolExecutor(n_io, thread_name_prefix="geoseg-vec")
        try:
            if vector_fn is not None:
                ready.extend(gate.settle())
            try:
                while pending or reads or writes or vectors or ready:
                    # take what finished while the model ran: the model runs in this thread,
                    # so results are seen (and chunks released for vectors) only between passes
                    collect([f for f in (*writes, *vectors) if f.done()])
                    model_busy = bool(reads) and reads[0][1].done()
                    while ready and len(vectors) < vec_limit and vector_fn is not None \
                            and (beside_model or not model_busy):
                        c = ready.popleft()
                        vectors[vpool.submit(vector_fn, plan, store, c)] = c
                    while pending and len(reads) + len(writes) < max_in_flight \
                            and len(reads) < ahead:
                        c = pending.popleft()
                        attempts[c.id] = attempts.get(c.id, 0) + 1
                        reads.append((c, pool.submit(read_chunk, plan, c)))
                    self.peak_in_flight = max(self.peak_in_flight, len(reads) + len(writes))
                    if reads and reads[0][1].done():
                        chunk, fut = reads.popleft()
                        if models is None:  # a chunk came back for another try
                            models = load_models(plan, device, threads)
                        try:
                            out = predict_chunk(plan, models, fut.result())
                        except Exception as exc:
                            failed(chunk, exc)
                        else:
                            writes[pool.submit(write_output, plan, store, out)] = chunk
                        if not pending and not reads:
                            # the last pass: the model's memory goes back before the last
                            # vectors and the exports run (they set a run's peak otherwise)
                            models = None
                            release_free_memory()
                        continue
                    waiting: list[Future[Any]] = [*writes, *vectors,
                                                  *([reads[0][1]] if reads else [])]
                    collect(wait(waiting, return_when=FIRST_COMPLETED).done)
            except BaseException:
                # stop now (a signal, a storage error): queued work is dropped, not waited for
                pool.shutdown(wait=False, cancel_futures=True)
                vpool.shutdown(wait=False, cancel_futures=True)
                raise
        finally:
            pool.shutdown(wait=True)
            vpool.shutdown(wait=True)
        return report


def fail_vectors(report: StageReport, cb: Callbacks, chunk: Chunk, exc: BaseException) -> None:
    f = ChunkFailure.of(chunk, f"vectorize: {type(exc).__name__}: {exc}"[:500], 1)
    report.failed.append(f)
    cb.chunk_failed(f)


def load_models(plan: Plan, device: str, threads: int) -> dict[str, Any]:
    """Every model of the plan, loaded once in this process."""
    from geoseg.models.onnx_predictor import load_predictor

    return {m.name: load_predictor(m.path, device, threads, m.engine) for m in plan.models}
