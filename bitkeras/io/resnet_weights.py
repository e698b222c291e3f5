"""keras.applications weight files, into the ResNet family's twins of those models.

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

APPLICATION_HEAD = "predictions"
"""The name of keras.applications' classification layer."""


def load_application_weights(backbone, preset, weights):
    """Loads a keras.applications weight file of `preset`'s twin into `backbone`.

    `weights`: "imagenet" (Keras's released file) or the path of a file
    `keras.applications.<twin>(weights=PATH)` accepts. Strict: every layer
    with weights in the backbone must be in the file with the same shapes, and
    the file may hold nothing else but the application's head. Returns the
    head's [kernel, bias] arrays, or None for a file without.
    """
    if preset.keras_application is None:
        raise ValueError(
            f"{preset.name!r} has no keras.applications twin, so no Keras weight file fits "
            f"it; the presets with one are "
            f"{sorted(p.name for p in _application_presets())}: use weights=None")
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
    return [preset for preset in presets.PRESETS.values() if preset.keras_application]


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
