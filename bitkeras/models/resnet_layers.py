"""Layers of the ResNet family that Keras lacks: input scalings and option-A shortcuts.

`keras.ops` only, registered as serializable.
"""

import keras
import numpy as np
from keras import ops

from bitkeras.models.layers import strided_shape

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""ImageNet's RGB channel means on [0, 1] pixels."""

IMAGENET_STD = (0.229, 0.224, 0.225)

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
"""The BGR channel means (0..255) the Caffe-trained ResNets subtract, as keras.applications."""


@keras.saving.register_keras_serializable(package="bitkeras")
class InputScaling(keras.layers.Layer):
    """Images in [0, 1] to what a network was trained on.

    `mode`: "tf" (to [-1, 1]), "caffe" (0..255, channels reversed to BGR,
    the ImageNet BGR means subtracted: keras.applications' ResNet50), "torch"
    (ImageNet mean and standard deviation) or "pixel_mean" (a mean image
    of `mean_image_size` square, set by `adapt`, subtracted from images of
    that size; images of other sizes, as in multi-scale testing, get its
    per-channel average subtracted).

    >>> scaling = InputScaling("tf")
    >>> float(scaling(np.ones((1, 2, 2, 3), "float32"))[0, 0, 0, 0])
    1.0
    """

    def __init__(self, mode, mean_image_size=32, **kwargs):
        super().__init__(**kwargs)
        self.mode = mode
        self.mean_image_size = mean_image_size

    def build(self, input_shape):
        if self.mode == "pixel_mean":
            side = self.mean_image_size
            self.pixel_mean = self.add_weight(
                name="pixel_mean", shape=(side, side, 3), initializer="zeros", trainable=False)
        self.built = True

    def adapt(self, images, batch_size=256):
        """Sets the mean image from images in [0, 1] (or uint8): an array or a dataset.

        A dataset may yield images or (images, labels), batched or not.
        Images of another size are resized to `mean_image_size` first.
        """
        if self.mode != "pixel_mean":
            raise ValueError(f"only a 'pixel_mean' scaling learns from data; this is {self.mode!r}")
        total, count = np.zeros((self.mean_image_size,) * 2 + (3,), "float64"), 0
        for batch in _image_batches(images, batch_size):
            batch = np.asarray(batch)
            batch = batch / 255.0 if batch.dtype == np.uint8 else batch.astype("float32")
            if batch.ndim == 3:
                batch = batch[None]
            if batch.shape[1:3] != (self.mean_image_size,) * 2:
                batch = ops.convert_to_numpy(
                    ops.image.resize(batch, (self.mean_image_size,) * 2))
            total += batch.sum(axis=0)
            count += len(batch)
        if not count:
            raise ValueError("adapt() got no images")
        if not self.built:
            self.build((None, None, None, 3))
        self.pixel_mean.assign((total / count).astype("float32"))

    def call(self, images):
        if self.mode == "tf":
            return images * 2.0 - 1.0
        if self.mode == "caffe":
            bgr = ops.flip(images, axis=-1) * 255.0
            return bgr - ops.convert_to_tensor(CAFFE_MEAN_BGR, images.dtype)
        if self.mode == "torch":
            mean = ops.convert_to_tensor(IMAGENET_MEAN, images.dtype)
            return (images - mean) / ops.convert_to_tensor(IMAGENET_STD, images.dtype)
        mean_image = ops.cast(self.pixel_mean, images.dtype)
        channel_mean = ops.mean(mean_image, axis=(0, 1))
        side = self.mean_image_size
        height, width = images.shape[1], images.shape[2]
        if height is not None and width is not None:
            return images - (mean_image if (height, width) == (side, side) else channel_mean)
        shape = ops.shape(images)  # sizes known only when it runs (a traced export)
        same = ops.logical_and(ops.equal(shape[1], side), ops.equal(shape[2], side))
        return ops.cond(same, lambda: images - mean_image, lambda: images - channel_mean)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, mean_image_size=self.mean_image_size)
        return config


def _image_batches(images, batch_size):
    if isinstance(images, np.ndarray):
        for start in range(0, len(images), batch_size):
            yield images[start:start + batch_size]
        return
    for element in images:
        yield ops.convert_to_numpy(element[0] if isinstance(element, tuple) else element)


@keras.saving.register_keras_serializable(package="bitkeras")
class ZeroPadShortcut(keras.layers.Layer):
    """ResNet's option-A shortcut: every `strides`-th pixel, zero channels appended.

    The identity where dimensions grow, with no parameters: `x[:, ::s, ::s]`
    followed by `out_channels - in_channels` zero channels.

    >>> shortcut = ZeroPadShortcut(out_channels=4, strides=2)
    >>> tuple(shortcut(np.ones((1, 5, 5, 2), "float32")).shape)
    (1, 3, 3, 4)
    """

    def __init__(self, out_channels, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.out_channels = out_channels
        self.strides = strides

    def call(self, inputs):
        if self.strides > 1:
            inputs = inputs[:, ::self.strides, ::self.strides, :]
        extra = self.out_channels - inputs.shape[-1]
        if extra < 0:
            raise ValueError(f"{self.name}: {inputs.shape[-1]} channels cannot be padded to "
                             f"{self.out_channels}")
        return ops.pad(inputs, [[0, 0], [0, 0], [0, 0], [0, extra]])

    def compute_output_shape(self, input_shape):
        return strided_shape(input_shape, self.strides, self.out_channels)

    def get_config(self):
        config = super().get_config()
        config.update(out_channels=self.out_channels, strides=self.strides)
        return config
