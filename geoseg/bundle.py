"""Model bundle specification: a directory with ``bundle.yaml`` + safetensors weights and/or an
ONNX graph.

The YAML says everything the pipeline needs to run a model on a raster without guessing: the
architecture, which image bands it reads and how to normalise them, the classes (names, colours),
the tile size and pixel size it was trained at, and its version. Weights are safetensors (no
pickle execution on load); ``onnx`` names an optional ONNX graph of the same model, which is all
an ONNX-only bundle ships (see :mod:`geoseg.engine`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from geoseg.errors import BandMismatchError, BundleError

BUNDLE_FILE = "bundle.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def flag_word(name: str) -> str:
    """A class name as CF's space-separated ``flag_meanings`` writes it (a space is ``_``)."""
    return name.replace(" ", "_")


def repeated_name(names: Iterable[str]) -> str | None:
    """What makes two class names one, as stores write them (a space is an underscore in
    ``flag_meanings``, so "bare soil" and "bare_soil" are one name there); None if nothing."""
    seen: dict[str, str] = {}
    for name in names:
        key = flag_word(name)
        if key in seen:
            first = seen[key]
            return (f"{name!r} is given twice" if first == name else
                    f"{first!r} and {name!r} are one name in the outputs (a space is written _)")
        seen[key] = name
    return None


class ClassSpec(_Strict):
    id: int = Field(ge=0, le=254)
    name: str
    color: str = Field(pattern=r"^#[0-9a-fA-F]{6}$")

    @property
    def rgb(self) -> tuple[int, int, int]:
        c = self.color.lstrip("#")
        return (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16))


