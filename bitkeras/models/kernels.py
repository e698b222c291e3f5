"""The kernel seam: how GroupNorm, weight standardization and the convolutions compute.

Layers keep Keras's signatures and ask this module, in one place, how to
compute: `normalize(layer, inputs, training, ...)` for a GroupNorm layer (with
the fusions BiT's units use: the ReLU after it, the padding before a strided
convolution, a second use of its inputs) and `convolve(layer, inputs, kernel)`
for a weight-standardized convolution. Which form runs is decided here and in
`bitkeras.models.native` (whether its C++ ops can run), nowhere else.

`standardize` (weight standardization) and `group_norm` are written in
`keras.ops`, so they run under every Keras backend. Under the TensorFlow
backend, layers take faster forms of the same functions:

- at inference (`calling(training=False)`), small XLA clusters
  (`tf.function(jit_compile=True)`) inside TensorFlow's graph, while the
  convolutions stay on TensorFlow's own kernels. TensorFlow executes the
  composed ops one pass over memory each; XLA fuses them into one or two. On a
  2-core Xeon (AVX-512) this made R50x1 inference at 128x128 1.26-1.29x faster
  (`benchmarks/throughput.py`, two runs).
- in training (`calling(training=True)`), the plain forward with its gradient
  written in closed form (`ops.custom_gradient`): fewer passes over memory than
  TensorFlow's own gradient of the composed ops, and a smaller graph to trace.
  XLA clusters did not pay in training: XLA's GroupNorm gradient was slower
  than TensorFlow's, and compiling them made the first step of `fit` seconds longer.
- on CPUs, where a compiler is at hand, both layers go further, in training and
  at inference: one C++ op for each forward and one for each gradient
  (`bitkeras.models.native`).
- on the same ops, 3x3 convolutions at stride 1 run as Winograd's F(2x2, 3x3):
  16 matrix products between the ops' transforms (`winograd_convolutions`).
- 1x1 convolutions at stride 1 run as a matrix product of the pixels with the
  kernel's (in, out) matrix (`pointwise_products`): the same sums, which
  TensorFlow's matrix product runs faster than its convolution.

GroupNorm sums its statistics over the pixels per channel first, then per
group, on every path (see `_standardized_groups`).

JAX compiles the whole step with XLA anyway and torch runs its own kernels, so
both use the plain form. `portable()` turns the faster forms off while a graph
is traced for export, and so does `tf.saved_model.save` called directly: a
SavedModel stays free of XLA-only functions, which TF Serving and converters do
not all run, and of bitkeras's C++ ops, which a TensorFlow without bitkeras
cannot load.

`standardized_once` lets inference (`predict`, `evaluate`) standardize each
kernel once per call instead of in every batch's graph.
"""

import contextlib
import contextvars
import functools
import weakref

import keras
from keras import ops

from bitkeras import compat
from bitkeras.models import native

_PORTABLE = contextvars.ContextVar("bitkeras_portable_kernels", default=False)
_TRAINING = contextvars.ContextVar("bitkeras_training_kernels", default=False)


@contextlib.contextmanager
def calling(training):
    """A layer's call: training graphs take the closed-form gradients, inference the clusters."""
    token = _TRAINING.set(bool(training))
    try:
        yield
    finally:
        _TRAINING.reset(token)


@contextlib.contextmanager
def portable():
    """Within the block, layers trace the plain `keras.ops` form (for exports)."""
    token = _PORTABLE.set(True)
    try:
        yield
    finally:
        _PORTABLE.reset(token)


def _tensorflow():
    # A SavedModel that `tf.saved_model.save` writes directly, not through bitkeras's
    # exports, gets the plain form too, which any TensorFlow loads.
    return (keras.backend.backend() == "tensorflow" and not _PORTABLE.get()
            and not compat.in_save_context())


def _native():
    """Whether layers run bitkeras's C++ ops now: either faster form, where the ops can run."""
    return _tensorflow() and native.usable()


def fused():
    """Whether layers use the XLA clusters now: TensorFlow backend, inference, not `portable()`."""
    return _tensorflow() and not _TRAINING.get()


def compiled_per_shape():
    """Whether inference graphs traced now hold XLA clusters (`fused` without the C++ ops),
    whose programs XLA compiles once for each batch shape they meet."""
    return fused() and not native.usable()


