"""Bundle weights as safetensors (never pickle): save a model + spec, load weights into a model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from geoseg.bundle import BundleSpec, bundle_file, write_spec
from geoseg.errors import BundleError
from geoseg.outdir import atomic_write_bytes, storage_errors

logger = logging.getLogger(__name__)

StoreDtype = Literal["float16", "bfloat16", "float32"]
_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def weights_path(spec: BundleSpec, bundle_dir: str | Path) -> Path:
    """Where the bundle's weights live; refuses paths that leave the bundle directory."""
    return bundle_file(bundle_dir, spec.weights, "weights")


def state_tensors(model: nn.Module, dtype: StoreDtype = "float16") -> dict[str, torch.Tensor]:
    """The model's state dict as contiguous CPU tensors; floating tensors cast to ``dtype``
    (integer buffers such as BatchNorm's ``num_batches_tracked`` keep their type)."""
    if dtype not in _DTYPES:
        raise BundleError(f"unknown weights dtype {dtype!r}: use one of {sorted(_DTYPES)}")
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.to(_DTYPES[dtype])
        out[name] = t.contiguous().clone()  # clone: safetensors refuses shared storage
    return out


def save_bundle(model: nn.Module, spec: BundleSpec, out_dir: str | Path,
                dtype: StoreDtype = "float16") -> Path:
    """Write ``bundle.yaml`` and the weights file named by ``spec.weights`` into ``out_dir``."""
    out = Path(out_dir)
    with storage_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    path = weights_path(spec, out)
    tensors = state_tensors(model, dtype)
    data = save(tensors, metadata={"bundle": spec.name, "version": spec.version,
                                   "architecture": spec.architecture.name, "dtype": dtype})
    atomic_write_bytes(path, data)  # a symlink there is replaced, never written through
    write_spec(spec, out)
    logger.info("wrote bundle %s (%s, %.2f MB)", out, spec.name, path.stat().st_size / 1e6)
    return out


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load safetensors weights into ``model`` (float16/bfloat16 are cast to float32);
    every tensor must match the architecture."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"weights file {path} is missing: rebuild the bundle or fix "
                          "'weights' in bundle.yaml")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{path} is not a readable safetensors file ({exc}): rebuild the "
                          "bundle") from exc
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise BundleError(f"{path} does not fit the bundle's architecture (missing "
                          f"{missing[:3]}, unexpected {extra[:3]}): the weights and "
                          "bundle.yaml come from different models")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise BundleError(f"{path}: tensor {k} has shape {tuple(v.shape)}, the "
                              f"architecture needs {tuple(expected[k].shape)}: check bands, "
                              "classes and architecture in bundle.yaml")
    model.load_state_dict(state, strict=True)
    return model
