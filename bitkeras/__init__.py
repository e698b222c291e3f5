"""bitkeras: Big Transfer (BiT) ResNet-v2 models for Keras 3.

`import bitkeras` imports the whole package, so that Keras knows its classes
(`keras.saving.load_model`, keras-hub's `from_preset`) as soon as it returns. The
`bitkeras` command alone (its console script, or `python -m bitkeras`) starts light:
there, names are imported on first use (PEP 562), so `bitkeras --help` needs no
TensorFlow.
"""

import importlib as _importlib
import os as _os
import sys as _sys

__version__ = "0.1.0"

_EXPORTS = {
    "BiTDetector": "bitkeras.detection",
    "DetectionRule": "bitkeras.detection",
    "BiTClassifier": "bitkeras.finetuning.classifier",
    "load_model": "bitkeras.finetuning.classifier",
    "DistillationRule": "bitkeras.finetuning.distill_recipes",
    "PAPER_RECIPES": "bitkeras.finetuning.distill_recipes",
    "Distiller": "bitkeras.finetuning.distillation",
    "distill": "bitkeras.finetuning.distillation",
    "HyperRule": "bitkeras.finetuning.hyperrule",
    "pretrain": "bitkeras.finetuning.pretraining",
    "ResNetClassifier": "bitkeras.finetuning.resnet_classifier",
    "NonFiniteLossError": "bitkeras.finetuning.run_state",
    "WarmupCosine": "bitkeras.finetuning.schedules",
    "WarmupStaircase": "bitkeras.finetuning.schedules",
    "BadImageError": "bitkeras.finetuning.sources",
    "DataUnavailableError": "bitkeras.finetuning.sources",
    "UpstreamRecipe": "bitkeras.finetuning.upstream",
    "CheckpointMismatchError": "bitkeras.io.checkpoint",
    "load_npz": "bitkeras.io.checkpoint",
    "save_npz": "bitkeras.io.checkpoint",
    "HubUnavailableError": "bitkeras.io.hub",
    "list_presets": "bitkeras.io.presets",
    "BiTBackbone": "bitkeras.io.pretrained",
    "ResNetBackbone": "bitkeras.io.pretrained",
    "CorruptWeightsError": "bitkeras.io.weights",
    "WeightsUnavailableError": "bitkeras.io.weights",
    "ARCHITECTURES": "bitkeras.models.architecture",
    "Architecture": "bitkeras.models.architecture",
    "ResNetV2Backbone": "bitkeras.models.backbone",
    "HeadClassifier": "bitkeras.models.classifier",
    "Predictions": "bitkeras.models.inference",
    "PreActBottleneck": "bitkeras.models.layers",
    "StandardizedConv2D": "bitkeras.models.layers",
    "group_normalization": "bitkeras.models.layers",
    "BiTImageClassifierPreprocessor": "bitkeras.models.preprocessing",
    "BiTImageConverter": "bitkeras.models.preprocessing",
}
"""Every public name and the module that defines it."""

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    """A public name, imported from its module on first use (the `bitkeras` command's start)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bitkeras' has no attribute {name!r}")
    value = getattr(_importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def _is_the_command():
    """Whether this process is the `bitkeras` command, as its console script or as
    `python -m bitkeras` (not a program importing us)."""
    if _sys.argv and _os.path.basename(_sys.argv[0]) == "bitkeras":
        return True
    started = getattr(_sys, "orig_argv", [])
    return "-m" in started and started[started.index("-m") + 1:][:1] == ["bitkeras"]


if not _is_the_command():
    for _name in __all__:
        __getattr__(_name)
