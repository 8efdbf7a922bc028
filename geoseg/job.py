"""Run one job end to end: plan → manifest → store → chunks on a backend → vectors → exports
→ summary. The CLI and ``workflows/`` call :func:`run_job`; it prints nothing (it logs and calls a
progress callback)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import platform
import signal
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoseg import __version__
from geoseg.config import JobConfig
from geoseg.engine import RUN_ENGINES
from geoseg.errors import GeoSegWarning, MissingDependencyError, ResumeError, StorageError
from geoseg.grid import Chunk
from geoseg.layout import GPKG, STAC_ITEM, STORE, SUMMARY, RunLayout
from geoseg.manifest import ObjectManifest, RunManifest
from geoseg.objstore import join
from geoseg.outdir import atomic_write_text, storage_errors
from geoseg.plan import Plan, input_changes, input_fingerprint, make_plan, sampled_windows
from geoseg.runfolder import RunFolder, open_run_folder, read_manifest
from geoseg.runtime.base import GPU_PASSES, Backend, ChunkFailure
from geoseg.runtime.connection import ray_connected
from geoseg.runtime.memory import release_free_memory
from geoseg.runtime.provenance import code_version
from geoseg.runtime.sink_process import ProcessSink, use_process
from geoseg.sources.remote import redact, shown_name
from geoseg.thumbs import THUMBS, Thumbs

if TYPE_CHECKING:
    from geoseg.vector_outputs import BackgroundSink

log = logging.getLogger(__name__)

__all__ = ["GPKG", "STORE", "SUMMARY", "JobResult", "Progress", "run_job"]


@dataclass
class Progress:
    """A snapshot for progress displays."""

    stage: str
    done: int
    total: int
    pixels_done: int
    pixels_total: int
    elapsed_s: float
    pixel_area_m2: float
    failed: int = 0
    pixels_this_run: int | None = None  # excludes chunks an earlier run finished (--resume)
    vectors_done: int = 0  # chunks vectorized (their features handed to the GeoPackage writer)
    vectors_total: int = 0  # 0: no vectors

    @property
    def px_per_s(self) -> float:
        px = self.pixels_done if self.pixels_this_run is None else self.pixels_this_run
        return px / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def km2_per_h(self) -> float:
        return self.px_per_s * self.pixel_area_m2 * 3600 / 1e6

    @property
    def eta_s(self) -> float | None:
        if self.pixels_done == 0 or self.px_per_s == 0:
            return None
        return (self.pixels_total - self.pixels_done) / self.px_per_s


ProgressFn = Callable[[Progress], None]


@dataclass
class JobResult:
    output: Path | str  # the run folder, or its URL in object storage
    summary: dict[str, Any]
    failed: list[ChunkFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def summary_path(self) -> str:
        """Where ``summary.json`` is (a path, or a URL)."""
        if isinstance(self.output, str):
            return join(self.output, SUMMARY)
        return str(RunLayout(self.output).summary)


def executor(cfg: JobConfig) -> str:
    """``local`` or ``ray`` for the configured executor (``auto``: Ray when there is a cluster
    to join: an address, RAY_ADDRESS, or a Ray this process already initialised)."""
    want = cfg.runtime.executor
    if want != "auto":
        return want
    if cfg.runtime.address or os.environ.get("RAY_ADDRESS") or ray_connected():
        return "ray"
    # the local executor runs one model: several GPUs (or workers) need Ray's actors
    gpus = _local_gpus() if cfg.runtime.device != "cpu" else 0
    return "ray" if gpus > 1 or (cfg.runtime.workers or 1) > 1 else "local"


def _local_gpus() -> int:
    """NVIDIA GPUs of this host, from the driver's /proc entries (no torch import)."""
    root = Path("/proc/driver/nvidia/gpus")
    return len(list(root.iterdir())) if root.is_dir() else 0


def default_backend(cfg: JobConfig) -> Backend:
    if executor(cfg) == "local":
        from geoseg.runtime.local import LocalBackend

        return LocalBackend(passes=cfg.runtime.passes_at_once,
                            vector_processes=cfg.runtime.vector_processes,
                            chunk_processes=cfg.runtime.chunk_processes)
    try:
        from geoseg.runtime.ray_backend import RayBackend, ensure_ray
    except ImportError as exc:
        raise MissingDependencyError("the ray executor (--address, --executor ray) needs Ray, "
                                     "which is not installed: pip install 'geoseg[cluster]'"
                                     ) from exc

    ensure_ray(cfg.runtime.address, cfg.runtime.num_cpus)
    return RayBackend(passes=cfg.runtime.passes_at_once)


