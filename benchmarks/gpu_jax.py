"""bitkeras's R50x1 under Keras's JAX backend against PyTorch BiT on a GPU, in one run.

The same network as bitkeras (`bitkeras.models`: `ResNetV2Backbone` and
`HeadClassifier`, written in `keras.ops` only) runs on JAX with XLA, SGD with
momentum and sparse cross-entropy, two ways (see `keras_runs`): Keras's own
`fit` and `predict` loops over host arrays, and one jitted training step and
forward pass on arrays already on the GPU. Next to it, the PyTorch BiT of
`benchmarks/torch_bit.py` (and transformers' Bit where installed) in eager mode
and in channels_last, in float32 and in bfloat16 (Keras's "mixed_bfloat16"
policy against `torch.autocast`).
Medians of interleaved rounds; float32 convolutions may use TF32 on both
sides (each library's default).

It needs Keras, keras-hub, JAX with CUDA and PyTorch, not TensorFlow: only
`bitkeras.models` is imported, without the package's top level (which loads
the TensorFlow parts: data pipelines, checkpoints).

    KERAS_BACKEND=jax python benchmarks/gpu_jax.py [--size 384] [--batch 64] [--rounds 10]
        [--keras-batches 8 32]

`--device cpu` runs both on the CPU instead (JAX's CPU build, PyTorch's CPU
kernels): the answer to whether Keras on JAX would train or infer faster
than bitkeras on TensorFlow there (compare with `pytorch_reference.py`,
whose PyTorch lines are the same).
"""

import argparse
import os
import pathlib
import sys
import time
import types

os.environ.setdefault("KERAS_BACKEND", "jax")
ROOT = pathlib.Path(__file__).resolve().parents[1]
if "bitkeras" not in sys.modules:  # bitkeras.models without bitkeras/__init__.py
    package = types.ModuleType("bitkeras")
    package.__path__ = [str(ROOT / "bitkeras")]
    sys.modules["bitkeras"] = package

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from timing import interleaved_median_seconds  # noqa: E402  (this script's folder)
from torch_bit import fastest, step_runs  # noqa: E402

from bitkeras.models.architecture import ARCHITECTURES  # noqa: E402
from bitkeras.models.backbone import ResNetV2Backbone  # noqa: E402
from bitkeras.models.classifier import HeadClassifier  # noqa: E402

NUM_CLASSES = 1000


