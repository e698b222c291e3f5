"""Throughput and model-FLOPs utilization (MFU) of R50x1 on this machine.

In one run: a dense float32 matmul's FLOP/s (the machine's ceiling), then R50x1
at 128x128, batch 16, for a training step (SGD with momentum, through Keras's
compiled train step) and for inference:

- bitkeras with its layers in plain `keras.ops` (the baseline: the graph an
  export holds, `bitkeras.models.kernels.portable()`), XLA off;
- bitkeras as shipped (weight standardization and inference GroupNorm as
  small XLA clusters), XLA for the whole step off (`compile()`'s default) and on;
- the bound: R50x1's convolutions and head alone (same shapes, no
  normalization, standardization or activation), forward and forward +
  backward, on the kernels bitkeras runs them with here (1x1 convolutions at
  stride 1 as matrix products, 3x3 at stride 1 by Winograd's F(2x2, 3x3)
  where bitkeras's C++ ops run). No implementation of the
  rest of the model can have a higher MFU with these kernels.

Model FLOPs are 2 x the multiply-accumulates of the convolutions and the head
(`Architecture.multiply_adds`); a training step counts 3 x the forward.
MFU = model FLOPs per second / matmul FLOPs per second.

    python benchmarks/throughput.py [--steps 10] [--size 128] [--batch 16]
"""

import argparse
import contextlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import bitkeras  # noqa: E402
from bitkeras.models import kernels, native  # noqa: E402
from timing import interleaved_median_seconds, median_seconds  # noqa: E402  (this folder)


def matmul_run(size):
    """A callable doing one float32 size x size matmul, and its FLOPs."""
    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    matmul = tf.function(lambda: tf.matmul(a, b))
    return lambda: matmul().numpy(), 2 * size**3


def matmul_flops_per_second(size, steps):
    run, flops = matmul_run(size)
    return flops / median_seconds(run, steps)


def model_runs(jit_compile, images, labels, num_classes, portable=False):
    """Callables for one R50x1 training step and one inference batch, traced already.

    `portable`: traced with the layers' plain `keras.ops` form.
    """
    keras.utils.set_random_seed(0)
    classifier = bitkeras.BiTClassifier(bitkeras.BiTBackbone(), num_classes)
    classifier.compile(jit_compile=jit_compile)
    train = lambda: classifier.train_on_batch(images, labels)  # noqa: E731
    infer = lambda: classifier.predict_on_batch(images)  # noqa: E731
    with kernels.portable() if portable else contextlib.nullcontext():
        train()
        infer()
    return train, infer


def model_images_per_second(jit_compile, images, labels, steps, num_classes):
    train, infer = model_runs(jit_compile, images, labels, num_classes)
    seconds = interleaved_median_seconds({"train": train, "infer": infer}, steps)
    return len(images) / seconds["train"], len(images) / seconds["infer"]


def convolution_runs(architecture, batch, size, num_classes):
    """Callables for the model's convolutions and head alone: forward + backward, forward."""
    rng = np.random.default_rng(0)

    def tensor(*shape):
        return tf.constant(rng.normal(size=shape).astype(np.float32))

    # Each as bitkeras runs it: a 1x1 convolution at stride 1 as a matrix
    # product, a 3x3 at stride 1 padding inside the convolution ("SAME"; by
    # Winograd's F(2x2, 3x3) where bitkeras's ops run), the others on an input
    # padded before them.
    winograd = native.usable()
    operands = []
    for height, cin, cout, kernel, stride, pad in architecture.convolutions(size):
        inside = kernel == 3 and stride == 1
        padded = height + (0 if inside else 2 * pad)
        form = ("matmul" if kernel == 1 and stride == 1 else
                ("winograd" if winograd else "SAME") if inside else "VALID")
        operands.append((tensor(batch, padded, padded, cin), tensor(kernel, kernel, cin, cout),
                         stride, form))
    features = tensor(batch, architecture.feature_channels)
    head = tensor(architecture.feature_channels, num_classes)

    def convolve(x, w, stride, form):
        if form == "matmul":
            product = tf.matmul(tf.reshape(x, (-1, w.shape[2])), tf.reshape(w, w.shape[2:]))
            return tf.reshape(product, (*x.shape[:3], w.shape[3]))
        if form == "winograd":
            return native.winograd_convolution(x, w)
        return tf.nn.conv2d(x, w, stride, form)

    def outputs():
        return [convolve(*operand) for operand in operands] + [tf.matmul(features, head)]

    @tf.function
    def forward():
        return [tf.reduce_sum(y[:1, :1]) for y in outputs()]

    @tf.function
    def forward_backward():
        # No gradient for the images (the first convolution's input), as in training.
        sources = [t for x, w, *_ in operands for t in (x, w)][1:] + [features, head]
        with tf.GradientTape() as tape:
            tape.watch(sources)
            results = outputs()
        # The incoming gradient is the output itself: no extra elementwise work.
        gradients = tape.gradient(results, sources, output_gradients=results)
        return [tf.reduce_sum(g[:1]) for g in gradients]

    def run(function):
        return lambda: [value.numpy() for value in function()]

    return run(forward_backward), run(forward)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10,
                        help="timed rounds (one call of every measurement each)")
    parser.add_argument("--size", type=int, default=128, help="image height and width")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--num-classes", type=int, default=1000)
    args = parser.parse_args()

    architecture = bitkeras.ARCHITECTURES["R50x1"]
    forward_flops = 2 * architecture.multiply_adds(args.size, args.num_classes)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (args.batch, args.size, args.size, 3)).astype(np.float32)
    labels = rng.integers(0, args.num_classes, args.batch)

    matmul, matmul_flops = matmul_run(args.matmul_size)
    configurations = {"baseline: keras.ops layers, XLA off": model_runs(
        False, images, labels, args.num_classes, portable=True)}
    for jit_compile in (False, True):
        label = f"bitkeras, XLA {'on' if jit_compile else 'off'}"
        configurations[label] = model_runs(jit_compile, images, labels, args.num_classes)
    configurations["bound: convolutions + head alone"] = convolution_runs(
        architecture, args.batch, args.size, args.num_classes)
    runs = {"matmul": lambda: [matmul() for _ in range(4)]}
    for label, (train, infer) in configurations.items():
        runs[label, "train"] = train
        runs[label, "infer"] = infer
    seconds = interleaved_median_seconds(runs, args.steps)
    ceiling = 4 * matmul_flops / seconds["matmul"]

    print(f"threads: {tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()}"
          f" (cpus {os.cpu_count()}); {args.steps} rounds, each timing every line once")
    print(f"matmul {args.matmul_size}x{args.matmul_size} float32: {ceiling / 1e9:.1f} GFLOP/s")
    print(f"R50x1 at {args.size}x{args.size}, batch {args.batch}: "
          f"{forward_flops / 1e9:.2f} GFLOP per image forward")
    baseline = None
    for label in configurations:
        train = args.batch / seconds[label, "train"]
        infer = args.batch / seconds[label, "infer"]
        ratio = "" if baseline is None else (
            f"  [x{train / baseline[0]:.2f} train, x{infer / baseline[1]:.2f} inference"
            " vs baseline]")
        baseline = baseline or (train, infer)
        print(f"  {label:<40} train {train:6.1f} images/s "
              f"(MFU {3 * forward_flops * train / ceiling:.2f}), inference {infer:6.1f} "
              f"images/s (MFU {forward_flops * infer / ceiling:.2f}){ratio}")


if __name__ == "__main__":
    main()
