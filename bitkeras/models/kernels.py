"""The arithmetic of BiT's two non-standard layers, with an XLA-fused path for TensorFlow.

`standardize` (weight standardization) and `group_norm` (GroupNorm at
inference) are written in `keras.ops`, so they run under every Keras backend.
Under the TensorFlow backend the same arithmetic runs as small XLA clusters
(`tf.function(jit_compile=True)`) inside TensorFlow's graph, while the
convolutions stay on TensorFlow's own kernels. TensorFlow executes the
composed ops one pass over memory each; XLA fuses them into one or two. On a
2-core Xeon (AVX-512) this made R50x1 inference at 128x128 1.26-1.29x faster
(`benchmarks/throughput.py`, two runs). Training steps keep the plain form: there the
clusters saved nothing (XLA's GroupNorm gradient was slower than TensorFlow's),
and compiling them made the first step of `fit` seconds longer.

JAX compiles the whole step with XLA anyway and torch runs its own kernels, so
both use the plain form (and Keras's own GroupNormalization). `portable()`
turns the clusters off while a graph is traced for export: a SavedModel stays
free of XLA-only functions, which TF Serving and converters do not all run.
"""

import contextlib
import contextvars
import functools

import keras
from keras import ops

_FUSED = contextvars.ContextVar("bitkeras_fused_kernels", default=True)


@contextlib.contextmanager
def fusing(enabled=True):
    """Within the block, layers use the XLA clusters only if `enabled` (and they did outside)."""
    token = _FUSED.set(_FUSED.get() and enabled)
    try:
        yield
    finally:
        _FUSED.reset(token)


def portable():
    """Within the block, layers trace the plain `keras.ops` form (for exports)."""
    return fusing(False)


def fused():
    """Whether layers use the XLA clusters now: TensorFlow backend, outside `portable()`."""
    return _FUSED.get() and keras.backend.backend() == "tensorflow"


def standardize(kernel, epsilon):
    """Weight standardization per output channel of an HWIO kernel, in float32."""
    kernel = ops.cast(kernel, "float32")
    if fused():
        return _tensorflow_kernels()["standardize"](kernel, epsilon)
    return _standardize(ops, kernel, epsilon)


def group_norm(inputs, gamma, beta, groups, epsilon):
    """GroupNorm of NHWC `inputs` over `groups` channel groups, statistics in float32.

    The result has the dtype of `inputs`. The same function as Keras's
    GroupNormalization with `axis=-1`, written `(x - mean) * (gamma / std) + beta`.
    """
    dtype = inputs.dtype
    inputs = ops.cast(inputs, "float32")
    gamma, beta = ops.cast(gamma, "float32"), ops.cast(beta, "float32")
    if fused():
        outputs = _tensorflow_kernels()["group_norm"](inputs, gamma, beta, groups, epsilon)
    else:
        outputs = _group_norm(ops, inputs, gamma, beta, groups, epsilon)
    return ops.cast(outputs, dtype)


def _standardize(ops, kernel, epsilon):
    mean, variance = ops.moments(kernel, axes=[0, 1, 2], keepdims=True)
    return (kernel - mean) * ops.rsqrt(variance + epsilon)


def _group_norm(ops, inputs, gamma, beta, groups, epsilon):
    shape = ops.shape(inputs)
    channels = shape[3]
    grouped = ops.reshape(inputs, (shape[0], shape[1], shape[2], groups, channels // groups))
    mean, variance = ops.moments(grouped, axes=[1, 2, 4], keepdims=True)
    scale = ops.rsqrt(variance + epsilon) * ops.reshape(gamma, (groups, channels // groups))
    normalized = (grouped - mean) * scale + ops.reshape(beta, (groups, channels // groups))
    return ops.reshape(normalized, shape)


@functools.cache
def _tensorflow_kernels():
    """The two functions as XLA clusters, made once (TensorFlow imported only here).

    `reduce_retracing` keeps one trace with unknown sizes; XLA still compiles
    one program per concrete shape, as it must.
    """
    import tensorflow as tf

    def compiled(function):
        return tf.function(functools.partial(function, ops), jit_compile=True,
                           reduce_retracing=True)

    return {"standardize": compiled(_standardize), "group_norm": compiled(_group_norm)}
