"""In-process backend: the same chunk functions, one after another. For tests and debugging."""

from __future__ import annotations

import logging
import traceback

from geoseg.chunks import block_cache, predict_chunk, read_chunk, write_output
from geoseg.errors import GeoSegError, StorageError
from geoseg.grid import Chunk
from geoseg.plan import Plan
from geoseg.runtime.base import Callbacks, ChunkFailure, StageReport, VectorFn
from geoseg.runtime.scheduling import NeighbourGate

log = logging.getLogger(__name__)


class SerialBackend:
    def run(self, plan: Plan, store: str, todo: list[Chunk], vectorize: list[Chunk] | None,
            vector_fn: VectorFn | None, cb: Callbacks, *, workers: int = 1, threads: int = 1,
            device: str = "cpu", gpus_per_worker: float = 1.0, max_in_flight: int = 1,
            retries: int = 0) -> StageReport:
        from geoseg.runtime.local import load_models

        models = load_models(plan, device, threads)
        report = StageReport()
        gate = NeighbourGate.for_plan(plan, vectorize or [], todo)
        ready = gate.settle()
        blocks = block_cache(plan, todo)  # neighbours share their halo's source blocks
        for chunk in todo:
            try:
                inp = read_chunk(plan, chunk, blocks)
                stats = write_output(plan, store, predict_chunk(plan, models, inp))
                cb.chunk_done(chunk, stats)
                report.done += 1
            except StorageError:
                raise  # disk full, permission: stop the job
            except Exception as exc:
                f = ChunkFailure.of(chunk, f"{type(exc).__name__}: {exc}", 1,
                                    retryable=not isinstance(exc, GeoSegError))
                log.debug("chunk %s failed:\n%s", chunk.id, traceback.format_exc())
                cb.chunk_failed(f)
                report.failed.append(f)
            ready += gate.settle(chunk.index)
        report.blocks = blocks.stats()
        if vector_fn is not None:
            for c in ready:
                cb.vectors_done(c, vector_fn(plan, store, c))
                report.vectorized += 1
        return report
