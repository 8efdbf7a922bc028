"""The Python API for notebooks and scripts: run a job, open a run's outputs as xarray and
GeoPandas objects, train a bundle, score outputs against truth.

Everything here is a thin layer over the library the CLI also calls (:func:`geoseg.job.run_job`,
:func:`geoseg.training.train`, :func:`geoseg.scoring.evaluate_outputs`); heavy modules (torch,
xarray, geopandas) are imported only when a function needs them. See ``docs/python_api.md``.

Incomplete runs: a run whose chunks did not all finish (failed chunks, interrupted, still
running) opens fine and says so (:attr:`Run.complete`, :attr:`Run.status`); its outputs are
refused with :class:`~geoseg.errors.IncompleteRunError` unless asked for with ``partial=True``
(unfinished chunks then read as the fill value, 255 for classes and 0 for confidences).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from geoseg.errors import GeoSegWarning, IncompleteRunError, InputError
from geoseg.layout import MANIFEST, RunLayout

if TYPE_CHECKING:
    import geopandas as gpd
    import xarray as xr
    from affine import Affine
    from pyproj import CRS

    from geoseg.config import JobConfig
    from geoseg.grid import GeoBox
    from geoseg.job import Progress
    from geoseg.training import TrainResult

__all__ = ["ChunkSummary", "FailedChunk", "GridSummary", "Quicklook", "Run", "RunSummary",
           "evaluate", "open_run", "run", "train"]


# --- the run summary, typed -------------------------------------------------------------------

@dataclass(frozen=True)
class GridSummary:
    """The output grid: ``shape`` (height, width), ``crs``, pixel size and world bounds
    (left, bottom, right, top) in that CRS. The exact transform is :attr:`Run.transform`."""

    shape: tuple[int, int]
    crs: CRS
    resolution: tuple[float, float]
    bounds: tuple[float, float, float, float]

    def __repr__(self) -> str:
        return (f"GridSummary(shape={self.shape}, crs={self.crs.to_string()!r}, "
                f"resolution={self.resolution}, bounds={self.bounds})")


@dataclass(frozen=True)
class FailedChunk:
    """A chunk the run could not compute; ``window`` is (row_off, col_off, height, width)."""

    chunk_id: str
    window: tuple[int, int, int, int]
    error: str
    attempts: int
    retryable: bool = True


@dataclass(frozen=True)
class ChunkSummary:
    total: int
    computed_this_run: int
    failed: tuple[FailedChunk, ...] = ()


@dataclass(frozen=True)
class RunSummary:
    """``summary.json`` of a run as typed fields; ``raw`` is the whole JSON document.

    ``class_areas_m2`` is ``{layer: {class name: m²}}`` (equal-area, also on geographic grids),
    ``features`` the feature count per GeoPackage layer, ``outputs`` the files written (paths
    inside the run folder), ``timings_s`` the stage wall times."""

    status: str
    image: str
    acquisition_date: str | None
    models: Mapping[str, str]
    engines: Mapping[str, str]
    grid: GridSummary
    chunks: ChunkSummary
    class_areas_m2: Mapping[str, Mapping[str, float]]
    features: Mapping[str, int]
    outputs: Mapping[str, Path]
    timings_s: Mapping[str, float]
    valid_fraction: float | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], root: Path) -> RunSummary:
        """Parse a summary document of the run in ``root`` (output paths are re-rooted there,
        so a moved run folder still resolves)."""
        from geoseg.grid import normalize_crs

        g, c = d["grid"], d["chunks"]
        return cls(
            status=str(d["status"]), image=str(d["image"]),
            acquisition_date=d.get("acquisition_date"),
            models=dict(d.get("models", {})), engines=dict(d.get("engines", {})),
            grid=GridSummary((int(g["shape"][0]), int(g["shape"][1])), normalize_crs(g["crs"]),
                             (float(g["resolution"][0]), float(g["resolution"][1])),
                             tuple(float(v) for v in g["bounds"])),  # type: ignore[arg-type]
            chunks=ChunkSummary(int(c["total"]), int(c.get("computed_this_run", 0)), tuple(
                FailedChunk(str(f["chunk_id"]), tuple(f["window"]),  # type: ignore[arg-type]
                            str(f["error"]), int(f.get("attempts", 0)),
                            bool(f.get("retryable", True))) for f in c.get("failed", []))),
            class_areas_m2={k: dict(v) for k, v in d.get("class_areas_m2", {}).items()},
            features={k: int(v) for k, v in d.get("features", {}).items()},
            outputs={k: root / Path(v).name for k, v in d.get("outputs", {}).items()},
            timings_s={k: float(v) for k, v in d.get("timings_s", {}).items()},
            valid_fraction=d.get("valid_fraction"), raw=d)


@dataclass(frozen=True)
class Quicklook:
    """The quicklook PNG of a run: path-like (``open(q, "rb")``, ``PIL.Image.open(q)``) and
    shown as an image when it is the last value of a notebook cell."""

    path: Path

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def _repr_png_(self) -> bytes:
        return self.path.read_bytes()


# --- a run folder -----------------------------------------------------------------------------

class Run:
    """The outputs of one ``geoseg run`` (or :func:`run`) folder.

    Cheap to create (reads only the manifest); every property reads the files anew, so a
    ``Run`` of a folder that a job is still writing shows its progress."""

    def __init__(self, path: str | Path) -> None:
        from geoseg.runfolder import local_run

        # a run in object storage: its local copy; a relative path is taken now (a later
        # os.chdir must not move the run)
        root = local_run(path).absolute()
        if not root.exists():
            raise InputError(f"{root} not found: pass the folder given to `geoseg run --out`")
        if not root.is_dir() or not (root / MANIFEST).is_file():
            raise InputError(f"{root} is not a geoseg run (no {MANIFEST}): pass the folder "
                             "given to `geoseg run --out`")
        self.path = root
        self.layout = RunLayout(root)
        self._manifest()  # refuse an unreadable manifest now

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status!r}, layers={list(self.layers)})"

    def _manifest(self) -> dict[str, Any]:
        try:
            data = json.loads(self.layout.manifest.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.layout.manifest} cannot be read ({exc}): not a geoseg "
                             "run folder") from exc
        if not isinstance(data, dict) or "result_key" not in data:
            raise InputError(f"{self.layout.manifest} is not a geoseg manifest: pass the folder "
                             "given to `geoseg run --out`")
        return data

    # -- state --
    @property
    def status(self) -> str:
        """The manifest's status: ``complete``, ``completed with N failed chunks``,
        ``running`` (or killed without a chance to say so), ``interrupted``, ``cancelled`` or
        ``failed``."""
        return str(self._manifest().get("status", "unknown"))

    @property
    def complete(self) -> bool:
        """Whether every chunk was computed and every output written."""
        if self.status != "complete":
            return False
        from geoseg.store import COMPLETE_ATTR, store_attrs

        return bool(store_attrs(self.layout.store).get(COMPLETE_ATTR))

    @property
    def layers(self) -> tuple[str, ...]:
        """The model outputs of this run (e.g. ``landcover``, ``buildings``)."""
        return tuple(self._manifest().get("models", {}))

    @property
    def config(self) -> JobConfig:
        """The job configuration the run was started with (URLs without their query: a
        signature or token is not kept in the run's folder)."""
        from geoseg.config import validate_job

        return validate_job(self._manifest()["config"], source=str(self.layout.manifest))

    @property
    def failed_chunks(self) -> tuple[FailedChunk, ...]:
        """Chunks that failed (from the summary; empty while there is none)."""
        return self.summary.chunks.failed if self.layout.summary.exists() else ()

    def _require_complete(self, what: str, partial: bool) -> None:
        if partial or self.complete:
            return
        fatal = any(not f.retryable for f in self.failed_chunks)
        raise IncompleteRunError(
            f"{self.path} is not complete (status: {self.status}), so its {what} lack chunks: "
            + ("some failed on an error a rerun cannot fix (see Run.failed_chunks): fix the "
               "input or model, then finish it" if fatal else "finish it")
            + " with geoseg.run(..., resume=True) (or `geoseg run --resume`), or pass "
            "partial=True to read what exists")

    # -- the grid, exactly --
    @property
    def grid(self) -> GeoBox:
        """The output grid (shape, exact affine transform, CRS) from the store."""
        from geoseg.scoring import open_store
        from geoseg.store import store_grid

        open_store(self.layout.store)  # one line when it is missing
        return store_grid(self.layout.store)[0]

    @property
    def crs(self) -> CRS:
        return self.grid.crs

    @property
    def transform(self) -> Affine:
        return self.grid.transform

    def class_names(self, layer: str) -> tuple[str, ...]:
        """Class names of a layer, in class-id order (from the model bundle)."""
        from geoseg.scoring import store_classes

        _, names = store_classes(self.layout.store, layer)
        if names is None:
            raise InputError(f"{self.layout.store} does not name the classes of {layer}")
        return names

    # -- outputs --
    @property
    def summary(self) -> RunSummary:
        """``summary.json`` as a :class:`RunSummary` (written at the end of every run that
        got through its chunks, also one with failed chunks)."""
        p = self.layout.summary
        if not p.is_file():
            raise IncompleteRunError(
                f"{self.path} has no summary yet (status: {self.status}): the run stopped "
                "before the end; finish it with geoseg.run(..., resume=True)")
        try:
            return RunSummary.from_dict(json.loads(p.read_text()), self.path)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise InputError(f"{p} is not a geoseg run summary ({type(exc).__name__}: {exc})"
                             ) from exc

    def predictions(self, *, partial: bool = False,
                    chunks: Mapping[str, int] | Literal["store"] | None = "store",
                    ) -> xr.Dataset:
        """The prediction store as an ``xarray.Dataset``: one ``(y, x)`` uint8 variable per
        layer (class ids, fill 255) and ``<layer>_confidence`` (0..255, ``scale_factor``
        1/255), pixel-centre ``x``/``y`` coordinates and the CF ``spatial_ref`` grid mapping,
        so rioxarray's ``ds.rio.crs`` / ``ds.rio.transform()`` are exact.

        Values are not masked or scaled (``mask_and_scale=False``): class ids stay integers,
        ``_FillValue`` stays in the attributes. ``chunks="store"`` (default) gives dask arrays
        with the store's chunks (nothing is read until computed); ``None``: lazy numpy-backed
        arrays."""
        import xarray as xr

        self._require_complete("predictions", partial)
        from geoseg.scoring import open_store

        open_store(self.layout.store)
        return xr.open_dataset(self.layout.store, engine="zarr", decode_coords="all",
                               mask_and_scale=False,
                               chunks={} if chunks == "store" else chunks)

    @property
    def feature_layers(self) -> tuple[str, ...]:
        """Layers of the run's GeoPackage (``landcover``, ``buildings``, ...)."""
        import pyogrio

        gpkg = self.layout.gpkg
        if not gpkg.is_file() and self.complete:
            vectors = (self._manifest().get("config") or {}).get("vectors") or {}
            raise InputError(f"{self.path} has no {gpkg.name}: " + (
                "the run was made without vectors (vectors=False / --no-vectors)"
                if vectors.get("enabled") is False else
                "no pixel of its image was valid, so there was nothing to vectorize"))
        if not gpkg.is_file():
            raise IncompleteRunError(f"{self.path} has no {gpkg.name} (status: {self.status}):"
                                     " it is written once every chunk is in, or vectors were "
                                     "off")
        return tuple(str(n) for n, _ in pyogrio.list_layers(gpkg))

    def features(self, layer: str, *, partial: bool = False,
                 **read_options: Any) -> gpd.GeoDataFrame:
        """A GeoPackage layer as a GeoDataFrame in the run's CRS; ``read_options`` go to
        ``geopandas.read_file`` (``bbox=``, ``where=``, ``columns=``, ...)."""
        import geopandas as gpd

        self._require_complete("features", partial)
        names = self.feature_layers
        if layer not in names:
            raise InputError(f"{self.layout.gpkg} has no layer {layer!r} (layers: "
                             f"{', '.join(names) or 'none'})")
        return gpd.read_file(self.layout.gpkg, layer=layer, **read_options)

    def cog(self, layer: str) -> Path:
        """The Cloud-Optimized GeoTIFF of a layer (written by complete runs with COGs on)."""
        p = self.layout.cog(layer)
        if not p.is_file():
            raise InputError(f"{p} not found (status: {self.status}): COGs are written at the "
                             "end of a complete run with outputs.cog on")
        return p

    def quicklook(self) -> Quicklook:
        """The quicklook PNG (image beside each class map); displays itself in a notebook."""
        p = self.layout.quicklook
        if not p.is_file():
            raise InputError(f"{p} not found (status: {self.status}): quicklooks are written "
                             "at the end of a complete run with outputs.quicklook on")
        return Quicklook(p)

    def evaluate(self, **kwargs: Any) -> dict[str, Any]:
        """:func:`evaluate` of this run (same keyword arguments)."""
        return evaluate(self, **kwargs)


def open_run(path: str | Path) -> Run:
    """The run in the local folder ``path``, or at an object-storage URL (``s3://``, ``gs://``,
    ``az://``: fetched into a local cache first, see :func:`geoseg.runfolder.fetch_run`);
    raises one-line :class:`InputError` when it is not a geoseg run."""
    if not isinstance(path, str | Path):
        raise InputError(f"open_run takes a run folder's path or URL (str or Path), got "
                         f"{type(path).__name__}")
    return Run(path)


# --- actions ----------------------------------------------------------------------------------

def run(image: str | Path | Sequence[str | Path], out: str | Path, *,
        config: str | Path | None = None,
        overwrite: bool = False, resume: bool = False,
        progress: Callable[[Progress], None] | None = None, **options: Any) -> Run:
    """Segment ``image`` into the folder ``out`` and return the :class:`Run`.

    ``image``: a path or URL, or several (a mosaic onto one grid, where the library supports
    it: see ``geoseg run --help``).

    ``options`` are the settings of ``geoseg run``'s flags, flat (see
    :data:`geoseg.config.OVERRIDES`): ``models``, ``region`` (a dict such as ``{"bbox": [...],
    "crs": "EPSG:4326"}``), ``chunk_size``, ``halo``, ``tile_size``, ``engine``, ``tta``,
    ``vectors``, ``cog``, ``quicklook``, ``executor``, ``workers``, ``threads``, ``device``,
    ``address``, ... applied over the YAML ``config`` when given. ``progress`` is called with
    a :class:`geoseg.job.Progress` as chunks finish.

    Bad input raises a :class:`~geoseg.errors.GeoSegError` before any work. Chunks that fail
    do not raise: the returned run is not :attr:`~Run.complete` (a
    :class:`~geoseg.errors.GeoSegWarning` says so) and ``run(..., resume=True)`` retries them.
    """
    from geoseg.config import make_job_config
    from geoseg.job import run_job

    if not (isinstance(image, str | Path) or (isinstance(image, Sequence) and image and all(
            isinstance(i, str | Path) for i in image))):
        raise InputError(f"image must be a path or URL (str or Path), or a list of them; got "
                         f"{type(image).__name__}")
    if not isinstance(out, str | Path):
        raise InputError(f"out must be a folder's path or URL (str or Path), got "
                         f"{type(out).__name__}")
    if progress is not None and not callable(progress):
        raise InputError(f"progress must be a function of one Progress argument, got "
                         f"{type(progress).__name__}")
    if overwrite and resume:
        raise InputError("overwrite=True and resume=True contradict each other: pass one")
    if "output" in options:
        raise InputError("geoseg.run(): output is not a setting: the output folder is run's "
                         "second argument, run(image, out)")
    images = (str(image) if isinstance(image, str | Path)
              else [str(i) for i in image])
    cfg = make_job_config(images, str(out), config,  # type: ignore[arg-type]
                          source="geoseg.run()", **_paths_as_str(options))
    res = run_job(cfg, overwrite=overwrite, resume=resume, progress=progress)
    if not res.ok:
        import textwrap

        fatal = sum(not f.retryable for f in res.failed)
        first = textwrap.shorten(res.failed[0].error, 200, placeholder=" ...")
        warnings.warn(GeoSegWarning(
            f"geoseg.run: {len(res.failed)} chunk(s) failed (e.g. {res.failed[0].chunk_id}: "
            f"{first}); see Run.failed_chunks; "
            + (f"{fatal} failed on an error a rerun cannot fix: fix the input or model, then "
               "rerun with resume=True" if fatal else "rerun with resume=True to retry them")),
            stacklevel=2)
    return Run(res.output)


def _paths_as_str(value: Any) -> Any:
    """``value`` with every path object in it (e.g. ``models=[TrainResult.bundle_dir]``,
    ``region={"file": Path(...)}``) as the string the settings take."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {k: _paths_as_str(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_paths_as_str(v) for v in value)
    return value


def train(out: str | Path, *, task: Literal["landcover", "buildings"],
          scenes: Sequence[str | Path] = (),
          pairs: Sequence[tuple[str | Path, str | Path]] = (), class_field: str = "class_id",
          background: int | str = 0, labels_layer: str | None = None,
          name: str | None = None, resume: bool = False,
          overwrite: bool = False,
          progress: Callable[[int, int, float, float, float], None] | None = None,
          **options: Any) -> TrainResult:
    """Train a model bundle into ``out`` and return the :class:`geoseg.training.TrainResult`
    (``bundle_dir``, ``spec``, ``losses``, ``seconds``), as ``geoseg train`` does.

    Training data: ``scenes`` (generated scene folders, both dates) and/or ``pairs`` of
    (image, labels), labels a raster on the image grid or a vector file in any CRS
    (``class_field``: the class attribute; ``background``: the class of uncovered pixels, 255
    to ignore them; ``labels_layer``: the layer of a vector file of several, default its
    first). ``options`` are :class:`geoseg.training.TrainConfig` fields (``steps``,
    ``batch_size``, ``chip_size``, ``seed``, ``architecture``, ``loss``, ``device``,
    ``max_seconds``, ``classes``, ...); ``classes`` defaults to the built-in ones of ``task``.
    ``progress(step, steps, loss, lr, seconds)`` is called after every step. ``out`` must be
    new or empty, or hold an earlier training (continued with ``resume``, replaced with
    ``overwrite``).
    """
    from pydantic import ValidationError

    from geoseg.bundle import ClassSpec
    from geoseg.errors import ConfigError
    from geoseg.training import SceneFiles, TrainConfig, scene_files
    from geoseg.training import train as train_bundle

    if isinstance(background, str) and background.strip().lower() == "ignore":
        background = 255  # as geoseg train --background ignore
    if isinstance(background, bool) or not isinstance(background, int) \
            or not 0 <= background <= 255:
        raise ConfigError(f"geoseg.train(): background must be a class id (0..254) or "
                          f"'ignore', got {background!r}")
    bad = [p for p in pairs if not (isinstance(p, tuple | list) and len(p) == 2)]
    if bad:
        raise ConfigError(f"geoseg.train(): pairs are (image, labels) tuples, got {bad[0]!r}")
    if task not in ("landcover", "buildings"):
        raise ConfigError(f"geoseg.train(): task must be 'landcover' or 'buildings', got "
                          f"{task!r}")
    if isinstance(scenes, str | Path):
        raise ConfigError(f"geoseg.train(): scenes is a list of scene folders: pass "
                          f"scenes=[{str(scenes)!r}]")
    data: list[SceneFiles] = []
    for d in scenes:
        data += scene_files(d, task)
    data += [SceneFiles(Path(img), Path(lbl), label_field=class_field, background=background,
                        label_layer=labels_layer) for img, lbl in pairs]
    if not data:
        raise ConfigError("geoseg.train(): no training data: pass scenes=[DIR] (generated) "
                          "and/or pairs=[(IMAGE, LABELS)]")
    if "classes" not in options:
        if task == "landcover":
            from geoseg.sample import CLASSES
        else:
            from geoseg.training import BUILDING_CLASSES as CLASSES  # type: ignore[assignment]
        options["classes"] = tuple(ClassSpec(id=i, name=n, color=c) for i, n, c in CLASSES)
    try:
        cfg = TrainConfig(name=name or f"{task}-custom", task=task, **options)
    except ValidationError as exc:
        from geoseg.setting_errors import explain

        e = exc.errors()[0]
        raise ConfigError(f"geoseg.train(): {'.'.join(str(x) for x in e['loc'])}: "
                          f"{explain([e])}") from exc
    return train_bundle(cfg, data, out, resume=resume, overwrite=overwrite, progress=progress)


def evaluate(run: Run | str | Path | None = None, *, scene: str | Path | None = None,
             truth: str | Path | None = None, layer: str = "landcover",
             truth_footprints: str | Path | None = None, truth_layer: str | None = None,
             truth_instances: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """Score a run (or a store / footprints file) against truth; returns the JSON-ready report
    that ``geoseg eval`` prints.

    * ``scene``: a generated scene folder (land cover, footprints, instances of ``date``);
    * ``truth``: a class raster on any grid and CRS (resampled nearest-neighbour onto the
      predictions'), scored against ``layer``: ``<layer>`` holds accuracy, mIoU, ``per_class``
      IoU / precision / recall / F1 under the run's class names, boundary F1, the confusion
      matrix and ``confusion_png`` (written into the run folder unless ``confusion=PATH``);
    * ``truth_footprints`` (any OGR format, ``truth_layer``, any CRS) and/or ``truth_instances``:
      SpaceNet F1, COCO AP and PQ of the run's footprints under ``buildings``.

    ``options``: ``date``, ``store``, ``footprints``, ``footprints_layer``, ``num_classes``,
    ``iou``, ``boundary_tol``, ``confusion``, ``plot`` (see
    :func:`geoseg.scoring.evaluate_outputs`).
    """
    from geoseg.runfolder import local_run
    from geoseg.scoring import evaluate_outputs

    path = run.path if isinstance(run, Run) else local_run(run) if run is not None else None
    return evaluate_outputs(run=path, scene=scene, truth=truth, layer=layer,
                            truth_footprints=truth_footprints, truth_layer=truth_layer,
                            truth_instances=truth_instances, **options)
