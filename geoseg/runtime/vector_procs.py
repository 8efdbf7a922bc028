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

A worker process costs ~1.5 CPU-s of imports (once per job with the fork server) and ~150 MB
of memory (shared in part with the fork server), so processes are used
where they pay (:func:`vector_processes`): beside a GPU (the host's cores are what feeds it)
and for building footprints on CPUs, when there are enough pixels to vectorize. A CPU run of
land cover alone keeps threads: on 2 cores two workers gained nothing (imports, and the
features travel back), and their memory would be a third of the run's peak (DESIGN.md).

Workers are forked from a fork server of geoseg's own (never from this process, which runs
threads and a model), a fresh interpreter that imports the vector path once for all of them
(spawned workers where there is no fork server), without the parent's ``__main__`` (Python
would run a user's unguarded script again in each of them); each is handed the job's plan once;
a task ships only its chunk, and brings back its result plus the log records it emitted, which
are re-emitted here, so a warning from a worker reaches the job's log like one from a thread.
Workers ignore SIGINT: the job decides when to stop, and a pool shut down after a signal lets
the chunk in hand finish.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
import signal
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing import forkserver, popen_forkserver, popen_spawn_posix, spawn
from typing import Any

from geoseg.errors import StorageError
from geoseg.grid import Chunk
from geoseg.plan import Plan
from geoseg.runtime.base import Callbacks, StageReport, VectorFn, fail_vectors

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


def no_vectors(plan: Plan, store: str, chunk: Chunk) -> None:
    """The vector function of a run that vectorizes nothing (never called)."""
    raise RuntimeError("this run has no vector function")


class LogRecords(logging.Handler):
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


@contextmanager
def _main_left_out() -> Iterator[None]:
    """While a worker is launched, its preparation data names no ``__main__``. Python's spawn
    (and the fork server's children) import the parent's main script in each child (as
    ``__mp_main__``), so a user's script that calls ``geoseg.run`` without an ``if __name__ ==
    "__main__"`` guard would start the job again in every worker (and fail there: the output
    folder is locked). A worker needs none of it: everything it runs is imported from geoseg
    by name."""
    with _SPAWNING:  # the preparation data is read through the module, so patch it briefly
        original = spawn.get_preparation_data

        def without_main(name: str) -> dict[str, Any]:
            data: dict[str, Any] = original(name)
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
            return data

        spawn.get_preparation_data = without_main  # type: ignore[assignment]
        try:
            yield
        finally:
            spawn.get_preparation_data = original  # type: ignore[assignment]


class _SpawnedWithoutMain(popen_spawn_posix.Popen):
    def _launch(self, process_obj: Any) -> None:
        with _main_left_out():
            super()._launch(process_obj)  # type: ignore[misc]


class _ForkedWithoutMain(popen_forkserver.Popen):
    """Forked by geoseg's own fork server (:func:`fork_server`), not Python's global one: the
    module function the launch calls is pointed at it for the launch."""

    def _launch(self, process_obj: Any) -> None:
        with _main_left_out():
            server = _SERVER
            if server is None:
                raise RuntimeError("vector worker launched without geoseg's fork server")
            original = forkserver.connect_to_new_process
            forkserver.connect_to_new_process = server.connect_to_new_process
            try:
                super()._launch(process_obj)  # type: ignore[misc]
            finally:
                forkserver.connect_to_new_process = original


