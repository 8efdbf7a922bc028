"""Train a segmentation bundle on GeoTIFF scenes, deterministically from a seed.

Any band layout (count, order, dtype) is trained; the bundle's bands, band names and
normalisation (per-band mean/std of the valid training pixels, optionally clipped to percentiles)
come from the images (:mod:`geoseg.training.bands`).

Recipe: random chips from the training area, augmentations (:mod:`geoseg.training.augment`), a
weighted sum of cross-entropy, soft Dice and focal loss (:mod:`geoseg.training.losses`, nodata
ignored), AdamW with linear warm-up and cosine decay, checkpoints for an exact resume
(:mod:`geoseg.training.checkpoint`); on CUDA, autocast (bf16, or fp16 with a grad scaler). The
result is a bundle (``bundle.yaml`` + float16 safetensors) whose ``training`` section records the
provenance (seed, steps, chips, loss, scenes, validation metrics).

Mask R-CNN (``architecture.name: maskrcnn``, task buildings) runs through the same loop, schedule,
checkpoints and validation; its chips, targets and step are in :mod:`geoseg.training.maskrcnn_step`.
Its loss is the sum of torchvision's five detector losses, its default learning rate is
``MASKRCNN_LR`` (AdamW from scratch; see :data:`MASKRCNN_LR`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import segmentation_models_pytorch as smp
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from geoseg.bundle import ArchitectureSpec, BundleSpec, ClassSpec, Normalization, repeated_name
from geoseg.errors import ConfigError
from geoseg.models.factory import build_model, count_parameters
from geoseg.models.weights import save_bundle
from geoseg.outdir import storage_errors
from geoseg.training import checkpoint as ckpt
from geoseg.training.augment import AugmentConfig, augment
from geoseg.training.bands import check_alpha, resolve_layout, training_normalization
from geoseg.training.bundle_dir import check_bundle_dir
from geoseg.training.data import ChipSampler, SceneFiles
from geoseg.training.finetune import (
    check_compatible,
    check_start_range,
    load_start,
    starting_bundle,
)
from geoseg.training.losses import LossConfig, SegLoss
from geoseg.training.maskrcnn_step import (
    GRAD_CLIP,
    ROIS_PER_IMAGE,
    RPN_PROPOSALS_TRAIN,
    InstanceSampler,
    configure_training,
    detector_classifier,
    detector_step,
    instance_batch,
)
from geoseg.training.validate import validate

logger = logging.getLogger(__name__)

MASKRCNN_LR = 3e-4
"""Default learning rate of Mask R-CNN: AdamW from random weights. torchvision's SGD 0.02 recipe
assumes an ImageNet backbone and batches of 16; from scratch on small CPU batches AdamW with
warm-up is the stable choice, and 3e-3 (the semantic default) makes box regression diverge."""


class TrainConfig(BaseModel):
    """Everything one training run depends on (with the scenes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str = "1.0.0"
    task: Literal["landcover", "buildings"]
    classes: tuple[ClassSpec, ...]
    architecture: ArchitectureSpec = ArchitectureSpec(
        name="unet", encoder="resnet18", encoder_depth=3, decoder_channels=(32, 16, 16))
    bands: tuple[int, ...] | None = Field(default=None, description=(
        "1-based band indexes the model reads, in channel order; None: every band of the "
        "training images (which must then have the same band count)"))
    band_names: tuple[str, ...] | None = Field(default=None, description=(
        "one name per band; None: the first image's band descriptions, else b<index>"))
    clip_percentiles: tuple[float, float] | None = Field(default=None, description=(
        "clip each band to these percentiles of the training pixels before normalising (at "
        "inference too; stored in the bundle); None: no clipping"))
    stats_windows: int = Field(default=64, ge=1, description=(
        "normalisation statistics: at most this many windows of 256 px per training image, "
        "at random (all of a small image)"))
    tile_size: int = Field(default=512, ge=32)
    steps: int = Field(default=500, ge=1)
    batch_size: int = Field(default=8, ge=1)
    chip_size: int = Field(default=256, ge=32, multiple_of=32)
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1)
    loss: LossConfig = LossConfig()
    class_weights: tuple[float, ...] | None = Field(default=None, description=(
        "per-class cross-entropy weights (one per class)"))
    augment: AugmentConfig = Field(default=AugmentConfig(), description=(
        "training augmentations; none / null = off"))
    seed: int = 0
    val_fraction: float = Field(default=0.15, ge=0, lt=1)
    val_windows_per_scene: int = Field(default=8, ge=0)
    boundary_width: int = Field(default=2, ge=1)
    sampling: Literal["random", "grid"] = Field(default="random", description=(
        "random: chips anywhere in the training area; grid: every chip-sized cell of it, in a "
        "new random order each pass"))
    min_valid_fraction: float = Field(default=0.5, ge=0, le=1, description=(
        "chips with a smaller share of valid pixels (image valid, label not ignore) are "
        "redrawn (random) or skipped (grid)"))
    threads: int | None = Field(default=None, ge=1)
    precision: Literal["fp32", "bf16", "fp16"] = Field(default="fp32", description=(
        "bf16: autocast forward/backward in bfloat16 (weights stay float32); about 3x faster "
        "on CPUs with AVX512-BF16/AMX, and still deterministic. fp16: CUDA only, autocast "
        "float16 with a gradient scaler"))
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description=(
        "auto: cuda when available, else cpu"))
    channels_last: bool = True
    checkpoint_every: int = Field(default=100, ge=1, description=(
        "write OUT/checkpoints/last.pt every this many steps (and after the last step)"))
    max_seconds: float | None = Field(default=None, gt=0, description=(
        "time budget of the optimisation loop: the learning-rate schedule follows whichever "
        "of steps or time runs out first, so a slow machine still ends with a decayed rate. "
        "A run that hits it is not reproducible step for step (steps done are recorded)"))
    log_every: int = Field(default=25, ge=1)
    init_from: str | None = Field(default=None, description=(
        "fine-tune: start from this bundle's weights (a directory or a built-in name; same "
        "architecture, class and band count) and keep its normalization; None: random weights"))
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _legacy_dice_weight(cls, data: Any) -> Any:
        """Configs written before ``loss`` existed name the Dice weight ``dice_weight``."""
        if isinstance(data, dict) and "dice_weight" in data:
            data = dict(data)
            weight = data.pop("dice_weight")
            if "loss" in data:
                raise ValueError("give the Dice weight as loss.dice, not also dice_weight")
            data["loss"] = {"dice": weight}
        return data

    @model_validator(mode="before")
    @classmethod
    def _detector_lr(cls, data: Any) -> Any:
        """Mask R-CNN's default learning rate differs from the semantic models' one."""
        if isinstance(data, dict) and "lr" not in data:
            arch = data.get("architecture")
            name = arch.get("name") if isinstance(arch, dict) else getattr(arch, "name", None)
            if name == "maskrcnn":
                data = {**data, "lr": MASKRCNN_LR}
        return data

    @field_validator("clip_percentiles")
    @classmethod
    def _percentiles(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0.0 <= v[0] < v[1] <= 100.0:
            raise ValueError("give two percentiles 0 <= low < high <= 100, e.g. (2, 98)")
        return v

    @field_validator("bands")
    @classmethod
    def _bands(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (not v or min(v) < 1 or len(set(v)) != len(v)):
            raise ValueError("give distinct 1-based band indexes, e.g. (3, 2, 1)")
        return v

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_off(cls, value: Any) -> Any:
        return AugmentConfig.coerce(value)


@dataclass(frozen=True)
class TrainResult:
    bundle_dir: Path
    spec: BundleSpec
    losses: list[float]
    seconds: float


def lr_factor(progress: float, warmup_fraction: float, first: float = 0.0) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1): linear warm-up over the first
    ``warmup_fraction`` (starting at ``first`` of it), then cosine decay to 2% of the peak."""
    if progress < warmup_fraction:
        return min(1.0, (progress + first) / warmup_fraction)
    t = (progress - warmup_fraction) / max(1e-9, 1.0 - warmup_fraction)
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def _batch(sampler: ChipSampler, rng: np.random.Generator, n: int, mean: np.ndarray,
           std: np.ndarray, aug: AugmentConfig | None = None,
           ) -> tuple[torch.Tensor, torch.Tensor]:
    images, targets = [], []
    for _ in range(n):
        image, target = sampler.train_chip(rng)
        image, target = augment((image - mean) / std, target, rng, aug)
        images.append(image)
        targets.append(target)
    return (torch.from_numpy(np.stack(images)),
            torch.from_numpy(np.stack(targets).astype(np.int64)))


def _check(config: TrainConfig) -> None:
    ids = [c.id for c in config.classes]
    if ids != list(range(len(ids))):
        raise ConfigError("class ids must be 0..K-1 in order")
    if twice := repeated_name(c.name for c in config.classes):
        raise ConfigError(f"class names must be distinct: {twice} (--classes NAME,... names "
                          "ids 0, 1, ... in order)")
    if config.class_weights is not None and len(config.class_weights) != len(ids):
        raise ConfigError(f"class_weights needs {len(ids)} values (one per class)")
    if config.loss.focal_alpha is not None and len(config.loss.focal_alpha) != len(ids):
        raise ConfigError(f"loss.focal_alpha needs {len(ids)} values (one per class)")
    if config.loss.contact_weight and (config.task != "buildings" or [
            c.name for c in config.classes[:3]] != ["background", "building", "boundary"]):
        raise ConfigError("loss.contact_weight weighs walls between touching buildings: it needs "
                          "task buildings with classes background, building, boundary")
    if not any((config.loss.ce, config.loss.dice, config.loss.focal)):
        raise ConfigError("loss: every term has weight 0; give ce, dice or focal a weight")
    if config.init_from is not None and config.clip_percentiles is not None:
        raise ConfigError("init_from keeps the starting bundle's normalization (and clipping): "
                          "drop clip_percentiles")
    if config.precision == "fp16" and resolve_device(config).type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; use bf16 or fp32 on a CPU")
    if config.architecture.name == "maskrcnn":
        names = [c.name for c in config.classes]
        if config.task != "buildings" or set(names) - {"background", "building", "boundary"} \
                or not {"background", "building"} <= set(names):
            raise ConfigError("maskrcnn trains building instances: use task buildings with "
                              f"classes background, building[, boundary] (got {config.task}, "
                              f"{names})")


def base_spec(config: TrainConfig, norm: Normalization, pixel_size: float | None,
              ) -> BundleSpec:
    """The bundle's spec (``config`` with its bands resolved, see :func:`with_layout`)."""
    if config.bands is None:
        raise ConfigError("resolve the config's bands first (geoseg.training.loop.with_layout)")
    return BundleSpec(
        name=config.name, version=config.version, task=config.task,
        architecture=config.architecture, bands=config.bands, band_names=config.band_names,
        normalization=norm, classes=config.classes, tile_size=config.tile_size,
        pixel_size=pixel_size, description=config.description)


def with_layout(config: TrainConfig, scenes: Sequence[SceneFiles]) -> TrainConfig:
    """``config`` with its bands and band names resolved against the scenes' images
    (:func:`geoseg.training.bands.resolve_layout`: every image must have every band)."""
    layout = resolve_layout([s.image for s in scenes], config.bands, config.band_names)
    return config.model_copy(update={"bands": layout.bands, "band_names": layout.names})


ProgressFn = Callable[[int, int, float, float, float], None]
"""``progress(step, steps, loss, lr, seconds)``, called after each optimisation step."""


def resolve_device(config: TrainConfig) -> torch.device:
    """``device: auto`` is cuda when torch sees a GPU, else cpu."""
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but torch sees no GPU: use device auto or cpu")
    return torch.device(config.device)


def train(config: TrainConfig, scenes: Sequence[SceneFiles], out_dir: str | Path, *,
          resume: bool = False, overwrite: bool = False,
          progress: ProgressFn | None = None) -> TrainResult:
    """Train ``config`` on ``scenes`` and write the bundle to ``out_dir``.

    A checkpoint is written to ``out_dir/checkpoints/last.pt`` every ``checkpoint_every``
    steps; ``resume=True`` continues from it (bit-identical to an uninterrupted run on CPU,
    see :mod:`geoseg.training.checkpoint`) and starts afresh when there is none. ``progress`` is
    called after every step (exceptions it raises stop training and propagate). A folder
    holding anything but an earlier training output is refused, and an earlier one needs
    ``resume`` or ``overwrite`` (:mod:`geoseg.training.bundle_dir`)."""
    _check(config)
    out = check_bundle_dir(out_dir, resume=resume, overwrite=overwrite)
    created = not out.exists()
    with storage_errors(out):  # a folder that cannot be written: one line now, not at step N
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()  # (an empty folder is refused by nobody)
    try:
        return _train(config, scenes, out_dir, resume, progress)
    except BaseException:
        if created:  # refused before writing anything (labels, bands): leave no empty folder
            with contextlib.suppress(OSError):
                out.rmdir()  # only when empty: a checkpoint written meanwhile stays
        raise


def _train(config: TrainConfig, scenes: Sequence[SceneFiles], out_dir: str | Path,
           resume: bool, progress: ProgressFn | None) -> TrainResult:
    semantic = config.architecture.name != "maskrcnn"
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    t0 = time.perf_counter()
    config = with_layout(config, scenes)
    bands = config.bands or ()
    check_alpha([s.image for s in scenes], bands)
    start = starting_bundle(config.init_from) if config.init_from else None
    if start is not None and len(start.spec.bands) != len(bands):
        raise ConfigError(
            f"--init-from {config.init_from}: it reads {len(start.spec.bands)} bands "
            f"({', '.join(start.spec.band_names or map(str, start.spec.bands))}) but training "
            f"reads {len(bands)} ({list(bands)}): pick as many with --bands, or train without "
            "--init-from")
    if start is not None:
        check_start_range(start, [s.image for s in scenes], bands)
    norm = (start.spec.normalization if start is not None else
            training_normalization([s.image for s in scenes], bands,
                                   clip_percentiles=config.clip_percentiles,
                                   max_windows=config.stats_windows, seed=config.seed))
    mean = np.asarray(norm.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(norm.std, dtype=np.float32)[:, None, None]
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    kind: type[ChipSampler] = ChipSampler if semantic else InstanceSampler
    with kind(scenes, config.task, bands, config.chip_size, norm.mean,
              config.val_fraction, config.boundary_width,
              class_names=[c.name for c in config.classes], sampling=config.sampling,
              min_valid_fraction=config.min_valid_fraction, clip=norm.clip) as sampler:
        spec = base_spec(config, norm, sampler.pixel_size)
        model = build_model(spec)
        if start is not None:
            check_compatible(start, spec)
            load_start(model, start)
            logger.info("%s: starting from %s v%s (%s)", config.name, start.spec.name,
                        start.spec.version, start.path)
        logger.info("training %s: %s, %.2f M parameters, %d steps of %dx%d² chips",
                    config.name, config.architecture.name, count_parameters(model) / 1e6,
                    config.steps, config.batch_size, config.chip_size)
        labels = [s.labels_identity() for s in scenes]
        fp = ckpt.fingerprint(config, [*labels, *([start.weights_sha256] if start is not None
                                                  else [])])
        losses, done, resumed = _fit(model, config, sampler, rng, mean, std, t0,
                                     _Run(resolve_device(config), ckpt.checkpoint_path(out_dir),
                                          fp, resume, progress))
        val = validate(model, sampler, mean, std, config.val_windows_per_scene,
                       [c.name for c in config.classes],
                       None if semantic else detector_classifier(model, spec))
        bf16 = _bf16_agreement(model, sampler, mean, std) if semantic else None
    seconds = time.perf_counter() - t0
    training = _provenance(config, scenes, done, losses, val, seconds)
    training["labels"] = labels
    training["resumed_at_step"] = resumed
    if start is not None:
        training["init_from"] = start.provenance()
    training["normalization"] = (
        "kept from the starting bundle (init_from)" if start is not None else
        f"per-band mean/std of the valid pixels (nodata excluded) of up to "
        f"{config.stats_windows} random 256-px windows per image"
        + (" after clipping each band to percentiles {:g}-{:g}".format(*config.clip_percentiles)
           if config.clip_percentiles else ""))
    spec = spec.model_copy(update={"training": training, "bf16_agreement": bf16})
    out = save_bundle(model, spec, out_dir)
    logger.info("trained %s in %.0f s; validation %s", config.name, seconds, val)
    return TrainResult(out, spec, losses, seconds)


def _bf16_agreement(model: torch.nn.Module, sampler: ChipSampler, mean: np.ndarray,
                    std: np.ndarray, windows: int = 8) -> float | None:
    """bf16 class agreement with float32 on up to ``windows`` validation windows (see
    :mod:`geoseg.models.bf16`); None without validation windows."""
    from geoseg.models.bf16 import agreement

    wins = sampler.val_windows(2)[:windows]
    if not wins:
        return None
    batches = [torch.from_numpy(((sampler.read(s, w)[0] - mean) / std)[None].astype(np.float32))
               for s, w in wins]
    same, total = agreement(model, batches)
    logger.info("bf16 classes equal float32's on %.4f%% of %d validation pixels",
                100 * same / total, total)
    return round(same / total, 6)


@dataclass(frozen=True)
class _Run:
    """Where the loop runs, where it checkpoints, and who hears about its progress."""

    device: torch.device
    checkpoint: Path
    fingerprint: str
    resume: bool
    progress: ProgressFn | None


def _fit(model: torch.nn.Module, config: TrainConfig, sampler: ChipSampler,
         rng: np.random.Generator, mean: np.ndarray, std: np.ndarray,
         t0: float, run: _Run) -> tuple[list[float], int, int | None]:
    """The optimisation loop; returns per-step losses, the number of steps done and the
    step it resumed at (None: started afresh). The model ends on the CPU, contiguous."""
    loss_fn = SegLoss(config.loss, len(config.classes), config.class_weights)
    cuda = run.device.type == "cuda"
    detector = config.architecture.name == "maskrcnn"
    model.to(run.device)
    if detector:
        configure_training(model)
    elif config.channels_last:   # the detector batches its image list itself
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if cuda and config.precision == "fp16" else None
    state = ckpt.TrainState(0, [], 0.0)
    resumed = None
    if run.resume and run.checkpoint.is_file():
        state = ckpt.load(run.checkpoint, model, opt, scaler, rng, run.fingerprint)
        _restore_sampler(sampler, state.extra)
        resumed = state.step
        logger.info("%s: resuming at step %d of %d from %s", config.name, state.step,
                    config.steps, run.checkpoint)
    elif run.resume:
        logger.warning("%s: no checkpoint at %s, training from step 0", config.name,
                       run.checkpoint)
    model.train()
    losses = state.losses
    start = time.perf_counter() - state.seconds
    lr = config.lr
    for step in range(state.step, config.steps):
        progress = step / config.steps
        if config.max_seconds is not None:  # the schedule follows whichever budget binds
            progress = max(progress, (time.perf_counter() - start) / config.max_seconds)
            if progress >= 1.0:
                logger.warning("%s: time budget reached after %d of %d steps (max_seconds=%s)",
                               config.name, step, config.steps, config.max_seconds)
                break
        lr = config.lr * lr_factor(progress, config.warmup_fraction, 1.0 / config.steps)
        for group in opt.param_groups:
            group["lr"] = lr
        if detector:
            images, targets = instance_batch(sampler, rng, config.batch_size, mean, std,
                                             config.augment)
            losses.append(detector_step(
                model, opt, scaler, [t.to(run.device) for t in images],
                [{k: v.to(run.device) for k, v in t.items()} for t in targets],
                config.precision))
        else:
            x, y = _batch(sampler, rng, config.batch_size, mean, std, config.augment)
            x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            losses.append(_step(model, opt, scaler, loss_fn, x, y, config.precision))
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.steps:
            ckpt.save(run.checkpoint, model, opt, scaler, rng,
                      ckpt.TrainState(done, losses, time.perf_counter() - start,
                                      _sampler_state(sampler)), run.fingerprint)
        if done % config.log_every == 0 or done == config.steps:
            recent = losses[-config.log_every:]
            logger.info("%s step %d/%d loss %.4f lr %.2e %.0f s (%.2f s/step)", config.name,
                        done, config.steps, sum(recent) / len(recent), lr,
                        time.perf_counter() - t0,
                        (time.perf_counter() - start) / (done - (resumed or 0)))
        if run.progress is not None:
            run.progress(done, config.steps, losses[-1], lr, time.perf_counter() - t0)
    model.to("cpu")
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    return losses, len(losses), resumed


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer,
          scaler: torch.amp.GradScaler | None, loss_fn: SegLoss, x: torch.Tensor,
          y: torch.Tensor, precision: str) -> float:
    """One forward/backward/update under autocast (bf16, or fp16 + grad scaler on CUDA)."""
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    with torch.autocast(x.device.type, dtype=dtype, enabled=precision != "fp32"):
        logits = model(x)
    loss = loss_fn(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    return float(loss.detach())


def _sampler_state(sampler: ChipSampler) -> str:
    """JSON of the sampler's own state, for samplers that keep one (``state_dict``)."""
    get = getattr(sampler, "state_dict", None)
    return json.dumps(get()) if callable(get) else ""


def _restore_sampler(sampler: ChipSampler, text: str) -> None:
    put = getattr(sampler, "load_state_dict", None)
    if text and callable(put):
        put(json.loads(text))


_DETECTOR_LOSS = (f"Mask R-CNN: sum of classifier, box regression, mask, objectness and RPN box "
                  f"regression losses ({ROIS_PER_IMAGE} RoIs/image, {RPN_PROPOSALS_TRAIN} RPN "
                  "proposals in training)")


def _provenance(config: TrainConfig, scenes: Sequence[SceneFiles], done: int,
                losses: list[float], val: dict[str, object], seconds: float,
                ) -> dict[str, object]:
    tail = losses[-max(1, min(len(losses), config.log_every)):]
    detector = config.architecture.name == "maskrcnn"
    return {
        "seed": config.seed,
        "steps": done,
        "steps_planned": config.steps,
        "batch_size": config.batch_size,
        "chip_size": config.chip_size,
        "sampling": f"{config.sampling}, chips with >= {config.min_valid_fraction:.0%} valid "
                    "pixels",
        "loss": (_DETECTOR_LOSS if detector else
                 SegLoss(config.loss, len(config.classes), config.class_weights).describe()),
        "class_weights": (list(config.class_weights) if config.class_weights and not detector
                          else None),
        "optimizer": f"AdamW lr={config.lr} weight_decay={config.weight_decay}"
                     + (f", gradient norm clipped to {GRAD_CLIP:g}" if detector else ""),
        "precision": config.precision,
        "device": resolve_device(config).type,
        "schedule": f"linear warm-up {config.warmup_fraction:.0%} + cosine to 2%"
                    + (f", by steps or {config.max_seconds:.0f} s, whichever first"
                       if config.max_seconds else ""),
        "augmentation": config.augment.describe(),
        "boundary_width": config.boundary_width if config.task == "buildings" else None,
        "val_split": f"rightmost {config.val_fraction:.0%} of columns of each scene",
        "scenes": [s.name for s in scenes],
        "final_loss": round(sum(tail) / len(tail), 5) if tail else None,
        "val": val,
        "wall_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "smp": smp.__version__,
    }
