"""R50x1's 3x3 convolutions at stride 1: TensorFlow's kernels against Winograd's F(2x2, 3x3).

bitkeras runs a "same" 3x3 convolution at stride 1 in float32 as Winograd's
minimal filtering (`bitkeras.models.native.winograd_convolution`) where its C++
ops run. This times both forms on each such shape R50x1 has at the given image
size and batch, in interleaved rounds: the forward alone (inference) and the
forward with both gradients (a training step's share), each shape weighted by
how many units of the model have it. Kernels are standardized before, as in
the model, so their transform is part of each call.

    python benchmarks/convolutions.py [--size 128] [--batch 16] [--rounds 15]
"""

import argparse
import collections
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import bitkeras  # noqa: E402
from bitkeras.finetuning.xla import cpu_name  # noqa: E402
from bitkeras.models import native  # noqa: E402
from timing import interleaved_median_seconds  # noqa: E402  (this folder)

FORMS = {"TensorFlow": lambda x, kernel: tf.nn.conv2d(x, kernel, 1, "SAME"),
         "Winograd": native.winograd_convolution}


def runs(height, channels, outputs, batch, rng):
    """Per form: (forward, forward + both gradients) callables on one shape."""
    x = tf.constant(rng.normal(size=(batch, height, height, channels)).astype(np.float32))
    kernel = tf.constant(rng.normal(size=(3, 3, channels, outputs)).astype(np.float32))
    result = {}
    for name, convolve in FORMS.items():
        forward = tf.function(lambda convolve=convolve: tf.reduce_sum(convolve(x, kernel)[:1, :1]))

        @tf.function
        def training(convolve=convolve):
            with tf.GradientTape() as tape:
                tape.watch([x, kernel])
                y = convolve(x, kernel)
            # The incoming gradient is the output itself: no extra elementwise work.
            gradients = tape.gradient(y, [x, kernel], output_gradients=y)
            return [tf.reduce_sum(gradient[:1]) for gradient in gradients]

        result[name] = (lambda f=forward: f().numpy(),
                        lambda f=training: [value.numpy() for value in f()])
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="image height and width")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds")
    args = parser.parse_args()
    if not native.usable():
        raise SystemExit("bitkeras's C++ ops do not run here (no compiler, a GPU, or "
                         f"{native.ENABLE_ENV}=0): there is no Winograd form to time")

    shapes = collections.Counter(
        (height, cin, cout) for height, cin, cout, kernel, stride, _ in
        bitkeras.ARCHITECTURES["R50x1"].convolutions(args.size) if kernel == 3 and stride == 1)
    rng = np.random.default_rng(0)
    timed = {}
    for shape in shapes:
        for name, (forward, training) in runs(*shape, args.batch, rng).items():
            timed[shape, name, "forward"] = forward
            timed[shape, name, "training"] = training
    seconds = interleaved_median_seconds(timed, args.rounds)

    print(f"{cpu_name()}, {os.cpu_count()} cores, TensorFlow {tf.__version__}; "
          f"R50x1 at {args.size}x{args.size}, batch {args.batch}; medians of {args.rounds} "
          f"interleaved rounds, ms per call")
    print(f"{'size x in x out (units)':>26}  {'forward':>18}  {'forward + gradients':>22}")
    print(f"{'':>26}  {'TF':>8} {'Winograd':>9}  {'TF':>10} {'Winograd':>11}")
    totals = collections.Counter()
    for shape, count in shapes.items():
        row = [seconds[shape, name, kind] * 1e3 for kind in ("forward", "training")
               for name in FORMS]
        for key, value in zip(("tf forward", "w forward", "tf training", "w training"), row):
            totals[key] += count * value
        label = f"{shape[0]}x{shape[0]} x {shape[1]} x {shape[2]} ({count})"
        print(f"{label:>26}  {row[0]:8.2f} {row[1]:9.2f}  {row[2]:10.2f} {row[3]:11.2f}")
    print(f"{'weighted sum':>26}  {totals['tf forward']:8.1f} {totals['w forward']:9.1f}  "
          f"{totals['tf training']:10.1f} {totals['w training']:11.1f}")
    print(f"Winograd: forward x{totals['tf forward'] / totals['w forward']:.2f}, "
          f"training x{totals['tf training'] / totals['w training']:.2f} against TensorFlow's "
          f"convolutions")


if __name__ == "__main__":
    main()