class _SpawnedWorker(multiprocessing.context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _SpawnedWithoutMain(process_obj)


class _ForkedWorker(multiprocessing.context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _ForkedWithoutMain(process_obj)


class _SpawnContext(multiprocessing.context.SpawnContext):
    Process = _SpawnedWorker


class _ForkServerContext(multiprocessing.context.ForkServerContext):
    Process = _ForkedWorker


_SPAWNING = threading.Lock()

#: What a worker imports: imported once in the fork server instead of once per worker.
_PRELOAD = ["geoseg.runtime.fork_warmup"]

_SERVER: forkserver.ForkServer | None = None  # geoseg's fork server, while pools use it
_SERVER_USERS = 0
_SERVER_LOCK = threading.Lock()


def worker_context(forked: bool) -> multiprocessing.context.BaseContext:
    """How geoseg starts a worker process: forked from its fork server (``forked``: taken with
    :func:`fork_server`), else spawned; either way without the parent's ``__main__``."""
    return _ForkServerContext() if forked else _SpawnContext()


def fork_server(use: bool) -> bool:
    """Take (``use``) or give back geoseg's fork server; False where there is none to take.

    Workers are forked from a fork server of geoseg's own that has imported the vector path
    once (~1.5 CPU-s and ~140 MB, shared by every worker forked from it) instead of being
    spawned, each importing it again. Python's own fork server is left alone (its preload list
    is process-wide and holds ``__main__`` by default). The server starts with the first pool
    and stops when the last one is shut down, so no process outlives a job and the workers'
    CPU time is accounted to this process."""
    global _SERVER, _SERVER_USERS
    with _SERVER_LOCK:
        if use:
            if "forkserver" not in multiprocessing.get_all_start_methods():
                return False
            if _SERVER is None:
                _SERVER = forkserver.ForkServer()
                _SERVER.set_forkserver_preload(_PRELOAD)
            _SERVER_USERS += 1
            return True
        _SERVER_USERS -= 1
        if _SERVER_USERS == 0 and _SERVER is not None:
            stop = getattr(_SERVER, "_stop", None)  # waits for it, so its CPU time is ours
            if stop is not None:
                stop()
            _SERVER = None
        return True


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
    handler = LogRecords()
    logger = logging.getLogger("geoseg")
    logger.addHandler(handler)
    try:
        return fn(plan, store, chunk), handler.records
    finally:
        logger.removeHandler(handler)


class VectorPool:
    """Runs ``fn(plan, store, chunk)`` for chunks in ``processes`` worker processes, or in
    ``threads`` threads of this process when ``processes`` is 0.

    A worker that dies (killed for memory, a crash in a C library) breaks a process pool for
    every task in it, not only its own, and does not say whose task killed it. The pool is
    replaced by a fresh one, and the chunks it held are vectorized again one at a time in a
    worker of their own: there a chunk that kills its worker again is the culprit and fails
    alone; the others give their features (vectorizing a chunk again gives the same ones)."""

    def __init__(self, fn: VectorFn, plan: Plan, store: str, *, threads: int,
                 processes: int = 0) -> None:
        self.fn, self.plan, self.store = fn, plan, store
        self.processes = processes
        self.restarts = 0  # pools replaced after a worker died
        self._lock = threading.Lock()
        self._closed = False
        self._suspects: deque[tuple[Chunk, Future[Any]]] = deque()  # to run one at a time
        self._alone: ProcessPoolExecutor | None = None  # their one-worker pool
        self._alone_busy = False
        self._pool: ThreadPoolExecutor | ProcessPoolExecutor
        self._forked = bool(processes) and fork_server(True)
        if processes:
            self._pool = self._workers(processes)
            for _ in range(processes):  # start the workers now: imports overlap the model
                self._pool.submit(_ready)
            log.debug("vectors in %d worker processes", processes)
        else:
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="geoseg-vec")

    def _workers(self, n: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            n, mp_context=worker_context(self._forked),
            initializer=_start,
            initargs=(self.fn, self.plan, self.store,
                      logging.getLogger("geoseg").getEffectiveLevel()))

    def submit(self, chunk: Chunk) -> Future[Any]:
        if not self.processes:
            return self._pool.submit(self.fn, self.plan, self.store, chunk)
        outer: Future[Any] = Future()
        with self._lock:
            pool = self._pool
        self._send(pool, chunk, outer, alone=False)
        return outer

    def _send(self, pool: Executor, chunk: Chunk, outer: Future[Any], *, alone: bool) -> None:
        try:
            inner = pool.submit(_vectorize, chunk)
        except RuntimeError as exc:  # a broken pool (handled in _settle) or one shut down
            inner = Future()
            inner.set_exception(exc)
        inner.add_done_callback(lambda f: self._settle(f, pool, chunk, outer, alone))

    def _settle(self, inner: Future[Any], pool: Executor, chunk: Chunk, outer: Future[Any],
                alone: bool) -> None:
        if inner.cancelled():  # the job is stopping
            outer.cancel()
            return
        exc = inner.exception()
        broken = isinstance(exc, BrokenProcessPool) and not self._closed
        with self._lock:
            if broken and not alone:  # whose task killed the worker is unknown: run it alone
                if self._pool is pool:  # the first to see this pool broken replaces it
                    self._pool = self._workers(self.processes)
                    self.restarts += 1
                    pool.shutdown(wait=False)
                    log.warning("a vector worker process died (%s); the chunks it held are "
                                "vectorized again, one at a time", exc)
                self._suspects.append((chunk, outer))
            elif alone:
                self._alone_busy = False
                if broken:  # it killed a worker of its own: it fails, the next one runs
                    self._alone = None
                    pool.shutdown(wait=False)
        if not (broken and not alone):
            if exc is not None:
                outer.set_exception(exc)
            else:
                outer.set_result(inner.result())
        self._next_alone()

    def _next_alone(self) -> None:
        with self._lock:
            if self._alone_busy or not self._suspects or self._closed:
                return
            chunk, outer = self._suspects.popleft()
            if self._alone is None:
                self._alone = self._workers(1)
            self._alone_busy = True
            pool = self._alone
        self._send(pool, chunk, outer, alone=True)

    def result(self, fut: Future[Any]) -> Any:
        """The task's result (its exception raised); a worker's log records re-emitted here."""
        value = fut.result()
        if not self.processes:
            return value
        result, records = value
        for record in records:
            logging.getLogger(record.name).handle(record)
        return result

    def deliver(self, fut: Future[Any], chunk: Chunk, report: StageReport,
                cb: Callbacks) -> None:
        """A finished task's vectors handed to ``cb.vectors_done``, or its chunk failed (its
        raster stays); a storage error stops the job."""
        try:
            result = self.result(fut)
        except StorageError:
            raise
        except Exception as exc:  # this chunk's vectors only
            fail_vectors(report, cb, chunk, exc)
            return
        cb.vectors_done(chunk, result)
        report.vectorized += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            pools = [p for p in (self._pool, self._alone) if p is not None]
            suspects, self._suspects = list(self._suspects), deque()
        for _chunk, outer in suspects:
            outer.cancel()
        for pool in pools:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)
        if self._forked and wait:  # (after a stop signal the server exits with this process)
            self._forked = False
            fork_server(False)
