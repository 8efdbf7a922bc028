"""The local executor's chunks in several processes: strips of the grid, each run by a
:class:`~geoseg.runtime.local.LocalBackend` of its own in a worker process.

One process's threads share one interpreter lock. Beside a GPU the host's reads, writes,
blends and the model's caller are what feeds it, and on the first lease one job process used
2.2 of 16 cores at 25 Mpx/s in its chunk phase (DESIGN.md). On this project's 2-core machine a
near-free model shows the same limit: the cores are a quarter idle while four threads take
turns on the lock, and two jobs at once on the two halves of the same map kept both cores busy
(1.9). So the chunks can be handed to ``runtime.chunk_processes`` worker processes: the grid
is cut into strips of whole chunk columns (each worker's reads then share its blocks; only
the blocks along a strip's edge are decoded twice), and each worker runs the same in-process
executor on its strip, model loaded once per worker, with its share of the threads and chunks
in flight. Everything else stays in the job's process: the manifest, progress, vectors (which
wait for chunks of neighbouring strips) and the GeoPackage writer. A worker reports each
chunk (written or failed) as it goes, and its log records, through one queue.

Failures keep the executor's rules: a worker retries and fails its own chunks; a storage
error stops the job; a worker that dies fails the chunks it had not reported (retryable: a
rerun with ``--resume`` does them) and the other strips go on. When the job stops (a signal,
an error) every worker stops after the chunks in hand, whose writes finish.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from geoseg.errors import StorageError
from geoseg.grid import Chunk
from geoseg.plan import Plan
from geoseg.runtime.base import Callbacks, ChunkFailure, StageReport, VectorFn, short_error
from geoseg.runtime.scheduling import NeighbourGate
from geoseg.runtime.vector_procs import (
    LogRecords,
    VectorPool,
    fork_server,
    no_vectors,
    worker_context,
)

if TYPE_CHECKING:
    from multiprocessing.queues import SimpleQueue
    from multiprocessing.synchronize import Event

log = logging.getLogger(__name__)

_events: SimpleQueue[Any] | None = None  # a worker's channel to the job (set by _start)
_stop: Event | None = None  # set by the job when it stops


def chunk_processes(todo: list[Chunk], setting: int | None) -> int:
    """Worker processes for the chunks (0: this process). ``setting`` is
    ``runtime.chunk_processes`` (None: this process; more are not yet measured on a GPU, where
    they are meant to pay). Never more than the strips a grid has columns for."""
    n = min(setting or 0, len({c.index[1] for c in todo}))
    return n if n >= 2 else 0


def strips(todo: Iterable[Chunk], n: int) -> list[list[Chunk]]:
    """``todo`` cut into ``n`` strips of whole chunk columns, as even in chunks as the columns
    allow, each in row-major order (the order its reads expect)."""
    chunks = sorted(todo, key=lambda c: c.index)
    per_col = Counter(c.index[1] for c in chunks)
    cols = sorted(per_col)
    n = max(1, min(n, len(cols)))
    band: dict[int, int] = {}
    done = 0
    for col in cols:  # a column goes to the strip its first chunk's rank falls in
        band[col] = min(n - 1, done * n // len(chunks))
        done += per_col[col]
    out: list[list[Chunk]] = [[] for _ in range(n)]
    for c in chunks:
        out[band[c.index[1]]].append(c)
    return [s for s in out if s]


class _QueueLog(LogRecords):
    """A worker's geoseg log records, sent to the job as they are emitted."""

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if _events is not None:
            _events.put(("log", self.records.pop()))


class _Report:
    """A worker's callbacks: each chunk to the job as it is written or fails."""

    def __init__(self, events: SimpleQueue[Any]) -> None:
        self.events = events

    def chunk_done(self, chunk: Chunk, stats: dict[str, Any]) -> None:
        self.events.put(("done", chunk, stats))

    def chunk_failed(self, failure: ChunkFailure) -> None:
        self.events.put(("failed", failure))

    def vectors_done(self, chunk: Chunk, result: Any) -> None:  # (the job vectorizes)
        raise RuntimeError("a chunk worker was handed vectors")