def pointwise_products():
    """Whether 1x1 convolutions run as matrix products now: TensorFlow backend, not `portable()`."""
    return _tensorflow()


def winograd_convolutions(compute_dtype):
    """Whether 3x3 convolutions at stride 1 ("same") computing in `compute_dtype` run as
    Winograd's F(2x2, 3x3) now: in float32, on bitkeras's C++ ops where they can run
    (`native.winograd_convolution`)."""
    return compute_dtype == "float32" and _native()


def closed_form():
    """Whether layers take the closed-form gradients now: TensorFlow, training, not `portable()`."""
    return _tensorflow() and _TRAINING.get()


def standardize(kernel, epsilon):
    """Weight standardization per output channel of an HWIO kernel, in float32."""
    kernel = ops.cast(kernel, "float32")
    if _native():
        return native.standardize(kernel, epsilon)
    if fused():
        return _tensorflow_kernels()["standardize"](kernel, epsilon)
    if closed_form():
        return _standardize_closed_form(ops, kernel, epsilon)
    return _standardize(ops, kernel, epsilon)


def group_norm(inputs, gamma, beta, groups, epsilon, relu=False, pad=0, return_inputs=False):
    """GroupNorm of NHWC `inputs` over `groups` channel groups, statistics in float32.

    The result has the dtype of `inputs`. The same function as Keras's
    GroupNormalization with `axis=-1`, written `(x - mean) * (gamma / std) + beta`;
    with `relu`, followed by a ReLU, and with `pad`, zero-padded by `pad` pixels on
    each side of height and width (both in the same pass where the C++ op runs).
    With `return_inputs`, `(result, inputs)`, the second through the C++ op
    where it runs (see `native.group_norm`).
    """
    dtype = inputs.dtype
    gamma, beta = ops.cast(gamma, "float32"), ops.cast(beta, "float32")
    native_now = _native()
    if native_now and keras.backend.standardize_dtype(dtype) in native.GROUP_NORM_DTYPES:
        # float32 or bfloat16 in and out of the op itself: no casts around it.
        return native.group_norm(inputs, gamma, beta, groups, epsilon, relu=relu, pad=pad,
                                 return_inputs=return_inputs)
    original = inputs
    inputs = ops.cast(inputs, "float32")
    if native_now:
        outputs = ops.cast(
            native.group_norm(inputs, gamma, beta, groups, epsilon, relu=relu, pad=pad), dtype)
        return (outputs, original) if return_inputs else outputs
    if fused():
        outputs = _tensorflow_kernels()["group_norm"](inputs, gamma, beta, groups, epsilon)
    elif closed_form():
        outputs = _group_norm_closed_form(ops, inputs, gamma, beta, groups, epsilon)
    else:
        outputs = _group_norm(ops, inputs, gamma, beta, groups, epsilon)
    outputs = ops.cast(ops.relu(outputs) if relu else outputs, dtype)
    if pad:
        outputs = pad_symmetric(outputs, pad)
    return (outputs, original) if return_inputs else outputs


def normalize(layer, inputs, training=None, relu=False, pad=0, return_inputs=False):
    """`layer` (a Keras GroupNormalization) on `inputs`, in the form that runs fastest here.

    The one entry point GroupNorm layers and units call. On 4-D channels-last
    inputs with scale and centre (BiT's case) it is `group_norm` on the layer's
    weights, in training or inference form (`training`), else Keras's own
    layer. The fusions of BiT's units: `relu` returns `relu(layer(x))`, `pad`
    zero-pads the result by `pad` pixels on each side of height and width, and
    `return_inputs` returns `(layer(x), inputs)`, for a second use of the
    inputs (a residual unit's identity shortcut): where bitkeras's C++ op runs,
    all three happen in its one pass, and the gradient through that second
    output joins GroupNorm's own in the gradient op. The result has the layer's
    compute dtype.
    """
    images = len(inputs.shape) == 4 and layer.axis in (-1, 3)  # NHWC
    if pad and not images:
        raise ValueError(f"{layer.name}: pad={pad} needs 4-D (batch, height, width, "
                         f"channels) inputs with axis=-1, got shape "
                         f"{tuple(inputs.shape)} and axis={layer.axis}")
    if not (images and layer.scale and layer.center):  # not BiT's case
        outputs = keras.layers.GroupNormalization.call(layer, inputs)
        outputs = ops.relu(outputs) if relu else outputs
        outputs = pad_symmetric(outputs, pad) if pad else outputs
        return (outputs, inputs) if return_inputs else outputs
    with calling(training):
        outputs = group_norm(inputs, layer.gamma, layer.beta, layer.groups, layer.epsilon,
                             relu=relu, pad=pad, return_inputs=return_inputs)
    if return_inputs:
        return ops.cast(outputs[0], layer.compute_dtype), outputs[1]
    return ops.cast(outputs, layer.compute_dtype)


