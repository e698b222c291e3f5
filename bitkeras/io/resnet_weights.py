"""ResNet family weights: `ResNetBackbone` presets, and keras.applications weight files.

A file that `keras.applications.ResNet50(weights=PATH)` accepts (the
released legacy `.h5` files, with or without the top, and the
`.weights.h5` files Keras 3 saves) is read by Keras's own loader into the
application, then copied layer by layer into the family's twin, whose
layers carry the application's names. `weights="imagenet"` takes Keras's
released file from Keras's cache (`~/.keras/models`), downloading it there
when it is missing.
"""

import os
import pathlib

import h5py
import keras

from bitkeras.io import presets
from bitkeras.io.weights import WeightsUnavailableError
from bitkeras.models.resnet_backbone import ResNetFamilyBackbone
from bitkeras.models.resnet_family import PRESETS, get_family_preset

KERAS_ARGUMENTS = {"name", "trainable", "dtype"}
"""What a backbone takes besides its configuration."""

APPLICATION_HEAD = "predictions"
"""The name of keras.applications' classification layer."""


@keras.saving.register_keras_serializable(package="bitkeras")
class ResNetBackbone(ResNetFamilyBackbone):
    """A network of the ResNet family with presets: ResNet18..152, V2, CIFAR, plain, BiT.

    `ResNetFamilyBackbone` (the network; see there for the input contract
    and `pyramid_outputs`) with `from_preset`. Any configuration can also be
    built directly from `ResNetConfig` fields:
    `ResNetBackbone(**bitkeras.models.resnet_family.cifar(20).get_config())`.

    >>> backbone = ResNetBackbone.from_preset("ResNet20-CIFAR")
    >>> backbone.feature_channels, backbone.resnet_config.parameter_count(10, statistics=False)
    (64, 269722)
    >>> ResNetBackbone.from_preset("ResNet20-CIFAR", shortcut="B").resnet_config.shortcut
    'B'
    """

    @classmethod
    def from_preset(cls, name, weights="default", **changes):
        """A backbone of a named network, its configuration changed by `changes`.

        `name`: a preset of `bitkeras.models.resnet_family.PRESETS` ("ResNet50",
        "ResNet50V2", "ResNet18", "ResNet20-CIFAR", "Plain56-CIFAR", ...), or a
        keras-hub preset folder (`save_to_preset`). `changes`: `ResNetConfig`
        fields, e.g. `shortcut="A"|"B"|"C"|"none"`, `normalization="group"`,
        `weight_standardization=True`, `width_factor=2`. `weights`: None
        (random, He initialisation), "imagenet" (Keras's released weights of a
        keras.applications twin), a path to a weight file
        `keras.applications.<twin>(weights=PATH)` accepts (a head in the file
        is not part of a backbone), or "default": a preset folder's own
        weights, None for a named network (nothing is downloaded unasked).
        """
        if presets.is_keras_hub_preset(name):
            return super().from_preset(str(name), load_weights=weights is not None, **changes)
        backbone = cls(**family_config(name, changes))
        if weights not in (None, "default"):
            load_application_weights(backbone, name, weights, changes)
        return backbone


def family_config(name, changes):
    """The fields of preset `name`'s `ResNetConfig` with `changes`, and Keras's name/dtype."""
    preset = get_family_preset(name)
    fields = set(preset.config.get_config())
    keras_arguments = {k: v for k, v in changes.items() if k not in fields}
    unknown = sorted(set(keras_arguments) - KERAS_ARGUMENTS)
    if unknown:
        raise TypeError(f"unknown argument(s) {unknown} for ResNet preset {name!r}: it takes "
                        f"the ResNetConfig fields {sorted(fields)} and {sorted(KERAS_ARGUMENTS)}")
    config = preset.config.replace(**{k: v for k, v in changes.items() if k in fields})
    return {"name": name.lower().replace("-", "_"), **keras_arguments, **config.get_config()}