class ArchitectureSpec(_Strict):
    name: Literal["unet", "deeplabv3plus", "maskrcnn"]
    encoder: str = "resnet18"
    encoder_depth: int = Field(default=5, ge=3, le=5)
    decoder_channels: tuple[int, ...] | None = None
    # Mask R-CNN only: score threshold for kept instances, mask threshold, and the anchor size
    # (px) of each of the 5 FPN levels; None = geoseg's (16..256), torchvision's are 32..512.
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    anchor_sizes: tuple[int, ...] | None = None

    @field_validator("anchor_sizes")
    @classmethod
    def _anchors(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (len(v) != 5 or any(s <= 0 for s in v)):
            raise ValueError("give 5 anchor sizes > 0, one per FPN level (e.g. torchvision's "
                             "[32, 64, 128, 256, 512])")
        return v


class Normalization(_Strict):
    """``(x - mean) / std`` per band, on the raw pixel values of the image; with ``clip_min`` /
    ``clip_max`` the raw values are first clipped to them (``clip_percentiles`` records the
    percentiles of the training pixels they are, for provenance)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    clip_min: tuple[float, ...] | None = None
    clip_max: tuple[float, ...] | None = None
    clip_percentiles: tuple[float, float] | None = None

    @property
    def identity(self) -> bool:
        """Mean 0, std 1 and no clip: the model (an ONNX graph) normalises by itself, so the
        values it was trained on are not known here."""
        return (all(m == 0 for m in self.mean) and all(s == 1 for s in self.std)
                and self.clip_min is None)

    @field_validator("std")
    @classmethod
    def _positive(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(s <= 0 for s in v):
            raise ValueError("std values must be > 0")
        return v

    @model_validator(mode="after")
    def _clip(self) -> Normalization:
        lo, hi = self.clip_min, self.clip_max
        if (lo is None) != (hi is None):
            raise ValueError("give both clip_min and clip_max (one value per band), or neither")
        if lo is not None and hi is not None:
            if len(lo) != len(self.mean) or len(hi) != len(self.mean):
                raise ValueError(f"clip_min/clip_max need {len(self.mean)} values (one per band)")
            if any(a > b for a, b in zip(lo, hi, strict=True)):
                raise ValueError("clip_min must not exceed clip_max")
        return self

    @property
    def clip(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """``(clip_min, clip_max)``, or None when the bundle does not clip."""
        if self.clip_min is None or self.clip_max is None:
            return None
        return self.clip_min, self.clip_max

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalised float32 values of raw ``x`` (``(..., C, H, W)``, C = the bands): clipped
        when the bundle clips, then ``(x - mean) / std``. The one definition the numpy paths
        (onnxruntime, training) use; the torch predictor does the same on its device."""
        shape = (len(self.mean), 1, 1)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(shape)
        # one new array, made by the first pass (converted as it is read), then worked on in
        # place; x stays as it was
        if self.clip is not None:
            out = np.clip(x, np.asarray(self.clip[0], np.float32).reshape(shape),
                          np.asarray(self.clip[1], np.float32).reshape(shape), dtype=np.float32)
            np.subtract(out, mean, out=out)
        else:
            out = np.subtract(x, mean, dtype=np.float32)
        return np.divide(out, np.asarray(self.std, dtype=np.float32).reshape(shape), out=out)


class HaloRecord(_Strict):
    """What ``geoseg export --halo-check`` measured: per candidate halo (px), the least share
    of a window's ``chunk``-px core whose class equals the 256-px-context reference's."""

    chunk: int = Field(ge=32)
    windows: int = Field(ge=1)
    worst: dict[int, float]


class BundleSpec(_Strict):
    """What ``bundle.yaml`` holds."""

    name: str
    version: str
    task: Literal["landcover", "buildings"]
    architecture: ArchitectureSpec
    bands: tuple[int, ...] = Field(description="1-based band indexes of the input image")
    band_names: tuple[str, ...] | None = None
    normalization: Normalization
    classes: tuple[ClassSpec, ...]
    tile_size: int = Field(default=512, ge=32)
    # what the model sees beyond the image edge (and where a tile is padded up to a fixed input
    # size): "constant" = the band mean (0 after normalising), as for nodata; "reflect" = the
    # image's valid pixels mirrored at its edge (numpy 'reflect'). Nodata holes inside the
    # image always get the constant.
    padding: Literal["constant", "reflect"] = "constant"
    pixel_size: float | None = Field(default=None, gt=0)
    weights: str = "weights.safetensors"
    onnx: str | None = None
    # share of pixels whose class under bfloat16 autocast equals float32's, measured on real
    # imagery (geoseg train's validation windows, or geoseg export --bf16-check IMAGE); engine
    # auto runs the bundle in bf16 on CPUs with bf16 units only when it is >= the minimum
    # (geoseg.engine.BF16_MIN_AGREEMENT)
    bf16_agreement: float | None = Field(default=None, ge=0, le=1)
    # context (px on each side) a chunk needs for its classes to equal those of a pass with
    # 256 px of context on >= 99.9 % of pixels in every window checked, measured on real
    # imagery by geoseg export --halo-check IMAGE (geoseg.models.halo), and the check's table;
    # inference.halo auto runs it (64 for a bundle without one)
    halo: int | None = Field(default=None, ge=0, le=1024)
    halo_check: HaloRecord | None = None
    description: str = ""
    training: dict[str, object] | None = None

    @field_validator("bands")
    @classmethod
    def _one_based(cls, bands: tuple[int, ...]) -> tuple[int, ...]:
        if not bands or min(bands) < 1:
            raise ValueError(f"bands are 1-based image band numbers (1, 2, ...), got "
                             f"{list(bands)}")
        return bands

    @model_validator(mode="after")
    def _consistent(self) -> BundleSpec:
        n = len(self.bands)
        if len(self.normalization.mean) != n or len(self.normalization.std) != n:
            raise ValueError(f"normalization needs {n} mean/std values (one per band)")
        if self.band_names is not None and len(self.band_names) != n:
            raise ValueError("band_names must have one name per band")
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise ValueError("class ids must be 0..K-1 in order")
        if twice := repeated_name(c.name for c in self.classes):
            raise ValueError(f"class names must be distinct: {twice}")
        if self.task == "buildings" and "building" not in {c.name for c in self.classes}:
            raise ValueError("a buildings bundle needs a class named 'building'")
        if self.tile_size % 32:
            raise ValueError("tile_size must be a multiple of 32")
        return self

    @property
    def checked_band_names(self) -> tuple[str, ...] | None:
        """``band_names`` to check an image's band names against: None when there are none or
        they are the ``b<index>`` placeholders of bands the training image did not describe."""
        names = self.band_names
        if not names or [n.lower() for n in names] == list(placeholder_names(self.bands)):
            return None
        return names

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_id(self, name: str) -> int:
        for c in self.classes:
            if c.name == name:
                return c.id
        raise BundleError(f"bundle {self.name!r} has no class {name!r}")


def require_bands(spec: BundleSpec, count: int, image: str) -> None:
    """A one-line :class:`BandMismatchError` when an image of ``count`` bands lacks one the
    bundle reads (checks that read windows of a user's image, before any read)."""
    if max(spec.bands) > count:
        raise BandMismatchError(f"bundle {spec.name!r} reads bands {list(spec.bands)} but "
                                f"{image} has {count} band(s): give an image with those bands")


def placeholder_names(bands: tuple[int, ...]) -> tuple[str, ...]:
    """``b<index>`` names of bands nobody described (``geoseg train``'s default)."""
    return tuple(f"b{b}" for b in bands)


def read_spec(bundle_dir: str | Path) -> BundleSpec:
    """Read and validate ``bundle.yaml`` in ``bundle_dir``."""
    path = Path(bundle_dir) / BUNDLE_FILE
    if not path.is_file():
        raise BundleError(f"no {BUNDLE_FILE} in {bundle_dir}: give a bundle directory (one "
                          f"that holds {BUNDLE_FILE})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            held = "is empty" if data is None else f"holds a YAML {type(data).__name__}"
            raise BundleError(f"{path} {held}, not a bundle's settings: see docs for its "
                              "fields, or rebuild the bundle")
        return BundleSpec.model_validate(data)
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path} is not UTF-8 text (byte {exc.start}): save it as UTF-8 "
                          "YAML, or rebuild the bundle") from exc
    except OSError as exc:  # permission, I/O error
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}: make it readable "
                          "by this user, or rebuild the bundle") from exc
    except ValidationError as exc:
        from geoseg.setting_errors import explain

        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = explain([first])
        raise BundleError(f"{path}: {loc}: {msg}" if loc else f"{path}: {msg}") from exc
    except yaml.YAMLError as exc:
        raise BundleError(yaml_error_line(path, exc)) from exc


