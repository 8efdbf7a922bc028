"""Planning a job: validate inputs, derive the output grid and chunk grid, resolve models.

Everything that can be wrong with the inputs is found here, before any worker starts, and raised
as one clear :class:`GeoSegError`.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.bundle import BundleSpec, Normalization, builtin_bundle, read_spec
from geoseg.config import JobConfig, SourceConfig
from geoseg.engine import (
    Engine,
    RunEngine,
    bf16_fits,
    model_file,
    onnx_fits,
    resolve_engine,
)
from geoseg.errors import (
    BandMismatchError,
    BundleError,
    GeoSegError,
    GeoSegWarning,
    RegionError,
)
from geoseg.grid import ChunkGrid, GeoBox, Window
from geoseg.io import RasterInfo, colour_bands, opaque_alpha, open_info, read_window
from geoseg.region import Region, clip_grid, parse_bbox, parse_wkt, read_region_file
from geoseg.sources.mosaic import Mosaic
from geoseg.sources.remote import is_local_path, redact
from geoseg.store import LayerSpec


@dataclass(frozen=True)
class ModelRef:
    name: str  # layer name in the store: the bundle's task ("landcover" / "buildings")
    path: str
    spec: BundleSpec
    digest: str  # bundle.yaml + the model file the engine runs (see _digest)
    engine: RunEngine = "torch"
    # the only tile size (px) the model takes (an ONNX graph with a static H x W input); None:
    # any size (multiples of 32)
    fixed_tile: int | None = None

    @property
    def model_id(self) -> str:
        return f"{self.spec.name}@{self.spec.version}"


@dataclass(frozen=True)
class Plan:
    """Everything workers need, picklable and small."""

    image: RasterInfo | Mosaic  # one raster, or many on one grid (both ImageInfo)
    grid: GeoBox          # output grid (input grid clipped to the region)
    offset: Window        # output grid's window in image pixels
    region: Region | None  # non-rectangular region in the image CRS (pixels outside are nodata)
    chunks: ChunkGrid
    models: tuple[ModelRef, ...]
    halo: int
    tile: int
    overlap: int
    batch_size: int
    tta: str = "none"  # test-time augmentation: none, flips, d4
    vector_halo: int = 0  # context a chunk's footprints read around it (vectors.halo)

    @property
    def layers(self) -> list[LayerSpec]:
        return [LayerSpec(m.name, m.spec.classes, m.model_id, m.engine) for m in self.models]

    @property
    def bands(self) -> tuple[int, ...]:
        """Union of the bands all models read, in first-seen order."""
        out: list[int] = []
        for m in self.models:
            out += [b for b in m.spec.bands if b not in out]
        return tuple(out)

    def model(self, name: str) -> ModelRef | None:
        return next((m for m in self.models if m.name == name), None)

    def tiling(self, ref: ModelRef) -> tuple[int, int, bool]:
        """``(tile, overlap, exact)`` for ``ref``: the plan's tiling, or, for a model that takes
        one input size only, tiles of exactly that size (``exact``: a window smaller than the
        tile is padded up to it, never predicted on a smaller tile)."""
        if ref.fixed_tile is None:
            return self.tile, self.overlap, False
        return ref.fixed_tile, min(self.overlap, ref.fixed_tile // 2), True


def resolve_bundle(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.is_dir():
        return p
    if "/" not in name_or_path and not p.exists():
        return builtin_bundle(name_or_path)
    raise BundleError(f"model bundle not found: {name_or_path} (a directory with bundle.yaml, "
                      "or a built-in name: landcover, buildings)")


def _digest(bundle: Path, spec: BundleSpec, engine: RunEngine) -> str:
    """Hash of ``bundle.yaml`` and the file ``engine`` runs (weights or ONNX graph), so that
    results, and the job's result key, change with the engine; torch digests are the same as
    before engines existed (old runs stay resumable)."""
    h = hashlib.sha256((bundle / "bundle.yaml").read_bytes())
    if engine != "torch":
        h.update(f"engine={engine}".encode())
    h.update(model_file(spec, bundle, engine).read_bytes())
    return h.hexdigest()[:16]


def load_models(names: tuple[str, ...], engine: Engine = "auto", onnx_ok: bool = False,
                prefer: dict[str, RunEngine] | None = None,
                bf16_ok: bool = False) -> tuple[ModelRef, ...]:
    """Resolve each bundle and the engine that runs it (``engine`` applies to every bundle;
    ``auto`` chooses per bundle), and check the model file it will run (see
    :mod:`geoseg.models.preflight`), so that a bad file stops the job here, not in a worker."""
    from geoseg.models.onnx_session import fixed_tile
    from geoseg.models.preflight import check_model_file

    refs: list[ModelRef] = []
    for n in names:
        path = resolve_bundle(n)
        spec = read_spec(path)
        if any(r.name == spec.task for r in refs):
            raise BundleError(f"two models for the same task {spec.task!r}: give one per task")
        want = prefer.get(spec.task) if prefer and engine == "auto" else None
        run = resolve_engine(spec, path, want or engine, onnx_ok, bf16_ok)
        # every tensor is compared here when torch is loaded anyway (tests, serial runs);
        # else the model actor does it as it loads the weights
        check_model_file(spec, path, run, architecture="torch" in sys.modules)
        fixed = fixed_tile(spec, model_file(spec, path, run)) if run == "onnx" else None
        refs.append(ModelRef(spec.task, str(path.resolve()), spec, _digest(path, spec, run),
                             run, fixed))
    if not refs:
        raise BundleError("no model given: pass --model (e.g. landcover)")
    return tuple(refs)


def check_bands(image: RasterInfo | Mosaic, models: tuple[ModelRef, ...]) -> None:
    for m in models:
        need = max(m.spec.bands)
        if need > image.count:
            checked = m.spec.checked_band_names
            named = f" ({', '.join(checked)})" if checked else ""
            raise BandMismatchError(
                f"model {m.model_id} reads bands {list(m.spec.bands)}{named} but {image.path} "
                f"has {image.count} band(s): use an image with those bands or a model trained "
                f"on this image's bands (geoseg train --bands "
                f"{','.join(map(str, range(1, min(image.count, len(m.spec.bands)) + 1)))})")
        names = m.spec.checked_band_names
        if names and all(image.band_names):
            got = [str(image.band_names[b - 1]).lower() for b in m.spec.bands]
            if got != [n.lower() for n in names]:
                raise BandMismatchError(
                    f"model {m.model_id} expects bands {list(names)} but {image.path} bands "
                    f"{list(m.spec.bands)} are {got}: reorder the image bands or fix the bundle")
            continue  # the image names its bands and they are the model's: nothing to guess
        if image.count > len(set(m.spec.bands)):
            named = f" ({', '.join(names)})" if names else ""
            warnings.warn(
                f"model {m.model_id} reads bands {', '.join(map(str, m.spec.bands))}{named} of "
                f"{image.count} image bands: check the band order (or name the image bands "
                "to have it checked)", GeoSegWarning, stacklevel=2)


#: An image's sampled values, normalised as a model normalises them, that sit further than
#: this from 0 (in the bundle's standard deviations) or spread less than ``_NARROW`` of them
#: are on another scale than the model was trained on (reflectance 0-1 or 0-10000 given to a
#: model trained on 0-255 images): ``geoseg run`` would finish with a meaningless map.
_FAR, _NARROW = 6.0, 0.02
_SAMPLE_PX = 128


def _sample_windows(window: Window) -> list[Window]:
    """Up to 4 windows of :data:`_SAMPLE_PX` px inside ``window``, at its quarters' centres."""
    h, w = window.height, window.width
    size = min(_SAMPLE_PX, h, w)
    if size < 1:
        return []
    wins = {Window(window.row_off + min(max(0, (h * fy) // 4 - size // 2), h - size),
                   window.col_off + min(max(0, (w * fx) // 4 - size // 2), w - size), size, size)
            for fy in (1, 3) for fx in (1, 3)}
    return sorted(wins, key=lambda v: (v.row_off, v.col_off))


def image_paths(image: RasterInfo | Mosaic) -> list[str]:
    """The files (or URLs) an image is read from: a mosaic's items' rasters, else its path."""
    if isinstance(image, Mosaic):
        return [str(h) for it in image.items for h in it.hrefs]
    return [str(image.path)]


def input_fingerprint(plan: Plan) -> dict[str, Any]:
    """What a run's input is, for ``--resume`` to compare: the grid, the images (paths and, for
    local files, sizes) and a hash of the pixels of :func:`_sample_windows` (every band the models
    read). Catches a list or glob that grew, and an image replaced under the same name (another
    date, another size); not a change outside the sampled windows, which only a full read could
    see. ``None`` values where a value cannot be read (a damaged image: the chunks say so)."""
    image = plan.image
    paths = image_paths(image)
    sizes = []
    for path in paths:
        try:
            sizes.append(os.stat(path).st_size if is_local_path(path) else None)
        except OSError:
            sizes.append(None)
    bands = tuple(sorted({b for m in plan.models for b in m.spec.bands}))
    hasher = hashlib.sha256()
    per_window: list[str | None] = []
    for win in _sample_windows(plan.offset):
        try:
            data, valid = read_window(image, win, bands)
        except (OSError, GeoSegError):
            per_window.append(None)
            continue
        raw, mask = np.ascontiguousarray(data).tobytes(), np.packbits(valid).tobytes()
        per_window.append(hashlib.sha256(raw + mask).hexdigest())
        hasher.update(raw)
        hasher.update(mask)
    digest = hasher.hexdigest() if per_window and None not in per_window else None
    g = plan.grid
    return {"grid": {"shape": list(g.shape), "transform": list(g.transform)[:6],
                     "crs_wkt": g.crs.to_wkt()},
            "images": [redact(p) for p in paths], "sizes": sizes, "sample_sha256": digest,
            "sample_windows_sha256": per_window}


def input_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two :func:`input_fingerprint` records (empty: the same input); a
    sampled window unreadable in either (a damaged image) is not compared."""
    said = {"grid": "grid", "images": "image list", "sizes": "file sizes",
            "sample_sha256": "sampled pixels"}
    changed = [text for key, text in said.items()
               if key in before and before[key] is not None and now.get(key) is not None
               and before[key] != now[key]]
    if "sampled pixels" not in changed and sampled_windows(before, now).count(False):
        changed.append("sampled pixels")
    return changed


def sampled_windows(before: dict[str, Any], now: dict[str, Any]) -> list[bool]:
    """Per sampled window read in both fingerprints: whether its pixels are the same."""
    a, b = before.get("sample_windows_sha256"), now.get("sample_windows_sha256")
    if not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b):
        return []
    return [x == y for x, y in zip(a, b, strict=True) if x is not None and y is not None]


def sampled_values(image: RasterInfo | Mosaic, window: Window,
                   bands: tuple[int, ...]) -> np.ndarray | None:
    """The valid pixels (C, N) of ``bands`` in 4 windows of :data:`_SAMPLE_PX` px inside
    ``window`` (the quarters' centres); None when there are fewer than 16 or the image cannot
    be read (a damaged or unreachable image: its chunks report it)."""
    wins = _sample_windows(window)
    if not wins:
        return None
    try:
        parts = [read_window(image, win, bands) for win in wins]
    except (OSError, GeoSegError):
        return None
    values = np.concatenate([d[:, v] for d, v in parts], axis=1)
    return values if values.shape[1] >= 16 else None


def far_band(values: np.ndarray, norm: Normalization) -> int | None:
    """The first band whose ``values`` (C, N), normalised by ``norm``, have a mean beyond
    :data:`_FAR` or a spread under :data:`_NARROW` (a varying band only); None if none, or
    when ``norm`` is the identity (a graph that normalises by itself: nothing to judge by)."""
    if norm.identity:
        return None
    normed = norm.apply(values[:, None, :])[:, 0, :]
    far = np.abs(normed.mean(axis=1)) > _FAR
    narrow = (normed.std(axis=1) < _NARROW) & (values.std(axis=1) > 0)
    return int(np.argmax(far | narrow)) if (far | narrow).any() else None


def far_text(band: int, values: np.ndarray, norm: Normalization, i: int, whose: str) -> str:
    """``band``'s values (row ``i`` of ``values``) beside those ``whose`` (``model NAME@V``,
    ``--init-from NAME``) was trained on: the head of every "far from" message."""
    return (f"band {band} values (mean {values[i].mean():.4g}, spread {values[i].std():.3g}) "
            f"are far from those {whose} was trained on (mean {norm.mean[i]:.4g}, spread "
            f"{norm.std[i]:.3g})")


def check_value_range(image: RasterInfo | Mosaic, window: Window,
                      models: tuple[ModelRef, ...]) -> None:
    """Warn when the image's values are far from those each model was trained on
    (:func:`sampled_values` normalised by each bundle's own ``normalization``,
    :func:`far_band`; a warning, not an error: a user may know better)."""
    for m in models:
        bands = tuple(m.spec.bands)
        values = sampled_values(image, window, bands)
        if values is None:
            continue  # (nearly) nothing valid to judge by
        if isinstance(image, RasterInfo):
            _check_alpha(image, m, values)
        i = far_band(values, m.spec.normalization)
        if i is None:
            continue
        far = far_text(bands[i], values, m.spec.normalization, i, f"model {m.model_id}")
        warnings.warn(
            f"{redact(image.path)}: {far}: check the image's scaling (e.g. reflectance 0-1 or "
            "0-10000 given to a model trained on 0-255 images), or use a model trained on such "
            "images; the map may be meaningless", GeoSegWarning, stacklevel=2)


def _check_alpha(image: RasterInfo, m: ModelRef, values: np.ndarray) -> None:
    """Refuse a model band the image tags as alpha when its valid pixels are (nearly) all
    opaque (the type's maximum, 255 in a byte image): the image's transparency, not data (an
    RGBA orthophoto given to an RGBN model makes a meaningless map). A data band mistagged
    alpha (GDAL tags band 4 of a 4-band byte GeoTIFF so by default) varies and passes; its
    zeros are read as holes, as GDAL does."""
    names = m.spec.checked_band_names
    for i, b in enumerate(m.spec.bands):
        if (names and "alpha" in names[i].lower()) or not opaque_alpha(image, b, values[i]):
            continue  # not transparency, or a model trained on it knowingly
        what = f"its {names[i]} band" if names else f"band {i + 1} of its input"
        raise BandMismatchError(
            f"{redact(image.path)}: band {b} is the image's alpha (transparency) band, but "
            f"model {m.model_id} reads it as {what}: the map would be meaningless; use a model of "
            f"the image's colour bands (geoseg train --bands {colour_bands(image)}) or an image "
            "that has that band")


def region_of(cfg: JobConfig) -> Region | None:
    r = cfg.region
    if r is None:
        return None
    if r.bbox is not None:
        return parse_bbox(",".join(str(v) for v in r.bbox), r.crs)
    if r.file is not None:
        return read_region_file(r.file, r.crs)
    if r.wkt is not None:
        return parse_wkt(r.wkt, r.crs)
    return None


def open_image(cfg: JobConfig, region: Region | None) -> RasterInfo | Mosaic:
    """The job's one image: a raster on its own grid, or a mosaic of the inputs (items that
    miss the region are not opened)."""
    s = cfg.source
    if isinstance(cfg.image, str) and s == SourceConfig() and not _expands(cfg.image):
        return open_info(cfg.image)  # the single-image path, unchanged
    from geoseg.grid import Bounds
    from geoseg.sources import open_source

    bounds = None
    if region is not None:
        left, bottom, right, top = region.geometry.bounds
        bounds = Bounds(left, bottom, right, top, region.crs)
    from geoseg.sources import band_refs

    bands = band_refs(s.bands)
    return open_source(cfg.images, bands=bands, crs=s.crs, resolution=s.resolution,
                       mosaic=s.mosaic, nodata=s.nodata, region=bounds)


def _expands(image: str) -> bool:
    """Whether one input names several images (a glob, a list file, a STAC document)."""
    from geoseg.sources.inputs import names_several

    return names_several(image)


DEFAULT_HALO = 64
"""The halo ``inference.halo: auto`` runs for a bundle without a measured one (bundle.yaml
``halo``, :mod:`geoseg.models.halo`)."""


def job_halo(halo: int | str, specs: list[BundleSpec], chunk: int) -> int:
    """The halo a job runs: ``halo`` when it is a number; for ``auto`` the largest the
    bundles need at ``chunk`` px: from a recorded check (scaled to the chunk size, see
    :func:`geoseg.models.halo.halo_for_chunk`), else a ``halo`` written by hand, else
    :data:`DEFAULT_HALO`."""
    if isinstance(halo, int):
        return halo
    from geoseg.models.halo import halo_for_chunk

    def one(spec: BundleSpec) -> int:
        if spec.halo_check is not None:
            measured = halo_for_chunk(spec, chunk)
            return DEFAULT_HALO if measured is None else measured
        return spec.halo if spec.halo is not None else DEFAULT_HALO

    return max((one(s) for s in specs), default=DEFAULT_HALO)


def make_plan(cfg: JobConfig, engines: dict[str, RunEngine] | None = None,
              cluster_gpus: int | None = None) -> Plan:
    """The plan of ``cfg``. ``engines`` (task → engine, e.g. those a run being resumed used)
    decide what engine ``auto`` picks per model, so a resume on another host (onnxruntime or a
    GPU there or not) runs the same computation as the run it continues. ``cluster_gpus``: the
    GPUs of the remote Ray cluster the job joins, when known, decide device ``auto`` for the
    engine (without them a remote cluster counts as one with GPUs)."""
    region = region_of(cfg)
    image = open_image(cfg, region)
    remote = bool(cfg.runtime.address or os.environ.get("RAY_ADDRESS"))
    device = cfg.runtime.device
    if device == "auto" and remote and cluster_gpus is not None:
        device = "cuda" if cluster_gpus else "cpu"
    window, clipped = clip_grid(image.geobox, region)
    models = load_models(cfg.models, cfg.inference.engine,
                         onnx_ok=onnx_fits(device, remote), prefer=engines,
                         bf16_ok=bf16_fits(device, remote,
                                           pixels=window.height * window.width))
    check_bands(image, models)
    if window.height < 1 or window.width < 1:
        raise RegionError("region covers less than one pixel of the image")
    check_value_range(image, window, models)
    grid = image.geobox[window]
    inf = cfg.inference
    # a model with a static input size runs tiles of that size (a contradicting tile size is
    # refused here); the others keep the configured tiling ('auto': one pass per chunk)
    halo = job_halo(inf.halo, [m.spec for m in models], inf.chunk_size)
    fixed = [inf.tile_for(m.spec.tile_size, halo, m.fixed_tile, f"model {m.model_id}")
             for m in models if m.fixed_tile is not None]
    free = [m.spec.tile_size for m in models if m.fixed_tile is None]
    tile = inf.tile_for(min(free), halo) if free else min(fixed)
    overlap = min(inf.tile_overlap, tile // 2)
    if isinstance(inf.halo, int) and halo > inf.chunk_size:  # given by hand (auto: measured)
        factor = ((inf.chunk_size + 2 * halo) / inf.chunk_size) ** 2
        warnings.warn(f"halo {halo} px is larger than the chunk ({inf.chunk_size} px): each "
                      f"chunk's model pass covers {factor:.0f}x its own pixels; a halo only "
                      "needs the model's context (--halo auto runs the bundle's measured one)",
                      GeoSegWarning, stacklevel=2)
    if overlap < inf.tile_overlap and "tile_overlap" in inf.model_fields_set:  # (the default
        # 64 is halved quietly for a model with small fixed tiles)
        warnings.warn(f"tile overlap {inf.tile_overlap} px is more than half the {tile}-px tile: "
                      f"{overlap} px is used", GeoSegWarning, stacklevel=2)
    return Plan(image, grid, window, clipped, ChunkGrid(grid.shape, inf.chunk_size), models,
                halo, tile, overlap, inf.batch_size, inf.tta, cfg.vectors.halo)
