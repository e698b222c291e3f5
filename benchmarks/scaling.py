"""Training throughput of R50x1 over 1 vs 2 devices and float32 vs mixed_bfloat16.

Each configuration runs in a process of its own (TensorFlow fixes its
logical devices at start-up): the model is built in the strategy's scope
under the precision's dtype policy, compiled as `BiTClassifier.fit` compiles
it, and trained through Keras's `fit` on one fixed global batch (so the
input pipeline costs nothing). Two devices are two logical devices carved
from the first GPU when there is one (or two GPUs), else from the CPU. The
same script runs unchanged on a GPU machine.

Prints images/s per configuration and ratios to 1 device in float32,
all measured in the same run.

    python benchmarks/scaling.py [--steps 6] [--size 128] [--batch 16]
"""

import argparse
import json
import os
import subprocess
import sys
import time

CONFIGURATIONS = [(1, "float32"), (2, "float32"), (1, "mixed_bfloat16"), (2, "mixed_bfloat16")]


def measure(devices, precision, size, batch, steps):
    """Images/s of training steps in this process (call before TensorFlow runs anything)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    from bitkeras import BiTBackbone, BiTClassifier
    from bitkeras.finetuning import distribute, training
    from bitkeras.finetuning.hyperrule import HyperRule

    gpus = tf.config.list_physical_devices("GPU")
    kind = "GPU" if gpus else "CPU"
    if devices > 1 and len(gpus) < devices:
        physical = gpus[0] if gpus else tf.config.list_physical_devices("CPU")[0]
        split = [tf.config.LogicalDeviceConfiguration(
            memory_limit=30_000 if gpus else None)] * devices
        tf.config.set_logical_device_configuration(physical, split)
    names = [device.name for device in tf.config.list_logical_devices(kind)][:devices]
    strategy = (tf.distribute.MirroredStrategy(names) if devices > 1
                else tf.distribute.get_strategy())
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (batch, size, size, 3)).astype(np.float32)
    targets = np.eye(1000, dtype=np.float32)[rng.integers(0, 1000, batch)]
    data = tf.data.Dataset.from_tensors((images, targets)).repeat()
    rule = HyperRule.for_dataset(100_000, size, batch_size=batch)
    with strategy.scope(), distribute.dtype_policy(precision):
        keras.utils.set_random_seed(0)
        model = BiTClassifier(BiTBackbone(), 1000)
        model.compile(optimizer=training.make_optimizer(rule),
                      loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                      jit_compile=distribute.jit_compile_for("auto", strategy))

    class Clock(keras.callbacks.Callback):
        times = []

        def on_train_batch_end(self, batch_index, logs=None):
            self.times.append(time.perf_counter())

    with strategy.scope():
        keras.Model.fit(model, data, steps_per_epoch=steps + 2, epochs=1, verbose=0,
                        callbacks=[Clock()])
    seconds = float(np.median(np.diff(Clock.times[1:])))  # after the traced first steps
    return {"devices": devices, "precision": precision, "kind": kind,
            "replicas": strategy.num_replicas_in_sync, "images_per_second": batch / seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per configuration")
    parser.add_argument("--size", type=int, default=128, help="image height and width")
    parser.add_argument("--batch", type=int, default=16, help="global batch")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # "devices,precision"
    args = parser.parse_args()
    if args.one:
        devices, precision = args.one.split(",")
        print(json.dumps(measure(int(devices), precision, args.size, args.batch, args.steps)))
        return
    results = []
    for devices, precision in CONFIGURATIONS:
        command = [sys.executable, __file__, "--one", f"{devices},{precision}",
                   "--steps", str(args.steps), "--size", str(args.size),
                   "--batch", str(args.batch)]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    baseline = results[0]["images_per_second"]
    print(f"R50x1 training at {args.size}x{args.size}, global batch {args.batch}, "
          f"on {results[0]['kind']} ({os.cpu_count()} cores):")
    for result in results:
        rate = result["images_per_second"]
        print(f"  {result['devices']} device(s), {result['precision']:<15} "
              f"{rate:7.1f} images/s   x{rate / baseline:.2f} vs 1 device float32")


if __name__ == "__main__":
    main()
