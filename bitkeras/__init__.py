"""bitkeras: Big Transfer (BiT) ResNet-v2 models for Keras 3."""

from bitkeras.architecture import ARCHITECTURES, Architecture
from bitkeras.backbone import BiTBackbone
from bitkeras.checkpoint import CheckpointMismatchError, load_npz, save_npz
from bitkeras.classifier import BiTClassifier
from bitkeras.layers import PreActBottleneck, StandardizedConv2D, group_normalization
from bitkeras.presets import list_presets
from bitkeras.weights import CorruptWeightsError, WeightsUnavailableError

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "BiTBackbone",
    "BiTClassifier",
    "CheckpointMismatchError",
    "CorruptWeightsError",
    "PreActBottleneck",
    "StandardizedConv2D",
    "WeightsUnavailableError",
    "group_normalization",
    "list_presets",
    "load_npz",
    "save_npz",
]
