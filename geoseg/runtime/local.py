"""One machine, one process: the same chunk functions as on Ray, in threads.

Reads and writes run in a small thread pool, vectors in another (or in worker processes where
threads would take turns on the GIL: :mod:`geoseg.runtime.vector_procs`), model passes in a
third: one pass at a time with every core for its intra-op threads, or with
``runtime.passes_at_once`` (onnxruntime on CPUs) several single-thread passes of one shared
session (onnxruntime and PyTorch release the GIL while they compute, as do rasterio,
numcodecs and most of shapely).
Beside a GPU model the pools have a thread per core and two passes are in flight (each on its
own CUDA stream): the host's reads, writes and vectors are what feeds the GPU.
The model is loaded once, in this process; nothing but vector tasks (a chunk out, its features
back) crosses a process boundary. With ``runtime.chunk_processes`` the chunks instead go to
worker processes, each running this executor on a strip of the grid
(:mod:`geoseg.runtime.chunk_procs`).

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
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from geoseg.chunks import block_cache, predict_chunk, read_chunk, write_output
from geoseg.errors import GeoSegError, StorageError
from geoseg.grid import Chunk
from geoseg.plan import Plan
from geoseg.runtime.base import (
    Callbacks,
    ChunkFailure,
    StageReport,
    VectorFn,
    model_callers,
    short_error,
)
from geoseg.runtime.chunk_procs import chunk_processes, run_in_processes
from geoseg.runtime.memory import release_free_memory
from geoseg.runtime.scheduling import NeighbourGate
from geoseg.runtime.vector_procs import VectorPool, no_vectors, vector_processes

log = logging.getLogger(__name__)


class LocalBackend:
    """Runs chunks in this process: passes, I/O and vectors in threads of their own."""

    def __init__(self, io_threads: int | None = None, passes: int | None = None,
                 vector_processes: int | None = None, chunk_processes: int | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.io_threads = io_threads
        self.passes = passes  # model passes at once (runtime.passes_at_once; None: default)
        self.vector_processes = vector_processes  # runtime.vector_processes (None: default)
        self.chunk_processes = chunk_processes  # runtime.chunk_processes (None: this process)
        self.should_stop = should_stop  # asked between steps: True stops the run (a worker's)
        self.chunk_workers = 0  # chunk worker processes of the last run (0: this process)
        self.callers = 1  # passes at once in the last run
        self.peak_in_flight = 0
        self.vector_workers = 0  # vector worker processes of the last run (0: threads)

    def run(self, plan: Plan, store: str, todo: list[Chunk], vectorize: list[Chunk] | None,
            vector_fn: VectorFn | None, cb: Callbacks, *, workers: int = 1, threads: int = 1,
            device: str = "cpu", gpus_per_worker: float = 1.0, max_in_flight: int = 4,
            retries: int = 0) -> StageReport:
        n_io = self.io_threads or default_io_threads(device)
        self.vector_workers = (vector_processes(plan, vectorize or [], device, n_io,
                                                self.vector_processes)
                               if vector_fn is not None else 0)
        self.chunk_workers = chunk_processes(todo, self.chunk_processes)
        if self.chunk_workers:
            report, self.callers = run_in_processes(
                self.chunk_workers, plan, store, todo, vectorize, vector_fn, cb,
                threads=threads, device=device, max_in_flight=max_in_flight, retries=retries,
                io_threads=n_io, passes=self.passes, vector_workers=self.vector_workers,
                vector_slots=n_io)
            return report
        callers = self.callers = model_callers(plan, device, threads, self.passes)
        # intra-op threads of each pass (on a GPU they only run the host's share)
        per_call = max(1, threads // callers) if device == "cpu" else threads
        t0 = time.perf_counter()
        models: dict[str, Any] | None = load_models(plan, device, per_call)
        report = StageReport(load_s=time.perf_counter() - t0)
        gate = NeighbourGate.for_plan(plan, vectorize or [], todo)
        pending = deque(todo)
        attempts: dict[str, int] = {}
        reads: deque[tuple[Chunk, Future[Any]]] = deque()
        passes: dict[Future[Any], Chunk] = {}
        writes: dict[Future[Any], Chunk] = {}
        vectors: dict[Future[Any], Chunk] = {}
        ahead = max(callers, max_in_flight // 2)  # chunks read ahead of the model

        def fail(chunk: Chunk, exc: BaseException) -> None:
            failed_ids.add(chunk.id)
            f = ChunkFailure.of(chunk, short_error(exc), attempts[chunk.id],
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
                            attempts[chunk.id], short_error(exc))
                pending.append(chunk)

        ready: deque[Chunk] = deque()  # released for vectorizing, not yet submitted
        vec_limit = n_io  # vector tasks in flight (back pressure on their results)
        # One pass with every core stalls when a vector thread shares them (its parallel
        # operators wait for their slowest thread): vectors then run while it waits for a
        # read, and after it. Single-thread passes (passes_at_once = cores) and a model on a
        # GPU leave room: vectors run at once (DESIGN.md, "A CPU model runs alone").
        beside_model = device != "cpu" or per_call == 1

        failed_ids: set[str] = set()  # not vectorized: their failure is reported once

        def settle(chunk: Chunk) -> None:
            if vector_fn is not None:
                ready.extend(c for c in gate.settle(chunk.index) if c.id not in failed_ids)

        def collect(done: Iterable[Future[Any]]) -> None:
            for fut in done:
                if fut in vectors:
                    vpool.deliver(fut, vectors.pop(fut), report, cb)
                    continue
                stage = passes if fut in passes else writes if fut in writes else None
                if stage is None:
                    continue  # a read: taken when a pass is free
                chunk = stage.pop(fut)
                try:
                    value = fut.result()
                except Exception as exc:
                    failed(chunk, exc)
                    continue
                if stage is passes:
                    writes[pool.submit(write_output, plan, store, value)] = chunk
                else:
                    report.done += 1
                    cb.chunk_done(chunk, value)
                    settle(chunk)

        def predict(chunk_input: Future[Any]) -> Any:
            if models is None:  # freed only once no pass is left
                raise RuntimeError("the models were freed while a pass was queued")
            return predict_chunk(plan, models, chunk_input.result())

        blocks = block_cache(plan, todo)  # decoded source blocks, bounded; cleared after the last
        pool = ThreadPoolExecutor(n_io, thread_name_prefix="geoseg-io")
        mpool = ThreadPoolExecutor(callers, thread_name_prefix="geoseg-model")
        vpool = VectorPool(vector_fn or no_vectors, plan, store, threads=n_io,
                           processes=self.vector_workers)
        pools = (pool, mpool, vpool)
        try:
            if vector_fn is not None:
                ready.extend(gate.settle())
            try:
                while pending or reads or passes or writes or vectors or ready:
                    if self.should_stop is not None and self.should_stop():
                        raise RunStopped("the job stopped this run")
                    collect([f for f in (*passes, *writes, *vectors) if f.done()])
                    model_busy = bool(passes) or (bool(reads) and reads[0][1].done())
                    while ready and len(vectors) < vec_limit and vector_fn is not None \
                            and (beside_model or not model_busy):
                        c = ready.popleft()
                        vectors[vpool.submit(c)] = c
                    while pending and len(reads) + len(passes) + len(writes) < max_in_flight \
                            and len(reads) < ahead:
                        c = pending.popleft()
                        attempts[c.id] = attempts.get(c.id, 0) + 1
                        reads.append((c, pool.submit(read_chunk, plan, c, blocks)))
                    self.peak_in_flight = max(self.peak_in_flight,
                                              len(reads) + len(passes) + len(writes))
                    if reads and reads[0][1].done() and len(passes) < callers:
                        chunk, fut = reads.popleft()
                        if models is None:  # a chunk came back for another try
                            models = load_models(plan, device, per_call)
                        passes[mpool.submit(predict, fut)] = chunk
                        continue
                    if models is not None and not (pending or reads or passes):
                        # the last pass is done: the model's memory goes back before the
                        # last vectors and the exports run (they set a run's peak otherwise)
                        models = None
                        blocks.clear()
                        release_free_memory()
                    waiting: list[Future[Any]] = [*passes, *writes, *vectors]
                    if reads and len(passes) < callers:
                        waiting.append(reads[0][1])
                    if waiting:
                        collect(wait(waiting, return_when=FIRST_COMPLETED).done)
            except BaseException:
                # stop now (a signal, a storage error): queued work is dropped, not waited for
                for p in pools:
                    p.shutdown(wait=False, cancel_futures=True)
                raise
        finally:
            for p in pools:
                p.shutdown(wait=True)
            blocks.clear()
        report.blocks = blocks.stats()
        return report


class RunStopped(Exception):
    """A run told to stop (``should_stop``) ended early; its chunks in hand were finished."""


def default_io_threads(device: str, cores: int | None = None) -> int:
    """Threads for reads and writes (and as many for vectors). Beside a CPU model a few: the
    model has the cores. Beside a GPU every core: the host must decode, write and vectorize
    what the GPU predicts (about 0.5 CPU-s per Mpx in all, measured on CPUs; DESIGN.md)."""
    cores = cores or os.cpu_count() or 2
    return max(2, cores if device != "cpu" else min(4, cores))


def load_models(plan: Plan, device: str, threads: int) -> dict[str, Any]:
    """Every model of the plan, loaded once in this process."""
    from geoseg.models.onnx_predictor import load_predictor

    return {m.name: load_predictor(m.path, device, threads, m.engine) for m in plan.models}