def yaml_error_line(path: Path, exc: yaml.YAMLError, what: str = "bundle") -> str:
    """One line for a YAML error: where, what, and what to do (PyYAML's own text is 4–8 lines
    with a source excerpt)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    if isinstance(exc, yaml.constructor.ConstructorError) and "python/" in problem:
        tag = problem.split("'")[1] if problem.count("'") >= 2 else "!!python/..."
        return (f"{path}:{where}: tag {tag.replace('tag:yaml.org,2002:', '!!')} is refused "
                f"(geoseg never constructs Python objects from a {what}): remove it")
    return f"{path}:{where}: invalid YAML ({problem}): fix {path.name}"


def write_spec(spec: BundleSpec, bundle_dir: str | Path) -> Path:
    from geoseg.outdir import atomic_write_text  # replaces a symlink, never writes through it

    path = Path(bundle_dir) / BUNDLE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True),
                                           sort_keys=False))
    return path


def update_spec(bundle_dir: str | Path, **keys: Any) -> Path:
    """Set top-level ``keys`` of ``bundle.yaml`` as it is now, re-read just before it is
    written (keys another command wrote meanwhile, an ``onnx:`` of a parallel export, are
    kept; None removes a key), keeping
    the rest of the file as written, comments and layout included: only the lines of those
    keys change (a hand-written bundle.yaml stays the user's). Falls back to writing the
    whole spec when the file's text does not allow that (the result is checked either way)."""
    from geoseg.outdir import atomic_write_text  # replaces a symlink, never writes through it

    path = Path(bundle_dir) / BUNDLE_FILE
    spec = read_spec(bundle_dir)
    wanted = spec.model_copy(update=keys)
    text = _with_keys(path.read_text(encoding="utf-8"), {
        k: wanted.model_dump(mode="json", include={k}).get(k) for k in keys})
    try:
        same = text is not None and BundleSpec.model_validate(yaml.safe_load(text)) == wanted
    except (yaml.YAMLError, ValidationError):
        same = False
    if text is None or not same:  # (None: an empty file)
        return write_spec(wanted, bundle_dir)
    atomic_write_text(path, text)
    return path


def _with_keys(text: str, keys: dict[str, Any]) -> str | None:
    """``text`` (YAML) with each top-level key of ``keys`` replaced in place (its line and the
    indented lines under it), appended when absent, removed when None; None for an empty
    file. Text this cannot edit by lines (a flow mapping of the whole file) comes out wrong,
    which :func:`update_spec` finds by reading it back."""
    lines = text.splitlines(keepends=True)
    for key, value in keys.items():
        start = next((i for i, ln in enumerate(lines)
                      if re.match(rf"""(["']?){re.escape(key)}\1\s*:""", ln)), None)
        block = [] if value is None else yaml.safe_dump(
            {key: value}, sort_keys=False, default_flow_style=False).splitlines(keepends=True)
        if start is None:
            if value is not None:
                if lines and not lines[-1].endswith("\n"):
                    lines[-1] += "\n"
                lines += block
            continue
        end = start + 1
        while end < len(lines) and (lines[end][:1] in (" ", "\t", "-")
                                    or not lines[end].strip()):  # a comment at column 0 stays
            end += 1
        while end > start + 1 and not lines[end - 1].strip():  # keep the blank lines after
            end -= 1
        lines[start:end] = block
    return "".join(lines) if lines else None


def bundle_file(bundle_dir: str | Path, name: str, what: str = "file") -> Path:
    """``bundle_dir/name`` resolved; refuses names that leave the bundle directory."""
    root = Path(bundle_dir).resolve()
    path = (root / name).resolve()
    if root != path.parent and root not in path.parents:
        raise BundleError(f"bundle {what} {name!r} lies outside {bundle_dir}: give a file name "
                          "inside the bundle directory")
    return path


def builtin_bundle(name: str) -> Path:
    """Path of a bundle shipped with geoseg (``landcover`` or ``buildings``)."""
    path = Path(__file__).parent / "bundles" / name
    if not (path / BUNDLE_FILE).is_file():
        raise BundleError(f"no built-in bundle {name!r}: rebuild it with "
                          "`python -m workflows.build_bundles` or pass --model DIR")
    return path
