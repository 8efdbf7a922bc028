"""Training of the bundles on GeoTIFF scenes (bundles are scored by running them:
``geoseg run`` + :func:`geoseg.evaluate.evaluate_run`, see ``workflows/build_bundles.py``)."""

from geoseg.train.augment import AugmentConfig
from geoseg.train.data import ChipSampler, SceneFiles, band_stats, scene_files
from geoseg.train.labels import VectorLabels
from geoseg.train.loop import TrainConfig, TrainResult, train
from geoseg.train.losses import LossConfig
from geoseg.train.targets import BUILDING_CLASSES, boundary_mask, buildings_target

__all__ = ["BUILDING_CLASSES", "AugmentConfig", "ChipSampler", "LossConfig", "SceneFiles",
           "TrainConfig", "TrainResult", "VectorLabels", "band_stats", "boundary_mask",
           "buildings_target", "scene_files", "train"]
