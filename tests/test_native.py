import os
import pathlib
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from bitkeras import files
from bitkeras.models import kernels, native
from tests.helpers import reference
from bitkeras.models.layers import PreActBottleneck, StandardizedConv2D
from tests.helpers.numerics import (assert_training_gradients_match_float64,
                                    float64_group_norm_gradients, float64_standardization,
                                    op_types, random_group_norm, standardization_results,
                                    training_gradients)


@pytest.fixture
def operations():
    """The built op library; the tests skip where no C++ compiler is installed."""
    library = native.library()
    if library is None:
        if _has_compiler():
            pytest.fail("a C++ compiler is installed, yet the op was not built")
        pytest.skip("no C++ compiler here: bitkeras uses TensorFlow's ops")
    return library


def _has_compiler():
    try:
        native._compiler()
    except native.NativeBuildError:
        return False
    return True


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(3, 5, 7, 64), (2, 4, 4, 96), (1, 2, 1, 64)])
def test_forward_and_gradient_match_float64(operations, shape, relu):
    """Offset activations (mean 3, std 2); each result within 1e-5 of its scale."""
    rng = np.random.default_rng(0)
    channels = shape[-1]
    x = rng.normal(3.0, 2.0, shape)
    gamma, beta = rng.normal(1.0, 0.5, channels), rng.normal(0.0, 0.5, channels)
    upstream = rng.normal(size=shape)
    with tf.GradientTape() as tape:
        inputs = [tf.constant(value, tf.float32) for value in (x, gamma, beta)]
        tape.watch(inputs)
        outputs = native.group_norm(*inputs, groups=32, epsilon=1e-5, relu=relu)
        loss = tf.reduce_sum(outputs * upstream)
    computed = [outputs.numpy(), *(gradient.numpy() for gradient in tape.gradient(loss, inputs))]
    normalized = reference.group_norm(x, gamma, beta)
    if relu:  # the ReLU passes the gradient where its input was positive
        normalized, upstream = reference.relu(normalized), upstream * (normalized > 0)
    expected = [normalized, *float64_group_norm_gradients(x, gamma, beta, upstream)]
    for got, want in zip(computed, expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5 * max(np.abs(want).max(initial=0), 1e-3))


def test_forward_statistics_hold_for_a_far_mean_and_an_outlying_first_pixel(operations):
    """The forward's one pass shifts each channel by the item's first pixel: here the
    values lie 1000 from zero with spread 0.01, channel means within a group differ by
    up to 2, and the first pixel lies 20 spreads off (float32 sums of squares about
    zero would lose the variance entirely). The group means and inverse deviations
    the op returns are float64's, rounded to float32."""
    rng = np.random.default_rng(2)
    x = 1000.0 + rng.uniform(-1.0, 1.0, 64) + rng.normal(0.0, 0.01, (2, 16, 16, 64))
    x[:, 0, 0, :] += 0.2
    x = x.astype(np.float32)
    _, means, inverse_stds = operations.bitkeras_group_norm(
        x, np.ones(64, np.float32), np.zeros(64, np.float32), groups=32, epsilon=1e-5,
        relu=False)
    groups = x.astype(np.float64).reshape(2, -1, 32, 2)
    np.testing.assert_allclose(means.numpy(), groups.mean(axis=(1, 3)), rtol=1e-7)
    np.testing.assert_allclose(inverse_stds.numpy(), 1 / np.sqrt(groups.var(axis=(1, 3)) + 1e-5),
                               rtol=1e-6)


def test_op_is_no_less_exact_than_tensorflows_closed_form(operations, monkeypatch):
    """Large offsets (mean 100, std 1) make cancellation show."""
    rng = np.random.default_rng(1)
    layer, gamma, beta = random_group_norm(rng)
    x = rng.normal(100.0, 1.0, (2, 6, 6, 64))
    upstream = rng.normal(size=x.shape)
    expected = float64_group_norm_gradients(x, gamma, beta, upstream)
    errors = {}
    for setting in ("1", "0"):
        monkeypatch.setenv(native.ENABLE_ENV, setting)
        computed = training_gradients(layer, x, upstream)
        errors[setting] = [np.abs(got.numpy() - want).max() / np.abs(want).max()
                           for got, want in zip(computed, expected)]
    assert all(error < 1e-5 for error in errors["1"]), errors
    assert all(ours <= theirs * 1.5 + 1e-7 for ours, theirs in zip(errors["1"], errors["0"]))


