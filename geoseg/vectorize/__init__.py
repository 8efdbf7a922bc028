"""Vectorization of class maps into seam-free features.

- :mod:`~geoseg.vectorize.landcover`: land-cover polygons as per-chunk parts plus a seam merge;
- :mod:`~geoseg.vectorize.footprints`: building footprints owned by one chunk (halo context);
- :mod:`~geoseg.vectorize.regularize`: right-angled building outlines;
- :mod:`~geoseg.vectorize.features`: the :class:`Feature` type and shared pixel→polygon helpers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geoseg.vectorize.features import Feature, features_to_frame
    from geoseg.vectorize.footprints import extract_buildings
    from geoseg.vectorize.landcover import (
        BorderPart,
        ChunkEdges,
        LandcoverParts,
        landcover_parts,
        merge_landcover,
    )
    from geoseg.vectorize.regularize import (
        corner_angle_share,
        regularize_polygon,
        regularize_polygons,
    )

# imported on first use: a land-cover job never loads the building route's scipy/skimage parts
# (0.3 s of interpreter time, in the driver and in every vector worker)
_WHERE = {"Feature": "features", "features_to_frame": "features",
          "extract_buildings": "footprints", "BorderPart": "landcover",
          "ChunkEdges": "landcover", "LandcoverParts": "landcover",
          "landcover_parts": "landcover", "merge_landcover": "landcover",
          "corner_angle_share": "regularize", "regularize_polygon": "regularize",
          "regularize_polygons": "regularize"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


__all__ = [
    "BorderPart",
    "ChunkEdges",
    "Feature",
    "LandcoverParts",
    "corner_angle_share",
    "extract_buildings",
    "features_to_frame",
    "landcover_parts",
    "merge_landcover",
    "regularize_polygon",
    "regularize_polygons",
]
