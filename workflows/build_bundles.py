"""Build geoseg's default model bundles (``landcover`` and ``buildings``) from generated scenes,
and score them on the path users run.

    python -m workflows.build_bundles --out geoseg/bundles   # ~40 min on 2 idle cores
    python -m workflows.build_bundles --score-only           # rescore geoseg/bundles, no training
    python -m workflows.build_bundles --out new --init-from OLD --lr 1.5e-3 \
        --train-seeds 101 102 103 104 105 106 --max-minutes 55   # fine-tune OLD/<name>

Bundles 1.1.0 (shipped) are 1.0.0 (git f3767ac) fine-tuned that way (README, "Training and
evaluation"). A bundle's version names the recipe it was built with (:data:`RECIPES`): 1.0.0 from
scratch with the defaults above, 1.1.0 fine-tuned from a 1.0.0 bundle with the README's command;
any other build is versioned ``0.0.0+local`` (:data:`LOCAL_VERSION`), so that it never claims to
be a published bundle.

``--out``, ``--init-from`` (and, with ``--score-only``, the bundles in ``--out``) are checked
before any scene is generated; a bad one (as any geoseg error later) is one ``error:`` line and
the error's exit status (2 for these), as ``geoseg``'s commands report it.

``--only maskrcnn`` builds the optional Mask R-CNN buildings bundle (route (b) of building
footprints, not shipped) into ``<out>/buildings-maskrcnn``; it needs an explicit ``--out``:

    python -m workflows.build_bundles --only maskrcnn --out /tmp/mr-bundles --max-minutes 60

Generates the training scenes (seeds 101, 102, 103, 2048² by default) with
:func:`geoseg.sample.generate_scene` and trains both bundles one after the other on the CPU.

Scores come from the path a user runs, nothing else: the held-back scene (seed 7, 4096², never
used for training) is segmented by the real job (:func:`geoseg.job.run_job` with the defaults of
``geoseg run``; both bundles in one job, as ``geoseg run`` runs them) and scored by
:func:`geoseg.scoring.evaluate_run` (``geoseg eval``) on date t0. ``<out>/<name>/metrics.json``
holds the bundle's part of that report and the commands that reproduce it:

    geoseg sample scene/ --size 4096 --seed 7
    geoseg run scene/image_t0.tif -o run/      # -m DIR -m DIR for bundles outside geoseg/bundles
    geoseg eval --run run/ --scene scene/
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geoseg.bundle import ArchitectureSpec, ClassSpec, builtin_bundle, read_spec
from geoseg.errors import BundleError, ConfigError, GeoSegError
from geoseg.models import Predictor
from geoseg.training import BUILDING_CLASSES, TrainConfig, scene_files, train

logger = logging.getLogger("workflows.build_bundles")

BUNDLES = ("landcover", "buildings")
OPTIONAL = ("maskrcnn",)   # built only when named with --only, never into geoseg/bundles
DEFAULT_OUT = Path("geoseg/bundles")
DATES = ("t0", "t1")
# the held-back scene the published scores are measured on (`geoseg sample --size --seed`)
EVAL_SEED, EVAL_SIZE, EVAL_DATE = 7, 4096, "t0"
# evaluate_run's headline keys of each task
HEADLINE = {"landcover": ("landcover mIoU", "landcover boundary F1"),
            "buildings": ("building F1@0.5", "building AP", "building PQ")}
# ResNet-18 up to layer3 (stride 16, receptive field ~200 px = 100 m: enough context to tell
# roofs from roads of the same colour) with a slim decoder; 0.7 s per 4 x 512² tiles on 2 cores.
ARCHITECTURE = ArchitectureSpec(name="unet", encoder="resnet18", encoder_depth=4,
                                decoder_channels=(64, 32, 16, 16))
BAND_NAMES = ("red", "green", "blue", "nir")
# Mask R-CNN for CPUs: ResNet-18 FPN (the smallest torchvision ResNet), chips of 256 px in
# batches of 4, AdamW at the detector's default rate (geoseg.training.loop.MASKRCNN_LR).
MASKRCNN_ARCHITECTURE = ArchitectureSpec(name="maskrcnn", encoder="resnet18")
# The published versions of the default bundles and the recipe each was built with (README,
# "Training and evaluation"): this script's options, ``init_from`` being the version of the bundle
# fine-tuned (None: random weights) and ``max_minutes`` given per bundle.
# A build claims a version only when it follows that version's recipe (:func:`recipe_version`).
RECIPES: dict[str, dict[str, Any]] = {
    "1.0.0": {"init_from": None, "lr": 3e-3, "steps": 2000, "train_seeds": [101, 102, 103],
              "max_minutes": {"landcover": 18, "buildings": 18}},
    "1.1.0": {"init_from": "1.0.0", "lr": 1.5e-3, "steps": 6000,
              "train_seeds": [101, 102, 103, 104, 105, 106],
              "max_minutes": {"landcover": 40, "buildings": 55}},
}
# options every published recipe kept at this script's defaults
RECIPE_COMMON: dict[str, Any] = {"size": 2048, "seed": 0, "contact_weight": 0.0}
RECIPE_LR = 3e-3                # the peak learning rate without --lr
LOCAL_VERSION = "0.0.0+local"   # any other build: not a published bundle


def make_scenes(root: Path, seeds: Sequence[int], size: int) -> list[Path]:
    """Generated scene directories (re-used when already complete)."""
    from geoseg.sample import generate_scene

    out = []
    for seed in seeds:
        d = root / f"scene_{seed}_{size}"
        if not (d / "scene.json").is_file():   # written last: the scene is complete
            t0 = time.perf_counter()
            generate_scene(d, size=size, seed=seed, overwrite=True)
            logger.info("generated scene seed %d (%d²) in %.0f s", seed, size,
                        time.perf_counter() - t0)
        out.append(d)
    return out


def recipe_version(name: str, args: argparse.Namespace, start_version: str | None) -> str:
    """The version bundle ``name`` built with ``args`` gets: the published version whose recipe
    (:data:`RECIPES`) it follows, else :data:`LOCAL_VERSION`. ``start_version`` is the version of
    the bundle it is fine-tuned from (None: from random weights)."""
    if name not in BUNDLES:
        return LOCAL_VERSION
    lr = RECIPE_LR if args.lr is None else args.lr
    common = all(getattr(args, k) == v for k, v in RECIPE_COMMON.items())
    for version, r in RECIPES.items():
        if (common and start_version == r["init_from"] and lr == r["lr"]
                and args.steps == r["steps"] and list(args.train_seeds) == r["train_seeds"]
                and args.max_minutes == r["max_minutes"][name]):
            return version
    return LOCAL_VERSION


def config_for(name: str, steps: int, seed: int, threads: int,
               max_seconds: float | None, precision: str = "fp32",
               init_from: Path | None = None, version: str = LOCAL_VERSION) -> TrainConfig:
    """The training config of bundle ``name``; ``version`` is the bundle's version (see
    :func:`recipe_version`: only a build that follows a published recipe claims its version)."""
    if name == "maskrcnn":
        return maskrcnn_config(steps, seed, threads, max_seconds, precision)
    common: dict[str, Any] = {
        "init_from": None if init_from is None else str(init_from / name),
        "architecture": ARCHITECTURE, "band_names": BAND_NAMES, "steps": steps,
        "batch_size": 8, "chip_size": 256, "lr": RECIPE_LR, "seed": seed, "threads": threads,
        "precision": "bf16",
        # the recipe of the shipped bundles: joint rot90/flips + contrast, brightness, noise
        "augment": {"scale": None, "blur": 0.0},
        "max_seconds": max_seconds, "tile_size": 512, "version": version}
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


def run_commands(scene: str, run: str, models: Sequence[str], seed: int, size: int,
                 date: str) -> list[str]:
    """The shell commands that reproduce a score (``models`` as given to ``geoseg run``)."""
    from geoseg.config import JobConfig

    default = list(models) == list(JobConfig.model_fields["models"].default)
    flags = "" if default else "".join(f" -m {m}" for m in models)
    return [f"geoseg sample {scene} --size {size} --seed {seed}",
            f"geoseg run {scene}/image_{date}.tif -o {run}{flags}",
            f"geoseg eval --run {run} --scene {scene} --date {date}"]


def score(bundles: dict[str, Path], scene: Path, work: Path, *, seed: int = EVAL_SEED,
          size: int = EVAL_SIZE, date: str = EVAL_DATE) -> dict[str, dict[str, Any]]:
    """Scores of each bundle on ``scene`` measured on the user's path: one ``geoseg run`` job
    (:func:`geoseg.job.run_job`, the CLI's defaults) over the scene's ``date`` image with all
    the bundles (one job per bundle when two share a task), then ``geoseg eval``
    (:func:`geoseg.scoring.evaluate_run`). Bundles that are the built-in ones run by name,
    exactly as ``geoseg run`` runs them by default."""
    from geoseg.config import make_job_config
    from geoseg.job import run_job
    from geoseg.scoring import evaluate_run

    tasks = {name: read_spec(path).task for name, path in bundles.items()}
    groups = ([list(bundles)] if len(set(tasks.values())) == len(tasks)
              else [[name] for name in bundles])
    out: dict[str, dict[str, Any]] = {}
    for group in groups:
        models = [_model_arg(name, bundles[name]) for name in group]
        run = work / f"run-{'-'.join(group)}"
        cfg = make_job_config(str(scene / f"image_{date}.tif"), str(run), models=models)
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # the generated scene has no nodata, by design
            warnings.filterwarnings("ignore", message=".*declares no nodata value.*")
            res = run_job(cfg, overwrite=True)
        if not res.ok:
            raise RuntimeError(f"scoring run {run} failed: {res.summary['chunks']['failed']}")
        seconds = round(time.perf_counter() - t0, 1)
        report = evaluate_run(run, scene, date=date)
        s = res.summary
        for name in group:
            task = tasks[name]
            out[name] = {
                "headline": {k: round(float(report["headline"][k]), 6) for k in HEADLINE[task]},
                task: report[task],
                "eval": {"scene": {"seed": seed, "size": size, "date": date},
                         "commands": run_commands("scene", "run", models, seed, size, date),
                         "job": {"models": models, "engine": s["engines"][task],
                                 "model_id": s["models"][task], "tiling": s["tiling"],
                                 "inference": cfg.inference.model_dump(),
                                 "vectors": cfg.vectors.model_dump(),
                                 "runtime": {k: s["runtime"][k] for k in
                                             ("device", "workers", "threads_per_worker")},
                                 "run_seconds": seconds}},
            }
            logger.info("%s on scene seed %d (%d², %s): %s", name, seed, size, date,
                        out[name]["headline"])
    return out


def _model_arg(name: str, bundle: Path) -> str:
    """``name`` when ``bundle`` is the built-in bundle of that name, else its path."""
    if name in BUNDLES:
        try:
            if builtin_bundle(name).resolve() == bundle.resolve():
                return name
        except BundleError:  # none shipped under that name
            pass
    return str(bundle)


def write_metrics(name: str, bundle: Path, scores: dict[str, Any], threads: int,
                  timed: bool) -> dict[str, Any]:
    """``<bundle>/metrics.json``: the run-path scores, training provenance, size and speed.
    Without ``timed`` the forward timing of the bundle's existing metrics.json is kept (same
    weights; a rescore on a busy machine would publish a slower number)."""
    spec = read_spec(bundle)
    path = bundle / "metrics.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    metrics: dict[str, Any] = {"bundle": name, "version": spec.version, **scores,
                               "training": spec.training,
                               "weights_bytes": (bundle / spec.weights).stat().st_size}
    if not timed and "forward_seconds_4x4x512_cpu" in old:
        metrics["forward_seconds_4x4x512_cpu"] = old["forward_seconds_4x4x512_cpu"]
        metrics["threads"] = old.get("threads", threads)
    else:
        # one timed pass for the detector: an under-trained Mask R-CNN pastes up to 200 masks
        # per 512² tile, which alone takes tens of seconds on a CPU
        metrics["forward_seconds_4x4x512_cpu"] = forward_seconds(bundle, threads,
                                                                 1 if name in OPTIONAL else 3)
        metrics["threads"] = threads
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def build(name: str, out: Path, scenes: list[Path], args: argparse.Namespace,
          version: str = LOCAL_VERSION) -> Path:
    """Train bundle ``name`` into ``<out>/<config name>`` (and export its ONNX graph)."""
    config = train_config(name, args, version)
    files = [f for d in scenes for f in scene_files(d, config.task, DATES)]
    bundle = out / config.name
    train(config, files, bundle, resume=args.resume, overwrite=True)  # a rebuild
    if name != "maskrcnn":  # engine auto runs the ONNX graph on CPUs
        from geoseg.models.onnx import export_onnx

        export_onnx(bundle)
    return bundle


def train_config(name: str, args: argparse.Namespace, version: str = LOCAL_VERSION
                 ) -> TrainConfig:
    """The training config of bundle ``name`` with this command's options, validated (a bad
    ``--steps`` or ``--lr`` is a one-line ConfigError, found before any scene is made)."""
    from pydantic import ValidationError

    from geoseg.setting_errors import explain

    try:
        config = config_for(name, args.steps, args.seed, args.train_threads,
                            args.max_minutes * 60 if args.max_minutes else None,
                            args.maskrcnn_precision, args.init_from, version)
        update: dict[str, Any] = {}
        if args.lr is not None:
            update["lr"] = args.lr
        if args.contact_weight and config.task == "buildings":
            update["loss"] = {**config.loss.model_dump(), "contact_weight": args.contact_weight}
        return TrainConfig.model_validate({**config.model_dump(), **update})
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(str(x) for x in e["loc"])
        raise ConfigError(f"--{where.replace('_', '-')}: {explain([e])}") from None


def bundle_dir(name: str, out: Path) -> Path:
    return out / ("buildings-maskrcnn" if name == "maskrcnn" else name)


def check_inputs(names: Sequence[str], args: argparse.Namespace) -> dict[str, str]:
    """Check what the build reads and writes before any scene is generated (a GeoSegError names
    the first problem), and return the version each bundle will get (:func:`recipe_version`).

    ``--score-only``: each bundle in ``--out`` must be a bundle with its weights. Otherwise each
    ``--init-from DIR/<name>`` must be a bundle whose architecture and classes are those trained,
    and each ``<out>/<name>`` must be new, empty or an earlier training output (a folder holding
    files geoseg did not write is refused, never overwritten), inside a writable folder."""
    from geoseg.training.bundle_dir import check_bundle_dir

    if args.score_only:
        for name in names:
            bundle = bundle_dir(name, args.out)
            spec = read_spec(bundle)
            if not (bundle / spec.weights).is_file():
                raise BundleError(f"{bundle}: its weights {spec.weights} are missing: rebuild "
                                  "the bundle, or point --out at a folder of complete bundles")
        return {}
    versions = {}
    for name in names:
        start_version = None
        if args.init_from is not None and name != "maskrcnn":  # maskrcnn: random weights
            start_version = _check_start(name, args)
        versions[name] = recipe_version(name, args, start_version)
        train_config(name, args, versions[name])  # bad --steps, --lr: before any scene
        out = check_bundle_dir(bundle_dir(name, args.out), resume=args.resume, overwrite=True)
        _check_writable(out)
    return versions


def _check_start(name: str, args: argparse.Namespace) -> str:
    """The version of the bundle ``--init-from DIR/<name>``, checked as training checks it."""
    from geoseg.training.finetune import check_compatible, starting_bundle
    from geoseg.training.loop import base_spec

    start = starting_bundle(str(args.init_from / name))
    config = config_for(name, args.steps, args.seed, args.train_threads, None,
                        init_from=args.init_from)
    config = config.model_copy(update={"bands": start.spec.bands})  # band count: train checks
    check_compatible(start, base_spec(config, start.spec.normalization, start.spec.pixel_size))
    return start.spec.version


def _check_writable(out: Path) -> None:
    """``out`` (which may not exist yet) can be created and written by this user."""
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--out: cannot write {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out: cannot write {out}: {parent} is not writable by this user")


def summary(name: str, m: dict[str, Any]) -> str:
    head = ", ".join(f"{k} {v:.3f}" for k, v in m["headline"].items())
    if "landcover" in m:
        ious = ", ".join(f"{k} {v:.3f}" for k, v in m["landcover"]["iou"].items()
                         if v is not None)
        head += f" (IoU {ious})"
    else:
        b = m["buildings"]
        head += f" (P {b['precision']:.3f} R {b['recall']:.3f})"
    train_s = (m.get("training") or {}).get("wall_seconds")
    return (f"{name}: {head}; weights {m['weights_bytes'] / 1e6:.2f} MB; forward 4x4x512² "
            f"{m['forward_seconds_4x4x512_cpu']:.2f} s; training {train_s} s")


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m workflows.build_bundles``."""
    p = argparse.ArgumentParser(
        prog="python -m workflows.build_bundles",
        description="Build geoseg's default model bundles (landcover and buildings) from "
                    "generated scenes, and score them on the path users run.")
    p.add_argument("--out", type=Path, help=f"output directory (default {DEFAULT_OUT}; "
                                             "required for --only maskrcnn)")
    p.add_argument("--steps", type=int, default=2000,
                   help="training steps of each bundle (default 2000)")
    p.add_argument("--only", choices=BUNDLES + OPTIONAL, action="append",
                   help="build only these bundles (repeatable); maskrcnn is built only when "
                        "named here")
    p.add_argument("--maskrcnn-precision", choices=["fp32", "bf16"], default="fp32",
                   help="autocast precision of the Mask R-CNN training (bf16 pays off only on "
                        "CPUs with AVX512-BF16/AMX; on AVX2 it was 7x slower)")
    p.add_argument("--init-from", type=Path,
                   help="fine-tune: start each bundle from DIR/<name> (e.g. a copy of "
                        "geoseg/bundles) instead of random weights")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's 3e-3)")
    p.add_argument("--contact-weight", type=float, default=0.0,
                   help="buildings: extra loss weight on walls between touching buildings")
    p.add_argument("--resume", action="store_true",
                   help="continue each bundle from <out>/<name>/checkpoints/last.pt")
    p.add_argument("--scenes", type=Path, default=Path(tempfile.gettempdir()) / "geoseg-scenes",
                   help="cache directory for generated scenes")
    p.add_argument("--train-seeds", type=int, nargs="+", default=[101, 102, 103],
                   help="seeds of the generated training scenes (default 101 102 103)")
    p.add_argument("--eval-seed", type=int, default=EVAL_SEED,
                   help="seed of the held-back scene the bundles are scored on")
    p.add_argument("--eval-size", type=int, default=EVAL_SIZE,
                   help="width and height of the held-back scene, px")
    p.add_argument("--eval-date", choices=DATES, default=EVAL_DATE,
                   help="date of the held-back scene that is run and scored")
    p.add_argument("--size", type=int, default=2048, help="size of the training scenes, px")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads of the forward timing (scoring runs with geoseg run's "
                        "defaults)")
    p.add_argument("--train-threads", type=int, default=2,
                   help="torch threads for training (bf16 autocast: 0.56 s per 8x256² step on "
                        "2 idle cores; use 1 on a machine shared with other work)")
    p.add_argument("--max-minutes", type=float, default=18,
                   help="time budget of each training loop; the schedule ends at whichever of "
                        "--steps or this comes first (0: steps only, reproducible)")
    p.add_argument("--score-only", "--skip-train", dest="score_only", action="store_true",
                   help="only score the existing bundles in --out (no training, no ONNX "
                        "export, forward timing kept from their metrics.json)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.out is None:
        if set(args.only or ()) & set(OPTIONAL):
            p.error("--only maskrcnn writes an unshipped bundle: give --out DIR (it is not "
                    f"written into {DEFAULT_OUT})")
        args.out = DEFAULT_OUT
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    names = list(dict.fromkeys(args.only or BUNDLES))
    try:
        return _main(names, args)
    except GeoSegError as exc:  # as geoseg's CLI: one line, the error's exit status
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def _main(names: list[str], args: argparse.Namespace) -> int:
    versions = check_inputs(names, args)  # before any scene is generated
    if args.score_only:
        bundles = {name: bundle_dir(name, args.out) for name in names}
    else:
        scenes = make_scenes(args.scenes, args.train_seeds, args.size)
        bundles = {name: build(name, args.out, scenes, args, versions[name]) for name in names}
    (eval_scene,) = make_scenes(args.scenes, [args.eval_seed], args.eval_size)
    with tempfile.TemporaryDirectory(prefix="geoseg-score-") as work:
        scores = score(bundles, eval_scene, Path(work), seed=args.eval_seed,
                       size=args.eval_size, date=args.eval_date)
    results = {name: write_metrics(name, bundles[name], scores[name], args.threads,
                                   timed=not args.score_only) for name in names}
    for name, m in results.items():
        print(summary(name, m))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
