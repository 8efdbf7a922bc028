"""Training of the semantic bundles on GeoTIFF scenes, and scene-level evaluation."""

from geoseg.train.augment import AugmentConfig
from geoseg.train.data import ChipSampler, SceneFiles, band_stats, scene_files
from geoseg.train.labels import VectorLabels
from geoseg.train.loop import TrainConfig, TrainResult, train
from geoseg.train.losses import LossConfig
from geoseg.train.scene_scores import evaluate_buildings, evaluate_landcover, predict_raster
from geoseg.train.targets import BUILDING_CLASSES, boundary_mask, buildings_target

__all__ = ["BUILDING_CLASSES", "AugmentConfig", "ChipSampler", "LossConfig", "SceneFiles",
           "TrainConfig", "TrainResult", "VectorLabels", "band_stats", "boundary_mask",
           "buildings_target", "evaluate_buildings", "evaluate_landcover", "predict_raster",
           "scene_files", "train"]
