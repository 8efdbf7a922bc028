"""geoseg: distributed segmentation of huge georeferenced images into maps.

The Python API (``docs/python_api.md``)::

    import geoseg
    run = geoseg.run("image.tif", "out/", chunk_size=1024)   # -> geoseg.Run
    ds = run.predictions()                                   # xarray.Dataset, exact CRS
    buildings = run.features("buildings")                    # GeoDataFrame
    run.summary.class_areas_m2                               # typed summary
    geoseg.open_run("out/"), geoseg.train(...), geoseg.evaluate(run, truth="truth.tif")

Names are imported on first use (``import geoseg`` loads nothing else: no torch, no GDAL). The
library behind them: :mod:`geoseg.training` (bundles from images and labels) and
:mod:`geoseg.scoring` (runs against truth).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("ChunkSummary", "FailedChunk", "GridSummary", "Quicklook", "Run", "RunSummary",
        "evaluate", "open_run", "run", "train")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from geoseg import api

        return getattr(api, name)
    if name == "errors":  # ``except geoseg.errors.InputError`` right after ``import geoseg``
        import importlib

        return importlib.import_module("geoseg.errors")
    raise AttributeError(f"module 'geoseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API, "errors"})
