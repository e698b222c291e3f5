"""Throughput and model-FLOPs utilization (MFU) of R50x1 on this machine.

In one run: a dense float32 matmul's FLOP/s (the machine's ceiling), then R50x1
at 128x128, batch 16, for a training step (SGD with momentum, through Keras's
compiled train step) and for inference, with XLA on and off.

Model FLOPs are 2 x the multiply-accumulates of the convolutions and the head
(`Architecture.multiply_adds`); a training step counts 3 x the forward.
MFU = model FLOPs per second / matmul FLOPs per second.

    python benchmarks/throughput.py [--steps 8] [--size 128] [--batch 16]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import bitkeras  # noqa: E402


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


def model_images_per_second(jit_compile, images, labels, steps, num_classes):
    keras.utils.set_random_seed(0)
    classifier = bitkeras.BiTClassifier(bitkeras.BiTBackbone(), num_classes)
    classifier.compile(jit_compile=jit_compile)
    batch = len(images)
    train = median_seconds(lambda: classifier.train_on_batch(images, labels), steps)
    infer = median_seconds(lambda: classifier.predict_on_batch(images), steps)
    return batch / train, batch / infer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
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
    for jit_compile in (True, False):
        train, infer = model_images_per_second(
            jit_compile, images, labels, args.steps, args.num_classes
        )
        train_mfu = 3 * forward_flops * train / ceiling
        infer_mfu = forward_flops * infer / ceiling
        print(f"  XLA {'on ' if jit_compile else 'off'}: train {train:6.1f} images/s "
              f"(MFU {train_mfu:.2f}), inference {infer:6.1f} images/s (MFU {infer_mfu:.2f})")


if __name__ == "__main__":
    main()
