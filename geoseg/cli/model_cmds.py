"""``geoseg train``, ``geoseg eval`` and ``geoseg export``: make, score and export model
bundles."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.cli.progress import ProgressLine, fmt_duration
from geoseg.errors import ConfigError

if TYPE_CHECKING:
    from geoseg.training.data import SceneFiles
    from geoseg.training.losses import LossConfig


_COLOURS = ("#000000", "#31a354", "#3182bd", "#d7301f", "#636363", "#c8b48c", "#fdae61",
            "#756bb1", "#e7298a", "#66a61e")


def _classes(task: str, names: list[str] | None = None) -> tuple[object, ...]:
    """The bundle's classes: ``--classes NAME[:#RRGGBB],...`` (landcover), else the task's
    built-in ones."""
    from geoseg.bundle import ClassSpec

    if names is not None:
        if task != "landcover":
            raise ConfigError("--classes is for --task landcover (buildings classes are fixed: "
                              "background, building, boundary)")
        out = []
        for i, item in enumerate(names):
            name, _, colour = item.partition(":")
            out.append(ClassSpec(id=i, name=name.strip(),
                                 color=colour.strip() or _COLOURS[i % len(_COLOURS)]))
        return tuple(out)
    if task == "landcover":
        from geoseg.sample import CLASSES
    else:
        from geoseg.training import BUILDING_CLASSES as CLASSES  # type: ignore[assignment]
    return tuple(ClassSpec(id=i, name=n, color=c) for i, n, c in CLASSES)


def _scene_files(a: argparse.Namespace, image: str, labels: str) -> SceneFiles:
    """One training scene from the CLI: image + label raster or vector file."""
    from geoseg.training import SceneFiles

    return SceneFiles(Path(image), Path(labels), label_field=a.class_field,
                      background=a.background, label_layer=a.labels_layer)


def _background(text: str) -> int:
    """``--background``: a class id, or ``ignore`` (255: uncovered pixels leave the loss)."""
    if text.strip().lower() == "ignore":
        return 255
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"{text!r}: give a class id (0..254) or 'ignore'")
    return value


def _band_list(text: str) -> tuple[int, ...]:
    """``--bands 4,3,2``: distinct 1-based band indexes, in the model's channel order."""
    try:
        bands = tuple(int(v) for v in text.split(","))
    except ValueError:
        bands = ()
    if not bands or min(bands) < 1 or len(set(bands)) != len(bands):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct 1-based band indexes, "
                                         "comma-separated (e.g. 1 or 3,2,1)")
    return bands


