import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from bitkeras.layers import (
    ChannelsLastGroupNormalization,
    PreActBottleneck,
    StandardizedConv2D,
    group_normalization,
)
from tests import reference


def test_standardized_conv_standardizes_kernel_per_output_channel():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 7, 6)).astype(np.float32)
    layer = StandardizedConv2D(8, 3)
    layer.build(x.shape)
    kernel = rng.normal(3.0, 2.0, (3, 3, 6, 8)).astype(np.float32)
    layer.kernel.assign(kernel)
    expected = reference.conv_valid(x.astype(np.float64), reference.standardize(kernel.astype(np.float64)), 1)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-4, atol=1e-4)
    assert not layer.use_bias and len(layer.weights) == 1
    # The stored kernel stays as it was: checkpoints hold the raw kernel.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.kernel), kernel)


def test_standardization_uses_population_variance():
    layer = StandardizedConv2D(1, 1)
    layer.build((1, 1, 1, 2))
    layer.kernel.assign(np.array([[[[1.0], [3.0]]]], np.float32))
    # mean 2, population std 1 -> standardized kernel (-1, 1); (N-1) would give +-0.707.
    out = layer(np.array([[[[1.0, 0.0]]]], np.float32))
    np.testing.assert_allclose(out, [[[[-1.0]]]], atol=1e-5)


def test_group_normalization_has_bit_settings():
    layer = group_normalization()
    assert isinstance(layer, keras.layers.GroupNormalization)
    assert (layer.groups, layer.epsilon) == (32, 1e-5)
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 64)).astype(np.float32)
    expected = reference.group_norm(x.astype(np.float64), np.ones(64), np.zeros(64))
    np.testing.assert_allclose(layer(x), expected, rtol=1e-4, atol=1e-4)


def _both_group_norms(shape, seed=0, **kwargs):
    """Ours and Keras's GroupNormalization, built with the same random gamma and beta."""
    rng = np.random.default_rng(seed)
    channels = shape[kwargs.get("axis", -1)]
    weights = [rng.normal(size=channels).astype(np.float32) for _ in range(2)]
    layers = []
    for layer_class in (ChannelsLastGroupNormalization, keras.layers.GroupNormalization):
        layer = layer_class(groups=32, epsilon=1e-5, **kwargs)
        layer.build(shape)
        layer.set_weights(weights)
        layers.append(layer)
    return layers, weights


@pytest.mark.parametrize("shape", [(3, 5, 7, 64), (2, 9, 128), (2, 4, 4, 96)])
def test_channels_last_group_norm_equals_keras_layer_with_gradients(shape):
    import tensorflow as tf

    (ours, keras_layer), (gamma, beta) = _both_group_norms(shape)
    rng = np.random.default_rng(1)
    # Channel means far from zero relative to the spread: the group variance
    # must come out right from per-channel statistics, not from E[x^2] - mean^2.
    x = (rng.normal(size=shape) * 3 + rng.normal(size=shape[-1]) * 50).astype(np.float32)
    grouped = x.astype(np.float64).reshape(shape[0], -1, 32, shape[-1] // 32)
    mean = grouped.mean(axis=(1, 3), keepdims=True)
    variance = grouped.var(axis=(1, 3), keepdims=True)
    expected = ((grouped - mean) / np.sqrt(variance + 1e-5)).reshape(shape) * gamma + beta
    np.testing.assert_allclose(ours(x), expected, rtol=1e-4, atol=5e-5)

    gradients = []
    for layer in (ours, keras_layer):
        inputs = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = layer(inputs)
            loss = tf.reduce_sum(outputs * tf.sin(outputs))
        gradients.append(tape.gradient(loss, [inputs] + layer.trainable_weights))
    for ours_gradient, keras_gradient in zip(*gradients):
        keras_gradient = np.asarray(keras_gradient)
        np.testing.assert_allclose(ours_gradient, keras_gradient, rtol=1e-4,
                                   atol=1e-5 * np.abs(keras_gradient).max())


def test_channels_last_group_norm_under_mixed_precision_and_other_axes():
    x = np.random.default_rng(2).normal(2.0, 3.0, (2, 6, 6, 64)).astype(np.float32)
    (ours, keras_layer), _ = _both_group_norms(x.shape, dtype="mixed_bfloat16")
    assert ours(x).dtype == keras_layer(x).dtype == "bfloat16"
    np.testing.assert_allclose(np.asarray(ours(x), np.float32),
                               np.asarray(keras_layer(x), np.float32), rtol=2e-2, atol=2e-2)
    # Channels first is left to Keras's own call.
    channels_first = np.moveaxis(x, -1, 1)
    (ours, keras_layer), _ = _both_group_norms((2, 64, 6, 6), axis=1)
    np.testing.assert_array_equal(ours(channels_first), keras_layer(channels_first))


@pytest.mark.parametrize("size", [8, 9])
def test_bottleneck_strided_output_shape_for_odd_and_even_sizes(size):
    unit = PreActBottleneck(out_channels=128, mid_channels=32, strides=2, projection=True)
    out = unit(np.zeros((1, size, size, 64), np.float32))
    expected = (size + 1) // 2  # ceil(size / 2): VALID after padding 1 on each side
    assert out.shape == (1, expected, expected, 128)
    assert unit.compute_output_shape((None, size, size, 64)) == (None, expected, expected, 128)


def test_identity_bottleneck_needs_matching_channels():
    unit = PreActBottleneck(out_channels=128, mid_channels=32)
    with pytest.raises(ValueError, match="set projection=True"):
        unit.build((1, 8, 8, 64))


def test_layers_round_trip_through_config_and_keras_file(tmp_path):
    inputs = keras.Input((None, None, 64))
    x = StandardizedConv2D(64, 3, padding="same", standardization_epsilon=1e-8)(inputs)
    x = group_normalization()(x)
    x = PreActBottleneck(out_channels=128, mid_channels=32, strides=2, projection=True)(x)
    model = keras.Model(inputs, x)
    images = np.random.default_rng(0).normal(size=(2, 9, 9, 64)).astype(np.float32)
    path = tmp_path / "layers.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_array_equal(model(images), restored(images))
    conv = restored.layers[1]
    assert isinstance(restored.layers[2], ChannelsLastGroupNormalization)
    assert isinstance(conv, StandardizedConv2D) and conv.standardization_epsilon == 1e-8
    unit = restored.layers[-1]
    assert PreActBottleneck.from_config(unit.get_config()).get_config() == unit.get_config()


def test_layers_build_under_the_torch_backend():
    pytest.importorskip("torch")
    script = textwrap.dedent("""
        import keras, numpy as np
        assert keras.backend.backend() == "torch"
        from bitkeras import BiTBackbone
        from bitkeras.layers import PreActBottleneck
        unit = PreActBottleneck(out_channels=128, mid_channels=32, strides=2, projection=True)
        assert tuple(unit(np.zeros((1, 9, 9, 64), "float32")).shape) == (1, 5, 5, 128)
        features = BiTBackbone(block_units=(1, 1, 1, 1), width_factor=0.5)(
            np.zeros((2, 33, 33, 3), "float32"))
        print(tuple(features.shape))
    """)
    env = dict(os.environ, KERAS_BACKEND="torch")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("(2, 1024)")
