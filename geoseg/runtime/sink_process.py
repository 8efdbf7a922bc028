"""The GeoPackage writer in a process of its own.

Seam merges (GEOS coverage unions, union-find in Python), record batches (WKB) and the writes
of a job's GeoPackage run in one writer (:class:`~geoseg.vector_outputs.GeoPackageSink`).
In a thread of the job's process (:class:`~geoseg.vector_outputs.BackgroundSink`) that writer
holds the interpreter lock for most of its time, and the model's caller, the reads and the
writes wait for it: on the replay model's 16384² map (2 cores) the writer used 7.5 of the
run's 33 CPU-s and the cores were a quarter idle. :class:`ProcessSink` runs the same sink in a
worker process (forked from geoseg's fork server, which has the vector path imported), fed
the chunks' vectors in arrival order; what the job sees is the same: ``add``, ``close``,
``finish``, ``busy_s``, errors at the next ``add`` or at ``finish``, a bounded backlog, and
the worker's log records re-emitted here. The same rows reach the same file. It is the default
beside a GPU (:func:`use_process`); on CPUs, where the cores and not the lock are the limit,
it won 4 % of wall time at 16384² for 3-5 % more CPU, so a thread stays the default there.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.errors import StorageError
from geoseg.plan import Plan
from geoseg.runtime.vector_procs import LogRecords, fork_server, worker_context

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event

    from geoseg.vector_outputs import ChunkVectors, GeoPackageSink, PackedVectors

log = logging.getLogger(__name__)

#: Pixels to vectorize from which the writer gets a process beside a GPU, where the host's
#: threads, not its cores, set the pace. On CPUs the cores are the limit and a thread stays the
#: default: the process's start (the fork server's imports, ~1.5 CPU-s, unless vector workers
#: started it) and the chunks' pickles (~2.7 ms each, both ends) cost CPU that the lock it
#: frees does not win back on 2 cores (replay model, 16384²: wall 19.7 / 20.7 → 18.6 / 20.2 s,
#: CPU 30.8 / 31.8 → 31.6 / 33.5 s, alternated; 4096²: 2.3 → 3.6 s; DESIGN.md).
PROCESS_MIN_PIXELS_GPU = 4096 * 4096

_sink: GeoPackageSink | None = None  # the worker's sink (set by _open)
_failed = False  # the worker's sink raised: later chunks are dropped (the error is reported)
_abort: Event | None = None  # set by the job when it stops: queued chunks are dropped


def use_process(pixels: int, device: str, setting: bool | None) -> bool:
    """Whether the GeoPackage writer of a job vectorizing ``pixels`` with its models on
    ``device`` runs in a process (``setting``: ``runtime.gpkg_process``; None: beside a GPU
    from :data:`PROCESS_MIN_PIXELS_GPU` on)."""
    if setting is not None:
        return setting
    return device != "cpu" and pixels >= PROCESS_MIN_PIXELS_GPU


def _start(level: int, abort: Event) -> None:
    global _abort
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the job decides when to stop
    logging.getLogger("geoseg").setLevel(level)
    _abort = abort


def _logged(fn: Any, *args: Any) -> tuple[Any, float, list[logging.LogRecord]]:
    """``fn(*args)``, its seconds and the geoseg log records it emitted."""
    handler = LogRecords()
    logger = logging.getLogger("geoseg")
    logger.addHandler(handler)
    t0 = time.perf_counter()
    try:
        return fn(*args), time.perf_counter() - t0, handler.records
    finally:
        logger.removeHandler(handler)


def _open(path: Path, plan: Plan, common: dict[str, Any], mosaic_store: str | None,
          split_px: int) -> tuple[None, float, list[logging.LogRecord]]:
    def make() -> None:
        global _sink
        from geoseg.vector_outputs import GeoPackageSink, SourceDates

        dates = SourceDates(mosaic_store, plan) if mosaic_store is not None else None
        _sink = GeoPackageSink(path, plan, common, dates=dates, split_px=split_px)

    return _logged(make)


def _add(result: ChunkVectors | PackedVectors) -> tuple[None, float, list[logging.LogRecord]]:
    global _failed
    if _sink is None or _failed or (_abort is not None and _abort.is_set()):
        return None, 0.0, []
    try:
        return _logged(_sink.add, result)
    except BaseException:
        _failed = True
        raise


def _finish() -> tuple[dict[str, int], float, list[logging.LogRecord]]:
    if _sink is None:
        raise RuntimeError("GeoPackage writer finished before it was opened")
    return _logged(_sink.finish)


def _close() -> tuple[None, float, list[logging.LogRecord]]:
    if _sink is not None:
        return _logged(_sink.close)
    return None, 0.0, []


class ProcessSink:
    """A :class:`~geoseg.vector_outputs.GeoPackageSink` (made from the same arguments) run in
    a worker process; at most ``depth`` chunks wait for it before ``add`` waits too."""

    def __init__(self, path: Path, plan: Plan, common: dict[str, Any], *,
                 mosaic_store: str | None = None, split_px: int = 0, depth: int = 8) -> None:
        self.path = Path(path)
        self.busy_s = 0.0  # time the writer spent in the sink
        self.depth = depth
        self._error: BaseException | None = None
        self._pending: deque[Future[Any]] = deque()
        self._forked = fork_server(True)
        ctx = worker_context(self._forked)
        self._stop = ctx.Event()
        level = logging.getLogger("geoseg").getEffectiveLevel()
        self._pool: ProcessPoolExecutor | None = ProcessPoolExecutor(
            1, mp_context=ctx, initializer=_start, initargs=(level, self._stop))
        self._submit(_open, self.path, plan, common, mosaic_store, split_px)
        log.debug("GeoPackage writer in a process of its own")

    def _submit(self, fn: Any, *args: Any) -> Future[Any]:
        if self._pool is None:
            raise RuntimeError("the GeoPackage writer is closed")
        fut = self._pool.submit(fn, *args)
        self._pending.append(fut)
        return fut

    def _collect(self, fut: Future[Any]) -> Any:
        """The task's value (None after an error, which is kept for :meth:`_raise`); its log
        records re-emitted here and its time counted."""
        try:
            value, seconds, records = fut.result()
        except BrokenProcessPool as exc:
            if self._error is None:
                self._error = StorageError(
                    f"the GeoPackage writer process died ({exc}): {self.path.name} was not "
                    "written; rerun the job (finished chunks are kept)")
            return None
        except BaseException as exc:
            if self._error is None:
                self._error = exc
            return None
        self.busy_s += seconds
        for record in records:
            logging.getLogger(record.name).handle(record)
        return value

    def _reap(self) -> None:
        """Collect finished tasks at the front, then wait while more than ``depth`` queue."""
        while self._pending and (self._pending[0].done() or len(self._pending) > self.depth):
            self._collect(self._pending.popleft())

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def add(self, result: ChunkVectors | PackedVectors) -> None:
        self._reap()
        self._raise()
        self._submit(_add, result)

    def close(self, abort: bool = False) -> None:
        """Stop the writer after what is queued, or (``abort``: the job is stopping) after the
        chunk in hand, dropping the rest and ending the layers' streams (idempotent)."""
        if self._pool is None:
            return
        if abort:
            self._stop.set()
            for fut in self._pending:
                fut.cancel()
            with contextlib.suppress(RuntimeError):  # a broken pool: the worker is gone
                self._collect(self._pool.submit(_close))
        while self._pending:
            fut = self._pending.popleft()
            if not fut.cancelled():
                self._collect(fut)
        self._pool.shutdown(wait=True)
        self._pool = None
        if self._forked:
            self._forked = False
            fork_server(False)

    def finish(self) -> dict[str, int]:
        """Merge the seams, flush and publish the GeoPackage (in the worker); its counts."""
        try:
            while self._pending:
                self._collect(self._pending.popleft())
            self._raise()
            if self._pool is None:
                raise RuntimeError("the GeoPackage writer is closed")
            counts = self._collect(self._pool.submit(_finish))
        finally:
            self.close(abort=self._error is not None)
        self._raise()
        return counts or {}
