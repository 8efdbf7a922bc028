"""The Ray adapter: the module that runs chunks on Ray (``jobs.py`` only talks to the job server).

Writing and vectorizing are Ray tasks; models live in a pool of actors (one per GPU with
``num_gpus``, or by default one CPU actor per node) that load their bundles once; each node
takes its own band of chunks first (:mod:`geoseg.runtime.placement`). One image (a file or a
URL) is read by one reader actor per node of the model actors, through one cache of decoded
source blocks (neighbouring chunks share their halo's blocks: read tasks, each in whichever
worker process was free, decoded each 512² tile 3.75 times for chunk 1024 + halo 64); mosaics
are read by Ray tasks. The driver chains read → predict → write per chunk through object refs,
keeps at most ``max_in_flight`` chunks in the air (back pressure: readers never flood memory),
and schedules a chunk's vectorization as soon as it and its neighbours are written.

Failures, from the cheapest remedy to the last:

- a task worker that dies (OOM kill, node loss) is retried by Ray (``max_retries``); writes are
  idempotent (a chunk is rewritten with the same bytes), so a retried write is harmless;
- a model actor whose process dies is restarted by Ray (``max_restarts``) and its in-flight calls
  are retried (``max_task_retries``); an actor that died for good is replaced by a fresh one;
- anything else that fails a chunk (an exception in the model, a bad window) is retried by the
  driver ``retries`` times, then reported with the chunk's window and error. The job goes on
  and ends "completed with N failed chunks"; ``--resume`` retries exactly those.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from geoseg.blockcache import file_identity
from geoseg.chunks import (
    ChunkInput,
    ChunkOutput,
    block_cache,
    predict_chunk,
    read_chunk,
    write_output,
)
from geoseg.errors import (
    ClusterError,
    GeoSegError,
    InputError,
    JobInterrupted,
    StorageError,
)
from geoseg.grid import Chunk
from geoseg.io import RasterInfo
from geoseg.plan import Plan
from geoseg.runtime.base import (
    Callbacks,
    ChunkFailure,
    StageReport,
    VectorFn,
    model_callers,
    short_error,
)
from geoseg.runtime.placement import ActorPlace, ChunkQueues, place_actors
from geoseg.runtime.scheduling import NeighbourGate

log = logging.getLogger(__name__)

TASK_CPUS = 0.25  # logical: I/O and vector tasks share cores with the model actors
MIN_ACTOR_CPUS = 0.05  # more actors than a cluster's CPUs: each reserves this much
# Vectorizing is CPU-bound (one core per task): reserve what it uses. At a quarter CPU, six ran
# beside the two-thread model actor on 2 cores and the oversubscribed model took 93 s of CPU
# instead of 64 s (4096² demo land cover: 132.7 s -> 94.7 s wall, benchmarks/bench_pipeline.py).
VECTOR_TASK_CPUS = 1.0
TASK_RETRIES = 3  # Ray-level retries of read/write/vectorize tasks on worker death
ACTOR_RESTARTS = 3  # Ray-level restarts of a model actor whose process died


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (or RAY_ADDRESS), else start a local Ray bound to 127.0.0.1."""
    addr = address or os.environ.get("RAY_ADDRESS")
    if addr and addr.lower().startswith(("http://", "https://")):
        given = f"--address {addr}" if address else f"RAY_ADDRESS={addr}"
        raise ClusterError(
            f"{given} is a Ray job server (the dashboard's URL, for geoseg submit / status / "
            "logs), not a cluster: a job joins a cluster by --address HEAD:6379 or "
            "ray://HEAD:10001" + ("" if address else "; to run on this machine, unset "
                                  "RAY_ADDRESS"))
    if addr:
        check_reachable(addr)
    if ray.is_initialized():
        _check_same_cluster(addr)
        return
    main = threading.current_thread() is threading.main_thread()
    # ray.init installs its own SIGTERM/SIGINT handlers; keep the caller's (the CLI stops a job
    # cleanly on either)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        if addr:
            ray.init(address=addr, logging_level=logging.WARNING, log_to_driver=True)
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=True,
                     _node_ip_address="127.0.0.1")
    except SystemExit as exc:  # Ray's own SIGTERM handler, active while ray.init runs
        if exc.code == signal.SIGTERM:
            raise JobInterrupted(signal.SIGTERM) from None
        raise
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse, in one line, a cluster address (``HOST:PORT`` or ``ray://HOST:PORT``) that is
    malformed, that nothing answers on (``ray.init`` would wait ~40 s for the GCS, then exit
    as if sent SIGTERM), or that answers HTTP: the dashboard / job server, on which
    ``ray.init`` retries for ever. ``auto`` and ``local`` are left to Ray."""
    import socket

    if address.lower() in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in hostport:
        raise ClusterError(f"cluster address {address!r} is not HOST:PORT: give the head's GCS "
                           "as --address HEAD:6379 (or ray://HEAD:10001 for Ray Client)")
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}): "
                           "start it (`ray start --head`), or fix --address / RAY_ADDRESS"
                           ) from None
    with sock:
        if _speaks_http(sock):
            raise ClusterError(
                f"{address} answers HTTP: it is the Ray dashboard / job server (for geoseg "
                "submit / status / logs), not the cluster: a job joins it by the head's GCS "
                "port, --address HEAD:6379, or ray://HEAD:10001")


def _speaks_http(sock: Any) -> bool:
    """Whether the server on ``sock`` answers an HTTP/1.0 request in HTTP/1 (the dashboard);
    Ray's GCS and client server speak gRPC, whose first bytes are an HTTP/2 frame."""
    try:
        sock.settimeout(2.0)
        sock.sendall(b"GET /api/version HTTP/1.0\r\nHost: geoseg\r\n\r\n")
        return bool(sock.recv(5).startswith(b"HTTP/"))
    except OSError:
        return False


def _check_same_cluster(addr: str | None) -> None:
    """Refuse to run on the Ray this process is already connected to when ``addr`` names
    another (:func:`_other_cluster`): ``ray.init`` cannot join a second cluster, and the job
    would run where it was not sent."""
    if not addr or addr.lower() in ("auto", "local") or addr.startswith("ray://"):
        return
    try:
        here = str(ray.get_runtime_context().gcs_address)
    except Exception:  # (Ray Client mode, or an old Ray): nothing to compare
        return
    if _other_cluster(here, addr):
        raise ClusterError(f"this process is already connected to the Ray cluster at {here}, "
                           f"so it cannot join {addr}: run the job from a new process (or "
                           "call ray.shutdown() first)")


def _other_cluster(here: str, there: str) -> bool:
    """Whether GCS address ``there`` is not ``here``: another port, or another host (by IP;
    a loopback address may be this machine's own node, so it is not told apart)."""
    import socket

    def ip(host: str) -> str:
        try:
            return socket.gethostbyname(host.strip("[]"))
        except OSError:
            return host

    (h1, _, p1), (h2, _, p2) = here.rpartition(":"), there.rpartition(":")
    a, b = ip(h1), ip(h2)
    return p1 != p2 or (a != b and not (a.startswith("127.") or b.startswith("127.")))


def cluster_gpus() -> int:
    """GPUs the connected cluster offers (0 when Ray is not initialised)."""
    if not ray.is_initialized():
        return 0
    return int(ray.cluster_resources().get("GPU", 0))


def cpu_nodes() -> dict[str, float]:
    """The connected cluster's live nodes with at least one CPU: node id → CPUs (none when Ray
    is not initialised)."""
    if not ray.is_initialized():
        return {}
    return {str(n["NodeID"]): float(n["Resources"].get("CPU", 0)) for n in ray.nodes()
            if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1}


class ModelWorker:
    """Holds every model of the job, loaded once per actor."""

    def __init__(self, plan: Plan, device: str, threads: int) -> None:
        from geoseg.runtime.local import load_models

        self.error: GeoSegError | None = None
        try:  # torch is imported only for models that run on it
            self.models = load_models(plan, device, threads)
        except GeoSegError as exc:  # a bad model file: reported by ping, in one line
            self.error = exc

    def predict(self, plan: Plan, inp: ChunkInput) -> ChunkOutput:
        if self.error is not None:
            raise self.error
        return predict_chunk(plan, self.models, inp)

    def ping(self) -> int | GeoSegError:
        """The actor's process id (a health check that also helps diagnose restarts), or the
        error that kept it from loading its models (a retry or a restart cannot fix that)."""
        return self.error if self.error is not None else os.getpid()

    def node(self) -> str:
        """The Ray node the actor runs on (its chunks are read there)."""
        return str(ray.get_runtime_context().get_node_id())

    def unseen(self, paths: list[str]) -> tuple[str, list[str]]:
        """This node's address and those of the job's local ``paths`` it does not have."""
        return ray.util.get_node_ip_address(), [p for p in paths if not os.path.exists(p)]


class ChunkReader:
    """Reads chunks on one node through one decoded-block cache (:mod:`geoseg.blockcache`),
    in threads (the actor's ``max_concurrency``). ``announce``: the chunks of its node's band,
    in the order they will be read, so that each block goes after its last read; reads not
    announced (a chunk taken over from another band, a retry) go least recently used."""

    def __init__(self, plan: Plan, announce: list[Chunk]) -> None:
        self.plan = plan
        self.cache = block_cache(plan, announce)

    def read(self, chunk: Chunk) -> ChunkInput:
        return read_chunk(self.plan, chunk, self.cache)

    def stats(self) -> dict[str, int]:
        """Source blocks decoded and reused, and the cache's peak bytes."""
        return self.cache.stats()


def cached_reads(plan: Plan) -> bool:
    """Whether the chunks' reads go through :class:`ChunkReader` actors: one image, a file or
    a URL (the block cache's case); mosaics are read by tasks, wherever a worker is free."""
    return isinstance(plan.image, RasterInfo) and file_identity(plan.image.path) is not None


def _read(plan: Plan, chunk: Chunk) -> ChunkInput:
    return read_chunk(plan, chunk)


WriteFn = Callable[[Plan, str, ChunkOutput], dict[str, Any]]


def _write(fn: WriteFn, plan: Plan, store: str, out: ChunkOutput) -> dict[str, Any]:
    return fn(plan, store, out)


def _vectorize(fn: VectorFn, plan: Plan, store: str, chunk: Chunk) -> Any:
    return fn(plan, store, chunk)


@dataclass
class _Pool:
    """The model actors, replaced one by one when one dies for good."""

    make: Callable[[int], Any]  # starts actor k, returns its handle
    actors: list[Any]
    generation: list[int]
    load: list[int]
    nodes: list[str]  # the node each actor started on
    replaced: int = 0
    max_replacements: int = 0

    @classmethod
    def start(cls, make: Callable[[int], Any], workers: int, max_replacements: int) -> _Pool:
        actors = [make(k) for k in range(workers)]
        for answer in ray.get([a.ping.remote() for a in actors]):  # model-loading errors first
            if isinstance(answer, GeoSegError):
                for a in actors:
                    ray.kill(a)
                raise answer
        nodes = ray.get([a.node.remote() for a in actors])
        return cls(make, actors, [0] * workers, [0] * workers, nodes, 0, max_replacements)

    def pick(self) -> int:
        return min(range(len(self.actors)), key=lambda k: self.load[k])  # least-loaded actor

    def replace(self, i: int, generation: int) -> None:
        """Replace actor ``i`` once per death (other chunks of the dead actor report it too)."""
        if generation != self.generation[i] or self.replaced >= self.max_replacements:
            return
        log.warning("model actor %d died for good; starting a replacement", i)
        self.actors[i] = self.make(i)  # (on the same node if it is still there)
        self.generation[i] += 1
        self.replaced += 1

    def stop(self) -> None:
        """Kill the actors (once): their model memory, on the GPU too, is freed at once."""
        for a in self.actors:
            ray.kill(a)
        self.actors = []


def _check_nodes_see(pool: _Pool, plan: Plan, store: str) -> None:
    """Refuse, before any chunk, a job whose local image or store a model actor's node does
    not have (a path on the driver's disk, not on storage every node mounts): each chunk
    failed instead, as a damaged image or a store without its arrays."""
    from geoseg.plan import image_paths
    from geoseg.sources.remote import is_local_path

    local = [p for p in image_paths(plan.image) if is_local_path(p)]
    if is_local_path(store):
        local.append(os.path.join(store, ".zgroup"))
    if not local:
        return
    for ip, missing in ray.get([a.unseen.remote(local) for a in pool.actors]):
        if missing:
            pool.stop()
            where = os.path.dirname(missing[0]) if missing[0].endswith(".zgroup") else missing[0]
            raise InputError(
                f"the Ray node {ip} cannot see {where}: on a cluster the image and --out must "
                "be on storage every node mounts at the same path, or in object storage (the "
                "image may be any URL GDAL reads, --out an s3://, gs:// or az:// folder)")


class RayBackend:
    """Runs chunks on Ray. ``worker_cls`` (the model actor), ``reader_cls`` (the chunk reader)
    and ``write_fn`` (the chunk writer) are the seams where tests inject faults;
    ``peak_in_flight`` records the most chunks the driver had in the air."""

    def __init__(self, worker_cls: type[ModelWorker] = ModelWorker,
                 write_fn: WriteFn = write_output, actor_restarts: int = ACTOR_RESTARTS,
                 task_retries: int = TASK_RETRIES, passes: int | None = None,
                 reader_cls: type[ChunkReader] = ChunkReader) -> None:
        self.worker_cls = worker_cls
        self.reader_cls = reader_cls
        self.passes = passes  # runtime.passes_at_once: chunks at once in a GPU actor
        self.callers = 1  # chunks at once in each model actor in the last run
        self.write_fn = write_fn
        self.actor_restarts = actor_restarts
        self.task_retries = task_retries
        self.peak_in_flight = 0
        self.read_stats: list[dict[str, int]] = []  # per reader actor of the last run

    def cpu_nodes(self) -> int:
        """Nodes of the cluster with CPUs: a CPU job runs one model actor on each by default."""
        return max(1, len(cpu_nodes()))

    def gpus(self) -> int:
        """GPUs of the cluster the driver is connected to (the driver's own host may have none,
        e.g. a CPU-only head node); ``auto`` devices are decided from this, not from torch."""
        return cluster_gpus()

    def run(self, plan: Plan, store: str, todo: list[Chunk], vectorize: list[Chunk] | None,
            vector_fn: VectorFn | None, cb: Callbacks, *, workers: int, threads: int,
            device: str, gpus_per_worker: float, max_in_flight: int,
            retries: int) -> StageReport:
        gpu = device == "cuda"
        self.callers = model_callers(plan, device, threads, self.passes) if gpu else 1
        # a GPU actor takes several chunks at once (threads of the actor, each on its own CUDA
        # stream: copies and host work of one overlap the kernels of another)
        actor_cls = ray.remote(self.worker_cls)
        total_cpus = float(ray.cluster_resources().get("CPU", 1.0))
        actor_cpus = _actor_cpus(workers, gpu, total_cpus)
        actor_opts = dict(
            num_cpus=actor_cpus, num_gpus=gpus_per_worker if gpu else 0,
            max_concurrency=self.callers,
            max_restarts=self.actor_restarts, max_task_retries=self.actor_restarts)
        read_t = ray.remote(_read).options(num_cpus=TASK_CPUS, max_retries=self.task_retries)
        write_t = ray.remote(_write).options(num_cpus=TASK_CPUS, max_retries=self.task_retries)
        vec_t = ray.remote(_vectorize).options(num_cpus=_vector_cpus(workers, actor_cpus,
                                                                     total_cpus),
                                               max_retries=self.task_retries)

        # CPU actors: one per node by default, each with its node's cores (threads 0); GPU
        # actors go where their GPUs are
        places = ([ActorPlace(None, threads)] * workers if gpu
                  else place_actors(cpu_nodes(), workers, threads))

        def make(k: int) -> Any:
            opts: dict[str, Any] = dict(actor_opts)
            node = places[k].node
            if node is not None:
                from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
            # the plan travels by value: actor restarts must not depend on an object-store ref
            return actor_cls.options(**opts).remote(plan, device, places[k].threads)

        t0 = time.perf_counter()
        plan_ref = ray.put(plan)
        pool = _Pool.start(make, workers, max_replacements=2 * workers * (retries + 1))
        _check_nodes_see(pool, plan, store)
        # each node takes its own band of chunks first (their halos share source blocks)
        pending = ChunkQueues.split(todo, Counter(pool.nodes))
        readers = _Readers.start(self.reader_cls, plan, pool, pending, max_in_flight,
                                 self.actor_restarts)
        gate = NeighbourGate.for_plan(plan, vectorize or [], todo)
        # the job's actors started: worker processes, models loaded, readers placed
        report = StageReport(load_s=time.perf_counter() - t0)
        threads_given = sorted({p.threads for p in places})  # (threads 0 = the node's cores)
        report.runtime = {"threads_per_worker": threads_given[0] if len(threads_given) == 1
                          else [p.threads for p in places],
                          "model_nodes": len(set(pool.nodes))}
        attempts: dict[str, int] = {}
        chunk_refs: dict[ray.ObjectRef, tuple[Chunk, int, int]] = {}
        vec_refs: dict[ray.ObjectRef, Chunk] = {}

        failed_ids: set[str] = set()  # not vectorized: their failure is reported once

        def submit_vectors(chunks: list[Chunk]) -> None:
            if vector_fn is None:
                return
            for c in chunks:
                if c.id not in failed_ids:
                    vec_refs[vec_t.remote(vector_fn, plan_ref, store, c)] = c

        def submit() -> None:
            i = pool.pick()
            chunk = pending.take(pool.nodes[i])
            if chunk is None:  # (not called when no chunk is pending)
                return
            pool.load[i] += 1
            attempts[chunk.id] = attempts.get(chunk.id, 0) + 1
            reader = readers.of(i, pool.generation[i])
            inp = (reader.read.remote(chunk) if reader is not None
                   else read_t.remote(plan_ref, chunk))
            out = pool.actors[i].predict.remote(plan_ref, inp)
            ref = write_t.remote(self.write_fn, plan_ref, store, out)
            chunk_refs[ref] = (chunk, i, pool.generation[i])

        def fail(chunk: Chunk, msg: str, n: int, retryable: bool = True) -> None:
            failed_ids.add(chunk.id)
            failure = ChunkFailure.of(chunk, msg, n, retryable)
            report.failed.append(failure)
            cb.chunk_failed(failure)

        submit_vectors(gate.settle())
        try:
            while pending or chunk_refs or vec_refs:
                while pending and len(chunk_refs) < max_in_flight:
                    submit()
                self.peak_in_flight = max(self.peak_in_flight, len(chunk_refs))
                ready = _wait_one([*chunk_refs, *vec_refs])
                ref = ready[0]
                if ref in vec_refs:
                    c = vec_refs.pop(ref)
                    try:
                        result = ray.get(ref)
                    except (ray.exceptions.RayError, OSError) as exc:
                        fail(c, f"vectorize: {_short(exc)}", 1)
                        continue
                    cb.vectors_done(c, result)
                    report.vectorized += 1
                    continue
                chunk, i, gen = chunk_refs.pop(ref)
                pool.load[i] -= 1
                try:
                    stats = ray.get(ref)
                except (ray.exceptions.RayError, OSError) as exc:
                    cause = _root(exc)
                    if isinstance(cause, StorageError):
                        raise cause from None  # disk full, permission: stop the job, one line
                    if isinstance(exc, ray.exceptions.ActorDiedError) and not readers.died(exc):
                        pool.replace(i, gen)
                    n = attempts[chunk.id]
                    msg = _short(exc)
                    if isinstance(cause, GeoSegError):  # bad input or model: a retry cannot help
                        fail(chunk, msg, n, retryable=False)
                    elif n <= retries:
                        log.warning("chunk %s failed (attempt %d), retrying: %s", chunk.id, n,
                                    msg)
                        pending.put_back(chunk)
                        continue
                    else:
                        fail(chunk, msg, n)
                else:
                    report.done += 1
                    cb.chunk_done(chunk, stats)
                submit_vectors(gate.settle(chunk.index))
                if not pending and not chunk_refs and pool.actors:
                    # inference is over: free the models before the last vectors and merges
                    # (a region spanning the raster is merged last, in the driver)
                    log.info("all chunks predicted: model actors released")
                    pool.stop()
                    self.read_stats = readers.stats()
                    if self.read_stats:  # (none when a reader died: no counts, not zeros)
                        report.blocks = {k: sum(s[k] for s in self.read_stats)
                                         for k in self.read_stats[0]}
                    readers.stop()
        finally:
            pool.stop()
            readers.stop()
        if report.runtime["model_nodes"] > 1:
            log.info("model actors on %d nodes; %d chunk(s) taken over from another node's band",
                     report.runtime["model_nodes"], pending.stolen)
        return report


@dataclass
class _Readers:
    """The :class:`ChunkReader` of each model actor's node (none: chunks are read by tasks)."""

    actors: list[Any]
    of_worker: list[Any]  # the reader of each model actor as started
    generation: list[int]  # the model actors' generations then (a replacement reads by tasks)

    @classmethod
    def start(cls, reader: type[ChunkReader], plan: Plan, pool: _Pool, queues: ChunkQueues,
              concurrency: int, restarts: int) -> _Readers:
        if not cached_reads(plan):
            return cls([], [None] * len(pool.actors), list(pool.generation))
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        reader_cls = ray.remote(reader)
        # each node's reader is told its share of the chunks, in the order they are taken (a
        # chunk another node takes over at the end is read there, least recently used first)
        by_node = {n: reader_cls.options(
            num_cpus=TASK_CPUS, max_concurrency=max(2, concurrency), max_restarts=restarts,
            max_task_retries=restarts,
            scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=True),
        ).remote(plan, queues.share(n)) for n in dict.fromkeys(pool.nodes)}
        return cls(list(by_node.values()), [by_node[n] for n in pool.nodes],
                   list(pool.generation))

    def of(self, worker: int, generation: int) -> Any:
        return self.of_worker[worker] if generation == self.generation[worker] else None

    def died(self, exc: BaseException) -> bool:
        """Whether ``exc`` says a reader died for good (Ray restarts it first); if so, its
        model actors' chunks are read by tasks from now on."""
        dead = getattr(exc, "actor_id", None)
        ids = {r._actor_id.hex(): r for r in self.actors}
        if dead not in ids:
            return False
        log.warning("a chunk reader actor died for good; its chunks are read by tasks")
        self.of_worker = [None if r is ids[dead] else r for r in self.of_worker]
        return True

    def stats(self) -> list[dict[str, int]]:
        """Each reader's cache statistics (none from a reader that died)."""
        try:
            return list(ray.get([r.stats.remote() for r in self.actors], timeout=30))
        except (ray.exceptions.RayError, OSError):
            return []

    def stop(self) -> None:
        """Kill the readers (once; their blocks go with them)."""
        for r in self.actors:
            ray.kill(r)
        self.actors = []
        self.of_worker = [None] * len(self.of_worker)


