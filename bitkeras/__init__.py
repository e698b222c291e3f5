"""bitkeras: Big Transfer (BiT) ResNet-v2 models for Keras 3."""

from bitkeras.finetuning.hyperrule import HyperRule
from bitkeras.finetuning.pretraining import pretrain
from bitkeras.finetuning.run_state import NonFiniteLossError
from bitkeras.finetuning.schedules import WarmupStaircase
from bitkeras.finetuning.sources import BadImageError, DataUnavailableError
from bitkeras.finetuning.upstream import UpstreamRecipe
from bitkeras.io.checkpoint import CheckpointMismatchError, load_npz, save_npz
from bitkeras.io.hub import HubUnavailableError
from bitkeras.io.presets import list_presets
from bitkeras.io.weights import CorruptWeightsError, WeightsUnavailableError
from bitkeras.models.architecture import ARCHITECTURES, Architecture
from bitkeras.models.backbone import BiTBackbone
from bitkeras.models.classifier import BiTClassifier, load_model
from bitkeras.models.inference import Predictions
from bitkeras.models.layers import PreActBottleneck, StandardizedConv2D, group_normalization

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
