"""BiT's GroupNorm, weight standardization and 3x3 convolutions as C++ TensorFlow ops, on CPUs.

TensorFlow runs each composed layer (`kernels.py`) as a dozen ops, each one
pass over memory; `native_ops.cc` (beside this file) has one op for each
forward and one for each gradient:

- GroupNorm: the forward in two reads and a write of the activations (its
  statistics in one pass, shifted by each channel's first pixel), the gradient
  in two reads and a write; with `relu=True` the ReLU that follows
  each of BiT's GroupNorms is part of the same passes (the gradient finds
  where it passed by computing the forward's values again); so are the
  zero padding before a strided unit's 3x3 convolution (`pad`) and, in an
  identity unit, the sum of the input's two gradients (GroupNorm's and the
  shortcut's, `return_inputs`). Its activations may be float32 or bfloat16
  (mixed precision: no casts around it). On a 2-core Xeon
  the op took GroupNorm's forward and gradient at 16x32x32x256 from 22.5 ms
  (the closed form of `kernels.py` on TensorFlow's ops) to 9.5 ms (its forward
  then read three times), and R50x1's
  training step at 128x128, batch 16, from 0.82-0.87 s to 0.74 s.
- weight standardization: the forward in two reads and a write of the kernel,
  the gradient in two reads and a write (about 23.5 million values per step
  for R50x1, whatever the batch), whole rows of the kernel at a time. On the
  same Xeon a 3x3x512x512 kernel's forward and gradient took 3.3 ms against
  8.5 ms on TensorFlow's ops.
  With it and the fused ReLU, R50x1's step took 0.60-0.63 s against
  0.66-0.67 s with the GroupNorm op alone (two processes each).
- 3x3 convolutions at stride 1 ("same" padding, float32): Winograd's
  F(2x2, 3x3), 16 matrix products on TensorFlow's own matrix product between
  the ops' transforms of the input tiles, the kernel and the output, and the
  transforms' adjoints for the gradient (`winograd_convolution`).

Every sum is in double: the ops are at least as exact as TensorFlow's float32
forms.

The ops are built on first use with the machine's C++ compiler (`$CXX`, else
`g++`, else `c++`) against the installed TensorFlow, for this CPU
(`-march=native`; `BITKERAS_NATIVE_MARCH` names another target, such as
`x86-64-v3` for AVX2 alone), in about 11 s, and kept in `$BITKERAS_CACHE_DIR/native`
(else `~/.cache/bitkeras/native`) under a name that changes with the source,
TensorFlow's version and build flags, the compiler and the CPU. Without a
compiler, or if the build fails, bitkeras warns once and trains on
TensorFlow's ops: the same functions, slower. `BITKERAS_NATIVE=0` turns the
ops off without trying.

They run only where they can: TensorFlow on CPUs alone (no GPU or TPU
device), in graphs that XLA does not compile, never in exports.
"""

import contextlib
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import warnings

from bitkeras import compat, files

SOURCE = pathlib.Path(__file__).with_name("native_ops.cc")
ENABLE_ENV = "BITKERAS_NATIVE"
MARCH_ENV = "BITKERAS_NATIVE_MARCH"
BUILD_TIMEOUT_SECONDS = 300


class NativeBuildError(RuntimeError):
    """The ops could not be built or loaded here."""


def enabled():
    """Whether the ops may be used at all (`BITKERAS_NATIVE` is not "0")."""
    return os.environ.get(ENABLE_ENV, "1").strip() != "0"


def usable():
    """Whether a graph traced now may call the ops (see the module docstring)."""
    if not enabled():
        return False
    import tensorflow as tf

    if any(device.device_type != "CPU" for device in tf.config.list_logical_devices()):
        return False
    if compat.in_xla_compilation():  # XLA has no kernel for a custom op
        return False
    return library() is not None


GROUP_NORM_DTYPES = ("float32", "bfloat16")
"""Activation dtypes GroupNorm's op reads and writes (its arithmetic is float32 and double)."""


