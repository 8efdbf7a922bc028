"""Vectorization of class maps into seam-free features.

- :mod:`~geoseg.vectorize.landcover`: land-cover polygons as per-chunk parts plus a seam merge;
- :mod:`~geoseg.vectorize.footprints`: building footprints owned by one chunk (halo context);
- :mod:`~geoseg.vectorize.regularize`: right-angled building outlines;
- :mod:`~geoseg.vectorize.features`: the :class:`Feature` type and shared pixel→polygon helpers.
"""

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
