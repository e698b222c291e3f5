"""Keras 3 layers of BiT: weight-standardized convolution, GroupNorm, bottleneck.

Every layer uses `keras.ops` only, so it builds under any Keras backend, and is
registered as serializable so `.keras` files reload it.
"""

import keras

from bitkeras.models import kernels
from bitkeras.models.resnet_family import GROUPS

GROUP_NORM_EPSILON = 1e-5
"""BiT's GroupNorm epsilon (Keras's own layer defaults to 1e-3)."""

STANDARDIZATION_EPSILON = 1e-10
"""Added to the kernel variance before the square root in weight standardization."""


@keras.saving.register_keras_serializable(package="bitkeras")
class StandardizedConv2D(keras.layers.Conv2D):
    """Conv2D whose kernel is weight-standardized before every use.

    Per output channel, the kernel is standardized over (height, width, in):
    `(kernel - mean) / sqrt(variance + epsilon)` with the population variance.
    The stored kernel stays unstandardized (that is what BiT checkpoints hold);
    there is no bias by default and no learnable scale.

    Example:

    >>> layer = StandardizedConv2D(64, 3, padding="same")
    >>> tuple(layer(np.zeros((1, 8, 8, 3), "float32")).shape)
    (1, 8, 8, 64)
    """

    def __init__(self, filters, kernel_size, use_bias=False,
                 standardization_epsilon=STANDARDIZATION_EPSILON, **kwargs):
        super().__init__(filters, kernel_size, use_bias=use_bias, **kwargs)
        self.standardization_epsilon = standardization_epsilon

    def add_weight(self, *args, **kwargs):
        # Under a mixed-precision policy Keras would hand the kernel to the
        # convolution already rounded to the compute dtype; it is standardized
        # from its float32 values instead and rounded once, after (see
        # convolution_op).
        if kwargs.get("name") == "kernel":
            kwargs["autocast"] = False
        return super().add_weight(*args, **kwargs)

    def call(self, inputs, training=None):
        with kernels.calling(training):
            return super().call(inputs)

    def convolution_op(self, inputs, kernel):
        # How it convolves (standardized how, and by which kernel) is bitkeras.models.kernels'.
        return kernels.convolve(self, inputs, kernel)

    def get_config(self):
        config = super().get_config()
        config["standardization_epsilon"] = self.standardization_epsilon
        return config


@keras.saving.register_keras_serializable(package="bitkeras")
class GroupNormalization(keras.layers.GroupNormalization):
    """Keras's GroupNormalization, computed faster.

    The same layer, weights and config as `keras.layers.GroupNormalization`.
    On 4-D channels-last inputs with scale and centre (BiT's case) it
    computes the same function as `bitkeras.models.kernels.group_norm`
    does, with statistics summed per channel first (faster on CPUs, no less
    exact) and in float32; under the TensorFlow backend on CPUs as bitkeras's
    C++ op (`bitkeras.models.native`), elsewhere at inference (`training`
    false or unset) as one XLA cluster. Other inputs and settings run Keras's
    own layer.

    `call` takes Keras's arguments only; the fused forms BiT's units use
    (GroupNorm with the ReLU after it, the zero padding before a strided
    convolution, a second use of the inputs) are `bitkeras.models.kernels.normalize`'s.
    """

    def call(self, inputs, training=None):
        return kernels.normalize(self, inputs, training)


def group_normalization(name=None, **kwargs):
    """GroupNormalization with BiT's settings: 32 groups, epsilon 1e-5."""
    return GroupNormalization(groups=GROUPS, epsilon=GROUP_NORM_EPSILON, name=name, **kwargs)


def strided_shape(input_shape, strides, channels):
    """The NHWC shape a unit of stride `strides` and `channels` outputs (sizes may be None)."""
    batch, height, width = input_shape[:3]

    def strided(size):
        return None if size is None else (size - 1) // strides + 1

    return (batch, strided(height), strided(width), channels)


