"""Fault injection for the Ray backend (test-only; Ray workers import it by module name).

Markers live next to the Zarr store, so a fault that must happen once survives the process it
kills: the retry finds the marker and goes through.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from geoseg.chunks import ChunkInput, ChunkOutput, write_output
from geoseg.grid import Chunk
from geoseg.plan import Plan
from geoseg.runtime.ray_backend import ChunkReader, ModelWorker

ACTOR_CRASH_CHUNK = "2_1"  # the model actor's process dies while predicting this chunk, once
WRITER_CRASH_CHUNK = "1_2"  # the writer's process dies after writing this chunk, once
BAD_CHUNK = "1_0"  # predicting this chunk always raises (until the fault is cleared)


def _once(marker: Path) -> bool:
    """True the first time for ``marker`` (across processes)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _out_dir(plan: Plan) -> Path:
    return Path(plan.image.path).parent


class CrashingWorker(ModelWorker):
    """Its process dies (as if OOM-killed) the first time it predicts ACTOR_CRASH_CHUNK."""

    def predict(self, plan: Plan, inp: ChunkInput) -> ChunkOutput:
        if inp.chunk.id == ACTOR_CRASH_CHUNK and _once(_out_dir(plan) / "actor-crashed"):
            os._exit(1)
        return super().predict(plan, inp)


class FailingWorker(CrashingWorker):
    """Also raises for BAD_CHUNK every time: a chunk that keeps failing."""

    def predict(self, plan: Plan, inp: ChunkInput) -> ChunkOutput:
        if inp.chunk.id == BAD_CHUNK:
            raise ValueError(f"injected failure for chunk {BAD_CHUNK}")
        return super().predict(plan, inp)


def crash_after_write(plan: Plan, store: str, out: ChunkOutput) -> dict[str, Any]:
    """A writer whose process dies right after writing WRITER_CRASH_CHUNK, once: the retry
    rewrites the same bytes."""
    stats = write_output(plan, store, out)
    if out.chunk.id == WRITER_CRASH_CHUNK and _once(Path(store).parent / "writer-crashed"):
        os._exit(1)
    return stats


READER_CRASH_CHUNK = "1_1"  # the chunk reader's process dies while reading this chunk, once


class CrashingReader(ChunkReader):
    """Its process dies the first time it reads READER_CRASH_CHUNK."""

    def read(self, chunk: Chunk) -> ChunkInput:
        if chunk.id == READER_CRASH_CHUNK and _once(_out_dir(self.plan) / "reader-crashed"):
            os._exit(1)
        return super().read(chunk)


class BlindWorker(ModelWorker):
    """A model actor on a node that does not mount the driver's disk: none of the job's local
    paths is there."""

    def unseen(self, paths: list[str]) -> tuple[str, list[str]]:
        ip, _ = super().unseen([])
        return ip, list(paths)