def convolve(layer, inputs, kernel):
    """`layer`'s convolution (a weight-standardized Keras Conv2D) of `inputs` by `kernel`.

    The one entry point of `StandardizedConv2D`: the kernel standardized
    (`standardized_kernel`) in float32 whatever the compute dtype (the
    statistics of small kernels lose too much in half precision), then
    convolved as Winograd's F(2x2, 3x3) where `winograd(layer)`, as a matrix
    product for 1x1 at stride 1 where `pointwise_products()`, else by Keras's
    convolution.
    """
    epsilon = layer.standardization_epsilon
    if winograd(layer):
        # R50x1's run 1.1-1.3x (AVX-512) and 1.3-1.7x (AVX2) faster so than on
        # TensorFlow's convolutions (bitkeras.models.native.winograd_convolution).
        return native.winograd_products(
            inputs, standardized_kernel(layer, kernel, epsilon, winograd=True))
    kernel = ops.cast(standardized_kernel(layer, kernel, epsilon), layer.compute_dtype)
    if _stride_one(layer, (1, 1)) and pointwise_products():
        # A 1x1 convolution at stride 1 is a product of the pixels (rows) with the
        # kernel's (in, out) matrix: the same sums, which TensorFlow's matrix
        # product runs about 8% faster than its convolution, gradients included,
        # on R50's 1x1 shapes (2-core Xeon).
        outputs = ops.matmul(ops.reshape(inputs, (-1, kernel.shape[2])),
                             ops.reshape(kernel, kernel.shape[2:]))
        return ops.reshape(outputs, (*ops.shape(inputs)[:3], kernel.shape[3]))
    return keras.layers.Conv2D.convolution_op(layer, inputs, kernel)


def winograd(layer):
    """Whether `layer`'s convolution runs as Winograd's F(2x2, 3x3) now: 3x3 at stride 1 with
    "same" padding (channels last), in float32, where bitkeras's C++ ops run
    (`winograd_convolutions`)."""
    return (_stride_one(layer, (3, 3)) and layer.padding == "same"
            and winograd_convolutions(layer.compute_dtype))


def _stride_one(layer, kernel_size):
    return (tuple(layer.kernel_size) == kernel_size and tuple(layer.strides) == (1, 1)
            and tuple(layer.dilation_rate) == (1, 1) and layer.groups == 1
            and layer.data_format == "channels_last")


def pad_symmetric(inputs, amount):
    """Zero-pads height and width by `amount` on every side (NHWC).

    BiT pads explicitly and convolves VALID; TensorFlow's "same" pads 0 before
    and 1 after for stride 2 on even sizes, which is a different function (at
    stride 1 with a 3x3 kernel it is the same function).
    """
    return ops.pad(inputs, [[0, 0], [amount, amount], [amount, amount], [0, 0]])


_ONCE = weakref.WeakKeyDictionary()
"""layer -> (its kernel standardized once, whether that copy is current): two tf.Variables."""


