"""Detection transfer: BiT backbones in keras-hub's RetinaNet (`BiTDetector`), data and scenes."""

from bitkeras.detection.data import (
    BadAnnotationError,
    DetectionData,
    from_coco_json,
    from_tfds,
    open_detection_data,
)
from bitkeras.detection.detector import (
    BiTDetector,
    COCOEvaluation,
    DetectionRule,
    coco_evaluation,
)
from bitkeras.detection.scenes import render_scenes

__all__ = [
    "BadAnnotationError",
    "BiTDetector",
    "COCOEvaluation",
    "DetectionData",
    "DetectionRule",
    "coco_evaluation",
    "from_coco_json",
    "from_tfds",
    "open_detection_data",
    "render_scenes",
]
