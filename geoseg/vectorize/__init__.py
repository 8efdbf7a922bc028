"""Vectorization of class maps: seam-free land-cover polygons and building footprints."""

from geoseg.vectorize.features import Feature, features_to_frame

__all__ = ["Feature", "features_to_frame"]