@contextlib.contextmanager
def standardized_once(layers, refresh=True):
    """Within the block, inference graphs of `layers` read kernels standardized here, once.

    `layers`: weight-standardized convolutions (`kernel` and
    `standardization_epsilon`). The weights do not change within one
    `predict` or `evaluate`, yet their graph standardizes every kernel in
    every batch: about a tenth of R50x1's inference time at 128x128 on a
    2-core Xeon. Here each kernel is standardized (by TensorFlow's own ops, so
    XLA compiles nothing for it) and kept in a variable beside the layer (not
    among its weights), with a flag that is set only within the block. An inference
    graph traced while a layer has such a copy (`standardized_kernel`) reads
    the copy when the flag is set and standardizes in the graph otherwise, so
    a graph run outside the block (`predict_on_batch`, Keras's own loops)
    never reads a stale copy. Each copy is kept in the layer's compute dtype,
    the values its convolution reads: as much memory as the kernels in
    float32, half in bfloat16, where keeping float32 copies had every batch
    cast them again (a tenth of R50x1's mixed-bfloat16 inference at 128x128).
    A layer whose convolution runs as Winograd's products
    (`winograd(layer)`) keeps its
    kernel transformed as well (16/9 of the memory), which every batch would
    otherwise transform again (for R50x1 at 128x128, batch 16, with oneDNN
    limited to AVX2, 2% of the ops' time, writing 56 MB per batch).

    Yields whether a layer got its copy only now: graphs traced before lack
    it, so a caller retraces them to benefit. With `refresh=False`, layers
    that already have a copy of their current form keep it, stale, and the
    block leaves the flag unset (their graphs standardize in the batch, as
    outside the block); only where a copy is missing is one made, and then all
    are refreshed and read. Only under the TensorFlow backend; elsewhere the
    block does nothing and yields False.
    """
    if keras.backend.backend() != "tensorflow" or not (refresh or any(
            not _has_copy(layer) for layer in layers)):
        yield False
        return
    import tensorflow as tf

    new = False
    # bitkeras's op where the graphs use it too (the same values either way), else
    # TensorFlow's own ops, not the cluster: nothing for XLA to compile per shape.
    use_op = native.usable()
    for layer in layers:
        kernel, epsilon = ops.cast(layer.kernel, "float32"), layer.standardization_epsilon
        if use_op:
            standardized = native.standardize(kernel, epsilon)
        else:
            standardized = _standardize_in_tensorflow(kernel, epsilon)
        if winograd(layer):
            # Transformed too, as the layer's Winograd products read it.
            standardized = native.winograd_kernel(standardized)
        standardized = ops.cast(standardized, layer.compute_dtype)
        if layer in _ONCE and _ONCE[layer][0].shape == standardized.shape:
            copy, current = _ONCE[layer]
            copy.assign(standardized)
            current.assign(True)
        else:  # a first copy, or one of another form (the C++ ops turned on or off since)
            _ONCE[layer] = (tf.Variable(standardized, trainable=False),
                            tf.Variable(True, trainable=False))
            new = True
    try:
        yield new
    finally:
        for layer in layers:
            _ONCE[layer][1].assign(False)


def _has_copy(layer):
    """Whether `layer` has a standardized copy of the form its graphs would read now."""
    once = _ONCE.get(layer)
    return (once is not None and (len(once[0].shape) == 3) == winograd(layer)
            and once[0].dtype == layer.compute_dtype)


def standardized_kernel(layer, kernel, epsilon, winograd=False):
    """`standardize(kernel)` for `layer`, read from its copy within `standardized_once`.

    With `winograd`, that kernel transformed for the layer's Winograd products
    (`native.winograd_kernel`, float32). Only inference graphs (those using
    the fused clusters) look for a copy; where there is one of that form, the
    result has the copy's dtype (the layer's compute dtype), else float32.
    Such a graph, run where the copy is not current, standardizes as the
    copies are made (`standardized_once`): nothing there for XLA to compile.
    """
    def computed(function=standardize):
        standardized = function(kernel, epsilon)
        return native.winograd_kernel(standardized) if winograd else standardized

    once = _ONCE.get(layer) if fused() else None
    if once is None or (len(once[0].shape) == 3) != winograd:  # no copy of this form
        return computed()
    copy, current = once
    as_copies_are = standardize if _native() else _standardize_in_tensorflow
    return ops.cond(current, lambda: ops.convert_to_tensor(copy),
                    lambda: ops.cast(computed(as_copies_are), copy.dtype))


def _standardize_in_tensorflow(kernel, epsilon):
    """`standardize` by TensorFlow's own ops (no XLA cluster)."""
    return _standardize(ops, ops.cast(kernel, "float32"), epsilon)


def _standardize(ops, kernel, epsilon):
    return _standardized(ops, kernel, epsilon)[0]


def _standardized(ops, kernel, epsilon):
    """(the standardized kernel, 1 / std per output channel)."""
    mean, variance = ops.moments(kernel, axes=[0, 1, 2], keepdims=True)
    inverse_std = ops.rsqrt(variance + epsilon)
    return (kernel - mean) * inverse_std, inverse_std