def _name_list(text: str) -> list[str]:
    """``--band-names red,green,blue`` / ``--classes other,tree``."""
    names = [v.strip() for v in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated, non-empty names")
    return names


def _minutes(text: str) -> float:
    """``--max-minutes 30``: a time budget, more than 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of minutes above 0 (e.g. 30), "
                                         "or leave the flag out to train for --steps")
    return value


def _percentiles(text: str) -> tuple[float, float]:
    """``--clip-percentiles 2,98``."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        lo, hi = -1.0, -1.0
    if not 0.0 <= lo < hi <= 100.0:
        raise argparse.ArgumentTypeError(f"{text!r}: give LOW,HIGH with 0 <= LOW < HIGH <= 100 "
                                         "(e.g. 2,98)")
    return lo, hi


def cmd_train(a: argparse.Namespace) -> int:
    """Train a bundle (semantic, or Mask R-CNN for buildings) on generated scenes or on
    image + labels (raster or vector)."""
    from geoseg.training import TrainConfig, scene_files, train

    scenes: list[SceneFiles] = []
    for d in a.scene or []:
        scenes += scene_files(d, a.task)
    for pair in a.pair or []:
        img, _, lbl = pair.partition(":")
        if not lbl:
            raise ConfigError(f"--pair {pair!r}: give IMAGE:LABELS")
        scenes.append(_scene_files(a, img, lbl))
    images, labels = a.image or [], a.labels or []
    if len(images) != len(labels):
        raise ConfigError(f"{len(images)} --image but {len(labels)} --labels: give one --labels "
                          "(raster or vector file) after each --image")
    scenes += [_scene_files(a, img, lbl) for img, lbl in zip(images, labels, strict=True)]
    if not scenes:
        raise ConfigError("no training data: pass --scene DIR (generated), --image IMAGE "
                          "--labels LABELS or --pair IMAGE:LABELS")
    cfg = TrainConfig(name=a.name or f"{a.task}-custom", task=a.task,
                      classes=_classes(a.task, a.classes),  # type: ignore[arg-type]
                      bands=a.bands, band_names=a.band_names,
                      clip_percentiles=a.clip_percentiles,
                      sampling=a.sampling, min_valid_fraction=a.min_valid_fraction,
                      steps=a.steps, seed=a.seed, batch_size=a.batch_size,
                      threads=a.threads, loss=_loss(a), precision=a.precision,
                      device=a.device, checkpoint_every=a.checkpoint_every,
                      chip_size=a.chip_size,
                      max_seconds=None if a.max_minutes is None else a.max_minutes * 60,
                      init_from=a.init_from, **_architecture(a))
    bar = _TrainProgress(a.quiet, cfg.max_seconds)
    try:
        res = train(cfg, scenes, a.out, resume=a.resume, overwrite=a.overwrite, progress=bar)
    finally:
        bar.close()
    training = res.spec.training or {}
    print(f"bundle written: {res.bundle_dir} ({res.seconds:.0f} s, "
          f"{training.get('steps', cfg.steps)} steps, final loss {training.get('final_loss')})")
    norm = res.spec.normalization
    clip = f", clipped to {list(norm.clip[0])}..{list(norm.clip[1])}" if norm.clip else ""
    print(f"  bands {list(res.spec.bands)} ({', '.join(res.spec.band_names or ())}): "
          f"mean {list(norm.mean)}, std {list(norm.std)}{clip}")
    val = training.get("val")
    if isinstance(val, dict) and val.get("windows"):
        shown = {k: v for k, v in val.items() if not isinstance(v, dict | list)}
        print(f"  validation: {json.dumps(shown)[:400]}")
    if cfg.architecture.name != "maskrcnn":
        print(f"  its halo (context each chunk reads; 64 px until measured): geoseg export "
              f"{res.bundle_dir} --halo-check IMAGE (an image like yours: >= 1536 px a side "
              "for the 1024-px chunk, at least 576)")
    return 0


def _architecture(a: argparse.Namespace) -> dict[str, Any]:
    """``architecture`` for TrainConfig from ``--arch``/``--encoder`` (empty: its default; with
    ``--init-from`` and neither flag: the starting bundle's architecture)."""
    from geoseg.bundle import ArchitectureSpec

    if a.arch is None and a.encoder is None:
        if a.init_from:
            from geoseg.training.finetune import starting_bundle

            return {"architecture": starting_bundle(a.init_from).spec.architecture}
        return {}
    return {"architecture": ArchitectureSpec(name=a.arch or "unet",
                                             encoder=a.encoder or "resnet18")}


def _loss(a: argparse.Namespace) -> LossConfig:
    """``LossConfig`` from ``--loss``, ``--boundary-weight`` and ``--contact-weight``."""
    from geoseg.training.losses import LossConfig, parse_loss

    extra = {"boundary_weight": a.boundary_weight, "contact_weight": a.contact_weight}
    if not a.loss:
        return LossConfig(**extra)
    w = parse_loss(a.loss)
    return LossConfig(ce=w["ce"], dice=w["dice"], focal=w["focal"], **extra)


class _TrainProgress:
    """Training progress (a :class:`ProgressLine`): by steps and, with a time budget, by time,
    whichever ends first; a plain line every minute when stderr is not a terminal."""

    def __init__(self, quiet: bool, max_seconds: float | None) -> None:
        self.line = ProgressLine("train", 1.0, quiet=quiet, every_s=60.0)
        self.max_seconds = max_seconds

    def __call__(self, step: int, steps: int, loss: float, lr: float, seconds: float) -> None:
        done = step / steps
        left = seconds / step * (steps - step) if step else None
        if self.max_seconds:
            done = max(done, min(seconds / self.max_seconds, 1.0))
            left = min(left, self.max_seconds - seconds) if left is not None else None
        self.line.update(done, f"step {step}/{steps}  loss {loss:.4f}  lr {lr:.2e}  "
                               f"{fmt_duration(seconds)} elapsed, ETA {fmt_duration(left)}",
                         final=step == steps)

    def close(self) -> None:
        self.line.close()


def cmd_eval(a: argparse.Namespace) -> int:
    """Score a run (or a store layer / footprints) against truth: the JSON report on stdout
    (and in ``--json``), a confusion-matrix PNG per class layer."""

    from geoseg.runfolder import local_run
    from geoseg.scoring import evaluate_outputs

    png = a.confusion_png
    if a.json:
        _check_report_target(Path(a.json))
    if png is None and a.json:  # beside the report: one figure per report
        png = f"{Path(a.json).with_suffix('')}_confusion_{{layer}}.png"
    report = evaluate_outputs(
        run=local_run(a.run) if a.run else None, scene=a.scene, date=a.date, store=a.store,
        layer=a.layer, truth=a.truth,
        num_classes=a.num_classes, footprints=a.footprints, footprints_layer=a.footprints_layer,
        truth_footprints=a.truth_footprints, truth_layer=a.truth_layer,
        truth_instances=a.truth_instances, iou=a.iou, boundary_tol=a.boundary_tol,
        confusion=png, plot=not a.no_png, partial=a.partial)
    text = json.dumps({REPORT_MARK: "geoseg eval", **report}, indent=2, default=float)
    if a.json:
        from geoseg.outdir import atomic_write_text

        _check_report_target(Path(a.json))  # again: a file may have appeared while scoring
        atomic_write_text(Path(a.json), text)  # by rename: a symlink is replaced, not followed
    print(text)
    for name, section in report.items():
        if isinstance(section, dict) and "confusion_png" in section:
            print(f"{name} confusion matrix: {section['confusion_png']}", file=sys.stderr)
    return 0


#: The first key of an eval report: what ``--json`` may replace.
REPORT_MARK = "report"


def _check_report_target(path: Path) -> None:
    """``--json`` may name a new file or an earlier report of ``geoseg eval``, in an existing
    folder: checked before the scoring."""
    from geoseg.outdir import check_target

    def earlier_report(p: Path) -> bool:
        try:
            earlier = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(earlier, dict) and earlier.get(REPORT_MARK) == "geoseg eval"

    check_target(path, earlier_report, "--json")


def _at_least(least: int, example: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``least`` (argparse names the flag)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least "
                                             f"{least} (e.g. {example})")
        return value

    return parse


def cmd_export(a: argparse.Namespace) -> int:
    if not (a.onnx or a.bf16_check or a.halo_check):
        raise ConfigError("say what to export: --onnx (an ONNX graph), --bf16-check IMAGE "
                          "and/or --halo-check IMAGE")
    if a.chunk is not None and not a.halo_check:
        raise ConfigError("--chunk is the chunk size --halo-check measures for: add "
                          "--halo-check IMAGE, or leave --chunk out")
    if a.windows is not None and not (a.bf16_check or a.halo_check):
        raise ConfigError("--windows is for --bf16-check and --halo-check: add one, or leave "
                          "--windows out")
    if a.onnx:
        from geoseg.models.onnx import export_onnx, require_onnx

        require_onnx()  # before any work, also that of the checks
        path = export_onnx(a.bundle)
        print(f"ONNX model written: {path} (bundle.yaml now names it)")
    if a.bf16_check:
        _bf16_check(a)
    if a.halo_check:
        _halo_check(a)
    return 0


def _bf16_check(a: argparse.Namespace) -> None:
    from geoseg.engine import BF16_MIN_AGREEMENT
    from geoseg.models.bf16 import Bf16Check, check_bundle

    def report(res: Bf16Check) -> None:  # printed before it is recorded
        verdict = ("engine auto may run it in bf16 on CPUs with bf16 units (AMX, AVX512-BF16)"
                   if res.share >= BF16_MIN_AGREEMENT
                   else f"below {BF16_MIN_AGREEMENT:.1%}: engine auto keeps float32")
        print(f"bf16 classes equal float32's on {res.share:.4%} of the pixels of "
              f"{res.windows} {res.size}-px window{'s' if res.windows > 1 else ''} of "
              f"{a.bf16_check} ({verdict})", flush=True)

    share = check_bundle(a.bundle, a.bf16_check, windows=8 if a.windows is None else a.windows,
                         report=report)
    print(f"recorded in bundle.yaml: bf16_agreement {round(share, 6)}")


def _halo_check(a: argparse.Namespace) -> None:
    from geoseg.models.halo import MIN_AGREEMENT, REFERENCE, HaloCheck, check_bundle

    def progress(done: int, total: int) -> None:
        print(f"halo check: window {done}/{total} compared", file=sys.stderr, flush=True)

    def report(res: HaloCheck) -> None:  # printed before it is recorded
        print(f"classes of {res.chunk}-px chunks equal those of a pass with {REFERENCE} px of "
              f"context, on {res.windows} window{'s' if res.windows > 1 else ''} of "
              f"{a.halo_check}:")
        for h, share in res.agreement.items():
            mark = ("  <- recorded in bundle.yaml (inference.halo auto runs it)"
                    if h == res.halo else "")
            print(f"  halo {h:>4} px: {share:.4%} (worst window {res.worst[h]:.4%}){mark}")
        if res.halo is None:
            print(f"no halo up to {max(res.agreement)} px keeps {MIN_AGREEMENT:.1%} in every "
                  "window: the table is recorded without a halo (inference.halo auto runs 64; "
                  "set a larger inference.halo for this model if its seams matter)")
        sys.stdout.flush()

    check_bundle(a.bundle, a.halo_check, chunk=1024 if a.chunk is None else a.chunk,
                 windows=4 if a.windows is None else a.windows, progress=progress,
                 report=report)


def add_model_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    t = sub.add_parser("train", help="train a segmentation (or Mask R-CNN buildings) bundle")
    t.add_argument("--task", choices=["landcover", "buildings"], required=True,
                   help="landcover: a class per pixel; buildings: footprints (instance labels)")
    t.add_argument("--scene", action="append", help="generated scene dir (repeatable)")
    t.add_argument("--pair", action="append", help="IMAGE:LABELS raster pair (repeatable)")
    t.add_argument("--image", action="append",
                   help="training image (repeatable; each followed by --labels)")
    t.add_argument("--labels", action="append",
                   help="labels of the preceding --image: a raster on its grid or a vector "
                        "file of polygons in any CRS (.gpkg, .geojson, .shp, .fgb)")
    t.add_argument("--class-field", default="class_id",
                   help="vector landcover labels: attribute holding class ids or class names")
    t.add_argument("--labels-layer", metavar="NAME",
                   help="vector labels: the layer to read from a file of several, e.g. a "
                        "GeoPackage (default: its first)")
    t.add_argument("--background", type=_background, default=0,
                   help="vector landcover labels: class of pixels no polygon covers, or "
                        "'ignore' to leave them out of the loss (default 0)")
    t.add_argument("--sampling", choices=["random", "grid"], default="random",
                   help="training chips at random or from a grid over the training area")
    t.add_argument("--min-valid-fraction", type=float, default=0.5,
                   help="redraw/skip chips with a smaller share of valid labelled pixels")
    t.add_argument("--bands", type=_band_list,
                   help="1-based image bands the model reads, in this order, e.g. 1 or 3,2,1 "
                        "(default: every band of the images, which then need the same count)")
    t.add_argument("--band-names", type=_name_list,
                   help="one name per band, comma-separated, stored in the bundle and checked "
                        "against named images at run time (default: the image's band "
                        "descriptions, else b1..bN)")
    t.add_argument("--clip-percentiles", type=_percentiles,
                   help="LOW,HIGH: clip each band to these percentiles of the training pixels "
                        "before normalising, in training and at inference (stored in the "
                        "bundle), e.g. 2,98 for reflectance with outliers (default: no clipping)")
    t.add_argument("--classes", type=_name_list,
                   help="--task landcover: class names for ids 0..K-1, comma-separated, each "
                        "optionally NAME:#RRGGBB, e.g. other,tree (default: bare, building, "
                        "road, vegetation, water)")
    t.add_argument("--out", "-o", required=True, help="bundle directory to write")
    t.add_argument("--name", help="bundle name (default: TASK-custom)")
    t.add_argument("--steps", type=int, default=500, help="optimisation steps")
    t.add_argument("--batch-size", type=int, default=8, help="chips per step")
    t.add_argument("--seed", type=int, default=0,
                   help="random seed (chips, augmentations, weights): same seed, same bundle")
    t.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    t.add_argument("--loss", help="loss terms and weights: 'ce+dice' (default), 'focal', "
                                   "'ce:1,dice:0.5,focal:1'")
    t.add_argument("--boundary-weight", type=float, default=0.0,
                   help="w in 1 + w*exp(-d²/2σ²), σ = 3 px: extra CE/focal weight near class "
                        "edges (default 0 = off)")
    t.add_argument("--contact-weight", type=float, default=0.0,
                   help="--task buildings: c in 1 + c, extra CE/focal weight on boundary pixels "
                        "between touching buildings (no background within 3 px), which keep "
                        "terraced houses apart (default 0 = off)")
    t.add_argument("--checkpoint-every", type=int, default=100,
                   help="write OUT/checkpoints/last.pt every N steps (default 100)")
    t.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoints/last.pt (same config and scenes)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the bundle an earlier `geoseg train` wrote in OUT (a folder "
                        "holding anything else is refused)")
    t.add_argument("--init-from", metavar="BUNDLE",
                   help="fine-tune: start from this bundle's weights (a directory or a built-in "
                        "name, e.g. buildings) with its normalization; needs the same "
                        "architecture, class count and band count (default: random weights)")
    t.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="autocast precision (fp16: CUDA only)")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: cuda when torch sees a GPU, else cpu")
    t.add_argument("--arch", choices=["unet", "deeplabv3plus", "maskrcnn"],
                   help="architecture (default: a slim U-Net ResNet-18, depth 3, decoder "
                        "32,16,16); maskrcnn: building instances (--task buildings), ResNet-FPN "
                        "backbone")
    t.add_argument("--encoder", help="encoder for --arch: an smp encoder for unet/deeplabv3plus "
                                     "(e.g. resnet34, efficientnet-b0), a torchvision ResNet for "
                                     "maskrcnn (resnet18, resnet34, resnet50); default resnet18, "
                                     "no pretrained weights are fetched")
    t.add_argument("--chip-size", type=int, default=256, help="training chip size, px "
                                                                "(a multiple of 32)")
    t.add_argument("--max-minutes", type=_minutes,
                   help="time budget: stop (with a decayed learning rate) when it runs out "
                        "(default: none, --steps decide)")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="score predictions against ground truth")
    e.add_argument("--run", help="a geoseg run output directory (its predictions.zarr and "
                                 "features.gpkg are the predictions)")
    e.add_argument("--scene", help="a generated scene directory (truth)")
    e.add_argument("--date", default="t0", help="date of the --scene truth (t0 or t1)")
    e.add_argument("--store", help="predictions.zarr (default: the --run's)")
    e.add_argument("--layer", default="landcover", help="class layer of the store to score")
    e.add_argument("--truth", help="truth class raster (class ids; nodata and 255 ignored) on "
                                   "any grid and CRS: resampled nearest-neighbour onto the "
                                   "predictions' grid")
    e.add_argument("--num-classes", type=int,
                   help="classes of --layer (default: the run's class list)")
    e.add_argument("--confusion-png", help="where to write the confusion matrix PNG ({layer} is "
                                           "replaced; default: beside --json, else "
                                           "confusion_<layer>.png in the run folder); an "
                                           "existing file there is replaced only if it is a "
                                           "confusion matrix geoseg wrote")
    e.add_argument("--no-png", action="store_true", help="write no confusion matrix PNG")
    e.add_argument("--footprints", help="predicted footprints: any OGR vector file "
                                        "(GeoPackage, GeoJSON, shapefile, FlatGeobuf, ...; "
                                        "default: the --run's features.gpkg)")
    e.add_argument("--footprints-layer", help="layer of --footprints (default: 'buildings', "
                                              "else the first polygon layer)")
    e.add_argument("--truth-footprints", help="truth footprints: any OGR vector file, any CRS "
                                              "(reprojected to the predictions')")
    e.add_argument("--truth-layer", help="layer of --truth-footprints (default as above)")
    e.add_argument("--truth-instances",
                   help="truth instance-id raster (0 = none): COCO AP and PQ of --footprints")
    e.add_argument("--iou", type=float, default=0.5,
                   help="IoU at which a predicted footprint matches a truth one (SpaceNet), "
                        "in (0, 1]")
    e.add_argument("--boundary-tol", type=float, default=2.0,
                   help="boundary F1 distance tolerance in pixels")
    e.add_argument("--json", help="also write the report here: a new file, or an earlier "
                                   "report of geoseg eval (its first key is \"report\": "
                                   "\"geoseg eval\"); any other existing file, and a folder "
                                   "that does not exist, are refused before the scoring")
    e.add_argument("--partial", action="store_true",
                   help="score a run that is not complete (its missing chunks count as "
                        "predicted nothing); refused otherwise, also when --store or "
                        "--footprints lie in its folder")
    e.set_defaults(fn=cmd_eval)

    x = sub.add_parser("export", help="export a bundle's model (ONNX), check it in bf16, or "
                                               "measure the halo it needs")
    x.add_argument("bundle", help="bundle directory (bundle.yaml + weights)")
    x.add_argument("--onnx", action="store_true",
                   help="write model.onnx into the bundle")
    x.add_argument("--bf16-check", metavar="IMAGE",
                   help="measure on windows of IMAGE how many pixels keep their class under "
                        "bfloat16 autocast and record it in bundle.yaml (engine auto runs the "
                        "bundle in bf16 on CPUs with AMX or AVX512-BF16 from 99.9 %%)")
    x.add_argument("--halo-check", metavar="IMAGE",
                   help="measure on windows of IMAGE the smallest halo (context around a "
                        "chunk) whose classes equal a 256-px-context pass on 99.9 %% of pixels "
                        "and record it in bundle.yaml (inference.halo auto runs it)")
    x.add_argument("--chunk", type=_at_least(64, 1024), default=None,
                   help="--halo-check: chunk size to measure for, px, at least 64 (default "
                        "1024)")
    x.add_argument("--windows", type=_at_least(1, 4), default=None,
                   help="windows without nodata to compare (default: 8 random 512-px windows "
                        "for --bf16-check, 4 for --halo-check)")
    x.set_defaults(fn=cmd_export)
