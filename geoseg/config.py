"""Typed job configuration: pydantic models that reject unknown keys, loadable from YAML.

One model per stage (region, tiling/inference, vectors, outputs, runtime) composed into
:class:`JobConfig`. Below the CLI nobody reads dicts: everything takes these objects.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from geoseg.engine import Engine
from geoseg.errors import ConfigError
from geoseg.sources.remote import redact

CONFIG_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegionConfig(_Strict):
    """Exactly one of ``bbox`` (with ``crs``), ``file`` or ``wkt`` (with ``crs``); none = whole
    image."""

    bbox: tuple[float, float, float, float] | None = None
    file: str | None = None
    wkt: str | None = None
    crs: str | None = None

    @model_validator(mode="after")
    def _one(self) -> RegionConfig:
        given = [v for v in (self.bbox, self.file, self.wkt) if v is not None]
        if len(given) > 1:
            raise ValueError("give only one of bbox, file, wkt")
        if (self.bbox is not None or self.wkt is not None) and self.crs is None:
            raise ValueError("bbox and wkt regions need a crs (e.g. EPSG:32633)")
        return self


class SourceConfig(_Strict):
    """How the input images become the one image a job reads (geoseg.sources): band selection
    by name or number, the output grid, and the rule where images overlap. All defaults: one
    image on its own grid, all its bands."""

    bands: tuple[str, ...] | None = None  # names (STAC common names, descriptions) or "1", "2"
    crs: str | None = None                # output CRS (default: the most common item's)
    resolution: float | None = Field(default=None, gt=0)  # output pixel size, CRS units
    mosaic: Literal["first", "latest", "least-nodata"] = "first"
    nodata: float | None = None           # a value that is nodata in every image


class InferenceConfig(_Strict):
    """How chunks are tiled and predicted. Changing any of these changes the results."""

    chunk_size: int = Field(default=1024, ge=64, le=8192)
    # context read around each chunk, px: "auto" = the largest halo the job's bundles measured
    # (bundle.yaml halo, written by geoseg export --halo-check; 64 for a bundle without one)
    halo: Annotated[int, Field(ge=0, le=1024)] | Literal["auto"] = "auto"
    tile_size: int | Literal["auto"] = "auto"
    tile_overlap: int = Field(default=64, ge=0)
    batch_size: int = Field(default=4, ge=1, le=256)
    max_tile: int = Field(default=1536, ge=64)
    # torch / torch-bf16 / onnx (onnxruntime) / auto: see geoseg.engine
    engine: Engine = "auto"
    # test-time augmentation: probabilities averaged over flips (4: none, x, y, xy) or the
    # dihedral group d4 (8: flips x 90° rotations) before blending
    tta: Literal["none", "flips", "d4"] = "none"

    @model_validator(mode="after")
    def _tiles(self) -> InferenceConfig:
        if isinstance(self.tile_size, int) and (self.tile_size < 64 or self.tile_size % 32):
            raise ValueError("tile_size must be 'auto' or a multiple of 32 ≥ 64")
        return self

    def tile_for(self, bundle_tile: int, halo: int, fixed: int | None = None,
                 model: str = "the model") -> int:
        """'auto': one forward pass per chunk when chunk+halo fits ``max_tile`` (least redundant
        compute), else the bundle's tile size. ``fixed``: the only input size ``model`` takes
        (a static ONNX input), which wins over 'auto'; a ``tile_size`` that contradicts it is a
        one-line :class:`ConfigError`."""
        if fixed is not None:
            if isinstance(self.tile_size, int) and self.tile_size != fixed:
                raise ConfigError(f"tile size {self.tile_size} (--tile-size / inference."
                                  f"tile_size) contradicts {model}, which takes only {fixed}x"
                                  f"{fixed} px tiles: leave the tile size out or set it to "
                                  f"{fixed}")
            return fixed
        if isinstance(self.tile_size, int):
            return self.tile_size
        whole = -(-(self.chunk_size + 2 * halo) // 32) * 32
        return whole if whole <= self.max_tile else bundle_tile


class VectorConfig(_Strict):
    enabled: bool = True
    landcover_polygons: bool = True
    # land-cover regions are cut at a grid of this many pixels (rounded down to whole chunks;
    # 0: never): a region spanning a large raster (a mosaic's road network) is otherwise held
    # and merged whole, memory growing with the raster. Pieces of one region share region_id.
    landcover_split_px: int = Field(default=4096, ge=0)
    halo: int = Field(default=128, ge=0, le=2048)
    # 20 m²: below the smallest real building at 0.5 m; on training scene 101 it drops 30% of
    # the false positives and no true positive (DESIGN.md)
    min_building_area_m2: float = Field(default=20.0, ge=0)
    regularize: bool = True
    # building probability from which interior pixels seed their own footprint (0: every
    # building-class component seeds one); separates terraced houses whose party wall the model
    # sees only faintly. 0.8: best of 0, 0.7, 0.8, 0.9, 0.95 on the validation scene (seed 7)
    # for the built-in buildings bundle, building F1 0.960 -> 0.967 (DESIGN.md)
    split_confidence: float = Field(default=0.8, ge=0, lt=1)


class OutputConfig(_Strict):
    cog: bool = True
    quicklook: bool = True


class RuntimeConfig(_Strict):
    """Where and how wide to run; does not change results."""

    address: str | None = None
    # where chunks run: "local" (threads of this process), "ray" (a local or remote Ray), or
    # "auto": Ray when an address is given (or RAY_ADDRESS, or Ray is already initialised),
    # else local
    executor: Literal["auto", "local", "ray"] = "auto"
    workers: int | None = Field(default=None, ge=1)
    threads_per_worker: int | None = Field(default=None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_cpus: int | None = Field(default=None, ge=1)
    gpus_per_worker: float = Field(default=1.0, gt=0, le=1)
    max_in_flight: int | None = Field(default=None, ge=1)
    chunk_retries: int = Field(default=2, ge=0)
    # model passes at once per model worker: on CPUs (ONNX Runtime, local executor) each with
    # threads_per_worker // passes_at_once threads: one per core was 10 % faster on 2 cores
    # and held twice the model's memory (DESIGN.md); on a GPU, chunks in flight per worker,
    # each on its own CUDA stream. Default (None): 1 on CPUs, 2 on a GPU. Same bytes either way
    passes_at_once: int | None = Field(default=None, ge=1)
    # local executor: vector tasks in this many worker processes (0: threads of the job's
    # process). Default (None): processes beside a GPU and for building footprints on CPUs
    # from 2048² pixels on (threads convoy on the GIL there), threads otherwise (DESIGN.md)
    vector_processes: int | None = Field(default=None, ge=0)
    # the GeoPackage writer (seam merges, WKB, GDAL writes) in a process of its own (False: a
    # thread of the job's process, where it holds the interpreter lock the model's caller,
    # reads and writes need). Default (None): a process beside a GPU from 4096² pixels on, a
    # thread on CPUs, where it costs more CPU than the lock it frees wins back (DESIGN.md)
    gpkg_process: bool | None = None
    # local executor: predict and write the chunks in this many worker processes, each a strip
    # of chunk columns with its own model and threads (0 or 1: the job's process). Meant for a
    # GPU host, where one process's interpreter lock limits the host work that feeds the GPU;
    # not yet measured there, so not a default (DESIGN.md)
    chunk_processes: int | None = Field(default=None, ge=0)


class JobConfig(_Strict):
    version: int = Field(default=CONFIG_VERSION,
                         description="the config format (this geoseg reads version 1)")
    # one image (path or URL), or several / a glob / a .txt list / a STAC document: a mosaic
    image: str | tuple[str, ...]
    output: str
    models: tuple[str, ...] = ("landcover", "buildings")
    region: RegionConfig | None = None
    source: SourceConfig = SourceConfig()
    inference: InferenceConfig = InferenceConfig()
    vectors: VectorConfig = VectorConfig()
    outputs: OutputConfig = OutputConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @field_validator("version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if not 1 <= v <= CONFIG_VERSION:
            newer = " (written for a newer geoseg: upgrade geoseg)" if v > CONFIG_VERSION else ""
            raise ValueError(f"config version {v} is unknown{newer}; this geoseg reads version "
                             f"{CONFIG_VERSION}: write 'version: {CONFIG_VERSION}' or leave "
                             "it out")
        return v

    def result_key(self, model_digests: list[str]) -> str:
        """Hash of everything that changes the output bytes (not runtime width).

        The engine enters as resolved, through the model digests (which cover the file the
        engine runs), not as requested: ``auto`` and ``torch`` on a bundle with weights run the
        same computation and share a key; torch and onnx do not."""
        # a URL without its query or user info: a re-signed URL (new signature, same object)
        # resumes the run; a changed object is found by the sampled pixels (plan.input_changes)
        images = [str(Path(i).resolve()) if "://" not in i else redact(i) for i in self.images]
        payload = {"image": images[0] if isinstance(self.image, str) else images,
                   "region": self.region.model_dump() if self.region else None,
                   # tta enters only when used: runs from before it existed keep their key
                   "inference": self.inference.model_dump(
                       exclude={"engine"} | ({"tta"} if self.inference.tta == "none" else set())),
                   "vectors": self.vectors.model_dump(),
                   "models": model_digests, "version": self.version}
        if self.source != SourceConfig():  # enters only when used: older runs keep their key
            payload["source"] = self.source.model_dump()
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def record(self) -> dict[str, Any]:
        """The config as a run's manifest keeps it: images and region file without the
        signatures or tokens of their URLs (:func:`geoseg.sources.remote.redact`)."""
        data = self.model_dump()
        data["image"] = (redact(self.image) if isinstance(self.image, str)
                         else [redact(i) for i in self.image])
        if self.region is not None and self.region.file:
            data["region"]["file"] = redact(str(self.region.file))
        return data

    @property
    def images(self) -> tuple[str, ...]:
        """The inputs as given (paths, URLs, globs, lists, STAC documents)."""
        return (self.image,) if isinstance(self.image, str) else self.image

    def with_overrides(self, source: str = "arguments",
                       spell: Callable[[str], str] | None = None,
                       **overrides: object) -> JobConfig:
        """A copy with settings replaced; ``None`` keeps the current value.

        The one place where flags (CLI, ``workflows/``, the Python API) meet a config: names are
        flat, as the flags spell them (``chunk_size``, ``tile_size``, ``workers``, ``threads``,
        ``vectors``, ...; see :data:`OVERRIDES`); a bad value raises :class:`ConfigError` naming
        ``source`` and the override as ``spell`` writes it (``--halo``; its name by default)."""
        unknown = sorted(set(overrides) - set(OVERRIDES))
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(OVERRIDES))}")
        data = self.model_dump()
        for name, value in overrides.items():
            if value is None:
                continue
            path = OVERRIDES[name]
            if len(path) == 1:
                data[path[0]] = value
            else:
                data[path[0]] = {**(data.get(path[0]) or {}), path[1]: value}
        names = {".".join(OVERRIDES[n]): spell(n) if spell else n
                 for n, v in overrides.items() if v is not None}
        return validate_job(data, source=source, names=names)


# flat override name -> path in JobConfig (the names of `geoseg run`'s flags)
OVERRIDES: dict[str, tuple[str, ...]] = {
    "image": ("image",),
    "output": ("output",),
    "models": ("models",),
    "region": ("region",),
    "bands": ("source", "bands"),
    "crs": ("source", "crs"),
    "resolution": ("source", "resolution"),
    "mosaic": ("source", "mosaic"),
    "nodata": ("source", "nodata"),
    "chunk_size": ("inference", "chunk_size"),
    "halo": ("inference", "halo"),
    "tile_size": ("inference", "tile_size"),
    "tile_overlap": ("inference", "tile_overlap"),
    "batch_size": ("inference", "batch_size"),
    "engine": ("inference", "engine"),
    "tta": ("inference", "tta"),
    "vectors": ("vectors", "enabled"),
    "min_building_area": ("vectors", "min_building_area_m2"),
    "split_confidence": ("vectors", "split_confidence"),
    "cog": ("outputs", "cog"),
    "quicklook": ("outputs", "quicklook"),
    "address": ("runtime", "address"),
    "executor": ("runtime", "executor"),
    "workers": ("runtime", "workers"),
    "threads": ("runtime", "threads_per_worker"),
    "passes_at_once": ("runtime", "passes_at_once"),
    "vector_processes": ("runtime", "vector_processes"),
    "gpkg_process": ("runtime", "gpkg_process"),
    "chunk_processes": ("runtime", "chunk_processes"),
    "device": ("runtime", "device"),
    "num_cpus": ("runtime", "num_cpus"),
    "chunk_retries": ("runtime", "chunk_retries"),
}


def load_job_config(path: str | Path, **overrides: object) -> JobConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    from geoseg.bundle import yaml_error_line

    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p} is not UTF-8 text (byte {exc.start}): save the job config as "
                          "UTF-8 YAML") from exc
    except OSError as exc:  # permission, I/O error
        raise ConfigError(f"cannot read the job config {p}: {exc.strerror or exc}: make it "
                          "readable by this user") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error_line(p, exc, "job config")) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p} holds a YAML {type(data).__name__}, not a mapping of settings: "
                          "write it as 'image: ...', 'output: ...', 'models: [...]' (see "
                          "configs/)")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return validate_job(data, source=str(p))


def validate_job(data: dict[str, object], source: str = "config",
                 names: Mapping[str, str] | None = None) -> JobConfig:
    """``data`` as a JobConfig; a bad value is one :class:`ConfigError`, ``source: setting:
    what it should be`` (``names``: how a setting is spelt where it was given, e.g.
    ``inference.halo`` → ``--halo``; an empty ``source`` is left out)."""
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        # an unknown key first (a misspelt setting explains the rest); one entry per setting
        # (a union reports each of its branches)
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        where = list(dict.fromkeys(_setting(e["loc"]) for e in errors))
        e = errors[0]
        if e["type"] == "extra_forbidden":
            msg = _unknown_key(e["loc"])
        else:
            from geoseg.setting_errors import explain

            msg = explain([x for x in errors if _setting(x["loc"]) == where[0]])
        more = f" (and {len(where) - 1} more problem(s))" if len(where) > 1 else ""
        prefix = f"{source}: " if source else ""
        shown = (names or {}).get(where[0], where[0])
        field = msg.split(" ", 1)[0]  # a section's own check names its field: "tile_size must"
        if f"{where[0]}.{field}" in (names or {}):
            shown, msg = (names or {})[f"{where[0]}.{field}"], msg.split(" ", 1)[1]
        raise ConfigError(f"{prefix}{shown}: {msg}{more}") from exc


def _setting(loc: tuple[int | str, ...]) -> str:
    """``loc`` as the setting's dotted name, without pydantic's union branch tags
    (``inference.halo.constrained-int`` → ``inference.halo``)."""
    parts = [str(x) for x in loc]
    while parts and ("[" in parts[-1] or "-" in parts[-1]) and len(parts) > 1:
        parts.pop()
    return ".".join(parts) or "(top)"


def _unknown_key(loc: tuple[int | str, ...]) -> str:
    """'not a setting' for an unknown key at ``loc``, with the closest known one and the
    settings of that section."""
    import difflib
    import typing

    model: type[BaseModel] = JobConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        kinds = typing.get_args(field.annotation) or (field.annotation,) if field else ()
        sub = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
        if sub is None:
            return "not a setting"
        model = sub
    known = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"not a setting ({hint}settings here: {', '.join(known)})"


def make_job_config(image: str | Sequence[str] | None, output: str | None,
                    config: str | Path | None = None, source: str = "arguments",
                    spell: Callable[[str], str] | None = None,
                    **overrides: object) -> JobConfig:
    """The job for ``image`` → ``output``: the YAML ``config`` when given (its image/output
    replaced by these when not None), then ``overrides`` (see :meth:`JobConfig.with_overrides`)."""
    if image is not None and not isinstance(image, str):  # several inputs; one stays a str
        image = image[0] if len(image) == 1 else tuple(image)
    if config is not None:
        base = load_job_config(config, image=image, output=output)
    else:
        base = validate_job({"image": image, "output": output}, source=source)
    return base.with_overrides(source, spell, **overrides)
