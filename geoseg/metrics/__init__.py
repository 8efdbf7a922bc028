"""Evaluation metrics with their published definitions: pixel (confusion matrix, accuracy, IoU,
mIoU, Dice/F1) and object (SpaceNet one-to-one matching at IoU >= 0.5)."""

from geoseg.metrics.instances import instances_from_classes
from geoseg.metrics.objects import (
    ObjectScores,
    greedy_match,
    match_instances,
    match_polygons,
    score_instances,
    score_polygons,
)
from geoseg.metrics.pixel import (
    PixelScores,
    confusion_matrix,
    dice_per_class,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)

__all__ = ["ObjectScores", "PixelScores", "confusion_matrix", "dice_per_class",
           "greedy_match", "instances_from_classes", "iou_per_class", "match_instances",
           "match_polygons", "mean_iou", "pixel_accuracy", "score_instances", "score_polygons"]
