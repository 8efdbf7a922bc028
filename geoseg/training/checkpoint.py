"""Training checkpoints for an exact resume.

``OUT/checkpoints/last.pt`` holds the model and optimizer (and AMP grad-scaler) state, the step,
the losses so far, the numpy Generator state (JSON text), the torch RNG state(s), the seconds
spent in the loop, and the config + scene list it was written for (JSON text). It is written
atomically (a unique temporary file + rename) and read only with ``torch.load(weights_only=True)``,
so loading never unpickles arbitrary objects.

Resuming with the same config on the same machine and thread count gives bit-identical final
weights on CPU. Not reproducible: runs that hit ``max_seconds`` (the schedule then depends on
wall time), and CUDA runs unless the kernels used are deterministic.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geoseg.errors import ConfigError, ResumeError
from geoseg.outdir import atomic_open

logger = logging.getLogger(__name__)

FORMAT = 1
# config fields that may change between the interrupted run and its resume
MUTABLE = frozenset({"log_every", "checkpoint_every", "threads"})


def checkpoint_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints" / "last.pt"


def fingerprint(config: Any, scenes: Sequence[object]) -> str:
    """JSON of what a run's result depends on: the config (less ``MUTABLE``) and the scenes
    (each one's labels, :meth:`geoseg.training.SceneFiles.labels_identity`)."""
    data = config.model_dump(mode="json", exclude=set(MUTABLE))
    return json.dumps({"config": data, "scenes": list(scenes)}, sort_keys=True)


@dataclass
class TrainState:
    """What the loop needs to continue after ``step`` steps."""

    step: int
    losses: list[float]
    seconds: float
    extra: str = ""   # JSON of the sampler's state, for samplers that keep one


def save(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
         scaler: torch.amp.GradScaler | None, rng: np.random.Generator, state: TrainState,
         fingerprint_json: str) -> None:
    """Write the checkpoint atomically (a crash mid-write leaves the previous one)."""
    payload: dict[str, Any] = {
        "format": FORMAT,
        "fingerprint": fingerprint_json,
        "step": state.step,
        "losses": torch.tensor(state.losses, dtype=torch.float64),
        "seconds": state.seconds,
        "extra": state.extra,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:  # a unique temporary name: a planted link is never followed
        torch.save(payload, f)
    logger.debug("checkpoint at step %d written to %s", state.step, path)


def load(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
         scaler: torch.amp.GradScaler | None, rng: np.random.Generator,
         fingerprint_json: str) -> TrainState:
    """Restore model, optimizer, scaler and RNGs from ``path`` in place; refuses a checkpoint
    written for another config or other scenes."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:  # pickle errors surface as these
        raise ResumeError(f"{path} is not a readable checkpoint ({exc}): delete it and train "
                          "without resume") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ResumeError(f"{path} is not a geoseg training checkpoint (format {FORMAT}): "
                          "delete it and train without resume")
    if data["fingerprint"] != fingerprint_json and not _older_same(data["fingerprint"],
                                                                    fingerprint_json, path):
        raise ConfigError(f"cannot resume from {path}: it was written for a different "
                          f"config or scenes ({_diff(data['fingerprint'], fingerprint_json)}); "
                          "resume with the original config or train without resume")
    model.load_state_dict(data["model"])
    opt.load_state_dict(data["optimizer"])
    if scaler is not None and data["scaler"]:
        scaler.load_state_dict(data["scaler"])
    rng.bit_generator.state = json.loads(data["numpy_rng"])
    torch.set_rng_state(data["torch_rng"])
    if data["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(data["cuda_rng"])
    return TrainState(int(data["step"]), [float(v) for v in data["losses"].tolist()],
                      float(data["seconds"]), str(data["extra"]))


def _older_same(old_json: str, new_json: str, path: Path) -> bool:
    """Whether a checkpoint of an earlier geoseg, whose fingerprint named each scene by its
    image only (no labels' hash), is of this config and these scenes: it resumes, with a
    warning that its labels cannot be compared."""
    old, new = json.loads(old_json), json.loads(new_json)
    names = [s.get("scene") if isinstance(s, dict) else s for s in new["scenes"]]
    if old["config"] != new["config"] or old["scenes"] != names \
            or any(isinstance(s, dict) for s in old["scenes"]):
        return False
    logger.warning("%s was written by an earlier geoseg, which did not record the labels: "
                   "resuming without checking that they are unchanged", path)
    return True


def _diff(old_json: str, new_json: str) -> str:
    """The first few differing fields, as 'field: old -> new'; for the scenes, the first scene
    whose labels differ and how."""
    old, new = json.loads(old_json), json.loads(new_json)
    keys = sorted(k for k in set(old["config"]) | set(new["config"])
                  if old["config"].get(k) != new["config"].get(k))
    parts = [f"{k}: {json.dumps(old['config'].get(k))} -> {json.dumps(new['config'].get(k))}"
             for k in keys[:3]]
    if old["scenes"] != new["scenes"]:
        parts.append(_scene_diff(old["scenes"], new["scenes"]))
    more = len(keys) - 3
    return (", ".join(parts) + (f", +{more} more" if more > 0 else ""))[:300]


def _scene_diff(old: list[Any], new: list[Any]) -> str:
    if len(old) != len(new):
        return f"{len(old)} scenes -> {len(new)}"
    for a, b in zip(old, new, strict=True):
        if a == b:
            continue
        if not (isinstance(a, dict) and isinstance(b, dict)):
            return f"scenes: {json.dumps(a)} -> {json.dumps(b)}"
        changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        what = ", ".join(("its labels' content changed" if k == "sha256" else
                          f"{k} {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}")
                         for k in changed)
        return f"scene {b.get('scene', a.get('scene'))}: {what}"
    return "scenes differ"
