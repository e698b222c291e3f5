"""bitkeras against PyTorch BiT on this machine, through the calls users make, in one run.

For each setting (R50x1, a 1000-class head; by default 128x128 batch 16 and the
HyperRule's 384x384 batch 4 in float32, and 128x128 batch 16 in bfloat16):

- training: bitkeras's `fit` (the HyperRule pipeline feeding Keras's compiled
  train step, SGD with momentum) against PyTorch BiT training steps (SGD with
  momentum) in eager mode and in channels_last memory format, of two models:
  `benchmarks/torch_bit.py` (the released code's formulation) and, where
  transformers is installed, its `BitForImageClassification`; the ratio is
  against the fastest of them;
- inference: bitkeras's `predict` (its preprocessor included) against the same
  PyTorch lines under `torch.no_grad()`, the ratio against the fastest;
- with `--compile`, `torch.compile` as well (its first step takes minutes on a CPU);
- the time from calling `fit` to the end of its first optimizer step, beside
  PyTorch's first eager step on a fresh model;
- in float32, the bound: the model's convolutions and head alone, on the
  kernels bitkeras runs them with (`throughput.py`'s bound: TensorFlow's,
  and bitkeras's Winograd ops for 3x3 at stride 1 where they run), timed in
  the same rounds.
  Its ratio to the fastest PyTorch line is the most any model built on those
  kernels could reach here: where the convolutions are most of PyTorch's step
  too, no work on the rest of the model can take bitkeras past it.

Measurements are interleaved: inside `fit` and `predict`, a callback runs one
call of every other line (PyTorch, the bound) after each bitkeras step, so a slow spell of
the machine falls on all of them alike. Figures are medians; the ratios are
what to compare, on the same machine, in the same run.

bfloat16: bitkeras's `fit(precision="mixed_bfloat16")` and a bfloat16 model
for `predict`, against PyTorch's `torch.autocast("cpu", torch.bfloat16)`; the
script says whether the CPU has bfloat16 instructions (AVX512_BF16, AMX).

The PyTorch model is `benchmarks/torch_bit.py`. Needs PyTorch (`pip install torch`),
which bitkeras does not use:

    python benchmarks/pytorch_reference.py [--rounds 6] [--settings 128x16 384x4 128x16:bf16]
"""

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import bitkeras  # noqa: E402
from bitkeras.finetuning.xla import cpu_name  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("benchmarks/pytorch_reference.py needs PyTorch: pip install torch")
from throughput import convolution_runs  # noqa: E402  (this script's folder)
from torch_bit import ResNetV2, fastest, step_runs  # noqa: E402

BOUND = "bound: convolutions + head"

NUM_CLASSES = 1000


def torch_first_step(architecture, batch, size):
    """Seconds from a fresh PyTorch model to the end of its first eager training step."""
    torch.manual_seed(1)
    model = ResNetV2(architecture, NUM_CLASSES)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
    images, labels = torch.rand(batch, 3, size, size), torch.randint(0, NUM_CLASSES, (batch,))
    start = time.perf_counter()
    optimizer.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    optimizer.step()
    return time.perf_counter() - start


class Interleaved(keras.callbacks.Callback):
    """Times each bitkeras step of a fit or predict, and one call of every other run after it.

    A step's time runs from the end of the previous step's other runs to the
    end of the step: everything Keras does for it, data included.
    """

    def __init__(self, others, warmup):
        super().__init__()
        self.others = others
        self.warmup = warmup
        self.times = {"bitkeras": [], **{name: [] for name in others}}
        self.steps = 0
        self.started = self.resumed = None
        self.first_step = None

    def begin(self):
        self.started = self.resumed = time.perf_counter()

    def on_predict_begin(self, logs=None):
        self.resumed = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._step_end()

    def on_predict_batch_end(self, batch, logs=None):
        self._step_end()

    def _step_end(self):
        now = time.perf_counter()
        self.steps += 1
        if self.steps == 1 and self.started is not None:
            self.first_step = now - self.started
        if self.steps > self.warmup:
            self.times["bitkeras"].append(now - self.resumed)
        if self.steps >= self.warmup:
            for name, run in self.others.items():
                start = time.perf_counter()
                run()
                self.times[name].append(time.perf_counter() - start)
        self.resumed = time.perf_counter()

    def medians(self):
        return {name: float(np.median(values)) for name, values in self.times.items()}


