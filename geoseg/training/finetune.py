"""Fine-tuning: start a training run from an existing bundle's weights.

The starting bundle must have the run's architecture, class count and band count; its
normalization is kept (the weights learned features of inputs scaled that way), so the new
bundle reads images exactly as the old one did. Provenance records the starting bundle's name,
version and the SHA-256 of its weights, so a chain of fine-tunings can be traced back.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from geoseg.bundle import BundleSpec, read_spec
from geoseg.errors import ConfigError, GeoSegWarning
from geoseg.models.weights import load_weights


@dataclass(frozen=True)
class StartingBundle:
    """The bundle a fine-tuning run starts from."""

    path: Path
    spec: BundleSpec
    weights_sha256: str

    def provenance(self) -> dict[str, object]:
        steps = (self.spec.training or {}).get("steps")
        return {"bundle": self.spec.name, "version": self.spec.version,
                "weights_sha256": self.weights_sha256, "its_training_steps": steps}


def starting_bundle(name_or_path: str) -> StartingBundle:
    """Resolve ``name_or_path`` (a bundle directory, or a built-in name) and hash its weights."""
    from geoseg.plan import resolve_bundle

    path = resolve_bundle(name_or_path)
    spec = read_spec(path)
    weights = path / spec.weights
    if not weights.is_file():
        raise ConfigError(f"--init-from {name_or_path}: {weights} is missing (a bundle converted "
                          "to ONNX only cannot be fine-tuned)")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    return StartingBundle(path, spec, digest)


def check_compatible(start: StartingBundle, spec: BundleSpec) -> None:
    """One line naming the first difference that makes ``start``'s weights unusable for
    ``spec`` (the bundle being trained)."""
    old, new = start.spec, spec
    name = f"--init-from {start.path}"
    if old.architecture.model_dump() != new.architecture.model_dump():
        raise ConfigError(f"{name}: its architecture {old.architecture.name}/"
                          f"{old.architecture.encoder} differs from the one being trained "
                          f"({new.architecture.name}/{new.architecture.encoder}); train with "
                          "the same --arch/--encoder")
    if old.num_classes != new.num_classes:
        raise ConfigError(f"{name}: it predicts {old.num_classes} classes, the run trains "
                          f"{new.num_classes}; give the same --classes")
    if len(old.bands) != len(new.bands):
        raise ConfigError(f"{name}: it reads {len(old.bands)} bands, the run gives "
                          f"{len(new.bands)}; choose that many with --bands")


def load_start(model: torch.nn.Module, start: StartingBundle) -> None:
    """Copy the starting bundle's weights into ``model`` (every tensor must match)."""
    load_weights(model, start.path / start.spec.weights)


def check_start_range(start: StartingBundle, images: Sequence[Path],
                      bands: Sequence[int]) -> None:
    """Warn when a training image's values are far from those ``start`` was trained on (as
    ``geoseg run`` warns, :func:`geoseg.plan.far_band`): fine-tuning keeps the starting
    bundle's normalization, so 0-10000 reflectances would reach its weights as inputs hundreds
    of standard deviations out; training without ``--init-from`` takes these images' own."""
    from geoseg.io import open_info
    from geoseg.plan import far_band, far_text, sampled_values

    norm = start.spec.normalization
    for image in images:
        info = open_info(image)
        values = sampled_values(info, info.geobox.window, tuple(bands))
        i = None if values is None else far_band(values, norm)
        if values is None or i is None:
            continue
        far = far_text(bands[i], values, norm, i, f"--init-from {start.spec.name}")
        warnings.warn(
            f"{image}: {far}, and fine-tuning keeps its normalization: rescale the images to "
            "its range, or train without --init-from (the normalization then comes from these "
            "images)", GeoSegWarning, stacklevel=2)
        return