@pytest.mark.parametrize("shape, mean, std", [
    ((3, 3, 16, 8), 0.3, 0.7),
    ((1, 1, 64, 200), 0.0, 0.05),  # more output channels than rows
    ((1, 1, 300, 200), 0.0, 0.05),  # more rows than one chunk (256) holds
    ((7, 7, 3, 64), 100.0, 0.05),  # a mean 2000 times the spread: cancellation shows
])
def test_standardization_matches_float64_and_is_no_less_exact(operations, shape, mean, std):
    rng = np.random.default_rng(7)
    # The float64 reference sees the float32 values the ops see.
    kernel = rng.normal(mean, std, shape).astype(np.float32).astype(np.float64)
    upstream = rng.normal(size=shape)
    expected = float64_standardization(kernel, upstream)
    ours = standardization_results(kernel, upstream,
                                   lambda weights: native.standardize(weights, 1e-10))
    theirs = standardization_results(
        kernel, upstream, lambda weights: kernels._standardize_closed_form(keras.ops, weights,
                                                                         1e-10))
    for got, other, want in zip(ours, theirs, expected):
        scale = np.abs(want).max()
        error = np.abs(got - want).max() / scale
        assert error < 1e-6, error
        assert error <= np.abs(other - want).max() / scale * 1.5 + 1e-7


def test_standardization_of_empty_kernels(operations):
    for shape in [(0, 3, 4, 5), (3, 3, 4, 0)]:
        standardized, gradient = standardization_results(
            np.zeros(shape), np.zeros(shape), lambda weights: native.standardize(weights, 1e-10))
        assert standardized.shape == shape and gradient.shape == shape


THREADED = """
import sys
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
from bitkeras.models import native
rng = np.random.default_rng(0)
values = [tf.constant(rng.normal(mean, std, shape), tf.float32) for mean, std, shape in [
    (1.0, 2.0, (4, 16, 16, 256)), (1.0, 0.5, (256,)), (0.0, 0.5, (256,)),
    (0.1, 0.05, (3, 3, 256, 512))]]
x, gamma, beta, kernel = values
with tf.GradientTape() as tape:
    tape.watch(values)
    normalized = native.group_norm(x, gamma, beta, 32, 1e-5, relu=True)
    standardized = native.standardize(kernel, 1e-10)
    convolved = native.winograd_convolution(normalized, standardized)
    loss = (tf.reduce_sum(normalized * tf.sin(x)) + tf.reduce_sum(standardized * tf.cos(kernel))
            + tf.reduce_sum(tf.cos(convolved)))
gradients = tape.gradient(loss, values)
np.savez(sys.argv[2], normalized=normalized, standardized=standardized, convolved=convolved,
         **{f"gradient{index}": gradient for index, gradient in enumerate(gradients)})
"""


