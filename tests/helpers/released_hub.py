"""A TF-Hub module in the released BiT layout, made from a synthetic checkpoint.

The released TF2 modules hold tf.Variables named by the checkpoint keys
(`resnet/block1/unit01/a/group_norm/gamma`, ...) and a reusable-SavedModel
`__call__(images, training=False)` on float images in [0, 1]. This writes one
with the TensorFlow ops of the documented function (../shared/docs/bit-reference.md),
sharing no code with bitkeras.
"""

import tensorflow as tf


class ReleasedLayoutModule(tf.__internal__.tracking.AutoTrackable):
    def __init__(self, arrays, block_units):
        self._block_units = block_units
        self._weights = {key: tf.Variable(value, name=key) for key, value in arrays.items()}
        self.bit_variables = list(self._weights.values())
        self.variables = list(self._weights.values())
        self.trainable_variables = list(self._weights.values())
        self.regularization_losses = []
        spec = tf.TensorSpec([None, None, None, 3], tf.float32)
        self.__call__ = tf.function(self._forward)
        for training in (False, True):
            self.__call__.get_concrete_function(spec, training)

    def _forward(self, images, training=False):
        w = self._weights

        def gn(prefix, x):
            shape = tf.shape(x)
            channels = x.shape[-1]
            grouped = tf.reshape(x, [shape[0], shape[1], shape[2], 32, channels // 32])
            mean, variance = tf.nn.moments(grouped, axes=[1, 2, 4], keepdims=True)
            normed = tf.reshape((grouped - mean) * tf.math.rsqrt(variance + 1e-5), shape)
            return normed * w[prefix + "group_norm/gamma"] + w[prefix + "group_norm/beta"]

        def sconv(key, x, stride=1):
            kernel = w[key]
            mean, variance = tf.nn.moments(kernel, axes=[0, 1, 2], keepdims=True)
            kernel = (kernel - mean) / tf.sqrt(variance + 1e-10)
            return tf.nn.conv2d(x, kernel, stride, "VALID")

        def pad(x, amount):
            return tf.pad(x, [[0, 0], [amount, amount], [amount, amount], [0, 0]])

        x = images * 2.0 - 1.0
        x = sconv("resnet/root_block/standardized_conv2d/kernel", pad(x, 3), 2)
        x = tf.nn.max_pool2d(pad(x, 1), 3, 2, "VALID")
        for block, units in enumerate(self._block_units, start=1):
            for unit in range(1, units + 1):
                prefix = f"resnet/block{block}/unit{unit:02d}/"
                stride = 2 if (block > 1 and unit == 1) else 1
                p = tf.nn.relu(gn(prefix + "a/", x))
                shortcut = (sconv(prefix + "a/proj/standardized_conv2d/kernel", p, stride)
                            if unit == 1 else x)
                h = sconv(prefix + "a/standardized_conv2d/kernel", p)
                h = sconv(prefix + "b/standardized_conv2d/kernel",
                          pad(tf.nn.relu(gn(prefix + "b/", h)), 1), stride)
                h = sconv(prefix + "c/standardized_conv2d/kernel", tf.nn.relu(gn(prefix + "c/", h)))
                x = h + shortcut
        features = tf.reduce_mean(tf.nn.relu(gn("resnet/", x)), axis=[1, 2])
        if "resnet/head/conv2d/kernel" in w:
            return features @ w["resnet/head/conv2d/kernel"][0, 0] + w["resnet/head/conv2d/bias"]
        return features


def write_released_module(path, arrays, block_units):
    """Saves a module in the released layout at `path`; returns the path."""
    tf.saved_model.save(ReleasedLayoutModule(arrays, block_units), str(path))
    return path
