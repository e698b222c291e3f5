"""TF-Hub modules in: as a Keras 3 layer, or converted into a native BiTBackbone.

A handle is a TF-Hub URL (resolved into TF-Hub's own cache layout,
`$TFHUB_CACHE_DIR/<sha1 of the handle>`, so a cache that `tensorflow_hub` filled
is reused and the other way round; tfhub.dev now forwards to Kaggle Models), a
Kaggle Models handle `kaggle://owner/model/framework/variation/version`
(through `kagglehub` and its cache), or a local SavedModel folder. Keras 3 does not
take `hub.KerasLayer`; `HubModule` is Keras's own `TFSMLayer` pointed at the
module's reusable-SavedModel `__call__`, so its variables are tracked, `fit`
trains them, and a model holding one saves and reloads.

Modules whose variables carry BiT's names (`resnet/block1/unit01/...`, as the
released feature-vector and classification modules do, and as bitkeras's own
exports record in `bit_keys.txt`) also convert into a native BiTBackbone.
"""

import hashlib
import http.client
import os
import pathlib
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request

import keras
import tensorflow as tf

from bitkeras import compat, files
from bitkeras.io import checkpoint

CACHE_ENV = "TFHUB_CACHE_DIR"
DOWNLOAD_TIMEOUT_SECONDS = 30

PROBE_SIZE = 32
"""Side of the blank images a module is probed with when it is loaded."""


class HubUnavailableError(OSError):
    """A TF-Hub handle that is neither cached nor downloadable."""


KAGGLE_SCHEME = "kaggle://"
"""Kaggle Models, where tfhub.dev's modules live now: kaggle://google/bit/tensorFlow2/m-r50x1/1."""


def is_remote(handle):
    return str(handle).startswith(("http://", "https://", "gs://", KAGGLE_SCHEME))


def resolve(handle):
    """The local SavedModel folder of `handle` (downloaded into the TF-Hub cache if needed)."""
    if str(handle).startswith(KAGGLE_SCHEME):
        path = kaggle_module(str(handle))
    elif is_remote(handle):
        path = cached_module(str(handle))
    else:
        path = pathlib.Path(handle).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"no TF-Hub module at {str(handle)!r}: pass a SavedModel folder or a "
                f"https://tfhub.dev/... handle"
            )
    if not (path / "saved_model.pb").is_file():
        raise ValueError(
            f"{str(handle)!r} is not a SavedModel: {path} has no saved_model.pb (a TF-Hub "
            f"module folder holds saved_model.pb and variables/; TF1 hub modules with "
            f"tfhub_module.pb are not supported)"
        )
    return path


def cache_dir():
    """TF-Hub's cache folder: `$TFHUB_CACHE_DIR`, else `tfhub_modules` in the temporary folder.

    The same default `tensorflow_hub` uses, so either fills the cache for the other.
    """
    return pathlib.Path(
        os.environ.get(CACHE_ENV) or pathlib.Path(tempfile.gettempdir()) / "tfhub_modules"
    ).expanduser()


def cache_folder(handle):
    """Where TF-Hub's cache keeps the module of a URL handle: named by the handle's SHA-1."""
    return cache_dir() / hashlib.sha1(str(handle).encode("utf8")).hexdigest()


def cached_module(handle):
    """The cached folder of a URL handle, downloading and extracting the module first if needed."""
    folder = cache_folder(handle)
    if folder.is_dir():
        return folder
    url = f"{handle}?tf-hub-format=compressed"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response, \
                tempfile.TemporaryFile() as archive:
            shutil.copyfileobj(response, archive)
            archive.seek(0)
            with files.atomic_path(folder) as temporary, \
                    tarfile.open(fileobj=archive, mode="r:gz") as tar:
                tar.extractall(temporary, filter="data")
    except (urllib.error.URLError, http.client.HTTPException, OSError, tarfile.TarError) as error:
        raise HubUnavailableError(
            f"could not download the TF-Hub module {handle} "
            f"({getattr(error, 'reason', error)}). On a machine with internet access "
            f"download {url} (a .tar.gz), extract it into a folder and pass that folder "
            f"instead of the URL, or extract it to {folder} (TF-Hub's cache for this handle; "
            f"set {CACHE_ENV} to move the cache)."
        ) from error
    return folder