def _backend_gpus(backend: Backend) -> int | None:
    """GPUs the backend will run on when it knows (a Ray cluster), else None (this host)."""
    gpus = getattr(backend, "gpus", None)
    return int(gpus()) if callable(gpus) else None


def resolve_device(want: str, gpus: int | None = None, torch_free: bool = False) -> str:
    """``auto``: cuda when the cluster (``gpus``, if known) or else this host has a GPU.

    ``torch_free``: every model runs on onnxruntime, so ask it, not torch (whose import alone
    costs ~500 MB)."""
    if want != "auto":
        return want
    if gpus is not None:
        return "cuda" if gpus > 0 else "cpu"
    if torch_free:
        from geoseg.engine import import_onnxruntime

        # the provider list says what the build supports, not what the host has
        cuda = ("CUDAExecutionProvider" in import_onnxruntime().get_available_providers()
                and Path("/dev/nvidiactl").exists())
        return "cuda" if cuda else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_in_flight(cfg: JobConfig, device: str, workers: int) -> int:
    """Chunks in the air (read, predicted or being written) when ``runtime.max_in_flight``
    is not set: two per model worker on CPUs; on GPUs two per pass in flight, and at least one
    per core, so that every core can decode the next chunks while the GPUs predict."""
    if device == "cpu":
        return 2 * workers + 2
    passes = cfg.runtime.passes_at_once or GPU_PASSES
    return max(2 * workers * passes + 2, cfg.runtime.num_cpus or os.cpu_count() or 1)


