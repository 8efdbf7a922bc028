"""Compare two ``geoseg run`` outputs of one region: change store, transitions, building
changes, quicklooks and a summary. The CLI and workflows call :func:`compare_runs`; it prints
nothing."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import xarray as xr

from geoseg import __version__
from geoseg.change.align import GridDecision, decide_grid, quiet_warp
from geoseg.change.building_change import check_params, compare_buildings
from geoseg.change.building_evidence import EvidenceRule, PixelEvidence
from geoseg.change.defaults import (
    BUILDING_BREAK_CHANGED,
    BUILDING_MAX_OTHER_COVER,
    BUILDING_MIN_CHANGED,
    BUILDING_MIN_CONFIDENCE,
    BUILDING_PART_CHANGED,
    MIN_CHANGE_CONFIDENCE,
    MIN_CHANGE_WIDTH,
    MIN_SPECTRAL_CHANGE,
    MODIFIED_MIN_CHANGED,
)
from geoseg.change.quicklook import render
from geoseg.change.raster import (
    ChangeRule,
    Transitions,
    change_inputs,
    check_min_width,
    compute_change,
    confidence_threshold,
    init_change_store,
)
from geoseg.change.runs import RunInfo, check_same_classes, open_run
from geoseg.change.spectral import (
    SpectralInputs,
    check_min_spectral_change,
    open_spectral,
    spectral_threshold,
)
from geoseg.errors import GeoSegError, GeoSegWarning, InputError, OutputExistsError
from geoseg.outdir import FolderLock, atomic_write_text, remove_output, storage_errors
from geoseg.runtime.connection import ray_connected

log = logging.getLogger(__name__)

STORE = "change.zarr"
GPKG = "change.gpkg"
CSV = "transitions.csv"
SUMMARY = "change_summary.json"
PNGS = ("before.png", "after.png", "change.png")
EVALUATION = "evaluation.json"  # `geoseg change --scene`: scores against a scene's truth
PR_PNG = "change_pr_curve.png"  # ... and precision/recall of changed pixels by confidence
OUTPUTS = (STORE, GPKG, CSV, SUMMARY, *PNGS, EVALUATION, PR_PNG)


@dataclass(frozen=True)
class ChangeResult:
    """Where the outputs are, and the summary that was written to ``change_summary.json``."""

    output: Path
    summary: dict[str, Any]
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def store(self) -> Path:
        return self.output / STORE

    @property
    def gpkg(self) -> Path | None:
        p = self.output / GPKG
        return p if p.exists() else None

    @property
    def building_counts(self) -> dict[str, int] | None:
        b = self.summary.get("buildings")
        return None if b is None else dict(b["counts"])


def _ours(out: Path) -> bool:
    """Whether ``out`` holds an earlier ``geoseg change`` (its store, written first, says so)."""
    store = out / STORE
    if store.is_symlink() or not (store / ".zattrs").is_file():
        return False
    try:
        return json.loads((store / ".zattrs").read_text()).get("kind") == "geoseg-change"
    except (OSError, ValueError, AttributeError):
        return False


def unfinished_change(out: Path) -> bool:
    """Whether ``out`` holds a ``geoseg change`` that was stopped (its outputs, no summary):
    a rerun redoes its outputs without ``--overwrite``, as a run resumes."""
    return _ours(out) and not (out / SUMMARY).exists()


def _check_order(a: RunInfo, b: RunInfo) -> None:
    """Warn when run A is not the earlier date: new and demolished would swap."""
    import warnings

    from geoseg.errors import GeoSegWarning

    if a.path.resolve() == b.path.resolve():
        warnings.warn(f"run a and run b are the same run ({a.path}): nothing can change",
                      GeoSegWarning, stacklevel=3)
    elif a.date and b.date and a.date[:10] > b.date[:10]:
        warnings.warn(f"run a ({a.date}) is later than run b ({b.date}): changes read from a "
                      "to b, so new and demolished swap; give the earlier date first",
                      GeoSegWarning, stacklevel=3)


def _prepare_output(out: Path, runs: tuple[Path, ...], overwrite: bool) -> FolderLock:
    """Create and lock ``out`` (the lock is returned, held); with ``overwrite``, remove the
    outputs of an earlier ``geoseg change`` there, and only those: a name this stage writes
    that geoseg did not write is refused."""
    res = out.resolve()
    for r in runs:
        if res == r.resolve():
            raise InputError(f"output {out} is an input run: choose another -o directory")
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} is a file: choose a directory for -o")
    with storage_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(out).acquire("geoseg change")
    try:
        inputs = {r.resolve() for r in runs}
        others = [p for p in out.iterdir() if p.name != lock.path.name
                  and p.resolve() not in inputs]
        taken = [out / n for n in OUTPUTS if (out / n).exists() or (out / n).is_symlink()]
        if taken and not _ours(out):
            raise OutputExistsError(
                f"output {out} holds {taken[0].name}, which geoseg did not write: move it or "
                "choose another -o directory (geoseg never replaces files it did not write)")
        stopped = unfinished_change(out)
        if others and not (overwrite or stopped):
            raise OutputExistsError(f"output {out} is not empty: pass --overwrite to replace "
                                    "the change outputs, or choose another -o directory")
        if stopped:
            log.info("%s holds a change that was stopped (no %s): its outputs are redone",
                     out, SUMMARY)
        for p in taken:  # only what this stage writes; anything else stays
            log.info("--overwrite: removing %s", p)
            with storage_errors(p):
                remove_output(p)  # a symlink goes, never its target
    except BaseException:
        lock.release()
        raise
    return lock


def _store_attrs(a: RunInfo, b: RunInfo, decision: GridDecision,
                 min_confidence: float) -> dict[str, Any]:
    return {"kind": "geoseg-change", "geoseg_version": __version__, "run_a": str(a.path),
            "run_b": str(b.path), "date_a": a.date or None, "date_b": b.date or None,
            "source_image_a": a.source_image or None, "source_image_b": b.source_image or None,
            "min_confidence": min_confidence, "grid_decision": decision.message,
            "grid_target": decision.target, "grid_mode": decision.mode}


def compare_runs(run_a: Path, run_b: Path, out: Path, *, grid: Literal["a", "b"] = "a",
                 min_confidence: float = 0.5, iou_modified: float = 0.8,
                 area_tolerance: float = 0.1, overwrite: bool = False,
                 executor: Literal["auto", "threads", "ray"] = "auto",
                 min_change_width: int = MIN_CHANGE_WIDTH,
                 min_change_confidence: float = MIN_CHANGE_CONFIDENCE,
                 building_min_confidence: float = BUILDING_MIN_CONFIDENCE,
                 building_max_other_cover: float = BUILDING_MAX_OTHER_COVER,
                 building_min_changed: float = BUILDING_MIN_CHANGED,
                 building_break_changed: float = BUILDING_BREAK_CHANGED,
                 modified_min_changed: float = MODIFIED_MIN_CHANGED,
                 building_part_changed: float = BUILDING_PART_CHANGED,
                 min_spectral_change: float = MIN_SPECTRAL_CHANGE,
                 images: tuple[str, str] | None = None,
                 source: dict[str, Any] | None = None) -> ChangeResult:
    """Land-cover and building change from run A (before) to run B (after).

    Both runs are compared on A's grid (``grid="a"``) or B's; the other run is aligned to it
    explicitly (window copy or nearest-neighbour resampling, recorded in the summary). Raises
    :class:`~geoseg.errors.RegionError` when the runs do not overlap and
    :class:`~geoseg.errors.InputError` for different class schemes or bad parameters.

    The land-cover pass runs as Ray tasks with ``executor="ray"`` or, with ``"auto"``, when
    this process is connected to Ray (as ``geoseg change`` is after running both dates, or with
    ``--address``); else in threads here.

    A geometric building change counts only when evidence backs it, else it is ``uncertain``
    (:mod:`geoseg.change.building_change`): a new/demolished footprint needs confidence >=
    ``building_min_confidence``, the other date's building pixels covering at most
    ``building_max_other_cover`` of it and changed pixels covering at least
    ``building_min_changed``; a matched pair whose shared area changed for at least
    ``building_break_changed`` of its pixels is demolished + new (above 1: never); a modified
    building needs changed pixels on at least ``modified_min_changed`` of its difference area;
    a part that a footprint lost (gained) with changed pixels on at least
    ``building_part_changed`` of it is demolished (an extension; above 1: never).

    A land-cover change also needs the images to have changed: where the change magnitude of
    the two dates' pixels (:mod:`geoseg.change.spectral`) is below ``min_spectral_change`` σ,
    differing classes are ``no_image_change`` (changed = 3), not a change. The images are
    ``images`` (before, after; read with ``source``'s settings — bands, crs, resolution,
    mosaic, nodata, as ``geoseg run`` takes them — else with those each run recorded) or, by
    default, the inputs the runs recorded, read as they read them; when those cannot be opened
    the check is skipped with a warning (0 turns it off).
    """
    t_start = time.perf_counter()
    run_a, run_b, out = Path(run_a), Path(run_b), Path(out)
    if grid not in ("a", "b"):
        raise InputError(f"grid must be 'a' or 'b', got {grid!r}")
    threshold = confidence_threshold(min_confidence)
    change_threshold = confidence_threshold(min_change_confidence)
    check_params(iou_modified, area_tolerance)
    rule = EvidenceRule(min_confidence=building_min_confidence,
                        max_other_cover=building_max_other_cover,
                        min_changed=building_min_changed, break_changed=building_break_changed,
                        min_modified_changed=modified_min_changed,
                        min_part_changed=building_part_changed)
    rule.check()
    check_min_width(min_change_width)
    check_min_spectral_change(min_spectral_change)
    if executor not in ("auto", "threads", "ray"):
        raise InputError(f"executor must be auto, threads or ray, got {executor!r}")
    use_ray = executor == "ray" or (executor == "auto" and ray_connected())
    if use_ray:
        from geoseg.runtime.ray_backend import ensure_ray

        ensure_ray()  # connected already, or a local Ray on 127.0.0.1
    a, b = open_run(run_a, "a"), open_run(run_b, "b")
    _check_order(a, b)
    check_same_classes(a, b)
    decision = decide_grid(a, b, grid)
    lock = _prepare_output(out, (run_a, run_b), overwrite)
    try:
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        spectral, spectral_note = _spectral_inputs(a, b, decision, min_spectral_change, images,
                                                   source)
        inputs = change_inputs(decision, a, b, spectral)
        store = out / STORE
        init_change_store(store, decision, a.classes, _store_attrs(a, b, decision, min_confidence),
                          spectral=spectral is not None)
        rule_px = ChangeRule(threshold, min_change_width, change_threshold,
                             spectral_threshold(min_spectral_change) if spectral else 0)
        with quiet_warp():
            transitions = compute_change(store, inputs, decision, a.classes, rule_px,
                                         (a, b) if use_ray else None, spectral)
        transitions.write_csv(out / CSV)
        timings["landcover_s"] = round(time.perf_counter() - t0, 3)

        t0 = time.perf_counter()
        bchanges = compare_buildings(a, b, out / GPKG, iou_modified=iou_modified,
                                     area_tolerance=area_tolerance, rule=rule,
                                     evidence=PixelEvidence(store, a, b, decision))
        outputs: dict[str, Path] = {"change_store": store, "transitions": out / CSV}
        if bchanges is not None:
            outputs["building_changes"] = bchanges.path
        timings["buildings_s"] = round(time.perf_counter() - t0, 3)

        t0 = time.perf_counter()
        ds = xr.open_zarr(str(store), chunks={"y": decision.chunk, "x": decision.chunk},
                          mask_and_scale=False, zarr_format=2)
        change = {n: ds[n] for n in ("changed", "to_class")}
        with quiet_warp():
            pngs = render(out, inputs, change, a.classes, (a.date, b.date))
        outputs.update({f"{key}_png": path for key, path in pngs.items()})
        timings["quicklooks_s"] = round(time.perf_counter() - t0, 3)
        timings["total_s"] = round(time.perf_counter() - t_start, 3)

        outputs["summary"] = out / SUMMARY
        summary = _summary(a, b, decision, min_confidence, iou_modified, area_tolerance,
                           transitions, bchanges, outputs, timings)
        if summary["buildings"] is not None:
            summary["buildings"]["evidence"] = rule.describe()
        summary["min_change_width_px"] = min_change_width
        summary["min_change_confidence"] = min_change_confidence
        summary["spectral"] = ({"min_spectral_change": min_spectral_change, **spectral.describe()}
                               if spectral else {"min_spectral_change": None,
                                                 "skipped": spectral_note})
        summary["executor"] = "ray" if use_ray else "threads"
        atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2, default=str))
        log.info("change %s -> %s written to %s in %.1f s", run_a, run_b, out, timings["total_s"])
        return ChangeResult(out, summary, outputs)
    finally:
        lock.release()


def _spectral_inputs(a: RunInfo, b: RunInfo, decision: GridDecision, min_change: float,
                     images: tuple[str, str] | None, source: dict[str, Any] | None = None
                     ) -> tuple[SpectralInputs | None, str]:
    """The images for the spectral check and their statistics, or None and why not. Images
    given explicitly must open (an error otherwise); the runs' recorded images may be gone
    (a warning)."""
    import warnings

    if min_change <= 0:
        return None, "min_spectral_change is 0"
    if images is not None:
        return open_spectral(str(images[0]), str(images[1]), decision.grid, decision.overlap,
                             (source or a.source, source or b.source)), ""
    # the inputs each run was given, read as it read them (a mosaic's source_image is only
    # its description); runs of earlier versions record only source_image
    recorded = [r.inputs or ((r.source_image,) if r.source_image else ()) for r in (a, b)]
    if not all(recorded):
        note = "a run does not record its image"
    else:
        try:
            with quiet_warp():
                return open_spectral(recorded[0], recorded[1], decision.grid,
                                     decision.overlap, (a.source, b.source)), ""
        except GeoSegError as exc:
            note = f"the runs' images cannot be used ({exc})"
    warnings.warn(f"changes are not checked against the images: {note}; pass --images BEFORE "
                  "AFTER, or --min-spectral-change 0 to silence this", GeoSegWarning,
                  stacklevel=3)
    return None, note


def _summary(a: RunInfo, b: RunInfo, decision: GridDecision, min_confidence: float,
             iou_modified: float, area_tolerance: float, transitions: Transitions,
             bchanges: Any, outputs: dict[str, Path],
             timings: dict[str, float]) -> dict[str, Any]:
    buildings: dict[str, Any] | None = None
    if bchanges is not None:
        buildings = {"counts": bchanges.counts, "outside_overlap": bchanges.outside_overlap,
                     "iou_modified": iou_modified, "area_tolerance": area_tolerance,
                     "crs": a.grid.crs.to_string()}
    return {
        "geoseg_version": __version__,
        "inputs": {"a": a.describe(), "b": b.describe()},
        "grid": decision.describe(),
        "min_confidence": min_confidence,
        "classes": {str(v): m for v, m in zip(a.classes.values, a.classes.meanings,
                                              strict=True)},
        "areas": transitions.totals(),
        "transitions_m2": transitions.matrix_m2(),
        "transitions": transitions.rows(),
        "buildings": buildings,
        "timings_s": timings,
        "outputs": {k: str(v) for k, v in outputs.items()},
    }
