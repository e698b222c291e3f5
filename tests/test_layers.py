import keras
import numpy as np
import pytest
import tensorflow as tf

from bitkeras.models import kernels, native
from bitkeras.models.layers import (GroupNormalization, PreActBottleneck, StandardizedConv2D,
                                     group_normalization)
from tests.helpers import reference
from tests.helpers.numerics import (assert_training_gradients_match_float64,
                                    float64_group_norm_gradients, float64_standardization,
                                    op_types, random_group_norm, standardization_results,
                                    training_gradients)


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


def test_group_normalization_inference_matches_float64_on_both_paths(native_engine):
    rng = np.random.default_rng(1)
    layer, gamma, beta = random_group_norm(rng)
    # Offset activations (mean 3, std 2), as after a ReLU and a convolution.
    x = rng.normal(3.0, 2.0, (2, 5, 7, 64)).astype(np.float32)
    expected = reference.group_norm(x.astype(np.float64), gamma, beta)
    scale = np.abs(expected).max()
    fused = keras.ops.convert_to_numpy(layer(x, training=False))
    with kernels.portable():
        portable = keras.ops.convert_to_numpy(layer(x, training=False))
        plain_ops = keras.ops.convert_to_numpy(kernels.group_norm(x, gamma, beta, 32, 1e-5))
    trained = keras.ops.convert_to_numpy(layer(x, training=True))
    keras_layer = keras.layers.GroupNormalization.from_config(layer.get_config())
    keras_layer.build(x.shape)
    keras_layer.set_weights(layer.get_weights())
    keras_own = keras.ops.convert_to_numpy(keras_layer(x))
    for computed in (fused, portable, plain_ops, trained, keras_own):
        np.testing.assert_allclose(computed, expected, atol=1e-5 * scale)
    # Ours (statistics summed per channel first) is no less exact than Keras's layer.
    assert np.abs(fused - expected).max() <= np.abs(keras_own - expected).max() * 1.5


def test_closed_form_gradients_match_float64_autodiff(native_engine):
    """Training takes the closed-form gradients; each entry is checked, relative to its scale."""
    rng = np.random.default_rng(6)
    assert_training_gradients_match_float64(rng, (3, 5, 4, 64), mean=2.0, std=3.0)

    kernel = rng.normal(0.3, 0.7, (3, 3, 16, 8))
    upstream = rng.normal(size=kernel.shape)

    def standardize(weights):
        with kernels.calling(training=True):
            assert kernels.closed_form()
            return kernels.standardize(weights, 1e-10)
    _, computed = standardization_results(kernel, upstream, standardize)
    _, expected = float64_standardization(kernel, upstream)
    np.testing.assert_allclose(computed, expected, atol=1e-5 * np.abs(expected).max())