def kaggle_module(handle):
    """The folder of a Kaggle Models handle: kagglehub's cache, else downloaded by kagglehub."""
    import kagglehub
    from kagglehub import exceptions

    model = handle[len(KAGGLE_SCHEME):]
    try:
        return pathlib.Path(kagglehub.model_download(model))
    except (OSError, ValueError, exceptions.BackendError, exceptions.NotFoundError,
            exceptions.UnauthenticatedError) as error:
        raise HubUnavailableError(
            f"could not download the Kaggle model {handle} ({type(error).__name__}). On a "
            f"machine with internet access run kagglehub.model_download({model!r}) and copy "
            f"kagglehub's cache (KAGGLEHUB_CACHE, default ~/.cache/kagglehub) here, or "
            f"download https://www.kaggle.com/models/{model}, extract it into a folder and "
            f"pass that folder instead of the handle."
        ) from error


def load_module(handle):
    """(the loaded SavedModel object, its local path), checked to be an image module."""
    path = resolve(handle)
    try:
        module = tf.saved_model.load(str(path))
    except (OSError, ValueError, tf.errors.OpError) as error:
        message = getattr(error, "message", str(error)).strip().splitlines()
        raise ValueError(
            f"{str(path)!r} cannot be loaded as a SavedModel ({type(error).__name__}: "
            f"{message[0] if message else ''}): pass the folder of a TF-Hub module (with "
            f"saved_model.pb and variables/), or delete a damaged download from the cache "
            f"and resolve the handle again"
        ) from error
    if not callable(getattr(module, "__call__", None)) or not hasattr(module, "variables"):
        raise ValueError(
            f"{str(handle)!r} is not a reusable TF-Hub module: it lacks __call__ or "
            f"variables (signatures: {list(getattr(module, 'signatures', {}))})"
        )
    return module, path


def bit_arrays(module):
    """The module's variables under the released `.npz` keys, or None if they are not BiT's."""
    keys_asset = getattr(module, "bit_keys", None)
    variables = getattr(module, "checkpoint_variables", None)
    if keys_asset is not None and variables is not None:
        keys = pathlib.Path(keys_asset.asset_path.numpy().decode()).read_text().split()
        arrays = {key: variable.numpy() for key, variable in zip(keys, variables)}
        head_kernel = checkpoint.HEAD_PREFIX + "conv2d/kernel"
        if head_kernel in arrays:  # a Dense kernel; the released layout is a 1x1 conv's
            arrays[head_kernel] = arrays[head_kernel][None, None]
        return arrays
    arrays = {}
    for variable in module.variables:
        name = variable.name.split(":")[0]
        if "resnet/" in name:
            arrays[name[name.index("resnet/"):]] = variable.numpy()
    return arrays or None


def label_names(module):
    """Class names from a module's labels asset, or None."""
    labels = getattr(module, "labels", None)
    if labels is None:
        return None
    return tuple(pathlib.Path(labels.asset_path.numpy().decode()).read_text().splitlines())


def module_checkpoint(handle):
    """(architecture, arrays under the released `.npz` keys, label names) of a BiT module.

    What converting a module into a native backbone needs; raises for a
    module whose variables are not BiT's.
    """
    module, _ = load_module(handle)
    arrays = bit_arrays(module)
    architecture = checkpoint.describe_arrays(arrays)[0] if arrays else None
    if architecture is None:
        raise ValueError(
            f"the module {str(handle)!r} does not hold BiT variables (named 'resnet/...'), so "
            f"it cannot become a native BiTBackbone: use it as a layer (convert=False)"
        )
    return architecture, arrays, label_names(module)