def load_application_weights(backbone, name, weights, changes=None):
    """Loads a keras.applications weight file of preset `name` into `backbone`.

    Strict: every layer with weights in the backbone must be in the file with
    the same shapes, and the file may hold nothing else but the application's
    head. Returns the head's [kernel, bias] arrays, or None for a file without.
    """
    preset = get_family_preset(name)
    if preset.keras_application is None:
        raise ValueError(
            f"{name!r} has no keras.applications twin, so no Keras weight file fits it; the "
            f"presets with one are "
            f"{sorted(p.name for p in _application_presets())}: use weights=None")
    if changes and set(changes) & set(preset.config.get_config()):
        raise ValueError(
            f"weights={weights!r} are {preset.keras_application}'s; the configuration changes "
            f"{sorted(set(changes) & set(preset.config.get_config()))} make another network: "
            f"drop them, or use weights=None")
    application = _application(preset.keras_application, weights)
    arrays = {layer.name: layer.get_weights() for layer in application.layers if layer.weights}
    head_arrays = arrays.pop(APPLICATION_HEAD, None)
    ours = {layer.name: layer for layer in backbone.layers if layer.weights}
    missing, extra = sorted(set(ours) - set(arrays)), sorted(set(arrays) - set(ours))
    if missing or extra:
        raise ValueError(
            f"{preset.keras_application} weights do not match {backbone.name}: layers "
            f"missing from the file {missing[:5]}, unknown to the model {extra[:5]}")
    for layer_name, layer in ours.items():
        for variable, value in zip(layer.weights, arrays[layer_name]):
            if tuple(variable.shape) != value.shape:
                raise ValueError(
                    f"{layer_name}/{variable.name}: the file holds shape {value.shape}, "
                    f"{backbone.name} has {tuple(variable.shape)}")
        layer.set_weights(arrays[layer_name])
    return head_arrays


def _application_presets():
    return [preset for preset in PRESETS.values() if preset.keras_application]


def _application(application_name, weights):
    """The keras.applications model `application_name` with `weights` loaded by Keras."""
    build = getattr(keras.applications, application_name)
    if weights == "imagenet":
        try:
            return build(weights="imagenet", classifier_activation=None)
        except Exception as error:  # Keras's download: URL, HTTP and socket errors
            cache = pathlib.Path(os.environ.get("KERAS_HOME", "~/.keras")) / "models"
            raise WeightsUnavailableError(
                f"Keras's ImageNet weights of {application_name} are not in Keras's cache "
                f"({cache}) and could not be downloaded ({type(error).__name__}: {error}). "
                f"Download "
                f"them on a machine with internet access (keras.applications."
                f"{application_name}(weights='imagenet') does) and copy the .h5 file there, "
                f"or pass its path as weights=") from error
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weight file {path!r} (weights= takes None, 'imagenet' or "
                                f"the path of a keras.applications {application_name} file)")
    include_top = _has_head(path)
    try:
        return build(weights=path, include_top=include_top, classifier_activation=None)
    except (ValueError, OSError, KeyError) as error:
        raise ValueError(
            f"{path!r} is not a keras.applications.{application_name} weight file "
            f"({'with' if include_top else 'without'} the top, as read from it): Keras says "
            f"{type(error).__name__}: {error}") from error


def _has_head(path):
    """Whether a legacy `.h5` or Keras 3 `.weights.h5` file holds the dense top."""
    try:
        with h5py.File(path, "r") as file:
            if path.endswith(".weights.h5"):  # Keras 3: weights by object path
                return "layers/dense" in file
            group = file["model_weights"] if "model_weights" in file else file
            names = [name.decode() if isinstance(name, bytes) else name
                     for name in group.attrs.get("layer_names", [])]
            return APPLICATION_HEAD in names
    except OSError as error:
        raise ValueError(f"{path!r} is not an HDF5 weight file ({error}): pass a .h5 or "
                         f".weights.h5 file keras.applications loads") from error