def test_group_normalization_gradient_matches_float64(native_engine):
    rng = np.random.default_rng(2)
    layer, gamma, beta = random_group_norm(rng)
    x = rng.normal(1.0, 2.0, (2, 4, 3, 64))
    upstream = rng.normal(size=x.shape)
    computed = training_gradients(layer, x, upstream)
    # Central differences of the float64 reference, one coordinate each.
    def objective(values, index, delta):
        shifted = [value.copy() for value in values]
        shifted[index].flat[0] += delta
        return (reference.group_norm(*shifted) * upstream).sum()
    values = [x, gamma.astype(np.float64), beta.astype(np.float64)]
    for index, gradient in enumerate(computed):
        numeric = (objective(values, index, 1e-6) - objective(values, index, -1e-6)) / 2e-6
        analytic = gradient.numpy().flat[0]
        assert abs(analytic - numeric) <= 1e-3 * max(1.0, abs(numeric)), (index, analytic, numeric)


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_group_normalization_with_relu_is_relu_of_its_output(native_engine, dtype):
    """`kernels.normalize(layer, x, relu=True)`: the values of `relu(layer(x))`, and its
    gradients."""
    rng = np.random.default_rng(8)
    layer, gamma, beta = random_group_norm(rng, dtype=dtype)
    x = rng.normal(1.0, 2.0, (2, 4, 5, 64)).astype(np.float32)
    for training in (False, True):
        fused = keras.ops.convert_to_numpy(kernels.normalize(layer, x, training, relu=True))
        plain = keras.ops.convert_to_numpy(keras.ops.relu(layer(x, training=training)))
        np.testing.assert_array_equal(fused, plain)
    if dtype == "float32":
        upstream = rng.normal(size=x.shape)
        normalized = reference.group_norm(x.astype(np.float64), gamma, beta)
        expected = float64_group_norm_gradients(x, gamma, beta, upstream * (normalized > 0))
        for got, want in zip(training_gradients(layer, x, upstream, relu=True), expected):
            np.testing.assert_allclose(got.numpy(), want, atol=1e-5 * np.abs(want).max())
    # Inputs Keras's own layer computes (here 3-D) take it too.
    flat, layer = x.reshape(2, 20, 64), group_normalization(dtype=dtype)
    plain = keras.ops.convert_to_numpy(keras.ops.relu(layer(flat)))  # built by Keras's call
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(kernels.normalize(layer, flat, relu=True)), plain)


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_group_normalization_returning_its_inputs(native_engine, dtype):
    """`kernels.normalize(layer, x, return_inputs=True)` is `(layer(x), x)`, and gradients
    reaching x both ways add up."""
    rng = np.random.default_rng(9)
    layer, _, _ = random_group_norm(rng, dtype=dtype)
    x = tf.constant(rng.normal(1.0, 2.0, (2, 4, 5, 64)), tf.float32)
    for training in (False, True):
        outputs, inputs = kernels.normalize(layer, x, training, relu=True, return_inputs=True)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(outputs),
                                      keras.ops.convert_to_numpy(
                                          kernels.normalize(layer, x, training, relu=True)))
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(inputs), x.numpy())
    first, second = (rng.normal(size=x.shape).astype(np.float32) for _ in range(2))

    def gradients(return_inputs):
        with tf.GradientTape() as tape:
            tape.watch(x)
            if return_inputs:
                outputs, inputs = kernels.normalize(layer, x, True, return_inputs=True)
            else:
                outputs, inputs = layer(x, training=True), x
            loss = (tf.reduce_sum(tf.cast(outputs, tf.float32) * first)
                    + tf.reduce_sum(tf.cast(inputs, tf.float32) * second))
        return [keras.ops.convert_to_numpy(gradient)
                for gradient in tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])]
    for got, want in zip(gradients(True), gradients(False)):
        np.testing.assert_allclose(got, want, atol=1e-6 * np.abs(want).max())


def test_group_normalization_padding_its_output(native_engine):
    """`kernels.normalize(layer, x, pad=1)` is `layer(x)` zero-padded, with its gradients."""
    rng = np.random.default_rng(10)
    layer, _, _ = random_group_norm(rng)
    x = tf.constant(rng.normal(1.0, 2.0, (2, 5, 4, 64)), tf.float32)
    upstream = tf.constant(rng.normal(size=(2, 7, 6, 64)), tf.float32)

    def results(padded_by_layer, training):
        with tf.GradientTape() as tape:
            tape.watch(x)
            if padded_by_layer:
                outputs = kernels.normalize(layer, x, training, relu=True, pad=1)
            else:
                outputs = kernels.pad_symmetric(
                    kernels.normalize(layer, x, training, relu=True), 1)
            loss = tf.reduce_sum(outputs * upstream)
        gradients = tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])
        return [keras.ops.convert_to_numpy(value) for value in (outputs, *gradients)]
    for training in (False, True):
        for got, want in zip(results(True, training), results(False, training)):
            np.testing.assert_allclose(got, want, atol=1e-6 * np.abs(want).max())
    with pytest.raises(ValueError, match="pad=1 needs 4-D"):
        kernels.normalize(group_normalization(), tf.zeros((2, 20, 64)), pad=1)
    # Channels first, height and width are axes 2 and 3: padding axes 1 and 2 was wrong.
    with pytest.raises(ValueError, match="pad=1 needs .* axis=-1, .* axis=1"):
        kernels.normalize(group_normalization(axis=1), tf.zeros((2, 64, 5, 5)), pad=1)


