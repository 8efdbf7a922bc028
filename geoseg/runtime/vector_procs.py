"""Vector tasks of the local executor: in threads of this process, or in worker processes.

Vectorizing is Python-heavy where it handles one object at a time (a building's split,
outline and regularization are a few milliseconds of small numpy, scipy, shapely and GDAL
calls each), so threads of one process take turns on the GIL: on the 2-core benchmark
machine, the 16 chunks of a 4096² demo run (landcover + buildings) took 15.6 s in one
thread, 17.8 s in two threads (22.2 CPU-s: the threads convoy on the GIL, and the model's
caller waits with them) and 9.3 s in two processes, start-up included
(``python -m benchmarks.bench_vector_workers RUN``). Land cover alone (numpy over whole
chunks) scales in threads (1.54× on two), but ~30 % of it holds the GIL, so threads cannot
pass ~3.3× on a many-core host.

A worker process costs ~1.5 CPU-s of imports and ~250 MB of memory, so processes are used
where they pay (:func:`vector_processes`): beside a GPU (the host's cores are what feeds it)
and for building footprints on CPUs, when there are enough pixels to vectorize. A CPU run of
land cover alone keeps threads: on 2 cores two workers gained nothing (imports, and the
features travel back), and their memory would be a third of the run's peak (DESIGN.md).

Workers are spawned (never forked: this process runs threads and a model), each imports the
vector path once and is handed the job's plan once; a task ships only its chunk, and brings
back its result plus the log records it emitted, which are re-emitted here, so a warning from
a worker reaches the job's log like one from a thread. Workers ignore SIGINT: the job decides
when to stop, and a pool shut down after a signal lets the chunk in hand finish.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from geoseg.grid import Chunk
from geoseg.plan import Plan
from geoseg.runtime.base import VectorFn

log = logging.getLogger(__name__)

#: Pixels to vectorize from which worker processes pay for their start (~1.5 CPU-s each):
#: a 2048² raster of buildings is ~1.5 CPU-s of GIL-bound work per core.
PROCESS_MIN_PIXELS = 2048 * 2048

_job: tuple[VectorFn, Plan, str] | None = None  # a worker's job (set by _start)


def vector_processes(plan: Plan, vectorize: Iterable[Chunk], device: str, slots: int,
                     setting: int | None = None) -> int:
    """Worker processes for the vector tasks (0: threads of this process). ``setting`` is
    ``runtime.vector_processes`` (None: decide here); ``slots`` the vector tasks in flight."""
    if setting is not None:
        return setting
    pixels = sum(c.window.size for c in vectorize)
    if pixels < PROCESS_MIN_PIXELS:
        return 0
    if device != "cpu" or plan.model("buildings") is not None:
        return slots
    return 0


class _Records(logging.Handler):
    """Collects a task's log records, made picklable (message formatted, no traceback object)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        self.records.append(record)


def _start(fn: VectorFn, plan: Plan, store: str, level: int) -> None:
    """A worker's initializer: the job, geoseg's log level, and the vector path imported."""
    global _job
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("geoseg").setLevel(level)
    _job = (fn, plan, store)
    import geoseg.vector_outputs  # noqa: F401  (the first chunk should not wait for imports)


def _ready() -> bool:
    return _job is not None


def _vectorize(chunk: Chunk) -> tuple[Any, list[logging.LogRecord]]:
    if _job is None:
        raise RuntimeError("vector worker started without a job")
    fn, plan, store = _job
    handler = _Records()
    logger = logging.getLogger("geoseg")
    logger.addHandler(handler)
    try:
        return fn(plan, store, chunk), handler.records
    finally:
        logger.removeHandler(handler)


class VectorPool:
    """Runs ``fn(plan, store, chunk)`` for chunks in ``processes`` worker processes, or in
    ``threads`` threads of this process when ``processes`` is 0."""

    def __init__(self, fn: VectorFn, plan: Plan, store: str, *, threads: int,
                 processes: int = 0) -> None:
        self.fn, self.plan, self.store = fn, plan, store
        self.processes = processes
        self._pool: ThreadPoolExecutor | ProcessPoolExecutor
        if processes:
            self._pool = ProcessPoolExecutor(
                processes, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start,
                initargs=(fn, plan, store, logging.getLogger("geoseg").getEffectiveLevel()))
            for _ in range(processes):  # start the workers now: their imports overlap the model
                self._pool.submit(_ready)
            log.debug("vectors in %d worker processes", processes)
        else:
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="geoseg-vec")

    def submit(self, chunk: Chunk) -> Future[Any]:
        if not self.processes:
            return self._pool.submit(self.fn, self.plan, self.store, chunk)
        try:
            return self._pool.submit(_vectorize, chunk)
        except RuntimeError as exc:  # a broken pool (a worker was killed): this chunk fails
            fut: Future[Any] = Future()
            fut.set_exception(exc)
            return fut

    def result(self, fut: Future[Any]) -> Any:
        """The task's result (its exception raised); a worker's log records re-emitted here."""
        value = fut.result()
        if not self.processes:
            return value
        result, records = value
        for record in records:
            logging.getLogger(record.name).handle(record)
        return result

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
