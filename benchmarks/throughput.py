"""Throughput and model-FLOPs utilization (MFU) of R50x1 on this machine.

In one run: a dense float32 matmul's FLOP/s (the machine's ceiling), then R50x1
at 128x128, batch 16, for a training step (SGD with momentum, through Keras's
compiled train step) and for inference:

- bitkeras as shipped, XLA on and off;
- the baseline: the same model with Keras's own GroupNormalization call;
- the bound: R50x1's convolutions and head alone (same shapes, no
  normalization, standardization or activation), forward and forward +
  backward, as TensorFlow's kernels run them here. No implementation of the
  rest of the model can have a higher MFU with these kernels.

Model FLOPs are 2 x the multiply-accumulates of the convolutions and the head
(`Architecture.multiply_adds`); a training step counts 3 x the forward.
MFU = model FLOPs per second / matmul FLOPs per second.

    python benchmarks/throughput.py [--steps 10] [--size 128] [--batch 16]
"""

import argparse
import contextlib
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import bitkeras  # noqa: E402
from bitkeras import layers  # noqa: E402
from bitkeras.architecture import _conv_size  # noqa: E402


def median_seconds(run, steps, warmup=2):
    """Median seconds of `run()` over `steps` timed calls, after warm-up calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def matmul_flops_per_second(size, steps):
    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    matmul = tf.function(lambda: tf.matmul(a, b))

    def run():
        matmul().numpy()

    return 2 * size**3 / median_seconds(run, steps)


@contextlib.contextmanager
def keras_group_norm_call():
    """Runs bitkeras's GroupNorm layers with Keras's own call (the baseline)."""
    ours = layers.ChannelsLastGroupNormalization.call
    layers.ChannelsLastGroupNormalization.call = keras.layers.GroupNormalization.call
    try:
        yield
    finally:
        layers.ChannelsLastGroupNormalization.call = ours


def model_images_per_second(jit_compile, images, labels, steps, num_classes):
    keras.utils.set_random_seed(0)
    classifier = bitkeras.BiTClassifier(bitkeras.BiTBackbone(), num_classes)
    classifier.compile(jit_compile=jit_compile)
    batch = len(images)
    train = median_seconds(lambda: classifier.train_on_batch(images, labels), steps)
    infer = median_seconds(lambda: classifier.predict_on_batch(images), steps)
    return batch / train, batch / infer


def convolution_shapes(architecture, size):
    """(input height, in channels, out channels, kernel, stride, padding) of every conv."""
    shapes = [(size, 3, architecture.root_channels, 7, 2, 3)]
    size = _conv_size(_conv_size(size + 6, 7, 2) + 2, 3, 2)
    for _, _, cin, mid, out, stride, projection in architecture.units():
        out_size = _conv_size(size + 2, 3, stride)
        shapes.append((size, cin, mid, 1, 1, 0))
        if projection:
            shapes.append((size, cin, out, 1, stride, 0))
        shapes.append((size, mid, mid, 3, stride, 1))
        shapes.append((out_size, mid, out, 1, 1, 0))
        size = out_size
    return shapes


def convolutions_images_per_second(architecture, batch, size, num_classes, steps):
    """Images/s of the model's convolutions and head alone: forward, forward + backward."""
    rng = np.random.default_rng(0)

    def tensor(*shape):
        return tf.constant(rng.normal(size=shape).astype(np.float32))

    operands = [
        (tensor(batch, height + 2 * pad, height + 2 * pad, cin), tensor(kernel, kernel, cin, cout),
         stride)
        for height, cin, cout, kernel, stride, pad in convolution_shapes(architecture, size)
    ]
    features = tensor(batch, architecture.feature_channels)
    head = tensor(architecture.feature_channels, num_classes)

    def outputs():
        results = [tf.nn.conv2d(x, w, stride, "VALID") for x, w, stride in operands]
        return results + [tf.matmul(features, head)]

    @tf.function
    def forward():
        return [tf.reduce_sum(y[:1, :1]) for y in outputs()]

    @tf.function
    def forward_backward():
        sources = [t for x, w, _ in operands for t in (x, w)] + [features, head]
        with tf.GradientTape() as tape:
            tape.watch(sources)
            results = outputs()
        # The incoming gradient is the output itself: no extra elementwise work.
        gradients = tape.gradient(results, sources, output_gradients=results)
        return [tf.reduce_sum(g[:1]) for g in gradients]

    def run(function):
        return lambda: [value.numpy() for value in function()]

    return (batch / median_seconds(run(forward_backward), steps),
            batch / median_seconds(run(forward), steps))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
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

    ceiling = matmul_flops_per_second(args.matmul_size, args.steps * 4)
    print(f"threads: {tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()}"
          f" (cpus {os.cpu_count()})")
    print(f"matmul {args.matmul_size}x{args.matmul_size} float32: {ceiling / 1e9:.1f} GFLOP/s")
    print(f"R50x1 at {args.size}x{args.size}, batch {args.batch}: "
          f"{forward_flops / 1e9:.2f} GFLOP per image forward")

    def report(label, train, infer, baseline=None):
        train_mfu = 3 * forward_flops * train / ceiling
        infer_mfu = forward_flops * infer / ceiling
        ratio = "" if baseline is None else (
            f"  [x{train / baseline[0]:.2f} train, x{infer / baseline[1]:.2f} inference"
            " vs baseline]")
        print(f"  {label:<36} train {train:6.1f} images/s (MFU {train_mfu:.2f}), "
              f"inference {infer:6.1f} images/s (MFU {infer_mfu:.2f}){ratio}")

    with keras_group_norm_call():
        baseline = model_images_per_second(False, images, labels, args.steps, args.num_classes)
    report("baseline: Keras GroupNorm call, XLA off", *baseline)
    for jit_compile in (False, True):
        measured = model_images_per_second(
            jit_compile, images, labels, args.steps, args.num_classes
        )
        report(f"bitkeras, XLA {'on' if jit_compile else 'off'}", *measured, baseline=baseline)
    bound = convolutions_images_per_second(
        architecture, args.batch, args.size, args.num_classes, args.steps
    )
    report("bound: convolutions + head alone", *bound, baseline=baseline)


if __name__ == "__main__":
    main()
