"""Deterministic synthetic aerial scenes with exact ground truth at two dates.

``generate_scene`` lays out a vector city plan (roads, buildings, water, vegetation) and renders
4-band imagery, land-cover and building-instance rasters plus building GeoPackages for two dates,
block by block in bounded memory. Used for training (seeds 101..), the demo (seed 0) and
evaluation (seed 7).
"""

from geoseg.sample.palette import CLASSES
from geoseg.sample.scene import DATES, SceneFiles, generate_scene

__all__ = ["CLASSES", "DATES", "SceneFiles", "generate_scene"]