def _standardize_closed_form(ops, kernel, epsilon):
    """`_standardize` with its gradient written out.

    With `w = (k - mean) * r` per output channel:
    `dk = r * (dw - mean(dw) - w * mean(dw * w))`, means over (height, width, in).
    """

    @ops.custom_gradient
    def standardize(kernel):
        standardized, inverse_std = _standardized(ops, kernel, epsilon)

        def gradient(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            mean_term = ops.mean(upstream, axis=[0, 1, 2], keepdims=True)
            standardized_term = ops.mean(upstream * standardized, axis=[0, 1, 2], keepdims=True)
            return inverse_std * (upstream - mean_term - standardized * standardized_term)

        return standardized, gradient

    return standardize(kernel)


def _group_norm(ops, inputs, gamma, beta, groups, epsilon):
    shape = ops.shape(inputs)
    centered, inverse_std, _ = _standardized_groups(ops, _pixels(ops, inputs), groups, epsilon)
    return ops.reshape(centered * (inverse_std * gamma) + beta, shape)


def _group_norm_closed_form(ops, inputs, gamma, beta, groups, epsilon):
    """`_group_norm` with its gradient written out: fewer passes over the activations.

    With `y = xhat * gamma + beta`, `xhat = (x - mean) * r` per group:
    `dx = r * (dy * gamma - mean(dy * gamma) - xhat * mean(dy * gamma * xhat))`,
    means over each group, from two sums over the pixels per channel.
    """

    @ops.custom_gradient
    def normalize(pixels, gamma, beta):
        centered, inverse_std, count = _standardized_groups(ops, pixels, groups, epsilon)

        def gradient(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            sums = ops.sum(upstream, axis=1)
            centered_sums = ops.sum(upstream * centered, axis=1)
            d_gamma = ops.sum(centered_sums * ops.squeeze(inverse_std, 1), axis=0)
            mean_term = _group_means(ops, sums * gamma, groups, count)
            centered_term = (_group_means(ops, centered_sums * gamma, groups, count)
                             * ops.square(inverse_std))
            d_pixels = inverse_std * (upstream * gamma - mean_term - centered * centered_term)
            return d_pixels, d_gamma, ops.sum(sums, axis=0)

        return centered * (inverse_std * gamma) + beta, gradient

    return ops.reshape(normalize(_pixels(ops, inputs), gamma, beta), ops.shape(inputs))


def _pixels(ops, inputs):
    """NHWC -> (N, H * W, C)."""
    shape = ops.shape(inputs)
    return ops.reshape(inputs, (shape[0], -1, shape[3]))


def _group_means(ops, channel_sums, groups, count):
    """(N, C) sums over the pixels -> each channel's group mean (sum / `count`), (N, 1, C)."""
    batch, channels = ops.shape(channel_sums)
    per_group = channels // groups
    sums = ops.sum(ops.reshape(channel_sums, (batch, groups, per_group)), axis=2, keepdims=True)
    return ops.reshape(ops.broadcast_to(sums / count, (batch, groups, per_group)),
                       (batch, 1, channels))


def _standardized_groups(ops, pixels, groups, epsilon):
    """(x - group mean, 1 / group std as (N, 1, C), values per group) for (N, P, C) `pixels`.

    The sums run over the pixels per channel first, then per group: reductions
    that keep the contiguous channel axis vectorize, where one over (height,
    width, channels of a group) does not. On a 2-core Xeon this made one
    GroupNorm at 16x32x32x256 1.4x faster in XLA (3.6 ms against 5.0), with no
    loss of accuracy against float64; in TensorFlow's graph its forward and
    backward took 18 ms, and 15 ms with the closed-form gradient, against 24.6
    for Keras's layer.
    """
    _, count, channels = ops.shape(pixels)
    count = ops.cast(count * (channels // groups), pixels.dtype)
    centered = pixels - _group_means(ops, ops.sum(pixels, axis=1), groups, count)
    variance = _group_means(ops, ops.sum(ops.square(centered), axis=1), groups, count)
    return centered, ops.rsqrt(variance + epsilon), count


@functools.cache
def _tensorflow_kernels():
    """The two functions as XLA clusters, made once (TensorFlow imported when first needed).

    `reduce_retracing` keeps one trace with unknown sizes; XLA still compiles
    one program per concrete shape, as it must.
    """
    import tensorflow as tf

    def compiled(function):
        return tf.function(functools.partial(function, ops), jit_compile=True,
                           reduce_retracing=True)

    return {"standardize": compiled(_standardize), "group_norm": compiled(_group_norm)}