def group_norm(inputs, gamma, beta, groups, epsilon, relu=False, pad=0, return_inputs=False):
    """GroupNorm of channels-last `inputs` with its gradient, by the op.

    `inputs` float32 or bfloat16, the result in their dtype (a bfloat16 result
    is what casting to float32 and back around the float32 op gives, to the
    bit, without those passes); `gamma` and `beta` float32.

    With `relu`, `relu(GroupNorm(inputs))` in the same pass; with `pad`, the
    result zero-padded by `pad` pixels on each side of height and width
    (NHWC `inputs`), also in the same pass. With
    `return_inputs`, `(outputs, inputs)`: the second is `inputs` again, for
    their other use (a residual unit's identity shortcut), and the gradient
    arriving through it is added to GroupNorm's in the gradient op, where
    TensorFlow would add the two in a pass of its own.
    """
    import tensorflow as tf

    operations = library()
    if not return_inputs:  # the op's registered gradient (`_register_gradients`)
        return operations.bitkeras_group_norm(
            inputs, gamma, beta, groups=groups, epsilon=epsilon, relu=relu, pad=pad)[0]

    @tf.custom_gradient
    def normalize(inputs, gamma, beta):
        outputs, mean, inverse_std = operations.bitkeras_group_norm(
            inputs, gamma, beta, groups=groups, epsilon=epsilon, relu=relu, pad=pad)

        def gradient(upstream, passed=None):  # TensorFlow passes zeros for an unused output
            return operations.bitkeras_group_norm_grad(
                upstream, inputs, gamma, beta, mean, inverse_std,
                [] if passed is None else [passed], groups=groups, relu=relu, pad=pad)

        return (outputs, tf.identity(inputs)), gradient

    return normalize(inputs, gamma, beta)


def standardize(kernel, epsilon):
    """Weight standardization of a float32 HWIO `kernel` with its gradient, by the op."""
    return library().bitkeras_standardize(kernel, epsilon=epsilon)[0]


def winograd_convolution(inputs, kernel):
    """A 3x3 convolution at stride 1 with "same" padding, by Winograd's F(2x2, 3x3).

    `inputs` float32 (batch, height, width, in), `kernel` float32 (3, 3, in,
    out); the result (batch, height, width, out), the function of
    `tf.nn.conv2d(inputs, kernel, 1, "SAME")`, summed in another order: 16
    matrix products of the transformed input tiles (16, tiles, in) by the
    transformed kernel (16, in, out) (`winograd_kernel`), on TensorFlow's
    matrix product, with the ops' transforms around them (`native_ops.cc`).
    Its gradients are the same maps run backwards (each transform's adjoint,
    the products' gradients), so TensorFlow derives them through `tf.matmul`.

    It takes 2.25 times fewer multiply-adds than the direct convolution and
    keeps the transformed input tiles (four times the input) for the
    gradient. On a 2-core AMD EPYC with oneDNN limited to AVX2, R50x1's 3x3
    stride-1 convolutions at 128x128, batch 16, took 135 ms per training step
    against 228 ms as TensorFlow's convolutions (forward alone: 54 against 71
    ms); with AVX-512, 95 against 122 ms (41 against 44)
    (`benchmarks/convolutions.py`). Its rounding error is that of the direct
    convolution's float32 sums (the transforms only add, subtract and halve),
    checked against float64 in the tests.
    """
    return winograd_products(inputs, winograd_kernel(kernel))


def winograd_kernel(kernel):
    """A float32 (3, 3, in, out) kernel as `winograd_products` reads it: (16, in, out)."""
    return library().bitkeras_winograd_kernel(kernel)


def winograd_products(inputs, transformed_kernel):
    """`winograd_convolution` of `inputs` by a kernel given as `winograd_kernel` made it."""
    import tensorflow as tf

    operations = library()
    products = tf.matmul(operations.bitkeras_winograd_input(inputs), transformed_kernel)
    return operations.bitkeras_winograd_output(products, tf.shape(inputs)[:3])


@functools.cache
def _register_gradients():
    """Registers the ops' gradients with TensorFlow, once per process.

    Each forward op's gradient is its gradient op; a linear transform's (Winograd's)
    is its adjoint. Registered, they cost nothing to trace per call, where a
    `tf.custom_gradient` around each call cost 1-2 ms of tracing (2-core Xeon),
    142 times in R50x1's train step. GroupNorm that also hands its inputs on
    (`group_norm(return_inputs=True)`) keeps its own gradient, which adds the
    gradient arriving through them.
    """
    import tensorflow as tf

    def registered(name):
        def register(gradient):
            tf.RegisterGradient(name)(gradient)
            return gradient
        return register

    @registered("BitkerasGroupNorm")
    def _group_norm(op, upstream, *unused):  # the mean and inverse std feed nothing else
        return library().bitkeras_group_norm_grad(
            upstream, *op.inputs, *op.outputs[1:], [], groups=op.get_attr("groups"),
            relu=op.get_attr("relu"), pad=op.get_attr("pad"))

    @registered("BitkerasStandardize")
    def _standardize(op, upstream, unused):
        return library().bitkeras_standardize_grad(upstream, *op.outputs)

    @registered("BitkerasWinogradKernel")
    def _winograd_kernel(op, upstream):
        return library().bitkeras_winograd_kernel_grad(upstream)

    @registered("BitkerasWinogradInput")
    def _winograd_input(op, upstream):
        return library().bitkeras_winograd_input_grad(upstream, tf.shape(op.inputs[0])[:3])

    @registered("BitkerasWinogradOutput")
    def _winograd_output(op, upstream):
        return library().bitkeras_winograd_output_grad(upstream), None  # none for the shape


