"""Float64 references and gradient probes for the GroupNorm and weight standardization layers.

Shared by the layer tests and the C++ ops' tests.
"""

import keras
import numpy as np
import tensorflow as tf

from bitkeras.models import kernels
from bitkeras.models.layers import group_normalization


def random_group_norm(rng, channels=64, dtype=None):
    layer = group_normalization(dtype=dtype)
    layer.build((None, None, None, channels))
    layer.gamma.assign(rng.normal(1.0, 0.5, channels))
    layer.beta.assign(rng.normal(0.0, 0.5, channels))
    return layer, keras.ops.convert_to_numpy(layer.gamma), keras.ops.convert_to_numpy(layer.beta)


def float64_gradients(function, inputs, upstream):
    """Gradients of sum(function(*inputs) * upstream) in float64, by TensorFlow's autodiff."""
    inputs = [tf.constant(value, tf.float64) for value in inputs]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        loss = tf.reduce_sum(function(*inputs) * upstream)
    return [gradient.numpy() for gradient in tape.gradient(loss, inputs)]


def standardization_results(kernel, upstream, standardize):
    """(the standardized kernel, the kernel's gradient for `upstream`) by `standardize`."""
    with tf.GradientTape() as tape:
        weights = tf.constant(kernel, tf.float32)
        tape.watch(weights)
        standardized = standardize(weights)
        loss = tf.reduce_sum(standardized * upstream)
    return standardized.numpy(), tape.gradient(loss, weights).numpy()


def float64_standardization(kernel, upstream):
    """The same pair from float64 autodiff of the plain form."""
    def standardize(value):
        return kernels._standardize(keras.ops, value, 1e-10)
    (gradient,) = float64_gradients(standardize, [kernel], upstream)
    return standardize(tf.constant(kernel, tf.float64)).numpy(), gradient


def training_gradients(layer, x, upstream, relu=False):
    """Gradients of sum(layer(x, training=True) * upstream) for x, gamma and beta (float32)."""
    with tf.GradientTape() as tape:
        inputs = tf.constant(x, tf.float32)
        tape.watch(inputs)
        loss = tf.reduce_sum(kernels.normalize(layer, inputs, True, relu=relu) * upstream)
    return tape.gradient(loss, [inputs, layer.gamma.value, layer.beta.value])


def float64_group_norm_gradients(x, gamma, beta, upstream):
    """Float64 autodiff of the plain GroupNorm (32 groups): gradients for x, gamma, beta."""
    return float64_gradients(lambda *values: kernels._group_norm(keras.ops, *values, 32, 1e-5),
                             [x, gamma, beta], upstream)


def assert_training_gradients_match_float64(rng, shape, mean, std):
    """A random GroupNorm layer's training gradients, entry by entry within 1e-5 of the scale."""
    layer, gamma, beta = random_group_norm(rng)
    x = rng.normal(mean, std, shape)
    upstream = rng.normal(size=x.shape)
    computed = training_gradients(layer, x, upstream)
    for got, want in zip(computed, float64_group_norm_gradients(x, gamma, beta, upstream)):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-5 * np.abs(want).max())


def op_types(function, *specs):
    graph = tf.function(function).get_concrete_function(*specs).graph
    return {operation.type for operation in graph.get_operations()}