def test_the_layers_keep_keras_call_signatures():
    # The fused forms are the kernel seam's (kernels.normalize), not keywords of a layer.
    import inspect

    for layer, keras_layer in ((GroupNormalization, keras.layers.GroupNormalization),
                               (StandardizedConv2D, keras.layers.Conv2D)):
        assert list(inspect.signature(layer.call).parameters) == ["self", "inputs", "training"]
        assert set(inspect.signature(layer.call).parameters) >= set(
            inspect.signature(keras_layer.call).parameters)
    with pytest.raises(TypeError, match="relu"):
        group_normalization()(tf.zeros((1, 2, 2, 32)), relu=True)
    symbolic = group_normalization()(keras.Input((5, None, 64)))
    assert symbolic.shape == (None, 5, None, 64)


def test_mixed_precision_group_normalization_keeps_float32_statistics():
    rng = np.random.default_rng(3)
    layer, gamma, beta = random_group_norm(rng, dtype="mixed_bfloat16")
    x = rng.normal(100.0, 1.0, (2, 4, 4, 64)).astype(np.float32)
    out = layer(x, training=False)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    # Only the output's rounding to bfloat16 (8 bits) may be lost. Statistics
    # taken on bfloat16 values (steps of 0.5 at 100) would be off by about 0.7.
    expected = reference.group_norm(x.astype(np.float64), gamma, beta)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")),
                               expected, atol=2**-7 * np.abs(expected).max())