@keras.saving.register_keras_serializable(package="bitkeras")
class HubModule(keras.layers.TFSMLayer):
    """A TF-Hub image module as a Keras 3 layer: float images in [0, 1] -> (batch, outputs).

    Its variables are the layer's weights (trainable unless `trainable=False`),
    so fine-tuning updates them and `model.save` stores them; reloading a
    saved model reads the module from `handle` again, then its saved weights
    (Keras asks for `safe_mode=False` to reload any SavedModel layer).

    >>> layer = HubModule("https://tfhub.dev/google/bit/m-r50x1/1")  # doctest: +SKIP
    >>> tuple(layer(np.zeros((1, 128, 128, 3), "float32")).shape)  # doctest: +SKIP
    (1, 2048)
    """

    def __init__(self, handle, trainable=True, name=None, dtype=None, **kwargs):
        module, path = load_module(handle)
        self.handle = str(handle)
        arrays = bit_arrays(module) or {}
        # A classification module's output is logits, not features.
        self.has_bit_head = any(key.startswith(checkpoint.HEAD_PREFIX) for key in arrays)
        self._training_values = _traced_training_values(module.__call__)
        super().__init__(str(path), call_endpoint="__call__", trainable=trainable, name=name,
                         dtype=dtype, **kwargs)
        probe = self.call(tf.zeros([1, PROBE_SIZE, PROBE_SIZE, 3]))
        if not isinstance(probe, tf.Tensor) or probe.shape.rank != 2:
            raise ValueError(
                f"the module {self.handle!r} does not map images to one vector each: on a "
                f"(1, {PROBE_SIZE}, {PROBE_SIZE}, 3) batch it returned "
                f"{getattr(probe, 'shape', type(probe).__name__)}; bitkeras takes image "
                f"feature-vector and classification modules"
            )
        self.output_size = int(probe.shape[-1])

    def _add_existing_weight(self, weight):
        # As TFSMLayer does, minus the ":0" that TF variable names end with, which
        # Keras optimizers cannot put in their slot variables' names.
        compat.add_tracked_weight(self, weight, keras.Variable)

    def call(self, inputs, training=False):
        training = bool(training)
        if training in self._training_values:
            return self.call_endpoint_fn(inputs, training=training)
        return self.call_endpoint_fn(inputs)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_size)

    def get_config(self):
        return {"handle": self.handle, "trainable": self.trainable, "name": self.name,
                "dtype": self.dtype_policy.name}


def _traced_training_values(function):
    """The `training` values a restored `__call__` has concrete functions for."""
    values = set()
    for concrete in getattr(function, "concrete_functions", ()):
        args, kwargs = concrete.structured_input_signature
        if "training" in kwargs and isinstance(kwargs["training"], bool):
            values.add(kwargs["training"])
        elif len(args) > 1 and isinstance(args[1], bool):
            values.add(args[1])
    return values


@keras.saving.register_keras_serializable(package="bitkeras")
class HubBackbone(keras.Model):
    """A feature-vector module as a backbone: images -> (batch, feature_channels).

    What `BiTBackbone.from_hub(handle, convert=False)` returns; a BiTClassifier
    takes it like a native backbone (freezing all of it with trainable="head").
    """

    def __init__(self, handle=None, trainable=True, module=None, **kwargs):
        if module is None:
            module = HubModule(handle, trainable=trainable, name="hub_module")
        elif isinstance(module, dict):
            # Through Keras's deserialization, so its safe_mode rule for SavedModel layers holds.
            module = keras.saving.deserialize_keras_object(module)
        images = keras.Input(shape=(None, None, 3), name="images")
        super().__init__(inputs=images, outputs=module(images), **kwargs)
        self.module = module
        self.handle = module.handle
        self.trainable = trainable
        self.feature_channels = module.output_size

    def get_config(self):
        return {"module": keras.saving.serialize_keras_object(self.module),
                "trainable": self.trainable, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