def measure(setting, rounds, warmup, compiled):
    """(train medians, inference medians, fit's first step seconds) for one setting."""
    size, batch, bfloat16 = setting
    architecture = bitkeras.ARCHITECTURES["R50x1"]
    others = step_runs(architecture, NUM_CLASSES, batch, size, bfloat16, compiled=compiled)
    if not bfloat16:
        others[BOUND] = convolution_runs(architecture, batch, size, NUM_CLASSES)
    for train, infer in others.values():  # each line's first calls, off the clock
        train()
        infer()
    rng = np.random.default_rng(0)
    steps = warmup + rounds
    images = rng.integers(0, 256, (batch * steps, size, size, 3)).astype(np.uint8)
    labels = rng.integers(0, NUM_CLASSES, len(images))

    keras.utils.set_random_seed(0)
    classifier = bitkeras.BiTClassifier(bitkeras.BiTBackbone(), num_classes=NUM_CLASSES)
    training = Interleaved({name: runs[0] for name, runs in others.items()}, warmup)
    training.begin()
    classifier.fit(images, labels,
                   hyperrule=dict(steps=steps, crop_size=size, resize_size=size,
                                  mixup_alpha=0.0, flip=False),
                   batch_size=batch, verbose=0,
                   precision="mixed_bfloat16" if bfloat16 else "float32",
                   callbacks=[training])
    inference_model = classifier
    if bfloat16:
        keras.config.set_dtype_policy("mixed_bfloat16")
        try:
            inference_model = bitkeras.BiTClassifier(bitkeras.BiTBackbone(),
                                                     num_classes=NUM_CLASSES)
        finally:
            keras.config.set_dtype_policy("float32")
        inference_model.set_weights(classifier.get_weights())
    inference = Interleaved({name: runs[1] for name, runs in others.items()}, warmup)
    inference_model.predict(images[:batch * steps], batch_size=batch, verbose=0,
                            image_size=size, callbacks=[inference])
    return training.medians(), inference.medians(), training.first_step


def bfloat16_instructions():
    flags = ""
    if platform.system() == "Linux":
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "")
    found = [name for name in ("avx512_bf16", "amx_bf16") if f" {name}" in flags]
    return ", ".join(found) if found else "none (bfloat16 is emulated: expect it slower)"


def parse_setting(text):
    """'128x16' or '128x16:bf16' -> (size, batch, bfloat16)."""
    shape, _, precision = text.partition(":")
    size, batch = (int(part) for part in shape.split("x"))
    if precision not in ("", "bf16"):
        raise SystemExit(f"--settings {text!r}: the precision suffix is ':bf16' or nothing")
    return size, batch, precision == "bf16"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6,
                        help="timed steps of each line (each round times every line once)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--settings", nargs="+", default=["128x16", "384x4", "128x16:bf16"],
                        help="SIZExBATCH, with ':bf16' for bfloat16 (default: %(default)s)")
    parser.add_argument("--compile", action="store_true",
                        help="add torch.compile (minutes of compilation on a CPU)")
    args = parser.parse_args()
    settings = [parse_setting(text) for text in args.settings]

    print(f"{cpu_name()}, {os.cpu_count()} cores; bfloat16 instructions: "
          f"{bfloat16_instructions()}")
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); R50x1, {NUM_CLASSES} classes; medians of "
          f"{args.rounds} interleaved rounds")
    architecture = bitkeras.ARCHITECTURES["R50x1"]
    for setting in settings:
        size, batch, bfloat16 = setting
        train, infer, first_step = measure(setting, args.rounds, args.warmup, args.compile)
        fastest_train, fastest_infer = fastest(train, compiled=False), fastest(infer)
        print(f"\n{size}x{size}, batch {batch}, {'bfloat16' if bfloat16 else 'float32'}")
        print(f"  {'':<32} {'train img/s':>12} {'inference img/s':>16}")
        for name in train:
            label = "bitkeras fit / predict" if name == "bitkeras" else name
            print(f"  {label:<32} {batch / train[name]:12.1f} {batch / infer[name]:16.1f}")
        print(f"  bitkeras: train x{train[fastest_train] / train['bitkeras']:.2f} against the "
              f"fastest eager PyTorch BiT ({fastest_train}); inference "
              f"x{infer[fastest_infer] / infer['bitkeras']:.2f} against the fastest PyTorch "
              f"({fastest_infer})")
        if BOUND in train:
            print(f"  {BOUND}: bitkeras's kernels for the model's convolutions and head "
                  f"alone would train x{train[fastest_train] / train[BOUND]:.2f} and infer "
                  f"x{infer[fastest_infer] / infer[BOUND]:.2f} against the same PyTorch lines: "
                  f"no model on those kernels gets past that")
        print(f"  first step: bitkeras fit {first_step:.1f} s (from the call), PyTorch eager "
              f"{torch_first_step(architecture, batch, size):.1f} s (fresh model)")


if __name__ == "__main__":
    main()
