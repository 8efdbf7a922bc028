"""geoseg: distributed segmentation of huge georeferenced images into maps."""

__version__ = "0.1.0"