def _width(cfg: JobConfig, device: str, gpus: int | None = None,
           cpu_nodes: int | None = None) -> tuple[int, int]:
    """(model workers, torch threads per worker): one worker per GPU, else one CPU worker using
    all cores (measured faster on 2 cores than two single-threaded workers). On a Ray cluster
    (``cpu_nodes``: its nodes with CPUs) one CPU worker per node, each with its node's cores
    (threads 0: the backend gives each actor its node's share)."""
    cpus = cfg.runtime.num_cpus or os.cpu_count() or 1
    if device == "cuda":
        if gpus is None:
            import torch

            gpus = torch.cuda.device_count()
        workers = cfg.runtime.workers or max(1, int(gpus / cfg.runtime.gpus_per_worker))
        return workers, cfg.runtime.threads_per_worker or 2
    if cpu_nodes is not None:
        return cfg.runtime.workers or cpu_nodes, cfg.runtime.threads_per_worker or 0
    workers = cfg.runtime.workers or 1
    return workers, cfg.runtime.threads_per_worker or max(1, cpus // workers)


class _Recorder:
    """Backend callbacks: manifest, stats, progress, vector sink."""

    def __init__(self, plan: Plan, manifest: Any, sink: Any, progress: ProgressFn | None,
                 pixels_done: int, t0: float,
                 on_written: Callable[[], None] | None = None,
                 thumbs: dict[str, Thumbs] | None = None) -> None:
        self.plan, self.manifest, self.sink, self.progress = plan, manifest, sink, progress
        self.on_written = on_written  # called once every chunk of the plan is written
        self.pixels_total = plan.grid.height * plan.grid.width
        self.pixels_done = pixels_done
        self.pixels_before = pixels_done
        self.failed: list[ChunkFailure] = []
        self.unrecorded: list[ChunkFailure] = []  # written, but their record could not be
        self.t0 = t0
        self.vector_s = 0.0
        self.vectorized = 0
        self.done = len(manifest.done)
        self.px_area = _px_area(plan)
        self.thumbs = thumbs if thumbs is not None else {}  # chunk id -> its quicklook pixels
        self._emit()

    def _emit(self) -> None:
        if self.progress:
            self.progress(Progress("predict", self.done, len(self.plan.chunks), self.pixels_done,
                                   self.pixels_total, time.perf_counter() - self.t0,
                                   self.px_area, len(self.failed),
                                   self.pixels_done - self.pixels_before, self.vectorized,
                                   len(self.plan.chunks) if self.sink is not None else 0))

    def chunk_done(self, chunk: Chunk, stats: dict[str, Any]) -> None:
        thumbs = stats.pop(THUMBS, None)  # the quicklook's pixels: kept here, not recorded
        try:
            self.manifest.record(chunk.id, stats)
        except StorageError as exc:  # object storage, after the client's retries: this chunk
            if exc.fatal or not isinstance(self.manifest, ObjectManifest):  # fails, the job
                raise                                                      # goes on
            failure = ChunkFailure.of(chunk, f"recording the chunk: {exc}"[:500], 1)
            self.unrecorded.append(failure)
            self.chunk_failed(failure)
            return
        if thumbs is not None:
            self.thumbs[chunk.id] = thumbs
        self.done += 1
        self.pixels_done += chunk.window.size
        self._emit()
        if self.on_written is not None and self.done == len(self.plan.chunks) \
                and not self.failed and not self.unrecorded:
            self.on_written()

    def chunk_failed(self, failure: ChunkFailure) -> None:
        log.error("chunk %s failed after %d attempts: %s", failure.chunk_id, failure.attempts,
                  failure.error)
        self.failed.append(failure)
        self._emit()

    def vectors_done(self, chunk: Chunk, result: Any) -> None:
        if self.sink is not None:
            self.vector_s += result.seconds
            self.sink.add(result)
            self.vectorized += 1
            self._emit()


def _warn_stale_sidecars(paths: Iterable[str]) -> None:
    """Warn about GDAL side files (``X.aux.xml``: statistics, histograms, written by QGIS or
    ``gdalinfo -stats``) older than the output ``X`` a run just wrote: GIS software would show
    the earlier file's figures. They are not geoseg's, so they stay."""
    for p in paths:
        aux = Path(f"{p}.aux.xml")
        with contextlib.suppress(OSError):
            if aux.is_file() and aux.stat().st_mtime < Path(p).stat().st_mtime:
                warnings.warn(f"{aux} (a GDAL side file geoseg did not write) predates the new "
                              f"{Path(p).name}: GIS software will show the earlier file's "
                              "statistics and histogram; delete it", GeoSegWarning,
                              stacklevel=3)


def _px_area(plan: Plan) -> float:
    from geoseg.area import pixel_area_m2

    return pixel_area_m2(plan.grid)


def run_job(cfg: JobConfig, *, overwrite: bool = False, resume: bool = False,
            progress: ProgressFn | None = None, backend: Backend | None = None) -> JobResult:
    """Run ``cfg``; returns the summary. Raises GeoSegError for bad input before any work.

    The output folder is locked for the whole job (a second job into it is refused); an
    interruption (KeyboardInterrupt, :class:`~geoseg.errors.JobInterrupted`) leaves finished
    chunks and a manifest that says so."""
    engines = _recorded_engines(cfg.output) if resume else None
    plan = make_plan(cfg, engines=engines)  # bad input is found before any connection
    gpus = _remote_cluster_gpus(cfg)
    if gpus is not None:  # the engine for the cluster's devices, not for unknown ones
        plan = make_plan(cfg, engines=engines, cluster_gpus=gpus)
    # rasterio reads the transform of each fresh in-memory dataset (features.rasterize and
    # shapes build one per call) before setting it, and warns so from the vector threads: not
    # about the user's data. Filters are process-wide, and catch_warnings around a job is not
    # thread-safe (two jobs in threads could leave either's filters behind): this one filter
    # is added once and stays (adding it again moves it, the list does not grow).
    warnings.filterwarnings("ignore", message="Dataset has no geotransform, gcps, or rpcs")
    with open_run_folder(cfg.output) as folder:
        return _run_locked(cfg, plan, folder, overwrite=overwrite, resume=resume,
                           progress=progress, backend=backend)


def _remote_cluster_gpus(cfg: JobConfig) -> int | None:
    """GPUs of the Ray cluster the job joins (an address or RAY_ADDRESS, device auto), which
    decide what ``auto`` runs the models with: on a CPU-only cluster onnxruntime, 1.8x faster
    than PyTorch eager there, where an unknown cluster had to be taken for a GPU one. None when
    the job joins no cluster or its device is given."""
    if (cfg.runtime.device != "auto" or executor(cfg) != "ray"
            or not (cfg.runtime.address or os.environ.get("RAY_ADDRESS"))):
        return None
    try:
        from geoseg.runtime.ray_backend import cluster_gpus, ensure_ray
    except ImportError:
        return None  # no Ray: the backend says so, in one line
    ensure_ray(cfg.runtime.address, cfg.runtime.num_cpus)
    return cluster_gpus()


def _recorded_engines(out: str) -> dict[str, Any] | None:
    """Engines the run in ``out`` used, per model task (None when there is no such run)."""
    models = (read_manifest(out) or {}).get("models", {})
    if not isinstance(models, dict):
        return None
    engines = {k: v.get("engine") for k, v in models.items() if isinstance(v, dict)}
    return {k: v for k, v in engines.items() if v in RUN_ENGINES} or None


def _mosaic_items(plan: Plan) -> list[dict[str, Any]] | None:
    """A mosaic's items (1-based as in the store's source layer), for the store's attributes."""
    from geoseg.sources.mosaic import Mosaic

    if not isinstance(plan.image, Mosaic):
        return None
    return [{"index": i, "id": it.id, "datetime": it.datetime,
             "hrefs": [redact(h) for h in it.hrefs]}
            for i, it in enumerate(plan.image.items, start=1)]


def _inputs(cfg: JobConfig, plan: Plan) -> list[str]:
    """Files and URLs the run reads: never removed by --overwrite."""
    from geoseg.plan import image_paths

    paths = [*image_paths(plan.image), *(str(m.path) for m in plan.models)]
    if cfg.region is not None and cfg.region.file:
        paths.append(str(cfg.region.file))
    return paths


def _run_locked(cfg: JobConfig, plan: Plan, folder: RunFolder, *, overwrite: bool,
                resume: bool, progress: ProgressFn | None, backend: Backend | None) -> JobResult:
    t_start = time.perf_counter()
    key = cfg.result_key([m.digest for m in plan.models])
    grid = plan.grid
    code = code_version()
    inputs = input_fingerprint(plan)
    meta = {"geoseg_version": __version__, "code": code, "result_key": key,
            "config": cfg.record(),
            "grid": {"shape": list(grid.shape), "transform": list(grid.transform)[:6],
                     "crs_wkt": grid.crs.to_wkt()},
            "chunk_size": plan.chunks.chunk, "chunks": len(plan.chunks), "status": "running",
            "models": {m.name: {"id": m.model_id, "digest": m.digest, "engine": m.engine}
                       for m in plan.models},
            "inputs": inputs, "input_paths": _input_paths(cfg)}
    if resume:
        _check_same_settings(cfg, key, plan)
    manifest = folder.start_manifest(meta, overwrite=overwrite, resume=resume,
                                     protect=_inputs(cfg, plan))
    earlier = manifest.data.get("inputs")
    changed = input_changes(earlier, inputs) if isinstance(earlier, dict) else []
    if changed == ["file sizes"] and _failed_on_damage(str(cfg.output)):
        if not isinstance(earlier, dict) or not any(sampled_windows(earlier, inputs)):
            raise ResumeError(
                f"{redact(str(cfg.output))}: the image was damaged where geoseg samples it, so "
                "the repaired one (its file sizes differ) cannot be told from another image: "
                "resume refused, the run is left as it was; pass --overwrite to start over")
        log.warning("the input's file sizes differ from the run's, whose chunks failed on a "
                    "damaged image: taken as the repaired image (the same grid and sampled "
                    "pixels); the failed chunks are computed, the finished ones kept")
        changed = []
        manifest.update(inputs=inputs)  # the repaired image is the run's input from now on
    if changed:  # before anything is touched: the earlier run stays as it was
        raise ResumeError(
            f"{redact(str(cfg.output))}: the input is not the one this run began with (its "
            f"{', '.join(changed)} differ): resume refused, the run is left as it was; pass "
            "--overwrite to start over, or write to another --out")
    try:
        _note_code(manifest, code)
        # the item, the summary and the store's attribute say "complete": a resumed run takes them
        # back first (in the reverse of the order a finished run writes them), so that one killed
        # half-way never looks complete
        store = folder.store
        from geoseg.store import init_store, mark_incomplete

        folder.detach_store_links()
        if folder.store_exists():
            with folder.errors(STORE):
                mark_incomplete(store)
        manifest.update(status="running")
        folder.discard(STAC_ITEM)
        folder.discard(SUMMARY)
        if not folder.store_exists():
            if manifest.done:
                log.warning("%s is missing: every recorded chunk is recomputed", store)
                manifest.forget(list(manifest.done))
            with folder.errors(STORE):
                init_store(store, grid, plan.chunks.chunk, plan.layers,
                           {"source_image": redact(plan.image.path),
                            "acquisition_date": plan.image.acquisition_date,
                            "result_key": key}, _mosaic_items(plan))
        damaged = _verify(plan, store, manifest)
        if damaged:
            log.warning("%d finished chunk(s) are missing or damaged on disk (e.g. %s): "
                        "recomputing them", len(damaged), damaged[0])
        todo = [c for c in plan.chunks if c.id not in manifest.done]
        log.info("%d chunks, %d to do (%d already done)", len(plan.chunks), len(todo),
                 len(manifest.done))
        return _execute(cfg, plan, folder, manifest, todo, progress, backend, t_start)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (JobInterrupted): a cancelled job
        from geoseg.runtime.signals import received

        signum = getattr(exc, "signum", None) or received()
        manifest.update(status="cancelled" if signum == signal.SIGTERM else "interrupted")
        raise
    except Exception as exc:  # bad model, disk full, a bug: finished chunks stay valid
        with contextlib.suppress(StorageError):  # no room to say so on a full disk
            manifest.update(status="failed", error=redact(f"{type(exc).__name__}: {exc}")[:500])
        if isinstance(exc, StorageError) and str(exc).endswith("then rerun"):
            raise _resumable(exc) from exc
        raise


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _check_same_settings(cfg: JobConfig, key: str, plan: Plan) -> None:
    """Refuse a resume whose settings differ from the earlier run's, naming what differs (the
    manifest's own check only knows that the key differs)."""
    earlier = read_manifest(cfg.output)
    if not earlier or earlier.get("result_key") in (None, key):
        return
    before = _flat(earlier.get("config") or {})
    now = _flat(json.loads(json.dumps(cfg.record(), default=str)))  # as the manifest has it
    runtime = ("runtime.", "output")  # how and where it runs: not part of the result
    differ = sorted(k for k in before.keys() | now.keys()
                    if not k.startswith(runtime) and before.get(k) != now.get(k))
    digests = {m.name: m.digest for m in plan.models}
    models = earlier.get("models") or {}
    differ += [f"model {name} (its file)" for name, m in models.items()
               if isinstance(m, dict) and name in digests and m.get("digest") != digests[name]]
    if differ:
        shown = ", ".join(differ[:4]) + (", ..." if len(differ) > 4 else "")
        raise ResumeError(f"{redact(str(cfg.output))} was produced with other settings ({shown} "
                          "differ): resume refused; pass --overwrite to start over, or use the "
                          "earlier settings")


def _resumable(exc: StorageError) -> StorageError:
    """``exc`` saying how a job goes on after its cause is fixed."""
    err = StorageError(f"{exc} with --resume (finished chunks are kept)")
    err.fatal = exc.fatal
    return err


def _input_paths(cfg: JobConfig) -> list[str]:
    """The job's inputs as a later command (``geoseg change``'s image check) can open them from
    anywhere: local paths and patterns made absolute, URLs without their query (signed URLs
    are credentials)."""
    from geoseg.sources.remote import is_local_path

    return [os.path.abspath(i) if is_local_path(i) else redact(i) for i in cfg.images]


def _failed_on_damage(output: str) -> bool:
    """Whether the run in ``output`` last ended with chunks that failed on an error a rerun
    cannot fix (a damaged image: "repair or re-download it, then rerun with --resume")."""
    from geoseg.runfolder import read_json

    summary = read_json(output, SUMMARY) or {}
    failed = (summary.get("chunks") or {}).get("failed") or []
    return any(isinstance(f, dict) and f.get("retryable") is False for f in failed)


def _damaged(plan: Plan, store: str, records: dict[str, dict[str, Any] | None]) -> list[str]:
    """Ids of the chunks (``records``: id → record or None) without a record or whose stored
    files are not exactly what the record says."""
    from geoseg.store import damaged_chunks

    return damaged_chunks(store, {
        cid: (plan.chunks.get(*map(int, cid.split("_"))), stats.get("files") if stats else None)
        for cid, stats in records.items()})


def _verify(plan: Plan, store: str, manifest: RunManifest) -> list[str]:
    """Chunks the manifest lists whose stored files are not what was written (forgotten)."""
    bad = _damaged(plan, store, dict(manifest.done))
    manifest.forget(bad)
    return bad


def _execute(cfg: JobConfig, plan: Plan, folder: RunFolder, manifest: RunManifest,
             todo: list[Chunk], progress: ProgressFn | None, backend: Backend | None,
             t_start: float) -> JobResult:
    layout = folder.layout  # where outputs are built (a staging folder for object storage)
    store = folder.store
    if backend is None:
        backend = default_backend(cfg)
    gpus = _backend_gpus(backend)
    device = resolve_device(cfg.runtime.device, gpus,
                            torch_free=all(m.engine == "onnx" for m in plan.models))
    nodes = getattr(backend, "cpu_nodes", None)
    workers, threads = _width(cfg, device, gpus, nodes() if callable(nodes) else None)

    sink: BackgroundSink | ProcessSink | None = None
    vector_fn = None
    if cfg.vectors.enabled:
        from geoseg.sources.mosaic import Mosaic
        from geoseg.vector_outputs import (
            BackgroundSink,
            GeoPackageSink,
            SourceDates,
            vectorize_chunk,
        )

        common = {"source_image": shown_name(plan.image.path),
                  "acquisition_date": plan.image.acquisition_date or ""}
        mosaic = isinstance(plan.image, Mosaic)  # features get their source's date
        split_px = cfg.vectors.landcover_split_px
        if use_process(plan.grid.height * plan.grid.width, device,
                       cfg.runtime.gpkg_process):
            sink = ProcessSink(layout.gpkg, plan, common, split_px=split_px,
                               mosaic_store=store if mosaic else None)
        else:
            sink = BackgroundSink(GeoPackageSink(
                layout.gpkg, plan, common, dates=SourceDates(store, plan) if mosaic else None,
                split_px=split_px))
        # (a writer process: the vectors are pickled where they are made, not in this one)
        vector_fn = functools.partial(vectorize_chunk, vcfg=cfg.vectors,
                                      packed=isinstance(sink, ProcessSink))
    done_px = sum(plan.chunks.get(*map(int, k.split("_"))).window.size for k in manifest.done)
    # the exports read only the store: they start once every chunk is written (and verified),
    # while the last chunks are vectorized and the GeoPackage writer finishes
    pool = ThreadPoolExecutor(2, thread_name_prefix="geoseg-export")
    # the chunks' quicklook pixels, filled by the recorder: complete once every chunk is
    # written, which is when the exports start
    thumbs: dict[str, Thumbs] = {}
    early = _Exports(pool, cfg, plan, layout, store, manifest, thumbs)
    rec = _Recorder(plan, manifest, sink, progress, done_px, time.perf_counter(), early.start,
                    thumbs)
    t0 = time.perf_counter()
    setup_s = t0 - t_start
    try:
        report = backend.run(plan, store, todo, list(plan.chunks) if sink else None, vector_fn,
                             rec, workers=workers, threads=threads, device=device,
                             gpus_per_worker=cfg.runtime.gpus_per_worker,
                             max_in_flight=cfg.runtime.max_in_flight
                             or default_in_flight(cfg, device, workers),
                             retries=cfg.runtime.chunk_retries)
    except BaseException:
        if sink is not None:  # stop the writer now; the partial GeoPackage keeps its temp name
            sink.close(abort=True)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    failed = [*report.failed, *rec.unrecorded]
    release_free_memory()  # the model is gone: its heap goes back before the final merge
    t_chunks = time.perf_counter() - t0
    timings: dict[str, float] = {"setup_s": round(setup_s, 3),
                                 "model_load_s": round(report.load_s, 3),
                                 "chunks_s": round(t_chunks, 3)}
    outputs: dict[str, str] = {"zarr": store}  # where each output is (path or URL)
    built: dict[str, str] = {"zarr": store}  # where it was built (the STAC item hashes these)
    t1 = time.perf_counter()
    with pool:
        if not failed:  # (not started early: a chunk was done before this run, or failed)
            early.start()
        # a run never says "complete" while a chunk is missing or not what was written
        failed += early.missing()
        try:
            with storage_errors(layout.gpkg):
                # no features.gpkg until every chunk is in: a map with holes never looks
                # finished (a resume vectorizes every chunk again)
                if sink is not None and failed:
                    sink.close(abort=True)
                    counts = {}
                else:
                    counts = sink.finish() if sink is not None else {}
        except BaseException:  # (a signal): the writers end before the job does
            if sink is not None:
                sink.close(abort=True)
            raise
        timings["vector_merge_s"] = round(time.perf_counter() - t1, 3)
        exported = early.results()
    timings["vectorize_task_s"] = round(rec.vector_s, 3)
    timings["gpkg_append_s"] = round(sink.busy_s if sink is not None else 0.0, 3)
    if counts:
        built["gpkg"] = str(layout.gpkg)
        with folder.errors(GPKG):
            outputs["gpkg"] = folder.publish(layout.gpkg)
    for key, (path, seconds) in exported.items():
        built[key] = str(path)
        with folder.errors(path.name):
            outputs[key] = folder.publish(path)
        name = "quicklook_s" if key == "quicklook" else "cog_s"
        timings[name] = round(timings.get(name, 0.0) + seconds, 3)
    timings["exports_s"] = round(timings.get("cog_s", 0.0) + timings.get("quicklook_s", 0.0), 3)
    timings["total_s"] = round(time.perf_counter() - t_start, 3)
    if not failed:
        outputs["stac_item"] = (join(folder.where, STAC_ITEM) if folder.remote
                                else str(layout.stac_item))
    summary = _summary(cfg, plan, manifest, failed, counts, outputs, timings, device,
                       workers, threads, len(todo))
    summary["runtime"]["backend"] = type(backend).__name__
    summary["runtime"].update(report.runtime)  # what the backend decided (Ray: per node)
    summary["runtime"]["passes_at_once"] = getattr(backend, "callers", 1)
    summary["runtime"]["vector_processes"] = getattr(backend, "vector_workers", 0)
    summary["runtime"]["gpkg_process"] = isinstance(sink, ProcessSink)
    summary["runtime"]["chunk_processes"] = getattr(backend, "chunk_workers", 0)
    if report.blocks:  # the image's blocks decoded / reused by the reads (one tiled image)
        summary["source_blocks"] = report.blocks
    atomic_write_text(layout.summary, json.dumps(summary, indent=2, default=str))
    with folder.errors(SUMMARY):
        folder.publish(layout.summary)
    if not failed:  # last: it lists the outputs with their checksums
        from geoseg.stac_item import write_stac_item

        write_stac_item(layout, plan, built, result_key=manifest.result_key,
                        class_pixels=summary["class_pixels"])
        with folder.errors(STAC_ITEM):
            folder.publish(layout.stac_item)
    status = "complete" if not failed else f"completed with {len(failed)} failed chunks"
    manifest.update(status=status)
    if not folder.remote:
        _warn_stale_sidecars(built.values())
    if not failed and summary.get("valid_fraction") == 0.0:
        warnings.warn(f"no pixel of {redact(str(plan.image.path))} was valid (all nodata, NaN "
                      "or outside the region): the maps hold only nodata"
                      + (" and no features.gpkg was written" if sink is not None else "")
                      + "; check the image's nodata value and the region", GeoSegWarning,
                      stacklevel=2)
    if not failed:
        from geoseg.store import mark_complete

        with folder.errors(STORE):
            mark_complete(store, {"summary": SUMMARY})
    return JobResult(folder.where if folder.remote else layout.root, summary, failed)


class _Exports:
    """The COGs and the quicklook of a run, started once its store is complete: every chunk
    written, then verified against its record (in the export pool, off the chunk loop)."""

    def __init__(self, pool: ThreadPoolExecutor, cfg: JobConfig, plan: Plan, layout: RunLayout,
                 store: str, manifest: RunManifest, thumbs: dict[str, Thumbs]) -> None:
        self.pool, self.cfg, self.plan, self.layout = pool, cfg, plan, layout
        self.store, self.manifest = store, manifest
        self.thumbs = thumbs  # chunks' quicklook pixels (this run)
        self.started = False
        self._verified: Future[tuple[list[ChunkFailure], dict[str, Future[Any]]]] | None = None

    def start(self) -> None:
        if not self.started:
            self.started = True
            self._verified = self.pool.submit(self._verify_then_export)

    def _verify_then_export(self) -> tuple[list[ChunkFailure], dict[str, Future[Any]]]:
        missing = _missing(self.plan, self.store, self.manifest)
        if missing:
            return missing, {}
        return [], _start_exports(self.pool, self.cfg, self.plan, self.layout, self.store,
                                  self.thumbs)

    def missing(self) -> list[ChunkFailure]:
        """Chunks the store's verification found missing or damaged (waits for it)."""
        return self._verified.result()[0] if self._verified is not None else []

    def results(self) -> dict[str, tuple[Path, float]]:
        """Output key -> (path, seconds) of each export (waits for them; re-raises theirs)."""
        futures = self._verified.result()[1] if self._verified is not None else {}
        return {key: fut.result() for key, fut in futures.items()}


def _start_exports(pool: ThreadPoolExecutor, cfg: JobConfig, plan: Plan, layout: RunLayout,
                   store: str, thumbs: dict[str, Thumbs]
                   ) -> dict[str, Future[tuple[Path, float]]]:
    """COGs and the quicklook (read from ``store``, or from the chunks' ``thumbs``; built under
    ``layout``) as tasks of ``pool``: output key -> (path, seconds)."""
    from geoseg.outputs import export_cog, quicklook

    def timed(fn: Callable[..., Path], *args: Any) -> tuple[Path, float]:
        t0 = time.perf_counter()
        return fn(*args), time.perf_counter() - t0

    futures: dict[str, Future[tuple[Path, float]]] = {}
    cpus = cfg.runtime.num_cpus or os.cpu_count() or 1  # the COGs take turns: each has every core
    if cfg.outputs.cog:  # (each export converts its own write errors)
        for m in plan.models:
            futures[f"cog_{m.name}"] = pool.submit(timed, export_cog, plan, store, m.name,
                                                   layout.cog(m.name), cpus)
    if cfg.outputs.quicklook:
        futures["quicklook"] = pool.submit(timed, functools.partial(quicklook, thumbs=thumbs),
                                           plan, store, layout.quicklook)
    return futures


def _missing(plan: Plan, store: str, manifest: RunManifest) -> list[ChunkFailure]:
    """Chunks of the plan without a verified record (should be none after a clean pass)."""
    bad = set(_damaged(plan, store, {c.id: manifest.done.get(c.id) for c in plan.chunks}))
    return [ChunkFailure.of(c, "chunk missing or damaged after the run", 0)
            for c in plan.chunks if c.id in bad]


def _note_code(manifest: Any, code: dict[str, Any]) -> None:
    """Record which code ran (each run of a resumed job) and warn when it changed."""
    first = manifest.data.get("code")
    if first is not None and _code_changed(first, code):
        def said(c: dict[str, Any]) -> str:
            dirty = ", with uncommitted changes" if c.get("git_dirty") is True else ""
            return f"geoseg {c.get('geoseg_version')} (commit {c.get('git_commit')}{dirty})"

        warnings.warn(GeoSegWarning(
            f"resuming a run started with {said(first)} using {said(code)}: pass --overwrite "
            "if results must come from one version"), stacklevel=3)
    manifest.update(runs=[*manifest.data.get("runs", []), {"code": code, "started": time.time()}])


def _code_changed(first: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether two runs' code differ: version or commit, or the uncommitted-changes flag where
    both know it (a submitted job's copy of the code records it as unknown, None)."""
    keys = ("geoseg_version", "git_commit")
    if any(first.get(k) != now.get(k) for k in keys):
        return True
    a, b = first.get("git_dirty"), now.get("git_dirty")
    return a is not None and b is not None and a != b


def _summary(cfg: JobConfig, plan: Plan, manifest: Any, failed: list[ChunkFailure],
             counts: dict[str, int], outputs: dict[str, str], timings: dict[str, float],
             device: str, workers: int, threads: int, computed: int) -> dict[str, Any]:
    from geoseg.outputs import class_areas

    hist: dict[str, list[int]] = {}
    areas: dict[str, list[float]] = {}
    stage_s: dict[str, float] = {}
    for stats in manifest.done.values():
        for name, h in stats.get("hist", {}).items():
            acc = hist.setdefault(name, [0] * len(h))
            hist[name] = [a + b for a, b in zip(acc, h, strict=True)]
        for name, h in stats.get("area_m2", {}).items():  # geographic grids only
            got = areas.setdefault(name, [0.0] * len(h))
            areas[name] = [a + b for a, b in zip(got, h, strict=True)]
        for k, v in stats.get("timings", {}).items():
            stage_s[k] = stage_s.get(k, 0.0) + float(v)
    px = plan.grid.height * plan.grid.width
    computed_px = sum(plan.chunks.get(*map(int, k.split("_"))).window.size
                      for k in list(manifest.done)[-computed:]) if computed else 0
    chunk_s = timings["chunks_s"]
    return {
        "status": "complete" if not failed else "completed_with_failures",
        "image": redact(plan.image.path), "acquisition_date": plan.image.acquisition_date,
        "models": {m.name: m.model_id for m in plan.models},
        "engines": {m.name: m.engine for m in plan.models},
        "grid": {"shape": list(plan.grid.shape), "crs": plan.grid.crs.to_string(),
                 "resolution": list(plan.grid.resolution),
                 "bounds": [plan.grid.bounds.left, plan.grid.bounds.bottom,
                            plan.grid.bounds.right, plan.grid.bounds.top]},
        "chunks": {"total": len(plan.chunks), "computed_this_run": computed,
                   "failed": [f.__dict__ for f in failed]},
        "tiling": {"chunk": plan.chunks.chunk, "halo": plan.halo, "tile": plan.tile,
                   "overlap": plan.overlap, "batch": plan.batch_size},
        "runtime": {"device": device, "workers": workers, "threads_per_worker": threads,
                    "host": platform.node()},
        "code": manifest.data["runs"][-1]["code"],
        "throughput": {"pixels": px,
                       "px_per_s_chunks": round(computed_px / chunk_s, 1) if chunk_s else None,
                       "px_per_s_end_to_end": round(computed_px / timings["total_s"], 1)
                       if computed else None},
        "timings_s": timings, "stage_cpu_s": {k: round(v, 3) for k, v in stage_s.items()},
        "class_areas_m2": class_areas(plan, hist, areas),
        "class_pixels": hist,
        "features": counts, "outputs": outputs,
        "valid_fraction": float(np.sum([s.get("valid_px", 0) for s in manifest.done.values()])
                                / px),
    }
