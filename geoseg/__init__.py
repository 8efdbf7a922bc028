"""geoseg: distributed segmentation of huge georeferenced images into maps.

The Python API (``docs/python_api.md``)::

    import geoseg
    run = geoseg.run("image.tif", "out/", chunk_size=1024)   # -> geoseg.Run
    ds = run.predictions()                                   # xarray.Dataset, exact CRS
    buildings = run.features("buildings")                    # GeoDataFrame
    run.summary.class_areas_m2                               # typed summary
    geoseg.open_run("out/"), geoseg.train(...), geoseg.evaluate(run, truth="truth.tif")

Names are imported on first use (``import geoseg`` loads nothing else: no torch, no GDAL).
``geoseg.train`` and ``geoseg.evaluate`` are also the library's subpackage / module of those
names; calling them calls :func:`geoseg.api.train` / :func:`geoseg.api.evaluate`.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__version__ = "0.1.0"

_API = ("ChunkSummary", "FailedChunk", "GridSummary", "Quicklook", "Run", "RunSummary",
        "open_run", "run")
_CALLABLE_MODULES = ("train", "evaluate")  # geoseg.train(...), geoseg.evaluate(...)

__all__ = ["__version__", *_API, *_CALLABLE_MODULES]


def _import(name: str) -> types.ModuleType:
    import importlib

    return importlib.import_module(name)


class _ImportableModule(types.ModuleType):
    """A module of a ModuleType subclass pickles, as modules do in cloudpickle (Ray), by name:
    pickle dispatches on the exact type, so subclasses say how themselves."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _import, (self.__name__,)


class _CallableModule(_ImportableModule):
    """A submodule that is also the API function of its name (``geoseg.train(...)``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from geoseg import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(_ImportableModule):
    """``geoseg`` itself: the import system binds each imported submodule here; ``train`` and
    ``evaluate`` become callable as they are bound, whoever imports them first."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _CALLABLE_MODULES and type(value) is types.ModuleType:
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(_import("geoseg.api"), name)
    if name in _CALLABLE_MODULES:
        return _import(f"geoseg.{name}")  # binds it (callable) on geoseg
    raise AttributeError(f"module 'geoseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API, *_CALLABLE_MODULES})


sys.modules[__name__].__class__ = _Package