def _actor_cpus(workers: int, gpu: bool, total: float) -> float:
    """CPUs a model actor reserves: 1 beside a GPU, 0.5 on CPUs (the actor's threads are set
    apart), or less where the cluster cannot hold the actors and, beside them, a reader, a
    write and a vectorize task: those would wait for a CPU forever (4 CPU actors or 2 GPU
    actors on a 2-CPU Ray hung)."""
    want = 1.0 if gpu else 0.5
    room = (total - 3 * TASK_CPUS) / max(1, workers)
    return max(MIN_ACTOR_CPUS, min(want, room))


def _vector_cpus(workers: int, actor_cpus: float, total: float) -> float:
    """CPUs a vectorize task reserves: ``VECTOR_TASK_CPUS`` where the cluster has them beside
    the model actors and one read + one write task, else what is left (never below
    ``TASK_CPUS``, so vectorizing can always be scheduled next to the actors)."""
    spare = total - workers * actor_cpus - 2 * TASK_CPUS
    return max(TASK_CPUS, min(VECTOR_TASK_CPUS, spare))


def _root(exc: BaseException) -> BaseException:
    """The exception a task raised, out of Ray's wrapper (chained tasks pass it along)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


QUIET_S = 60.0  # a job with nothing finished for this long says why it may be waiting


def _wait_one(refs: list[Any], quiet_s: float = QUIET_S) -> list[Any]:
    """``ray.wait`` for one result; every ``quiet_s`` without one, a warning with the
    cluster's live CPU nodes (none: the job waits for a node to join, e.g. after the only
    worker node was lost; it goes on by itself when one does)."""
    while True:
        ready, _ = ray.wait(refs, num_returns=1, timeout=quiet_s)
        if ready:
            return list(ready)
        nodes = cpu_nodes()
        log.warning("no chunk finished in the last %.0f s (%d in flight; %s)", quiet_s,
                    len(refs), f"{len(nodes)} live node(s) with CPUs" if nodes else
                    "no live node with CPUs: waiting for one to join the cluster")


def _short(exc: BaseException) -> str:
    """One line for the report, redacted: the cause a task raised (its type and first line,
    :func:`geoseg.runtime.base.short_error`), or for Ray's own errors (an actor that died,
    a lost node), whose text is a header then the story, their last line."""
    base = _root(exc)
    if not isinstance(base, ray.exceptions.RayError):
        return short_error(base)
    from geoseg.sources.remote import redact

    lines = [ln.strip() for ln in str(base).splitlines() if ln.strip()]
    return redact(f"{type(base).__name__}: {lines[-1] if lines else ''}")[:500]


def ray_map(fn: Callable[..., Any], items: list[Any], shared: dict[str, Any], *,
            num_cpus: float = 1, retries: int = 2) -> list[Any]:
    """``[fn(item, **shared) for item in items]`` as Ray tasks (in order); ``shared`` is put in
    the object store once, not shipped with every task."""
    task = ray.remote(num_cpus=num_cpus, max_retries=retries)(_call_shared)
    shared_ref = ray.put(shared)
    return list(ray.get([task.remote(fn, shared_ref, item) for item in items]))


def _call_shared(fn: Callable[..., Any], shared: dict[str, Any], item: Any) -> Any:
    return fn(item, **shared)
