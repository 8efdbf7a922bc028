"""Sub-commands that wrap training, evaluation and export (kept apart to keep cli.py small)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from geoseg.errors import ConfigError


def _classes(task: str) -> tuple[object, ...]:
    from geoseg.bundle import ClassSpec

    if task == "landcover":
        from geoseg.sample import CLASSES
    else:
        from geoseg.train import BUILDING_CLASSES as CLASSES  # type: ignore[assignment]
    return tuple(ClassSpec(id=i, name=n, color=c) for i, n, c in CLASSES)


def cmd_train(a: argparse.Namespace) -> int:
    """Train a semantic bundle on generated scenes or on image + label raster pairs."""
    from geoseg.train import SceneFiles, TrainConfig, scene_files, train

    scenes: list[SceneFiles] = []
    for d in a.scene or []:
        scenes += scene_files(d, a.task)
    for pair in a.pair or []:
        img, _, lbl = pair.partition(":")
        if not lbl:
            raise ConfigError(f"--pair {pair!r}: give IMAGE:LABELS")
        scenes.append(SceneFiles(Path(img), Path(lbl)))
    if not scenes:
        raise ConfigError("no training data: pass --scene DIR (generated) or --pair IMAGE:LABELS")
    cfg = TrainConfig(name=a.name or f"{a.task}-custom", task=a.task,
                      classes=_classes(a.task),  # type: ignore[arg-type]
                      steps=a.steps, seed=a.seed, batch_size=a.batch_size,
                      threads=a.threads)
    res = train(cfg, scenes, a.out)
    print(f"bundle written: {res.bundle_dir} ({res.seconds:.0f} s, {cfg.steps} steps)")
    val = (res.spec.training or {}).get("validation")
    if val:
        print(f"  validation: {json.dumps(val)[:400]}")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    """Score a run (or a store layer / footprints) against truth."""
    from geoseg.evaluate import (
        evaluate_class_map,
        evaluate_footprints,
        evaluate_instances,
        evaluate_run,
    )

    report: dict[str, object] = {}
    if a.run and a.scene:
        report = evaluate_run(a.run, a.scene, date=a.date, boundary_tol=a.boundary_tol)
    else:
        if a.store and a.truth:
            k = a.num_classes
            report[a.layer] = evaluate_class_map(a.store, a.layer, a.truth, k,
                                                 tol=a.boundary_tol).to_dict()
        buildings: dict[str, object] = {}
        if a.footprints and a.truth_footprints:
            buildings.update(evaluate_footprints(a.footprints, a.truth_footprints,
                                                 iou=a.iou).to_dict())
        if a.footprints and a.truth_instances:
            buildings.update(evaluate_instances(a.footprints, a.truth_instances).to_dict())
        if buildings:
            report["buildings"] = buildings
    if not report:
        raise ConfigError("nothing to evaluate: pass --run RUN --scene SCENE, or --store + "
                          "--truth, or --footprints + --truth-footprints and/or "
                          "--truth-instances")
    text = json.dumps(report, indent=2, default=float)
    if a.json:
        Path(a.json).write_text(text)
    print(text)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from geoseg.models import export_onnx

    path = export_onnx(a.bundle)
    print(f"ONNX model written: {path} (bundle.yaml now names it)")
    return 0


def add_extra_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    t = sub.add_parser("train", help="train a segmentation bundle")
    t.add_argument("--task", choices=["landcover", "buildings"], required=True)
    t.add_argument("--scene", action="append", help="generated scene dir (repeatable)")
    t.add_argument("--pair", action="append", help="IMAGE:LABELS raster pair (repeatable)")
    t.add_argument("--out", "-o", required=True, help="bundle directory to write")
    t.add_argument("--name")
    t.add_argument("--steps", type=int, default=500)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int)
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="score predictions against ground truth")
    e.add_argument("--run", help="a geoseg run output directory")
    e.add_argument("--scene", help="a generated scene directory (truth)")
    e.add_argument("--date", default="t0")
    e.add_argument("--store", help="predictions.zarr")
    e.add_argument("--layer", default="landcover")
    e.add_argument("--truth", help="truth class raster on the same grid")
    e.add_argument("--num-classes", type=int, default=5)
    e.add_argument("--footprints", help="predicted footprints (GeoPackage)")
    e.add_argument("--truth-footprints", help="truth footprints (GeoPackage)")
    e.add_argument("--truth-instances",
                   help="truth instance-id raster (0 = none): COCO AP and PQ of --footprints")
    e.add_argument("--iou", type=float, default=0.5)
    e.add_argument("--boundary-tol", type=float, default=2.0,
                   help="boundary F1 distance tolerance in pixels")
    e.add_argument("--json", help="also write the report here")
    e.set_defaults(fn=cmd_eval)

    x = sub.add_parser("export", help="export a bundle's model (ONNX)")
    x.add_argument("bundle")
    x.add_argument("--onnx", action="store_true", required=True)
    x.set_defaults(fn=cmd_export)