@keras.saving.register_keras_serializable(package="bitkeras")
class PreActBottleneck(keras.layers.Layer):
    """The pre-activation bottleneck unit of ResNet-v2 with GroupNorm + WS.

    For an input `x` (NHWC):
    `p = relu(GN_a(x))`; the shortcut is `x`, or `proj(p)` (1x1, strided) when
    `projection` is set; the residual branch is `conv_a` (1x1) ->
    `relu(GN_b)` -> `conv_b` (3x3, strided, zero-pad 1, VALID) -> `relu(GN_c)`
    -> `conv_c` (1x1 to `out_channels`); the output is their sum.

    Example:

    >>> unit = PreActBottleneck(out_channels=128, mid_channels=32, strides=2,
    ...                         projection=True)
    >>> tuple(unit(np.zeros((2, 9, 9, 64), "float32")).shape)
    (2, 5, 5, 128)
    """

    def __init__(self, out_channels, mid_channels, strides=1, projection=False, **kwargs):
        super().__init__(**kwargs)
        self.out_channels = out_channels
        self.mid_channels = mid_channels
        self.strides = strides
        self.projection = projection
        dtype = self.dtype_policy  # the unit's policy, for every layer in it
        self.norm_a = group_normalization(name="norm_a", dtype=dtype)
        self.conv_a = StandardizedConv2D(mid_channels, 1, name="conv_a", dtype=dtype)
        self.norm_b = group_normalization(name="norm_b", dtype=dtype)
        # At stride 1, "same" pads 1 on every side, BiT's padding, inside the
        # convolution (faster on TensorFlow than a padded copy); at stride 2 it
        # would pad 0 before and 1 after, so norm_b's output comes padded
        # (`kernels.pad_symmetric`).
        self.conv_b = StandardizedConv2D(mid_channels, 3, strides=strides, name="conv_b",
                                         padding="same" if strides == 1 else "valid",
                                         dtype=dtype)
        self.norm_c = group_normalization(name="norm_c", dtype=dtype)
        self.conv_c = StandardizedConv2D(out_channels, 1, name="conv_c", dtype=dtype)
        self.proj = (
            StandardizedConv2D(out_channels, 1, strides=strides, name="proj", dtype=dtype)
            if projection else None
        )

    def build(self, input_shape):
        in_channels = input_shape[-1]
        if in_channels is None:
            raise ValueError("PreActBottleneck needs a known channel count (last axis)")
        if not self.projection and (in_channels != self.out_channels or self.strides != 1):
            raise ValueError(
                f"{self.name}: an identity shortcut needs in_channels == out_channels and "
                f"stride 1, got in_channels={in_channels}, out_channels={self.out_channels}, "
                f"strides={self.strides}: set projection=True"
            )
        batch, height, width = input_shape[:3]
        self.norm_a.build(input_shape)
        self.conv_a.build(input_shape)
        if self.proj is not None:
            self.proj.build(input_shape)
        mid_shape = (batch, height, width, self.mid_channels)
        self.norm_b.build(mid_shape)
        self.conv_b.build(mid_shape)
        self.norm_c.build(mid_shape)
        self.conv_c.build(mid_shape)

    def call(self, inputs, training=None):
        # Each GroupNorm and the ReLU after it in one pass (kernels.normalize).
        def norm_relu(layer, x, **fused):
            return kernels.normalize(layer, x, training, relu=True, **fused)

        if self.proj is None:
            # The shortcut's gradient joins GroupNorm's in its gradient op: no
            # separate sum of the two.
            preactivated, shortcut = norm_relu(self.norm_a, inputs, return_inputs=True)
        else:
            preactivated = norm_relu(self.norm_a, inputs)
            shortcut = self.proj(preactivated)
        hidden = self.conv_a(preactivated)
        # Strided, BiT pads before conv_b; GroupNorm writes that padding too.
        hidden = self.conv_b(norm_relu(self.norm_b, hidden, pad=0 if self.strides == 1 else 1))
        hidden = self.conv_c(norm_relu(self.norm_c, hidden))
        return hidden + shortcut

    def compute_output_shape(self, input_shape):
        return strided_shape(input_shape, self.strides, self.out_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            out_channels=self.out_channels,
            mid_channels=self.mid_channels,
            strides=self.strides,
            projection=self.projection,
        )
        return config
