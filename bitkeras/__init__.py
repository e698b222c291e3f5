"""bitkeras: Big Transfer (BiT) ResNet-v2 models for Keras 3."""

from bitkeras.architecture import ARCHITECTURES, Architecture
from bitkeras.backbone import BiTBackbone
from bitkeras.checkpoint import CheckpointMismatchError, load_npz, save_npz
from bitkeras.classifier import BiTClassifier, load_model
from bitkeras.inference import Predictions
from bitkeras.hub import HubUnavailableError
from bitkeras.hyperrule import HyperRule
from bitkeras.layers import PreActBottleneck, StandardizedConv2D, group_normalization
from bitkeras.presets import list_presets
from bitkeras.pretraining import pretrain
from bitkeras.run_state import NonFiniteLossError
from bitkeras.schedules import WarmupStaircase
from bitkeras.upstream import UpstreamRecipe
from bitkeras.sources import BadImageError, DataUnavailableError
from bitkeras.weights import CorruptWeightsError, WeightsUnavailableError

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "BadImageError",
    "BiTBackbone",
    "BiTClassifier",
    "CheckpointMismatchError",
    "CorruptWeightsError",
    "DataUnavailableError",
    "HubUnavailableError",
    "HyperRule",
    "NonFiniteLossError",
    "Predictions",
    "PreActBottleneck",
    "StandardizedConv2D",
    "UpstreamRecipe",
    "WarmupStaircase",
    "WeightsUnavailableError",
    "group_normalization",
    "list_presets",
    "pretrain",
    "load_model",
    "load_npz",
    "save_npz",
]
