"""Build geoseg's default model bundles (``landcover`` and ``buildings``) from generated scenes.

    python -m workflows.build_bundles --out geoseg/bundles   # ~40 min on 2 idle cores

``--only maskrcnn`` builds the optional Mask R-CNN buildings bundle (route (b) of building
footprints, not shipped) into ``<out>/buildings-maskrcnn``; it needs an explicit ``--out``:

    python -m workflows.build_bundles --only maskrcnn --out /tmp/mr-bundles --max-minutes 60

Generates the training scenes (seeds 101, 102, 103, 2048² by default) and a held-back
evaluation scene (seed 7) with :func:`geoseg.sample.generate_scene`, trains both bundles one
after the other on the CPU, evaluates each on the held-back scene (both dates) by sliding-window
prediction with :class:`geoseg.models.Predictor`, and writes ``<out>/<name>/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geoseg.bundle import ArchitectureSpec, ClassSpec
from geoseg.metrics.objects import ObjectScores
from geoseg.metrics.pixel import PixelScores
from geoseg.models import Predictor
from geoseg.train import (
    BUILDING_CLASSES,
    TrainConfig,
    evaluate_buildings,
    evaluate_landcover,
    scene_files,
    train,
)

logger = logging.getLogger("workflows.build_bundles")

BUNDLES = ("landcover", "buildings")
OPTIONAL = ("maskrcnn",)   # built only when named with --only, never into geoseg/bundles
DEFAULT_OUT = Path("geoseg/bundles")
DATES = ("t0", "t1")
# ResNet-18 up to layer3 (stride 16, receptive field ~200 px = 100 m: enough context to tell
# roofs from roads of the same colour) with a slim decoder; 0.7 s per 4 x 512² tiles on 2 cores.
ARCHITECTURE = ArchitectureSpec(name="unet", encoder="resnet18", encoder_depth=4,
                                decoder_channels=(64, 32, 16, 16))
BAND_NAMES = ("red", "green", "blue", "nir")
# Mask R-CNN for CPUs: ResNet-18 FPN (the smallest torchvision ResNet), chips of 256 px in
# batches of 4, AdamW at the detector's default rate (geoseg.train.loop.MASKRCNN_LR).
MASKRCNN_ARCHITECTURE = ArchitectureSpec(name="maskrcnn", encoder="resnet18")


def make_scenes(root: Path, seeds: Sequence[int], size: int) -> list[Path]:
    """Generated scene directories (re-used when already complete)."""
    from geoseg.sample import generate_scene

    out = []
    for seed in seeds:
        d = root / f"scene_{seed}_{size}"
        if not all((d / f"{kind}_{t}.tif").is_file() for kind in ("image", "landcover",
                                                                 "instances") for t in DATES):
            t0 = time.perf_counter()
            generate_scene(d, size=size, seed=seed, overwrite=True)
            logger.info("generated scene seed %d (%d²) in %.0f s", seed, size,
                        time.perf_counter() - t0)
        out.append(d)
    return out


def config_for(name: str, steps: int, seed: int, threads: int,
               max_seconds: float | None, precision: str = "fp32") -> TrainConfig:
    if name == "maskrcnn":
        return maskrcnn_config(steps, seed, threads, max_seconds, precision)
    common: dict[str, Any] = {
        "architecture": ARCHITECTURE, "band_names": BAND_NAMES, "steps": steps,
        "batch_size": 8, "chip_size": 256, "lr": 3e-3, "seed": seed, "threads": threads,
        "precision": "bf16",
        # the recipe of the shipped bundles: joint rot90/flips + contrast, brightness, noise
        "augment": {"scale": None, "blur": 0.0},
        "max_seconds": max_seconds, "tile_size": 512, "version": "1.0.0"}
    if name == "landcover":
        from geoseg.sample import CLASSES

        classes = tuple(ClassSpec(id=i, name=n, color=c) for i, n, c in CLASSES)
        return TrainConfig(name="landcover", task="landcover", classes=classes,
                           description="5-class land cover (bare, building, road, vegetation, "
                                       "water) for 0.5 m RGB+NIR imagery; U-Net ResNet-18/4",
                           **common)
    classes = tuple(ClassSpec(id=i, name=n, color=c) for i, n, c in BUILDING_CLASSES)
    return TrainConfig(name="buildings", task="buildings", classes=classes,
                       class_weights=(1.0, 1.0, 2.0),
                       description="building footprints with a 2-px boundary class that "
                                   "separates touching buildings; U-Net ResNet-18/4",
                       **common)


def maskrcnn_config(steps: int, seed: int, threads: int, max_seconds: float | None,
                    precision: str) -> TrainConfig:
    """The optional Mask R-CNN buildings bundle (classes as the semantic buildings bundle's, so
    its predictions go through the same boundary-aware vectorizer)."""
    classes = tuple(ClassSpec(id=i, name=n, color=c) for i, n, c in BUILDING_CLASSES)
    return TrainConfig(
        name="buildings-maskrcnn", task="buildings", classes=classes,
        architecture=MASKRCNN_ARCHITECTURE, band_names=BAND_NAMES, steps=steps, batch_size=4,
        chip_size=256, seed=seed, threads=threads, precision=precision,  # type: ignore[arg-type]
        augment={"scale": None, "blur": 0.0},  # type: ignore[arg-type]
        max_seconds=max_seconds, tile_size=512, version="0.1.0", checkpoint_every=25,
        description="building instances (Mask R-CNN, ResNet-18 FPN, trained from scratch on "
                    "generated scenes); converted to background/building/boundary "
                    "probabilities for the pipeline")


def forward_seconds(bundle: Path, threads: int, repeats: int = 3) -> float:
    """Median wall time of one forward pass of a 4 x 4 x 512² batch."""
    pred = Predictor(bundle, num_threads=threads)
    x = np.random.default_rng(0).uniform(0, 255, (4, 4, 512, 512)).astype(np.float32)
    pred.predict_proba(x[:1])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pred.predict_proba(x)
        times.append(time.perf_counter() - t0)
    return round(sorted(times)[len(times) // 2], 3)


def evaluate(name: str, bundle: Path, scene: Path) -> dict[str, Any]:
    """Metrics per date of the evaluation scene and combined over both dates."""
    pred = Predictor(bundle)
    per: dict[str, Any] = {}
    for t in DATES:
        if name == "landcover":
            per[t] = evaluate_landcover(pred, scene / f"image_{t}.tif",
                                        scene / f"landcover_{t}.tif")
        else:
            per[t] = evaluate_buildings(pred, scene / f"image_{t}.tif",
                                        scene / f"instances_{t}.tif")
    cm = np.sum([np.asarray(per[t]["confusion"], dtype=np.int64) for t in DATES], axis=0)
    combined: dict[str, Any] = PixelScores.from_confusion(cm).to_dict(pred.class_names)
    if name == "buildings":
        objects = sum((ObjectScores(**{k: per[t]["objects_iou50"][k] for k in ("tp", "fp", "fn")})
                       for t in DATES), ObjectScores(0, 0, 0))
        combined["objects_iou50"] = objects.to_dict()
        combined["building_iou"] = combined["iou"]["building"]
        combined["footprint_iou"] = round(float(np.mean([per[t]["footprint_iou"]
                                                         for t in DATES])), 6)
    return {"dates": per, "combined": combined}


def build(name: str, out: Path, scenes: list[Path], eval_scene: Path, args: argparse.Namespace,
          ) -> dict[str, Any]:
    config = config_for(name, args.steps, args.seed, args.train_threads,
                        args.max_minutes * 60 if args.max_minutes else None,
                        args.maskrcnn_precision)
    files = [f for d in scenes for f in scene_files(d, config.task, DATES)]
    bundle = out / config.name
    if args.skip_train:
        logger.info("evaluating existing bundle %s", bundle)
    else:
        train(config, files, bundle, resume=args.resume)
    if name != "maskrcnn":  # engine auto runs the ONNX graph on CPUs
        from geoseg.models.onnx import export_onnx

        export_onnx(bundle)
    metrics = evaluate(name, bundle, eval_scene)
    from geoseg.bundle import read_spec

    spec = read_spec(bundle)
    metrics.update({
        "bundle": name, "version": spec.version,
        "eval_scene": {"seed": args.eval_seed, "size": args.size, "dates": list(DATES)},
        "training": spec.training,
        "weights_bytes": (bundle / spec.weights).stat().st_size,
        # one timed pass for the detector: an under-trained Mask R-CNN pastes up to 200 masks
        # per 512² tile, which alone takes tens of seconds on a CPU
        "forward_seconds_4x4x512_cpu": forward_seconds(bundle, args.threads,
                                                       1 if name in OPTIONAL else 3),
        "threads": args.threads,
    })
    (bundle / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def summary(name: str, m: dict[str, Any]) -> str:
    c = m["combined"]
    if name == "landcover":
        ious = ", ".join(f"{k} {v:.3f}" for k, v in c["iou"].items() if v is not None)
        head = f"mIoU {c['miou']:.3f} ({ious})"
    else:
        o = c["objects_iou50"]
        head = (f"building IoU {c['building_iou']:.3f}, footprint IoU {c['footprint_iou']:.3f},"
                f" object F1@0.5 {o['f1']:.3f} (P {o['precision']:.3f} R {o['recall']:.3f})")
    train_s = (m.get("training") or {}).get("wall_seconds")
    return (f"{name}: {head}; weights {m['weights_bytes'] / 1e6:.2f} MB; forward 4x4x512² "
            f"{m['forward_seconds_4x4x512_cpu']:.2f} s; training {train_s} s")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", type=Path, help=f"output directory (default {DEFAULT_OUT}; "
                                             "required for --only maskrcnn)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--only", choices=BUNDLES + OPTIONAL, action="append",
                   help="build only these bundles (repeatable); maskrcnn is built only when "
                        "named here")
    p.add_argument("--maskrcnn-precision", choices=["fp32", "bf16"], default="fp32",
                   help="autocast precision of the Mask R-CNN training (bf16 pays off only on "
                        "CPUs with AVX512-BF16/AMX; on AVX2 it was 7x slower)")
    p.add_argument("--resume", action="store_true",
                   help="continue each bundle from <out>/<name>/checkpoints/last.pt")
    p.add_argument("--scenes", type=Path, default=Path(tempfile.gettempdir()) / "geoseg-scenes",
                   help="cache directory for generated scenes")
    p.add_argument("--train-seeds", type=int, nargs="+", default=[101, 102, 103])
    p.add_argument("--eval-seed", type=int, default=7)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads for evaluation and the forward timing")
    p.add_argument("--train-threads", type=int, default=2,
                   help="torch threads for training (bf16 autocast: 0.56 s per 8x256² step on "
                        "2 idle cores; use 1 on a machine shared with other work)")
    p.add_argument("--max-minutes", type=float, default=18,
                   help="time budget of each training loop; the schedule ends at whichever of "
                        "--steps or this comes first (0: steps only, reproducible)")
    p.add_argument("--skip-train", action="store_true", help="only evaluate existing bundles")
    args = p.parse_args(argv)
    if args.out is None:
        if set(args.only or ()) & set(OPTIONAL):
            p.error("--only maskrcnn writes an unshipped bundle: give --out DIR (it is not "
                    f"written into {DEFAULT_OUT})")
        args.out = DEFAULT_OUT
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    scenes = make_scenes(args.scenes, args.train_seeds, args.size)
    (eval_scene,) = make_scenes(args.scenes, [args.eval_seed], args.size)
    results = {name: build(name, args.out, scenes, eval_scene, args)
               for name in (args.only or BUNDLES)}
    for name, m in results.items():
        print(summary(name, m))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