@functools.cache
def library():
    """The loaded op library, built here if need be; None (after one warning) if it cannot be.

    Tried once per process, whatever `BITKERAS_NATIVE` says (`usable` asks it).
    """
    try:
        return _load()
    except NativeBuildError as error:
        warnings.warn(
            f"bitkeras runs GroupNorm, weight standardization and 3x3 convolutions on "
            f"TensorFlow's own ops, slower on CPUs: "
            f"{error}. Set {ENABLE_ENV}=0 to use them without trying.",
            RuntimeWarning, stacklevel=2)
        return None


def source_digest():
    """A short digest of the ops' source: it changes with what the ops compute and how fast."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]


def build(cache=None):
    """Builds the ops (unless built already) and returns the path of their shared library."""
    import tensorflow as tf

    compiler = _compiler()
    flags = ["-shared", "-fPIC", "-O3", f"-march={_march()}", "-w",
             # GroupNorm's gradient computes the forward's values again, to the bit.
             "-ffp-contract=off",
             # Eigen's float16 packets do not compile with GCC 12 on CPUs with
             # AVX512-FP16; this op has no float16 arithmetic.
             "-U__AVX512FP16__",
             *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]
    folder = (pathlib.Path(cache).expanduser() if cache else files.cache_dir()) / "native"
    target = folder / f"native_ops-{_build_key(compiler, flags, tf.__version__)}.so"
    if target.exists():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _locked(folder / "build.lock"):
            return _compile(compiler, flags, folder, target)
    except OSError as error:  # a cache folder that cannot be written
        raise NativeBuildError(
            f"cannot build into {folder} ({error}); set {files.CACHE_ENV} to a writable folder")


def _march():
    """The CPU the ops are built for: this one, unless `BITKERAS_NATIVE_MARCH` names another."""
    march = os.environ.get(MARCH_ENV, "").strip() or "native"
    if not march.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise NativeBuildError(f"{MARCH_ENV}={march!r} is not a compiler -march value; "
                               f"use one such as native, x86-64-v3 or skylake-avx512")
    return march


def _compile(compiler, flags, folder, target):
    """Compiles the ops into `target` (the caller holds the folder's lock)."""
    if target.exists():  # another process built it while this one waited
        return target
    with files.atomic_path(target) as built:
        try:
            result = subprocess.run([compiler, str(SOURCE), "-o", str(built), *flags],
                                    capture_output=True, text=True,
                                    timeout=BUILD_TIMEOUT_SECONDS)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise NativeBuildError(f"{compiler} could not build {SOURCE.name}: {error}")
        if result.returncode != 0:
            last_lines = "\n".join(result.stderr.strip().splitlines()[-5:])
            raise NativeBuildError(
                f"{compiler} failed on {SOURCE.name} (exit {result.returncode}):\n"
                f"{last_lines}")
    return target


def _load():
    import tensorflow as tf

    path = build()
    try:
        loaded = tf.load_op_library(str(path))
    except (tf.errors.NotFoundError, OSError) as error:
        raise NativeBuildError(f"TensorFlow could not load {path}: {error}")
    _register_gradients()
    return loaded


def _compiler():
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            # One name for one compiler, whichever PATH found it (/bin or /usr/bin).
            return os.path.realpath(shutil.which(name))
    raise NativeBuildError("no C++ compiler found ($CXX, g++ or c++ on PATH); install g++")


def _build_key(compiler, flags, tensorflow_version):
    """Changes with anything that makes a different or incompatible build."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    for part in (compiler, _compiler_version(compiler), " ".join(flags), tensorflow_version,
                 sys.version, platform.machine(), _cpu_features()):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def _compiler_version(compiler):
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _cpu_features():
    """The CPU's model and instruction sets (`-march=native` builds for exactly these)."""
    try:
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return "\n".join(sorted({line for line in lines
                             if line.startswith(("model name", "flags", "Features"))}))


@contextlib.contextmanager
def _locked(path):
    """One build at a time per cache folder (parallel test workers, several jobs)."""
    try:
        import fcntl
    except ImportError:  # Windows: the build still lands atomically (files.atomic_path)
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
