"""Vectorize + regularize stage of building footprints: throughput and outline quality.

    geoseg demo --out demo                       # or: geoseg run IMAGE -o RUN with buildings
    python -m benchmarks.bench_footprints --run demo/run --scene demo/scene

Runs the per-chunk footprint extraction of a finished run twice, on one core, in this process:
raw pixel outlines and regularized outlines (the job's default). Prints footprints per second
of both, the share of a run's model time the stage would take, and outline quality of the
regularized footprints: IoU with their raw outline, and the share of corners within 5° of 90°
or 180° for footprints whose matched truth building has only right angles (truth polygons come
from the scene's ``buildings_<date>.gpkg``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

from geoseg.change.runs import STORE, open_run
from geoseg.grid import ChunkGrid
from geoseg.store import FILL, read_layer
from geoseg.vectorize.footprints import extract_buildings
from geoseg.vectorize.regularize import corner_angle_share


def _class_ids(store: Path, layer: str) -> tuple[int, int | None]:
    attrs = json.loads((store / layer / ".zattrs").read_text())
    names = dict(zip(attrs["flag_meanings"].split(), attrs["flag_values"], strict=True))
    return int(names["building"]), (int(names["boundary"]) if "boundary" in names else None)


def run_stage(run: Path, layer: str, halo: int, min_area: float,
              regularize: bool) -> tuple[list[shapely.Polygon], list[str], float]:
    info = open_run(run, "bench")
    store = run / STORE
    building, boundary = _class_ids(store, layer)
    geoms: list[shapely.Polygon] = []
    ids: list[str] = []
    seconds = 0.0
    for chunk in ChunkGrid(info.grid.shape, info.chunk):
        ctx = chunk.window.pad(halo).intersect(info.grid.window)
        cls = read_layer(store, layer, ctx)
        conf = read_layer(store, f"{layer}_confidence", ctx).astype("float32") / 255.0
        t0 = time.perf_counter()
        feats = extract_buildings(cls, conf, ctx, chunk, info.grid, building_id=building,
                                  boundary_id=boundary, fill=FILL, min_area_m2=min_area,
                                  regularize=regularize)
        seconds += time.perf_counter() - t0
        geoms += [f.geometry for f in feats]
        ids += [str(f.id) for f in feats]
    return geoms, ids, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a geoseg run directory with buildings")
    ap.add_argument("--scene", help="generated scene directory (truth for the corner check)")
    ap.add_argument("--date", default="t0")
    ap.add_argument("--layer", default="buildings")
    ap.add_argument("--halo", type=int, default=128)
    ap.add_argument("--min-area", type=float, default=20.0)
    a = ap.parse_args()
    run = Path(a.run)
    raw, raw_ids, raw_s = run_stage(run, a.layer, a.halo, a.min_area, regularize=False)
    reg, reg_ids, reg_s = run_stage(run, a.layer, a.halo, a.min_area, regularize=True)
    assert raw_ids == reg_ids, "raw and regularized runs found different buildings"
    assert all(g.is_valid for g in reg), "an invalid regularized polygon"
    ious = np.array([r.intersection(g).area / r.union(g).area for r, g in zip(reg, raw,
                                                                              strict=True)])
    summary = json.loads((run / "summary.json").read_text())
    model_s = _model_seconds(summary)
    out: dict[str, object] = {
        "footprints": len(reg),
        "raw_footprints_per_s": round(len(raw) / raw_s, 1),
        "regularized_footprints_per_s": round(len(reg) / reg_s, 1),
        "stage_seconds_one_core": round(reg_s, 2),
        "regularize_share_of_stage": round(1 - raw_s / reg_s, 3),
        "iou_regularized_vs_raw": {"median": round(float(np.median(ious)), 4),
                                   "p5": round(float(np.percentile(ious, 5)), 4),
                                   "share_ge_0.9": round(float(np.mean(ious >= 0.9)), 4)},
        "all_valid": True,
    }
    if model_s:
        out["model_seconds_of_run"] = model_s
        out["stage_vs_model_time"] = round(reg_s / model_s, 3)
    if a.scene:
        truth = gpd.read_file(Path(a.scene) / f"buildings_{a.date}.gpkg")
        out["iou_with_truth"] = _truth_iou(raw, reg, truth)
        out["right_angles"] = _corner_check(reg, truth)
    print(json.dumps(out, indent=2))


def _model_seconds(summary: dict[str, object]) -> float | None:
    """Model time of the run: the sum of its ``predict_*`` stage CPU seconds."""
    stages = summary.get("stage_cpu_s")
    if not isinstance(stages, dict):
        return None
    total = sum(float(v) for k, v in stages.items() if k.startswith("predict_"))
    return round(total, 1) or None


def _best_iou(geoms: list[shapely.Polygon], tree: shapely.STRtree) -> np.ndarray:
    out = []
    for g in geoms:
        hits = tree.query(g, predicate="intersects")
        out.append(max((shapely.intersection(g, tree.geometries[i]).area
                        / shapely.union(g, tree.geometries[i]).area for i in hits), default=0.0))
    return np.array(out)


def _truth_iou(raw: list[shapely.Polygon], reg: list[shapely.Polygon],
               truth: gpd.GeoDataFrame) -> dict[str, object]:
    """Mean IoU with the best-overlapping truth building, of footprints whose raw outline
    matches one (IoU >= 0.5): does regularizing move outlines towards the truth?"""
    tree = shapely.STRtree(list(truth.geometry))
    r, g = _best_iou(raw, tree), _best_iou(reg, tree)
    m = r >= 0.5
    return {"matched": int(m.sum()), "raw_mean": round(float(r[m].mean()), 4),
            "regularized_mean": round(float(g[m].mean()), 4),
            "matched_regularized": int((g >= 0.5).sum())}


def _corner_check(reg: list[shapely.Polygon], truth: gpd.GeoDataFrame) -> dict[str, object]:
    square = truth[[corner_angle_share(g, 5.0) == 1.0 for g in truth.geometry]]
    best = _best_iou(reg, shapely.STRtree(list(square.geometry)))
    s = np.array([corner_angle_share(g, 5.0) for g, b in zip(reg, best, strict=True)
                  if b >= 0.5])
    return {"truth_buildings_with_only_right_angles": len(square),
            "of_total": len(truth),
            "matched_footprints": len(s),
            "corner_share_within_5deg_mean": round(float(s.mean()), 4) if len(s) else None,
            "footprints_all_corners_right": round(float(np.mean(s == 1.0)), 4) if len(s)
            else None}


if __name__ == "__main__":
    main()