def keras_runs(size, batch, bfloat16, batch_counts=(8,)):
    """({label: (train, infer)}, {label: batches a call}) for the Keras model on JAX,
    each line compiled by a first call.

    "Keras fit / predict, N batches": Keras's own loops over N batches of host
    arrays, one line per count in `batch_counts` (a call's fixed cost is shared by
    its batches), images already at the size (keras-hub's preprocessing step needs
    TensorFlow or Grain, so Keras's `Model.fit`/`predict` run the network
    alone; batches copied to the GPU as they go), float32 images in [0, 1] and,
    in the "uint8" line (the largest count), the same pixels as uint8 (a quarter
    of the bytes to copy; the model divides by 255 on the GPU). "jitted step": the model's
    `stateless_call` and the optimizer's `stateless_apply` in one `jax.jit`
    function on arrays already on the GPU, as PyTorch's lines run
    (`*_on_batch` is not used: Keras syncs every variable back after each
    call, which costs more than the step here).
    """
    keras.config.set_dtype_policy("mixed_bfloat16" if bfloat16 else "float32")
    try:
        keras.utils.set_random_seed(0)
        architecture = ARCHITECTURES["R50x1"]
        model = HeadClassifier(ResNetV2Backbone(architecture.block_units,
                                                architecture.width_factor),
                               num_classes=NUM_CLASSES)
    finally:
        keras.config.set_dtype_policy("float32")
    optimizer = keras.optimizers.SGD(0.003, momentum=0.9)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    rng = np.random.default_rng(0)
    steps = max(batch_counts)
    host_pixels = rng.integers(0, 256, (batch * steps, size, size, 3), dtype=np.uint8)
    host_images = host_pixels.astype(np.float32) / 255
    host_labels = rng.integers(0, NUM_CLASSES, batch * steps)

    def host_loops(images, count):
        images, labels = images[:batch * count], host_labels[:batch * count]

        def fit():
            keras.Model.fit(model, images, labels, batch_size=batch, epochs=1,
                            shuffle=False, verbose=0)

        def predict():
            keras.Model.predict(model, images, batch_size=batch, verbose=0)
        return fit, predict

    model.predict_on_batch(host_images[:batch])  # builds the model
    optimizer.build(model.trainable_variables)
    # Copies: Keras's fit donates the buffers of the variables' own values.
    state = [[jax.numpy.array(v.value, copy=True) for v in variables] for variables in (
        model.trainable_variables, model.non_trainable_variables, optimizer.variables)]
    images = jax.device_put(host_images[:batch])
    labels = jax.device_put(host_labels[:batch])

    def loss(trainable, non_trainable, images, labels):
        logits, non_trainable = model.stateless_call(trainable, non_trainable, images,
                                                     training=True)
        value = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        return value.mean(), non_trainable

    gradient = jax.value_and_grad(loss, has_aux=True)

    @jax.jit
    def step(trainable, non_trainable, optimizer_state, images, labels):
        (value, non_trainable), gradients = gradient(trainable, non_trainable, images, labels)
        trainable, optimizer_state = optimizer.stateless_apply(optimizer_state, gradients,
                                                               trainable)
        return trainable, non_trainable, optimizer_state, value

    forward = jax.jit(lambda trainable, non_trainable, images: model.stateless_call(
        trainable, non_trainable, images)[0])

    def train_step():
        *state[:], value = step(*state, images, labels)
        value.block_until_ready()

    def infer_step():
        forward(state[0], state[1], images).block_until_ready()

    lines, counts = {}, {}
    for host_arrays, count, suffix in [*((host_images, count, "") for count in batch_counts),
                                       (host_pixels, steps, ", uint8")]:
        label = f"Keras fit / predict, {count} batches{suffix}"
        lines[label], counts[label] = host_loops(host_arrays, count), count
    lines["Keras, jitted step"], counts["Keras, jitted step"] = (train_step, infer_step), 1
    return lines, counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--keras-batches", type=int, nargs="+", default=[8],
                        help="batches per call of Keras's fit and predict, a line for each "
                             "(each call has a fixed cost that more batches share)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="where PyTorch runs; JAX runs on its default device")
    args = parser.parse_args()
    device_name = (torch.cuda.get_device_name() if args.device == "cuda"
                   else f"CPU, {os.cpu_count()} cores")
    print(f"{device_name}; Keras {keras.__version__} on "
          f"{keras.backend.backend()} {jax.__version__} ({jax.devices()[0].platform}), "
          f"torch {torch.__version__}; R50x1 {args.size}x{args.size}, batch {args.batch}, "
          f"medians of {args.rounds} rounds")
    for precision in args.precisions:
        bfloat16 = precision == "bfloat16"
        started = time.perf_counter()
        keras_lines, batches = keras_runs(args.size, args.batch, bfloat16, args.keras_batches)
        for train, infer in keras_lines.values():  # compiled off the clock
            train()
            infer()
        compiled = time.perf_counter() - started
        runs = {**keras_lines, **step_runs(ARCHITECTURES["R50x1"], NUM_CLASSES, args.batch,
                                             args.size, bfloat16, device=args.device)}
        batches = {name: batches.get(name, 1) for name in runs}
        seconds = {kind: interleaved_median_seconds(
            {name: pair[index] for name, pair in runs.items()}, args.rounds, args.warmup)
            for index, kind in enumerate(("train", "infer"))}
        rates = {kind: {name: args.batch * batches[name] / value
                        for name, value in seconds[kind].items()} for kind in seconds}
        print(f"\n{precision} (Keras: build and compile {compiled:.0f} s)")
        print(f"  {'':<40} {'train img/s':>12} {'inference img/s':>16}")
        for name in runs:
            print(f"  {name:<40} {rates['train'][name]:12.1f} {rates['infer'][name]:16.1f}")
        fastest_train = fastest(seconds["train"], compiled=False)
        fastest_infer = fastest(seconds["infer"])
        for name in keras_lines:
            print(f"  {name}: train x{rates['train'][name] / rates['train'][fastest_train]:.2f}"
                  f" ({fastest_train}), inference "
                  f"x{rates['infer'][name] / rates['infer'][fastest_infer]:.2f} ({fastest_infer})")


if __name__ == "__main__":
    main()
