"""Keras 3 layers of BiT: weight-standardized convolution, GroupNorm, bottleneck.

Every layer uses `keras.ops` only, so it builds under any Keras backend, and is
registered as serializable so `.keras` files reload it.
"""

import keras
from keras import ops

from bitkeras.models import kernels, native
from bitkeras.models.architecture import GROUPS

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
        # Inference standardizes as an XLA cluster (or reads a copy standardized
        # once per predict), training with a closed-form gradient: bitkeras.models.kernels.
        with kernels.calling(training):
            return super().call(inputs)

    def convolution_op(self, inputs, kernel):
        if self.winograd:
            # R50x1's run 1.1-1.3x (AVX-512) and 1.3-1.7x (AVX2) faster so than on
            # TensorFlow's convolutions (bitkeras.models.native.winograd_convolution).
            return native.winograd_products(inputs, kernels.standardized_kernel(
                self, kernel, self.standardization_epsilon, winograd=True))
        # Standardized in float32 whatever the compute dtype: the statistics of
        # small kernels lose too much in half precision.
        kernel = ops.cast(kernels.standardized_kernel(self, kernel, self.standardization_epsilon),
                          self.compute_dtype)
        if self._pointwise() and kernels.pointwise_products():
            # A 1x1 convolution at stride 1 is a product of the pixels (rows) with
            # the kernel's (in, out) matrix: the same sums, which TensorFlow's
            # matrix product runs about 8% faster than its convolution, gradients
            # included, on R50's 1x1 shapes (2-core Xeon).
            outputs = ops.matmul(ops.reshape(inputs, (-1, kernel.shape[2])),
                                 ops.reshape(kernel, kernel.shape[2:]))
            return ops.reshape(outputs, (*ops.shape(inputs)[:3], kernel.shape[3]))
        return super().convolution_op(inputs, kernel)

    @property
    def winograd(self):
        """Whether this convolution runs as Winograd's F(2x2, 3x3) now: 3x3 at stride 1 with
        "same" padding (channels last), in float32, where bitkeras's C++ ops run
        (`kernels.winograd_convolutions`)."""
        return (self._stride_one((3, 3)) and self.padding == "same"
                and kernels.winograd_convolutions(self.compute_dtype))

    def _pointwise(self):
        return self._stride_one((1, 1))

    def _stride_one(self, kernel_size):
        return (tuple(self.kernel_size) == kernel_size and tuple(self.strides) == (1, 1)
                and tuple(self.dilation_rate) == (1, 1) and self.groups == 1
                and self.data_format == "channels_last")

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

    `layer(x, relu=True)` returns `relu(layer(x))`, with the ReLU in the same
    pass where bitkeras's C++ op runs (BiT follows every GroupNorm by a ReLU);
    `layer(x, pad=p)` returns the result zero-padded by `p` pixels on each side
    of height and width (4-D inputs; BiT pads so before a strided
    convolution), in the same pass too;
    `layer(x, return_inputs=True)` returns `(layer(x), x)`, for a second use
    of `x` (a residual unit's identity shortcut): where the C++ op runs, the
    gradient reaching `x` through that second output is added to GroupNorm's
    own in the gradient op, not in a pass of its own. Three keywords Keras's
    layer does not have, added.
    """

    def call(self, inputs, training=None, relu=False, pad=0, return_inputs=False):
        if pad and (len(inputs.shape) != 4 or self.axis not in (-1, 3)):
            raise ValueError(f"{self.name}: pad={pad} needs 4-D (batch, height, width, "
                             f"channels) inputs with axis=-1, got shape "
                             f"{tuple(inputs.shape)} and axis={self.axis}")
        if not (len(inputs.shape) == 4 and self.axis in (-1, 3) and self.scale
                and self.center):
            outputs = super().call(inputs)
            outputs = ops.relu(outputs) if relu else outputs
            outputs = kernels.pad_symmetric(outputs, pad) if pad else outputs
            return (outputs, inputs) if return_inputs else outputs
        with kernels.calling(training):
            outputs = kernels.group_norm(inputs, self.gamma, self.beta, self.groups,
                                         self.epsilon, relu=relu, pad=pad,
                                         return_inputs=return_inputs)
        if return_inputs:
            return ops.cast(outputs[0], self.compute_dtype), outputs[1]
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_spec(self, inputs, training=None, relu=False, pad=0,
                            return_inputs=False):
        shape = inputs.shape
        if pad:
            shape = (shape[0], *(None if size is None else size + 2 * pad
                                 for size in shape[1:3]), *shape[3:])
        outputs = keras.KerasTensor(shape, dtype=self.compute_dtype)
        if return_inputs:
            return outputs, keras.KerasTensor(inputs.shape, dtype=inputs.dtype)
        return outputs


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

    def call(self, inputs):
        if self.proj is None:
            # The shortcut's gradient joins GroupNorm's in its gradient op (see
            # GroupNormalization): no separate sum of the two.
            preactivated, shortcut = self.norm_a(inputs, relu=True, return_inputs=True)
        else:
            preactivated = self.norm_a(inputs, relu=True)
            shortcut = self.proj(preactivated)
        hidden = self.conv_a(preactivated)
        # Strided, BiT pads before conv_b; GroupNorm writes that padding too.
        hidden = self.conv_b(self.norm_b(hidden, relu=True, pad=0 if self.strides == 1 else 1))
        hidden = self.conv_c(self.norm_c(hidden, relu=True))
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