def _start(events: SimpleQueue[Any], stop: Event, level: int) -> None:
    global _events, _stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the job decides when to stop
    _events, _stop = events, stop
    logger = logging.getLogger("geoseg")
    logger.setLevel(level)
    logger.addHandler(_QueueLog())
    logger.propagate = False


def _run_strip(k: int, plan: Plan, store: str, todo: list[Chunk], *, threads: int,
               io_threads: int, passes: int | None, device: str, max_in_flight: int,
               retries: int) -> tuple[StageReport, int]:
    """Worker ``k``: predict and write ``todo`` (its strip) with an in-process executor;
    each chunk is reported as it is written or fails."""
    from geoseg.runtime.local import LocalBackend  # (which imports this module)

    if _events is None or _stop is None:
        raise RuntimeError(f"chunk worker {k} started without a job")
    backend = LocalBackend(io_threads=io_threads, passes=passes, should_stop=_stop.is_set)
    report = backend.run(plan, store, todo, None, None, _Report(_events), threads=threads,
                         device=device, max_in_flight=max_in_flight, retries=retries)
    return report, backend.callers


class _Inbox:
    """Events of every worker, read by a thread: :meth:`arm` gives a future set when the next
    event arrives (armed before draining, so no event is missed between the two)."""

    def __init__(self, events: SimpleQueue[Any]) -> None:
        self.events = events
        self.items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._signal: Future[None] = Future()
        self._thread = threading.Thread(target=self._read, name="geoseg-chunk-events",
                                        daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                item = self.events.get()
            except (EOFError, OSError):
                item = None
            self.items.put(item)
            with self._lock:
                if not self._signal.done():
                    self._signal.set_result(None)
            if item is None:
                return

    def arm(self) -> Future[None]:
        with self._lock:
            if self._signal.done():
                self._signal = Future()
            return self._signal

    def drain(self) -> list[Any]:
        out = []
        while True:
            try:
                out.append(self.items.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self.events.put(None)  # the reader's last item (workers have all ended)
        self._thread.join()


def run_in_processes(n: int, plan: Plan, store: str, todo: list[Chunk],
                     vectorize: list[Chunk] | None, vector_fn: VectorFn | None, cb: Callbacks,
                     *, threads: int, device: str, max_in_flight: int, retries: int,
                     io_threads: int, passes: int | None, vector_workers: int,
                     vector_slots: int) -> tuple[StageReport, int]:
    """Predict and write ``todo`` in ``n`` worker processes (strips of columns); vectors in
    this process as each chunk and its neighbours are done. The report, and the model
    passes at once of each worker."""
    parts = strips(todo, n)
    per: dict[str, Any] = {  # each worker's share of the job's width
        # (intra-op threads on CPUs; beside a GPU the host's share of torch's ops: the
        # workers share the cores either way)
        "threads": max(1, threads // len(parts)),
        "io_threads": max(2, io_threads // len(parts)),
        "passes": passes, "device": device,
        "max_in_flight": max(2, max_in_flight // len(parts)), "retries": retries}
    log.debug("chunks in %d worker processes (%s each)", len(parts), per)
    report = StageReport()
    gate = NeighbourGate.for_plan(plan, vectorize or [], todo)
    reported: set[str] = set()
    ready: deque[Chunk] = deque()
    vectors: dict[Future[Any], Chunk] = {}
    callers = 1

    def settle(chunk: Chunk) -> None:
        reported.add(chunk.id)
        if vector_fn is not None:  # a failed chunk is not vectorized: reported once
            failed = {f.chunk_id for f in report.failed}
            ready.extend(c for c in gate.settle(chunk.index) if c.id not in failed)

    forked = fork_server(True)
    ctx = worker_context(forked)
    events: SimpleQueue[Any] = ctx.SimpleQueue()
    stop = ctx.Event()
    level = logging.getLogger("geoseg").getEffectiveLevel()
    pools = [ProcessPoolExecutor(1, mp_context=ctx, initializer=_start,
                                 initargs=(events, stop, level)) for _ in parts]
    vpool = VectorPool(vector_fn or no_vectors, plan, store, threads=vector_slots,
                       processes=vector_workers)
    inbox = _Inbox(events)
    running: dict[Future[Any], int] = {}
    closed: set[int] = set()
    by_id = {c.id: c for c in todo}
    try:
        for k, (pool, part) in enumerate(zip(pools, parts, strict=True)):
            running[pool.submit(_run_strip, k, plan, store, part, **per)] = k
        if vector_fn is not None:
            ready.extend(gate.settle())
        over: dict[int, Future[Any]] = {}  # strips whose task is over, awaiting their flush
        try:
            while len(closed) < len(parts) or vectors or ready:
                signal_ = inbox.arm()
                for item in inbox.drain():
                    if item is None:
                        continue
                    kind = item[0]
                    if kind == "log":
                        logging.getLogger(item[1].name).handle(item[1])
                    elif kind == "done":
                        report.done += 1
                        cb.chunk_done(item[1], item[2])
                        settle(item[1])
                    elif kind == "failed":
                        report.failed.append(item[1])
                        cb.chunk_failed(item[1])
                        settle(by_id[item[1].chunk_id])
                    elif kind == "flush":  # every event of strip k has been handled
                        k = item[1]
                        callers = max(callers, _strip_done(k, over.pop(k), parts[k], report,
                                                           cb, reported, settle))
                        closed.add(k)
                for fut in [f for f in running if f.done()]:
                    # the worker wrote its events before its result: a marker sent now
                    # arrives after the last of them (one pipe, first in first out)
                    k = running.pop(fut)
                    over[k] = fut
                    events.put(("flush", k))
                for fut in [f for f in vectors if f.done()]:
                    vpool.deliver(fut, vectors.pop(fut), report, cb)
                while ready and len(vectors) < vector_slots:
                    c = ready.popleft()
                    vectors[vpool.submit(c)] = c
                if len(closed) < len(parts) or vectors or ready:
                    wait([*running, *vectors, signal_], return_when=FIRST_COMPLETED)
        except BaseException:
            stop.set()  # each worker stops after its chunks in hand
            vpool.shutdown(wait=False, cancel_futures=True)
            raise
    finally:
        stop.set()
        for pool in pools:
            pool.shutdown(wait=True)
        vpool.shutdown(wait=True)
        inbox.close()
        if forked:
            fork_server(False)
    return report, callers


def _strip_done(k: int, fut: Future[Any], part: list[Chunk], report: StageReport,
                cb: Callbacks, reported: set[str], settle: Callable[[Chunk], None]) -> int:
    """A worker's strip is over: its report merged, or (it raised or died) its unreported
    chunks failed. A storage error stops the job. The worker's passes at once."""
    exc = fut.exception()
    if exc is None:
        strip_report, callers = fut.result()
        report.load_s = max(report.load_s, strip_report.load_s)
        for key, value in strip_report.blocks.items():  # (peaks summed: workers run at once)
            report.blocks[key] = report.blocks.get(key, 0) + value
        return int(callers)
    if isinstance(exc, StorageError):
        raise exc
    why = f"chunk worker process {k} failed: {short_error(exc)}"
    log.warning("%s; its %d unfinished chunks failed (rerun with --resume)", why,
                sum(1 for c in part if c.id not in reported))
    for c in part:
        if c.id not in reported:
            f = ChunkFailure.of(c, why, 1)
            report.failed.append(f)
            cb.chunk_failed(f)
            settle(c)
    return 1
