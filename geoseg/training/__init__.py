"""Training of the bundles on GeoTIFF scenes (bundles are scored by running them:
``geoseg run`` + :func:`geoseg.scoring.evaluate_run`, see ``workflows/build_bundles.py``)."""

from geoseg.training.augment import AugmentConfig
from geoseg.training.data import ChipSampler, SceneFiles, band_stats, scene_files
from geoseg.training.labels import VectorLabels
from geoseg.training.loop import TrainConfig, TrainResult, train
from geoseg.training.losses import LossConfig
from geoseg.training.targets import BUILDING_CLASSES, boundary_mask, buildings_target

__all__ = ["BUILDING_CLASSES", "AugmentConfig", "ChipSampler", "LossConfig", "SceneFiles",
           "TrainConfig", "TrainResult", "VectorLabels", "band_stats", "boundary_mask",
           "buildings_target", "scene_files", "train"]