@pytest.mark.slow
def test_results_do_not_depend_on_the_thread_count(operations, tmp_path):
    """Every sum runs in one order whatever the threads: the same bits on 1 and on 2."""
    results = []
    for threads in (1, 2):
        path = tmp_path / f"{threads}.npz"
        result = subprocess.run([sys.executable, "-c", THREADED, str(threads), str(path)],
                                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        results.append(np.load(path))
    one, two = results
    assert sorted(one.files) == sorted(two.files) and len(one.files) == 7
    for name in one.files:
        np.testing.assert_array_equal(one[name], two[name], err_msg=name)


def tensorflow_convolution(x, kernel):
    return tf.nn.conv2d(x, kernel, 1, "SAME")


def convolution_results(convolve, x, kernel, upstream, dtype=tf.float32):
    """[outputs, input gradient, kernel gradient] of `convolve(x, kernel)` in `dtype`."""
    x, kernel = tf.constant(x, dtype), tf.constant(kernel, dtype)
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        outputs = convolve(x, kernel)
    return [outputs.numpy(), *(gradient.numpy() for gradient in tape.gradient(
        outputs, [x, kernel], output_gradients=tf.constant(upstream, dtype)))]


@pytest.mark.parametrize("shape", [
    (2, 8, 8, 16, 8),     # even sides
    (2, 5, 7, 3, 4),      # odd sides: the last tiles hang over the image
    (1, 1, 1, 2, 2),      # one pixel
    (3, 6, 3, 130, 70),   # channel counts across the ops' blocks of 64
    (1, 4, 2, 64, 1)])
def test_winograd_convolution_matches_float64_as_tensorflows_does(operations, shape):
    """Outputs and both gradients within 1e-6 of float64's scale, as TensorFlow's own
    float32 convolution (within 4x its error, the sums running in another order)."""
    items, height, width, inputs, outputs = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(1.0, 2.0, (items, height, width, inputs))
    kernel = rng.normal(0.0, 1.0, (3, 3, inputs, outputs))
    upstream = rng.normal(size=(items, height, width, outputs))
    expected = convolution_results(tensorflow_convolution, x, kernel, upstream, tf.float64)
    winograd = convolution_results(native.winograd_convolution, x, kernel, upstream)
    direct = convolution_results(tensorflow_convolution, x, kernel, upstream)
    for name, got, other, want in zip(("outputs", "input gradient", "kernel gradient"),
                                      winograd, direct, expected):
        assert got.shape == want.shape, name
        scale = np.abs(want).max()
        error, direct_error = np.abs(got - want).max() / scale, np.abs(other - want).max() / scale
        assert error < 1e-6, (name, error)
        assert error <= 4 * direct_error + 1e-7, (name, error, direct_error)


def test_winograd_convolution_of_an_empty_batch(operations):
    x, kernel = tf.zeros((0, 5, 5, 8)), tf.ones((3, 3, 8, 4))
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        outputs = native.winograd_convolution(x, kernel)
    d_x, d_kernel = tape.gradient(outputs, [x, kernel])
    assert outputs.shape == (0, 5, 5, 4) and d_x.shape == (0, 5, 5, 8)
    assert d_kernel.shape == (3, 3, 8, 4) and not np.any(d_kernel.numpy())


def test_winograd_ops_refuse_mismatched_inputs_with_a_clear_error(operations):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\(batch, height, width, chan"):
        operations.bitkeras_winograd_input(tf.zeros((2, 3, 3)))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"kernel needs shape \(3, 3"):
        operations.bitkeras_winograd_kernel(tf.zeros((5, 5, 2, 2)))
    products = operations.bitkeras_winograd_input(tf.zeros((2, 3, 3, 4)))  # 2 x 2 x 2 tiles
    with pytest.raises(tf.errors.InvalidArgumentError, match="8 tiles do not cover"):
        operations.bitkeras_winograd_output(products, tf.constant([2, 5, 5]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\(16, tiles, channels\)"):
        operations.bitkeras_winograd_input_grad(products[:4], tf.constant([2, 3, 3]))


def test_layers_convolve_3x3_at_stride_1_by_winograd_where_the_ops_run(operations):
    """Training and inference graphs of a "same" 3x3 layer at stride 1, float32 only."""
    spec = tf.TensorSpec((None, 6, 6, 16), tf.float32)
    forward = {"BitkerasWinogradInput", "BitkerasWinogradKernel", "BitkerasWinogradOutput"}
    backward = {"BitkerasWinogradInputGrad", "BitkerasWinogradKernelGrad",
                "BitkerasWinogradOutputGrad"}

    def graphs(layer):
        def gradient(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(layer(x, training=True))
            return tape.gradient(loss, [x, layer.kernel])
        return op_types(lambda x: layer(x, training=False), spec), op_types(gradient, spec)

    same = StandardizedConv2D(8, 3, padding="same")
    inference, training = graphs(same)
    assert forward <= inference and forward | backward <= training
    assert "Conv2D" not in inference | training
    for other in (StandardizedConv2D(8, 3), StandardizedConv2D(8, 3, strides=2, padding="same"),
                  StandardizedConv2D(8, 3, padding="same", dtype="mixed_bfloat16")):
        inference, training = graphs(other)
        assert not (forward | backward) & (inference | training), other.get_config()
    with kernels.portable():
        inference, training = graphs(same)
    assert not (forward | backward) & (inference | training)
    # The same function as the convolution it replaces.
    x = np.random.default_rng(4).normal(size=(2, 6, 6, 16)).astype(np.float32)
    with kernels.portable():
        expected = same(x, training=True).numpy()
    np.testing.assert_allclose(same(x, training=True), expected, atol=1e-5 * np.abs(expected).max())


def test_once_standardized_copies_of_winograd_layers_are_transformed(operations, monkeypatch):
    """Within `standardized_once` a Winograd layer reads its kernel standardized and
    transformed once, (16, in, out), for the same outputs; with the ops turned off since,
    the copy is made again in the convolution's form."""
    rng = np.random.default_rng(8)
    conv = StandardizedConv2D(8, 3, padding="same")
    conv.build((None, None, None, 4))
    conv.kernel.assign(rng.normal(0.5, 1.0, (3, 3, 4, 8)))
    x = rng.normal(size=(2, 6, 6, 4)).astype(np.float32)
    without = tf.function(lambda x: conv(x, training=False))(x).numpy()
    with kernels.standardized_once([conv]) as new:
        copy, current = kernels._ONCE[conv]
        assert new and copy.shape == (16, 4, 8)
        within = tf.function(lambda x: conv(x, training=False))
        np.testing.assert_array_equal(within(x), without)
        copy.assign(tf.zeros_like(copy))  # read from the copy: zero outputs
        assert not np.any(within(x).numpy())
    np.testing.assert_array_equal(within(x), without)  # the flag unset: computed in the graph
    monkeypatch.setenv(native.ENABLE_ENV, "0")
    with kernels.standardized_once([conv]) as new:
        assert new and kernels._ONCE[conv][0].shape == (3, 3, 4, 8)
        np.testing.assert_allclose(tf.function(lambda x: conv(x, training=False))(x), without,
                                   atol=1e-5 * np.abs(without).max())


def test_layers_call_the_ops_in_training_and_inference_graphs(operations, monkeypatch):
    layer, _, _ = random_group_norm(np.random.default_rng(2))
    conv = StandardizedConv2D(8, 3)
    conv.build((None, None, None, 64))
    spec = tf.TensorSpec((None, 6, 6, 64), tf.float32)
    forward = {"BitkerasGroupNorm", "BitkerasStandardize"}
    gradients = forward | {"BitkerasGroupNormGrad", "BitkerasStandardizeGrad"}

    def infer(x):
        return conv(layer(x, training=False), training=False)

    def train(x):
        return conv(layer(x, training=True), training=True)

    def gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(train(x))
        return tape.gradient(loss, [x, conv.kernel])
    assert forward <= op_types(infer, spec)
    assert gradients <= op_types(gradient, spec)
    # Not in exports, not inside XLA, not when turned off.
    with kernels.portable():
        assert not gradients & op_types(gradient, spec)
    compiled = tf.function(train, jit_compile=True)
    x = np.random.default_rng(3).normal(size=(2, 6, 6, 64)).astype(np.float32)
    # The kernel is initialized at random: outputs reach about 100, so the two float32
    # paths (XLA's convolution, oneDNN's) agree to a fraction of that scale.
    expected = train(x).numpy()
    np.testing.assert_allclose(compiled(x), expected, atol=1e-5 * np.abs(expected).max())
    assert not gradients & {
        operation.type for operation in compiled.get_concrete_function(x).graph.get_operations()}
    monkeypatch.setenv(native.ENABLE_ENV, "0")
    assert not native.usable()
    assert not gradients & op_types(gradient, spec)


@pytest.mark.parametrize("relu", [False, True])
def test_gradient_op_adds_a_residual_as_a_separate_sum_would(operations, relu):
    """The residual input: dx + residual to the bit, dgamma and dbeta unchanged."""
    rng = np.random.default_rng(11)
    x, upstream, residual = (tf.constant(rng.normal(1.0, 2.0, (2, 3, 5, 64)), tf.float32)
                             for _ in range(3))
    gamma, beta = (tf.constant(rng.normal(size=64), tf.float32) for _ in range(2))
    _, mean, inverse_std = operations.bitkeras_group_norm(x, gamma, beta, groups=32,
                                                          epsilon=1e-5, relu=relu)
    plain = operations.bitkeras_group_norm_grad(upstream, x, gamma, beta, mean, inverse_std,
                                                [], groups=32, relu=relu)
    summed = operations.bitkeras_group_norm_grad(upstream, x, gamma, beta, mean, inverse_std,
                                                 [residual], groups=32, relu=relu)
    np.testing.assert_array_equal(summed[0], (plain[0] + residual).numpy())
    for got, want in zip(summed[1:], plain[1:]):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(tf.errors.InvalidArgumentError, match="residual shape"):
        operations.bitkeras_group_norm_grad(upstream, x, gamma, beta, mean, inverse_std,
                                            [residual[:1]], groups=32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="at most one residual, got 2"):
        operations.bitkeras_group_norm_grad(upstream, x, gamma, beta, mean, inverse_std,
                                            [residual, residual], groups=32)


@pytest.mark.parametrize("relu", [False, True])
def test_padded_output_and_its_gradient_are_a_separate_pads(operations, relu):
    """pad=2: the output zero-padded, and the gradient of its interior, to the bit."""
    rng = np.random.default_rng(13)
    x = tf.constant(rng.normal(1.0, 2.0, (2, 5, 4, 64)), tf.float32)
    gamma, beta = (tf.constant(rng.normal(size=64), tf.float32) for _ in range(2))
    outputs, mean, inverse_std = operations.bitkeras_group_norm(x, gamma, beta, groups=32,
                                                                epsilon=1e-5, relu=relu)
    padded, padded_mean, padded_inverse_std = operations.bitkeras_group_norm(
        x, gamma, beta, groups=32, epsilon=1e-5, relu=relu, pad=2)
    np.testing.assert_array_equal(padded, np.pad(outputs, [(0, 0), (2, 2), (2, 2), (0, 0)]))
    np.testing.assert_array_equal(padded_mean, mean)
    np.testing.assert_array_equal(padded_inverse_std, inverse_std)
    upstream = tf.constant(rng.normal(size=(2, 9, 8, 64)), tf.float32)
    for got, want in zip(
            operations.bitkeras_group_norm_grad(upstream, x, gamma, beta, mean, inverse_std, [],
                                                groups=32, relu=relu, pad=2),
            operations.bitkeras_group_norm_grad(upstream[:, 2:-2, 2:-2], x, gamma, beta, mean,
                                                inverse_std, [], groups=32, relu=relu)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(tf.errors.InvalidArgumentError, match="upstream shape"):
        operations.bitkeras_group_norm_grad(upstream[:, 2:-2, 2:-2], x, gamma, beta, mean,
                                            inverse_std, [], groups=32, pad=2)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError),
                       match="pad needs .batch, height, width, channels. input|rank 4"):
        operations.bitkeras_group_norm(tf.zeros((2, 20, 64)), gamma, beta, groups=32,
                                       epsilon=1e-5, pad=1)


@pytest.mark.parametrize("relu", [False, True])
def test_bfloat16_activations_give_what_casts_around_the_float32_op_give(operations, relu):
    """bfloat16 in and out (mixed precision): to the bit, the float32 op between casts,
    padding and a residual included."""
    rng = np.random.default_rng(15)

    def bfloat16(shape):
        return tf.cast(tf.constant(rng.normal(1.0, 2.0, shape), tf.float32), tf.bfloat16)

    def as_float(values):
        return tf.cast(values, tf.float32).numpy()
    x, residual = bfloat16((2, 5, 4, 64)), bfloat16((2, 5, 4, 64))
    upstream = bfloat16((2, 7, 6, 64))  # the padded output's shape
    gamma, beta = (tf.constant(rng.normal(size=64), tf.float32) for _ in range(2))
    settings = dict(groups=32, relu=relu, pad=1)
    half = operations.bitkeras_group_norm(x, gamma, beta, epsilon=1e-5, **settings)
    full = operations.bitkeras_group_norm(tf.cast(x, tf.float32), gamma, beta, epsilon=1e-5,
                                          **settings)
    assert half[0].dtype == tf.bfloat16
    np.testing.assert_array_equal(as_float(half[0]), as_float(tf.cast(full[0], tf.bfloat16)))
    for got, want in zip(half[1:], full[1:]):
        np.testing.assert_array_equal(got, want)
    half = operations.bitkeras_group_norm_grad(upstream, x, gamma, beta, *full[1:], [residual],
                                               **settings)
    full = operations.bitkeras_group_norm_grad(tf.cast(upstream, tf.float32),
                                               tf.cast(x, tf.float32), gamma, beta, *full[1:],
                                               [], **settings)
    assert half[0].dtype == tf.bfloat16
    np.testing.assert_array_equal(as_float(half[0]),
                                  as_float(tf.cast(full[0], tf.bfloat16) + residual))
    for got, want in zip(half[1:], full[1:]):
        np.testing.assert_array_equal(got, want)


def test_strided_units_pad_in_the_op(operations):
    """A strided unit's padding before conv_b comes from norm_b's op: no Pad op in
    training, and the gradients of the unit written out with a separate pad."""
    unit = PreActBottleneck(out_channels=128, mid_channels=32, strides=2, projection=True)

    def written_out(x):
        preactivated = kernels.normalize(unit.norm_a, x, True, relu=True)
        hidden = kernels.normalize(unit.norm_b, unit.conv_a(preactivated, training=True), True,
                                   relu=True)
        hidden = unit.conv_b(kernels.pad_symmetric(hidden, 1), training=True)
        hidden = unit.conv_c(kernels.normalize(unit.norm_c, hidden, True, relu=True), training=True)
        return hidden + unit.proj(preactivated, training=True)
    assert_unit_trains_as_written_out(unit, written_out, (2, 6, 7, 64), "Pad")


def test_identity_units_add_the_shortcut_gradient_in_the_op(operations):
    """An identity unit trains with no separate sum (AddN) of its input's two gradients,
    and its gradients are those of the unit written out with the shortcut added apart."""
    unit = PreActBottleneck(out_channels=128, mid_channels=32)

    def written_out(x):
        hidden = unit.conv_a(kernels.normalize(unit.norm_a, x, True, relu=True), training=True)
        hidden = unit.conv_b(kernels.normalize(unit.norm_b, hidden, True, relu=True),
                             training=True)
        hidden = unit.conv_c(kernels.normalize(unit.norm_c, hidden, True, relu=True),
                             training=True)
        return hidden + x
    assert_unit_trains_as_written_out(unit, written_out, (2, 5, 6, 128), "AddN")


def assert_unit_trains_as_written_out(unit, written_out, shape, saved_op):
    """The unit's training gradients (inputs and weights) equal those of `written_out`
    to the bit, and its gradient graph lacks `saved_op`, which written_out's has."""
    rng = np.random.default_rng(12)
    x = tf.constant(rng.normal(size=shape), tf.float32)
    upstream = tf.constant(rng.normal(size=unit(x).shape), tf.float32)

    def gradients(function):
        def run(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(function(x) * upstream)
            return tape.gradient(loss, [x, *unit.trainable_weights])
        return run
    spec = tf.TensorSpec(x.shape, tf.float32)
    assert saved_op not in op_types(gradients(lambda x: unit(x, training=True)), spec)
    assert saved_op in op_types(gradients(written_out), spec)
    for got, want in zip(tf.function(gradients(lambda x: unit(x, training=True)))(x),
                         tf.function(gradients(written_out))(x)):
        np.testing.assert_array_equal(got, want)


def test_op_refuses_mismatched_inputs_with_a_clear_error(operations):
    x = tf.zeros((2, 3, 3, 48))
    with pytest.raises(tf.errors.InvalidArgumentError, match="48 channels do not split into 32"):
        operations.bitkeras_group_norm(x, tf.ones(48), tf.zeros(48), groups=32, epsilon=1e-5)
    x = tf.zeros((2, 3, 3, 64))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"one value per channel \(64\)"):
        operations.bitkeras_group_norm(x, tf.ones(32), tf.zeros(32), groups=32, epsilon=1e-5)
    outputs, mean, inverse_std = operations.bitkeras_group_norm(
        x, tf.ones(64), tf.zeros(64), groups=32, epsilon=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="upstream shape"):
        operations.bitkeras_group_norm_grad(tf.zeros((2, 3, 64)), x, tf.ones(64),
                                            tf.zeros(64), mean, inverse_std, [], groups=32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\(64\), got 64 and 32"):
        operations.bitkeras_group_norm_grad(x, x, tf.ones(64), tf.zeros(32), mean, inverse_std,
                                            [], groups=32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="output-channel axis"):
        operations.bitkeras_standardize(tf.constant(1.0), epsilon=1e-10)
    kernel = tf.ones((3, 3, 4, 8))
    standardized, inverse_std = operations.bitkeras_standardize(kernel, epsilon=1e-10)
    with pytest.raises(tf.errors.InvalidArgumentError, match="upstream shape"):
        operations.bitkeras_standardize_grad(tf.ones((3, 3, 8, 4)), standardized, inverse_std)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"inverse_std needs shape \[8\]"):
        operations.bitkeras_standardize_grad(kernel, standardized, inverse_std[:4])


def test_empty_batch_gives_empty_outputs_and_zero_parameter_gradients(operations):
    x = tf.zeros((0, 3, 3, 64))
    gamma, beta = tf.ones(64), tf.zeros(64)
    with tf.GradientTape() as tape:
        tape.watch([x, gamma, beta])
        outputs = native.group_norm(x, gamma, beta, groups=32, epsilon=1e-5)
    d_x, d_gamma, d_beta = tape.gradient(outputs, [x, gamma, beta])
    assert outputs.shape == (0, 3, 3, 64) and d_x.shape == (0, 3, 3, 64)
    assert not np.any(d_gamma.numpy()) and not np.any(d_beta.numpy())


@pytest.mark.slow
def test_build_is_kept_and_reused(operations, tmp_path, monkeypatch):
    monkeypatch.setattr(native, "_compiler_version", lambda compiler: "a compiler")
    built = native.build(cache=tmp_path)
    assert built.parent == tmp_path / "native" and built.suffix == ".so"
    assert built.stat().st_size > 0

    def no_compiling(*args, **kwargs):
        raise AssertionError("compiled again")
    monkeypatch.setattr(native.subprocess, "run", no_compiling)
    assert native.build(cache=tmp_path) == built
    # Another TensorFlow build (here: other flags) is another file.
    monkeypatch.setattr(tf.sysconfig, "get_compile_flags", lambda: ["-DOTHER"])
    with pytest.raises(AssertionError, match="compiled again"):
        native.build(cache=tmp_path)


def test_the_target_cpu_can_be_named_and_is_part_of_the_build(monkeypatch, tmp_path):
    """`BITKERAS_NATIVE_MARCH` goes to the compiler as -march and into the build's name."""
    commands = []

    def compile_nothing(command, **kwargs):
        commands.append(command)
        pathlib.Path(command[command.index("-o") + 1]).write_bytes(b"built")
        return subprocess.CompletedProcess(command, 0, "", "")
    monkeypatch.setattr(native, "_compiler_version", lambda compiler: "a compiler")
    monkeypatch.setattr(native.subprocess, "run", compile_nothing)
    for_this_cpu = native.build(cache=tmp_path)
    monkeypatch.setenv(native.MARCH_ENV, "x86-64-v3")
    for_avx2 = native.build(cache=tmp_path)
    assert for_avx2 != for_this_cpu and for_avx2.exists()
    assert "-march=native" in commands[0] and "-march=x86-64-v3" in commands[1]
    monkeypatch.setenv(native.MARCH_ENV, "x86-64; rm -rf ~")
    with pytest.raises(native.NativeBuildError, match="BITKERAS_NATIVE_MARCH=.* is not a"):
        native.build(cache=tmp_path)
    assert len(commands) == 2


def test_without_a_compiler_training_warns_once_and_uses_tensorflows_ops(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "")
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++ or c++ on it
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path))
    native.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found.*install g\\+\\+"):
            assert native.library() is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per process
            assert native.library() is None
            assert not native.usable()
        assert_training_gradients_match_float64(
            np.random.default_rng(4), (2, 4, 4, 64), mean=1.0, std=2.0)
    finally:
        monkeypatch.undo()
        native.library.cache_clear()
        with warnings.catch_warnings():  # as the conftest left it for the tests after this one
            warnings.simplefilter("ignore", RuntimeWarning)
            native.library()


@pytest.fixture
def failing_compiler(monkeypatch, tmp_path):
    """`$CXX`: a compiler that fails every build, saying so on stderr."""
    compiler = tmp_path / "g++"
    compiler.write_text("#!/bin/sh\necho 'fatal error: out of disk' >&2\nexit 3\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    return compiler


def test_a_failing_compiler_is_reported_with_its_message(failing_compiler, tmp_path):
    with pytest.raises(native.NativeBuildError, match=r"(?s)failed .*exit 3.*out of disk"):
        native.build(cache=tmp_path)
    assert not list((tmp_path / "native").glob("*.so"))


def test_a_cache_folder_that_cannot_be_written_is_reported(failing_compiler, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder should be")
    with pytest.raises(native.NativeBuildError, match="cannot build into .*BITKERAS_CACHE_DIR"):
        native.build(cache=blocked)