@pytest.mark.parametrize("size", [1, 3])  # 1x1: TensorFlow runs a matrix product
@pytest.mark.parametrize("training", [True, False])
def test_standardized_conv_gradient_matches_float64(training, size):
    rng = np.random.default_rng(5)
    conv = StandardizedConv2D(4, size)
    conv.build((None, None, None, 3))
    kernel = rng.normal(0.5, 1.0, (size, size, 3, 4))
    conv.kernel.assign(kernel)
    x = rng.normal(size=(2, 5, 5, 3))
    upstream = rng.normal(size=(2, 6 - size, 6 - size, 4))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(conv(tf.constant(x, tf.float32), training=training) * upstream)
    analytic = tape.gradient(loss, conv.kernel.value).numpy()

    def objective(kernel):
        return (reference.conv_valid(x, reference.standardize(kernel), 1) * upstream).sum()
    for index in [(0, 0, 0, 0), (size // 2, size - 1, 1, 3), (size - 1, size // 2, 2, 1)]:
        step = np.zeros_like(kernel)
        step[index] = 1e-6
        numeric = (objective(kernel + step) - objective(kernel - step)) / 2e-6
        assert abs(analytic[index] - numeric) <= 1e-3 * max(1.0, abs(numeric)), index


@pytest.mark.parametrize("dtype", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_standardizes_the_float32_kernel(dtype):
    """Under a mixed policy the kernel is standardized from its float32 values, not from
    values Keras rounded to the compute dtype: a kernel of mean 100 and spread 0.05
    (0.5 is one bfloat16 step at 100) still convolves to within the output's rounding."""
    rng = np.random.default_rng(16)
    conv = StandardizedConv2D(8, 3, dtype=dtype)
    conv.build((None, None, None, 4))
    kernel = rng.normal(100.0, 0.05, (3, 3, 4, 8))
    conv.kernel.assign(kernel)
    x = rng.normal(size=(2, 6, 6, 4)).astype(np.float32)
    expected = reference.conv_valid(x.astype(np.float64), reference.standardize(kernel), 1)
    for training in (False, True):
        computed = keras.ops.convert_to_numpy(
            keras.ops.cast(conv(x, training=training), "float32"))
        np.testing.assert_allclose(computed, expected, atol=2**-6 * np.abs(expected).max())


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_once_standardized_copies_are_kept_in_the_compute_dtype(dtype):
    """The copy `standardized_once` keeps has the dtype the convolution reads (no cast
    in every batch), and the layer's outputs are the same with it as without (in
    bfloat16 to a rounding of the output: oneDNN's bfloat16 convolution may sum in
    another order for a kernel read from a variable)."""
    rng = np.random.default_rng(7)
    conv = StandardizedConv2D(8, 3, dtype=dtype)
    conv.build((None, None, None, 4))
    conv.kernel.assign(rng.normal(0.5, 1.0, (3, 3, 4, 8)))
    x = rng.normal(size=(2, 6, 6, 4)).astype(np.float32)
    def outputs(function):
        return keras.ops.convert_to_numpy(keras.ops.cast(function(x), "float32"))
    without = outputs(tf.function(lambda x: conv(x, training=False)))
    atol = 0.0 if dtype == "float32" else 2**-7 * np.abs(without).max()
    with kernels.standardized_once([conv]) as new:
        copy, current = kernels._ONCE[conv]
        assert new and bool(current.numpy())
        assert keras.backend.standardize_dtype(copy.dtype) == conv.compute_dtype
        within = tf.function(lambda x: conv(x, training=False))
        np.testing.assert_allclose(outputs(within), without, rtol=0, atol=atol)
    np.testing.assert_allclose(outputs(within), without, rtol=0, atol=atol)  # the flag unset


def test_pointwise_convolutions_run_as_matrix_products_outside_portable_only():
    """A 1x1 convolution at stride 1 is the pixels times the kernel's (in, out) matrix."""
    rng = np.random.default_rng(6)
    conv = StandardizedConv2D(16, 1)
    conv.build((None, None, None, 8))
    conv.kernel.assign(rng.normal(0.5, 1.0, (1, 1, 8, 16)))
    x = tf.constant(rng.normal(size=(3, 5, 7, 8)), tf.float32)
    spec = tf.TensorSpec((None, None, None, 8), tf.float32)  # shapes known at run time only
    assert "MatMul" in op_types(conv, spec) and "Conv2D" not in op_types(conv, spec)
    with kernels.portable():
        assert "Conv2D" in op_types(conv, spec) and "MatMul" not in op_types(conv, spec)
        convolved = conv(x)
    product = tf.function(conv)(x)
    assert product.shape == convolved.shape == (3, 5, 7, 16)
    np.testing.assert_allclose(product, convolved, atol=1e-5 * np.abs(convolved).max())
    strided = StandardizedConv2D(16, 1, strides=2)
    strided.build((None, None, None, 8))
    assert "Conv2D" in op_types(strided, spec)


def xla_functions(function, *args):
    """Names of the functions XLA must compile in `function`'s graph for `args`."""
    graph = tf.function(function).get_concrete_function(*args).graph.as_graph_def()
    return [definition.signature.name for definition in graph.library.function
            if definition.attr.get("_XlaMustCompile") and definition.attr["_XlaMustCompile"].b]


def test_layers_use_xla_clusters_outside_portable_only(monkeypatch):
    monkeypatch.setenv(native.ENABLE_ENV, "0")  # else GroupNorm runs bitkeras's op
    layer, _, _ = random_group_norm(np.random.default_rng(4))
    conv = StandardizedConv2D(8, 3)
    conv.build((None, None, None, 64))
    spec = tf.TensorSpec((None, 6, 6, 64), tf.float32)
    assert xla_functions(lambda x: layer(x, training=False), spec)
    assert xla_functions(lambda x: conv(x), spec)
    assert not xla_functions(lambda x: layer(x, training=True), spec)
    assert not xla_functions(lambda x: conv(x, training=True), spec)
    with kernels.portable():
        assert not xla_functions(lambda x: conv(layer(x, training=False)), spec)
    assert kernels.fused()


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
