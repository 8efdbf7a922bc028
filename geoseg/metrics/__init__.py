"""Evaluation metrics with their published definitions: pixel (confusion matrix, accuracy, IoU,
mIoU, Dice/F1), boundary F1 (Csurka et al. 2013), object (SpaceNet one-to-one matching at
IoU >= 0.5), COCO mask AP (pycocotools) and panoptic quality (Kirillov et al. 2019)."""

from geoseg.metrics.boundary import (
    BoundaryCounts,
    BoundaryScores,
    boundary_counts,
    boundary_halo,
    class_boundary,
)
from geoseg.metrics.coco import (
    IOU_THRESHOLDS,
    RECALL_THRESHOLDS,
    CocoDetections,
    CocoScores,
    coco_instances,
    coco_match,
)
from geoseg.metrics.objects import (
    ObjectScores,
    greedy_match,
    instance_pairs,
    match_instances,
    match_polygons,
    score_instances,
    score_polygons,
)
from geoseg.metrics.overlaps import InstanceOverlaps
from geoseg.metrics.panoptic import (
    PanopticScores,
    panoptic_instances,
    panoptic_match,
    pred_void_fractions,
)
from geoseg.metrics.pixel import (
    PixelScores,
    confusion_matrix,
    dice_per_class,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)

__all__ = ["IOU_THRESHOLDS", "RECALL_THRESHOLDS", "BoundaryCounts", "BoundaryScores",
           "CocoDetections", "CocoScores", "InstanceOverlaps", "ObjectScores", "PanopticScores",
           "PixelScores", "boundary_counts", "boundary_halo", "class_boundary", "coco_instances",
           "coco_match", "confusion_matrix", "dice_per_class", "greedy_match", "instance_pairs",
           "iou_per_class", "match_instances", "match_polygons",
           "mean_iou", "panoptic_instances", "panoptic_match", "pixel_accuracy",
           "pred_void_fractions", "score_instances", "score_polygons"]
