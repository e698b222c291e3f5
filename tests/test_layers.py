import keras
import numpy as np
import pytest

from bitkeras.models.layers import PreActBottleneck, StandardizedConv2D, group_normalization
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
    assert isinstance(conv, StandardizedConv2D) and conv.standardization_epsilon == 1e-8
    unit = restored.layers[-1]
    assert PreActBottleneck.from_config(unit.get_config()).get_config() == unit.get_config()
