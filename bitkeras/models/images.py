"""The image contract of every bitkeras model, checked where images come in.

Accepted: NHWC RGB images of any height and width, either

- floating point (float16, bfloat16, float32, float64) with values in [0, 1],
  as TF-Hub's BiT modules take them, or
- uint8 with values in [0, 255], which are divided by 255.

Anything else (other integer types, bool, strings) is refused, and so are float
images outside [0, 1] (0..255 floats or images already scaled to [-1, 1]).
The value range is checked on concrete arrays (NumPy inputs to `fit`,
`predict`, `evaluate`, and eager calls); inside compiled graphs only the dtype and
shape can be checked.
"""

import keras
import numpy as np
from keras import ops

from bitkeras import files

RANGE_SLACK = 0.1
"""How far outside [0, 1] float values may stray (interpolation overshoot)."""

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def standardize_images(images, model_name):
    """Checks images against the contract and returns float images in [0, 1]."""
    dtype = keras.backend.standardize_dtype(images.dtype)
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[-1] not in (3, None):
        raise ValueError(
            f"{model_name} takes RGB images shaped (batch, height, width, 3); got shape "
            f"{shape}. Add a batch axis for a single image, convert grayscale with "
            f"tf.image.grayscale_to_rgb, drop an alpha channel with images[..., :3], and "
            f"transpose channels-first data to channels-last."
        )
    if dtype == "uint8":
        return ops.cast(images, "float32") / 255.0
    if dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{model_name} takes float images in [0, 1] or uint8 images in [0, 255]; "
            f"got dtype {dtype}. Convert with images.astype('float32') / 255 if they are "
            f"0..255 pixel values."
        )
    if _is_concrete(images):
        check_value_range(ops.convert_to_numpy(ops.cast(images, "float32")), model_name)
    return images


def range_fault(low, high):
    """How float pixels spanning [low, high] miss [0, 1] (with RANGE_SLACK): "0..255" where
    they reach past 1 (raw pixel values), "-1..1" where only below 0, None where they fit."""
    if high > 1 + RANGE_SLACK:
        return "0..255"
    if low < -RANGE_SLACK:
        return "-1..1"
    return None


def check_value_range(array, model_name):
    """Raises if a float array holds NaN or Inf, or values outside [0, 1] (with slack)."""
    array = np.asarray(array)
    if array.dtype == np.uint8 or array.size == 0:
        return
    finite = np.isfinite(array)
    if not finite.all():
        first = np.unravel_index(np.argmin(finite), array.shape)
        where = f"image {first[0]}" if array.ndim == 4 else f"index {tuple(map(int, first))}"
        raise ValueError(
            f"{model_name} takes finite pixel values; {where} holds "
            f"{array[first]} ({int(array.size - finite.sum())} non-finite values in all): "
            f"repair or drop those images."
        )
    low, high = float(np.min(array)), float(np.max(array))
    fault = range_fault(low, high)
    if fault:
        hint = (
            "divide 0..255 pixel values by 255 (or pass them as uint8)"
            if fault == "0..255"
            else "undo a [-1, 1] scaling with (images + 1) / 2: the model rescales itself"
        )
        raise ValueError(
            f"{model_name} takes float images with values in [0, 1]; got values in "
            f"[{low:g}, {high:g}]: {hint}."
        )


def check_array_inputs(inputs, model_name):
    """Checks NumPy images handed to fit/evaluate/predict before they are batched."""
    if isinstance(inputs, np.ndarray) and inputs.dtype.kind == "f":
        check_value_range(inputs, model_name)


def _is_concrete(tensor):
    """Whether a tensor holds values now (eager), not a traced placeholder."""
    if isinstance(tensor, np.ndarray):
        return True
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly() and hasattr(tensor, "numpy")
    if backend == "jax":
        import jax

        return not isinstance(tensor, jax.core.Tracer)
    return backend == "torch" or backend == "numpy"


class ImageModel(files.AtomicSaveMixin, keras.Model):
    """Base of bitkeras's functional models: checks images as they come in.

    Overrides `call` (which sees the caller's dtype, before Keras casts it to the
    input's float32) and checks NumPy inputs of fit/evaluate/predict.
    """

    def call(self, inputs, training=None, mask=None):
        inputs = standardize_images(inputs, self.name)
        return super().call(inputs, training=training, mask=mask)

    @property
    def input_spec(self):
        # Shapes are checked, with a clearer message, in standardize_images.
        return None

    @input_spec.setter
    def input_spec(self, value):
        pass

    def fit(self, x=None, *args, **kwargs):
        check_array_inputs(x, self.name)
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        check_array_inputs(x, self.name)
        return super().evaluate(x, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        check_array_inputs(x, self.name)
        return super().predict(x, *args, **kwargs)
