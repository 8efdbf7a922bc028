"""Dry run of a job (``geoseg submit --plan``): what it will compute and how long it should take.

The time comes from a measured rate, never from a constant: the chunk-stage throughput stored in
the ``summary.json`` of the last run into the same output (same models and tiling), else a
calibration on this host (the job's models on one full chunk of the job's image: read + predict).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoseg.config import JobConfig
from geoseg.errors import ResumeError, StorageError
from geoseg.grid import Chunk
from geoseg.layout import SUMMARY, RunLayout
from geoseg.plan import Plan, make_plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rate:
    px_per_s: float
    source: str  # "summary" | "calibration"
    detail: str  # where and how it was measured


@dataclass(frozen=True)
class PlanEstimate:
    width: int
    height: int
    crs: str
    resolution: tuple[float, float]
    chunk: int
    halo: int
    chunks: int
    chunks_todo: int
    pixels: int
    pixels_todo: int
    pixels_read: int  # chunk + halo pixels read for the chunks to do (redundancy of the halo)
    area_km2: float
    rate: Rate | None
    workers: int | None

    @property
    def eta_s(self) -> float | None:
        """Seconds for the chunks to do at the measured rate (one measured setup)."""
        if self.rate is None or self.rate.px_per_s <= 0:
            return None
        return self.pixels_todo / self.rate.px_per_s


def estimate(cfg: JobConfig, *, calibrate: bool = True, threads: int | None = None) -> PlanEstimate:
    """Plan ``cfg`` (inputs must be readable here) and measure a rate for it."""
    plan = make_plan(cfg)
    todo = _todo(cfg, plan)
    pixels_todo = sum(c.window.size for c in todo)
    read = sum(c.window.pad(plan.halo).size for c in todo)
    g = plan.grid
    rate = _rate_from_summary(cfg, plan)
    if rate is None and calibrate and todo:
        rate = calibrate_rate(plan, todo, threads=threads or cfg.runtime.threads_per_worker)
    return PlanEstimate(g.width, g.height, g.crs.to_string(), g.resolution, plan.chunks.chunk,
                        plan.halo, len(plan.chunks), len(todo), g.height * g.width,
                        pixels_todo, read, _area_km2(plan), rate, cfg.runtime.workers)


def _todo(cfg: JobConfig, plan: Plan) -> list[Chunk]:
    """Chunks still to compute: all, less those a resumable run in the output finished."""
    from geoseg.manifest import load, load_objects
    from geoseg.objstore import ObjectFolder, is_object_url

    key = cfg.result_key([m.digest for m in plan.models])
    try:
        if is_object_url(cfg.output):  # a run in object storage: its chunk records
            done = load_objects(ObjectFolder(cfg.output), expect_key=key).done
        elif RunLayout(Path(cfg.output)).manifest.is_file():
            done = load(Path(cfg.output), expect_key=key).done
        else:
            return list(plan.chunks)
    except (ResumeError, StorageError):  # no run there, or a different job's (--resume would
        return list(plan.chunks)          # refuse it); a bucket that cannot be read: all
    return [c for c in plan.chunks if c.id not in done]


def _area_km2(plan: Plan) -> float:
    """Ground area of the output (the region's polygon if any), geodesic for lat/lon CRSs."""
    import shapely

    from geoseg.area import ground_area_m2

    b = plan.grid.bounds
    geom = shapely.box(b.left, b.bottom, b.right, b.top)
    if plan.region is not None:
        geom = geom.intersection(plan.region.to_crs(plan.grid.crs).geometry)
    return ground_area_m2(geom, plan.grid.crs) / 1e6


def _rate_from_summary(cfg: JobConfig, plan: Plan) -> Rate | None:
    from geoseg.runfolder import read_json

    s = read_json(cfg.output, SUMMARY)
    if s is None:
        return None
    px_s = (s.get("throughput") or {}).get("px_per_s_chunks")
    tiling = s.get("tiling") or {}
    engines = s.get("engines") or {m.name: "torch" for m in plan.models}  # older runs: torch
    same = (s.get("models") == {m.name: m.model_id for m in plan.models}
            and engines == {m.name: m.engine for m in plan.models}
            and tiling.get("chunk") == plan.chunks.chunk and tiling.get("halo") == plan.halo
            and tiling.get("tile") == plan.tile)
    if not px_s or not same:
        return None
    rt = s.get("runtime") or {}
    return Rate(float(px_s), "summary",
                f"last run into {cfg.output} on {rt.get('host', '?')} ({rt.get('device', '?')}, "
                f"{rt.get('workers', '?')} worker(s) x {rt.get('threads_per_worker', '?')} "
                "threads; chunk stage: read, predict, write, vectorize)")


def calibrate_rate(plan: Plan, todo: list[Chunk], *, threads: int | None = None) -> Rate:
    """Time read + predict of one full-size chunk with the job's models on this host's CPU.

    A second pass is timed when the first was short, so that one-off costs (kernel selection,
    allocator warm-up) do not dominate; model loading is not counted (actors load once)."""
    import torch

    from geoseg.chunks import predict_chunk, read_chunk
    from geoseg.models.predictor import Predictor

    chunk = _typical(plan, todo)
    n = threads or torch.get_num_threads()
    models = {m.name: Predictor(m.path, device="cpu", num_threads=n, engine=m.engine)
              for m in plan.models}
    times: list[float] = []
    for _ in range(2):
        t0 = time.perf_counter()
        predict_chunk(plan, models, read_chunk(plan, chunk))
        times.append(time.perf_counter() - t0)
        if times[0] > 5.0:
            break
    secs = min(times)
    log.info("calibration: chunk %s in %.2f s (%s)", chunk.id, secs, times)
    return Rate(chunk.window.size / secs, "calibration",
                f"this host, cpu, 1 worker x {n} threads, chunk {chunk.id} "
                f"({chunk.window.height}x{chunk.window.width} px + {plan.halo} px halo): read + "
                "predict, writes and vectorization not included")


def _typical(plan: Plan, todo: list[Chunk]) -> Chunk:
    """The full-size chunk to do nearest the grid's centre (edge chunks may be partial)."""
    full = [c for c in todo if c.window.height == c.window.width == plan.chunks.chunk] or todo
    cy, cx = plan.grid.height / 2, plan.grid.width / 2

    def dist(c: Chunk) -> float:
        w = c.window
        return abs(w.row_off + w.height / 2 - cy) + abs(w.col_off + w.width / 2 - cx)

    return min(full, key=dist)


def as_dict(e: PlanEstimate) -> dict[str, Any]:
    """JSON-friendly view (``geoseg submit --plan --json``)."""
    return {"grid": {"width": e.width, "height": e.height, "crs": e.crs,
                     "resolution": list(e.resolution)},
            "chunks": {"total": e.chunks, "todo": e.chunks_todo, "size": e.chunk,
                       "halo": e.halo},
            "pixels": {"total": e.pixels, "todo": e.pixels_todo, "read": e.pixels_read},
            "area_km2": round(e.area_km2, 4),
            "rate": None if e.rate is None else {"px_per_s": round(e.rate.px_per_s, 1),
                                                 "source": e.rate.source,
                                                 "detail": e.rate.detail},
            "eta_s": None if e.eta_s is None else round(e.eta_s, 1)}
