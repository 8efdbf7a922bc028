"""The Ray adapter: the only module that imports Ray.

Reading, writing and vectorizing are Ray tasks; models live in a pool of actors (one per GPU with
``num_gpus``, or CPU actors) that load their bundles once. The driver chains read → predict →
write per chunk through object refs, keeps at most ``max_in_flight`` chunks in the air (back
pressure: readers never flood memory), and schedules a chunk's vectorization as soon as it and
its neighbours are written. A failing chunk is retried, then reported with its window and error
without sinking the job.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from typing import Any

import ray

from geoseg.chunks import ChunkInput, ChunkOutput, predict_chunk, read_chunk, write_output
from geoseg.grid import Chunk
from geoseg.plan import Plan
from geoseg.runtime.base import Callbacks, ChunkFailure, StageReport, VectorFn
from geoseg.runtime.scheduling import NeighbourGate

log = logging.getLogger(__name__)

TASK_CPUS = 0.25  # logical: I/O and vector tasks share cores with the model actors


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (or RAY_ADDRESS), else start a local Ray bound to 127.0.0.1."""
    if ray.is_initialized():
        return
    addr = address or os.environ.get("RAY_ADDRESS")
    if addr:
        ray.init(address=addr, logging_level=logging.WARNING, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=True,
                 _node_ip_address="127.0.0.1")


class ModelWorker:
    """Holds every model of the job, loaded once per actor."""

    def __init__(self, plan: Plan, device: str, threads: int) -> None:
        import torch

        from geoseg.models.predictor import Predictor

        torch.set_num_threads(threads)
        self.models = {m.name: Predictor(m.path, device=device, num_threads=threads)
                       for m in plan.models}

    def predict(self, plan: Plan, inp: ChunkInput) -> ChunkOutput:
        return predict_chunk(plan, self.models, inp)

    def ping(self) -> bool:
        return True


def _read(plan: Plan, chunk: Chunk) -> ChunkInput:
    return read_chunk(plan, chunk)


def _write(plan: Plan, store: str, out: ChunkOutput) -> dict[str, Any]:
    return write_output(plan, store, out)


def _vectorize(fn: VectorFn, plan: Plan, store: str, chunk: Chunk) -> Any:
    return fn(plan, store, chunk)


class RayBackend:
    def run(self, plan: Plan, store: str, todo: list[Chunk], vectorize: list[Chunk] | None,
            vector_fn: VectorFn | None, cb: Callbacks, *, workers: int, threads: int,
            device: str, gpus_per_worker: float, max_in_flight: int,
            retries: int) -> StageReport:
        gpu = device == "cuda"
        actor_cls = ray.remote(ModelWorker).options(
            num_cpus=1 if gpu else 0.5, num_gpus=gpus_per_worker if gpu else 0,
            max_restarts=2, max_task_retries=2)
        read_t = ray.remote(_read).options(num_cpus=TASK_CPUS, max_retries=2)
        write_t = ray.remote(_write).options(num_cpus=TASK_CPUS, max_retries=2)
        vec_t = ray.remote(_vectorize).options(num_cpus=TASK_CPUS, max_retries=2)

        plan_ref = ray.put(plan)
        # the plan travels by value: actor restarts must not depend on an object-store ref
        actors = [actor_cls.remote(plan, device, threads) for _ in range(workers)]
        ray.get([a.ping.remote() for a in actors])  # type: ignore[attr-defined]  # surface model-loading errors up front
        load = [0] * workers
        todo_ids = {c.index for c in todo}
        gate = NeighbourGate(plan.chunks, vectorize or [],
                             {c.index for c in plan.chunks if c.index not in todo_ids})
        report = StageReport()
        pending = deque(todo)
        attempts: dict[str, int] = {}
        chunk_refs: dict[ray.ObjectRef, tuple[Chunk, int]] = {}
        vec_refs: dict[ray.ObjectRef, Chunk] = {}

        def submit_vectors(chunks: list[Chunk]) -> None:
            if vector_fn is None:
                return
            for c in chunks:
                vec_refs[vec_t.remote(vector_fn, plan_ref, store, c)] = c

        def submit(chunk: Chunk) -> None:
            i = min(range(workers), key=lambda k: load[k])  # least-loaded actor
            load[i] += 1
            attempts[chunk.id] = attempts.get(chunk.id, 0) + 1
            inp = read_t.remote(plan_ref, chunk)
            out = actors[i].predict.remote(plan_ref, inp)  # type: ignore[attr-defined]
            chunk_refs[write_t.remote(plan_ref, store, out)] = (chunk, i)

        submit_vectors(gate.settle())
        while pending or chunk_refs or vec_refs:
            while pending and len(chunk_refs) < max_in_flight:
                submit(pending.popleft())
            ready, _ = ray.wait([*chunk_refs, *vec_refs], num_returns=1)
            ref = ready[0]
            if ref in vec_refs:
                c = vec_refs.pop(ref)
                try:
                    result = ray.get(ref)
                except (ray.exceptions.RayError, OSError) as exc:
                    w = c.window
                    failure = ChunkFailure(c.id, (w.row_off, w.col_off, w.height, w.width),
                                           f"vectorize: {_short(exc)}", 1)
                    report.failed.append(failure)
                    cb.chunk_failed(failure)
                    continue
                cb.vectors_done(c, result)
                report.vectorized += 1
                continue
            chunk, i = chunk_refs.pop(ref)
            load[i] -= 1
            try:
                stats = ray.get(ref)
            except (ray.exceptions.RayError, OSError) as exc:
                n = attempts[chunk.id]
                msg = _short(exc)
                if n <= retries:
                    log.warning("chunk %s failed (attempt %d), retrying: %s", chunk.id, n, msg)
                    pending.append(chunk)
                    continue
                w = chunk.window
                failure = ChunkFailure(chunk.id, (w.row_off, w.col_off, w.height, w.width), msg, n)
                report.failed.append(failure)
                cb.chunk_failed(failure)
                submit_vectors(gate.settle(chunk.index))
                continue
            report.done += 1
            cb.chunk_done(chunk, stats)
            submit_vectors(gate.settle(chunk.index))
        for a in actors:
            ray.kill(a)  # type: ignore[arg-type]
        return report


def _short(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    base = cause if isinstance(cause, BaseException) else exc
    lines = [ln for ln in str(base).strip().splitlines() if ln.strip()]
    return f"{type(base).__name__}: {lines[-1] if lines else ''}"[:500]
