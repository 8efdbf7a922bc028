"""The ``geoseg change`` sub-command: compare two runs of one region (wired into geoseg.cli)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _print_summary(res: Any) -> None:
    s = res.summary
    areas = s["areas"]
    g = s["grid"]
    print(f"geoseg change complete in {s['timings_s']['total_s']:.1f} s: "
          f"{g['shape'][1]}×{g['shape'][0]} px on {g['target']}'s grid ({g['crs']})")
    print(f"  grid: {g['message']}")
    print(f"  land cover: {areas['changed']['ha']:.2f} ha changed, "
          f"{areas['unchanged']['ha']:.2f} ha unchanged, {areas['unknown']['ha']:.2f} ha unknown")
    top = sorted((r for r in s["transitions"] if r["from_id"] != r["to_id"] and r["pixels"]),
                 key=lambda r: -r["area_m2"])[:5]
    for r in top:
        print(f"    {r['from_class']} -> {r['to_class']}: {r['area_ha']:.3f} ha")
    b = s["buildings"]
    if b is None:
        print("  buildings: skipped (a run has no building footprints)")
    else:
        print("  buildings: " + ", ".join(f"{n} {k}" for k, n in b["counts"].items()))
    for k, v in s["outputs"].items():
        print(f"  {k:<18} {v}")


def cmd_change(a: argparse.Namespace) -> int:
    from geoseg.change import compare_runs

    res = compare_runs(Path(a.run_a), Path(a.run_b), Path(a.out), grid=a.grid,
                       min_confidence=a.min_confidence, iou_modified=a.iou_modified,
                       area_tolerance=a.area_tolerance, overwrite=a.overwrite)
    _print_summary(res)
    if a.scene:
        import json

        from geoseg.change.evaluate import evaluate_change

        report = evaluate_change(res, a.scene)
        path = Path(a.out) / "evaluation.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        print("  evaluation vs. ground truth: " + ", ".join(
            f"{k} {v:.3f}" for k, v in report["headline"].items()))
        print(f"  {'evaluation':<18} {path}")
    return 0


def add_change_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``geoseg change RUN_A RUN_B -o OUT``."""
    c = sub.add_parser("change", help="compare two runs of one region: land-cover change, "
                                      "transitions and building changes")
    c.add_argument("run_a", help="output directory of `geoseg run` for the earlier date")
    c.add_argument("run_b", help="output directory of `geoseg run` for the later date")
    c.add_argument("--out", "-o", required=True, help="output directory")
    c.add_argument("--grid", choices=["a", "b"], default="a",
                   help="compare on A's grid (default) or B's; the other run is aligned to it")
    c.add_argument("--min-confidence", type=float, default=0.5,
                   help="pixels below this confidence on either date are unknown (default 0.5)")
    c.add_argument("--iou-modified", type=float, default=0.8,
                   help="matched buildings with a lower IoU are modified (default 0.8)")
    c.add_argument("--area-tolerance", type=float, default=0.1,
                   help="matched buildings whose area changed more are modified (default 0.1)")
    c.add_argument("--overwrite", action="store_true", help="replace existing change outputs")
    c.add_argument("--scene", help="a `geoseg sample` scene directory: score the change against "
                                   "its truth (changed-pixel and building-change P/R/F1)")
    c.set_defaults(fn=cmd_change)
