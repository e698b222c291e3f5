"""Preprocessing for BiT models in keras-hub's roles: an ImageConverter and a preprocessor.

BiT evaluates an image by resizing it to a square of the fine-tuning crop
size, ignoring its aspect ratio. `BiTImageConverter` does that (uint8 or float
images in [0, 1] in, float32 in [0, 1] out: the model rescales to [-1, 1]
itself), and `BiTImageClassifierPreprocessor` carries it for a classifier, as
keras-hub tasks carry theirs. `ten_crop_views` cuts the classic ten views of a
resized image for test-time augmentation.
"""

import keras
import keras_hub
from keras import ops

from bitkeras import compat
from bitkeras.models.backbone import ResNetV2Backbone


@keras.saving.register_keras_serializable(package="bitkeras")
class BiTImageConverter(keras_hub.layers.ImageConverter):
    """Resizes images to an `image_size` square, BiT's way; float32 in [0, 1] out.

    Takes images (height, width, 3) or batches of them, uint8 (divided by 255)
    or float in [0, 1]. The resize is bilinear and ignores the aspect ratio
    (BiT's evaluation resize); the result is clipped to [0, 1] against
    interpolation overshoot. `image_size`: an int or (height, width); None
    leaves the size alone.

    >>> converter = BiTImageConverter(image_size=32)
    >>> tuple(converter(np.zeros((2, 50, 70, 3), "uint8")).shape)
    (2, 32, 32, 3)
    """

    backbone_cls = ResNetV2Backbone

    def __init__(self, image_size=None, interpolation="bilinear", antialias=False, **kwargs):
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        kwargs.pop("crop_to_aspect_ratio", None)  # BiT ignores the aspect ratio
        super().__init__(image_size=image_size, crop_to_aspect_ratio=False,
                         interpolation=interpolation, antialias=antialias, **kwargs)

    def call(self, inputs):
        tensors = _ops_for(inputs)
        # To [0, 1] before resizing: Keras resizes uint8 images back to uint8.
        if keras.backend.standardize_dtype(inputs.dtype) == "uint8":
            inputs = tensors.cast(inputs, "float32") / 255.0
        images = super().call(inputs)
        return tensors.clip(tensors.cast(images, "float32"), 0.0, 1.0)


class _TensorFlowOps:
    """The two ops the converter needs, on tf.Tensors (a tf.data pipeline under any backend)."""

    @staticmethod
    def cast(x, dtype):
        import tensorflow as tf

        return tf.cast(x, dtype)

    @staticmethod
    def clip(x, low, high):
        import tensorflow as tf

        return tf.clip_by_value(x, low, high)


def _ops_for(tensor):
    """`keras.ops`, or TensorFlow's where a tf.data pipeline hands a tf.Tensor to another backend.

    keras-hub's preprocessing runs in tf.data whatever the backend (its
    ImageConverter switches to TensorFlow there in the same way).
    """
    if keras.backend.backend() != "tensorflow" and type(tensor).__module__.startswith(
            "tensorflow"):
        return _TensorFlowOps
    return ops


@keras.saving.register_keras_serializable(package="bitkeras")
class BiTImageClassifierPreprocessor(keras_hub.models.ImageClassifierPreprocessor):
    """A keras-hub image-classifier preprocessor whose converter is a `BiTImageConverter`."""

    backbone_cls = ResNetV2Backbone
    image_converter_cls = BiTImageConverter

    def __init__(self, image_converter=None, **kwargs):
        super().__init__(image_converter=image_converter or BiTImageConverter(), **kwargs)
        # It holds no weights and runs in tf.data, where Keras never builds it. Left
        # unbuilt, it made Keras take the classifier for unbuilt: under JAX, every
        # predict first ran the model on a batch op by op to build it (16 s of a first
        # 17-s predict of a tiny BiT on a 2-core Xeon, 0.5 s of each later 1-s one).
        for layer in compat.all_layers(self):
            if not layer.weights:
                layer.built = True


def ten_crop_views(image, crop_size):
    """The ten views of one square image (size, size, 3): 4 corners, centre, and their mirrors.

    Returns (10, crop_size, crop_size, 3).
    """
    size = ops.shape(image)[0]
    far = size - crop_size
    middle = far // 2
    corners = [(0, 0), (0, far), (far, 0), (far, far), (middle, middle)]
    crops = [ops.slice(image, (top, left, 0), (crop_size, crop_size, 3))
             for top, left in corners]
    crops += [ops.flip(crop, axis=1) for crop in crops]
    return ops.stack(crops)
