"""bitkeras: Big Transfer (BiT) ResNet-v2 models for Keras 3."""

from bitkeras.detection import BiTDetector, DetectionRule
from bitkeras.finetuning.classifier import BiTClassifier, load_model
from bitkeras.finetuning.hyperrule import HyperRule
from bitkeras.finetuning.pretraining import pretrain
from bitkeras.finetuning.resnet_classifier import ResNetClassifier
from bitkeras.finetuning.run_state import NonFiniteLossError
from bitkeras.finetuning.schedules import WarmupStaircase
from bitkeras.finetuning.sources import BadImageError, DataUnavailableError
from bitkeras.finetuning.upstream import UpstreamRecipe
from bitkeras.io.checkpoint import CheckpointMismatchError, load_npz, save_npz
from bitkeras.io.hub import HubUnavailableError
from bitkeras.io.presets import list_presets
from bitkeras.io.pretrained import BiTBackbone
from bitkeras.io.pretrained import ResNetBackbone
from bitkeras.io.weights import CorruptWeightsError, WeightsUnavailableError
from bitkeras.models.architecture import ARCHITECTURES, Architecture
from bitkeras.models.backbone import ResNetV2Backbone
from bitkeras.models.classifier import HeadClassifier
from bitkeras.models.inference import Predictions
from bitkeras.models.layers import PreActBottleneck, StandardizedConv2D, group_normalization
from bitkeras.models.preprocessing import BiTImageClassifierPreprocessor, BiTImageConverter

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "BadImageError",
    "BiTBackbone",
    "BiTClassifier",
    "BiTDetector",
    "BiTImageClassifierPreprocessor",
    "BiTImageConverter",
    "CheckpointMismatchError",
    "CorruptWeightsError",
    "DataUnavailableError",
    "DetectionRule",
    "HeadClassifier",
    "HubUnavailableError",
    "HyperRule",
    "NonFiniteLossError",
    "PreActBottleneck",
    "Predictions",
    "ResNetBackbone",
    "ResNetClassifier",
    "ResNetV2Backbone",
    "StandardizedConv2D",
    "UpstreamRecipe",
    "WarmupStaircase",
    "WeightsUnavailableError",
    "group_normalization",
    "list_presets",
    "load_model",
    "load_npz",
    "pretrain",
    "save_npz",
]
