"""`jit_compile="auto"` on CPUs: XLA where this machine measured it faster for this model.

Whether XLA speeds up training on a CPU depends on the CPU and the model: it
made the R50x1 step 15% slower on a 2-core Intel Xeon with AVX-512 and 23%
faster on a 2-core AMD EPYC with AVX2 (benchmarks/throughput.py). So on a CPU
"auto" times one forward and backward pass of the model, at the fit's image
size, batch and precision, with XLA and without (`calibrate`), and keeps the
answer in `xla.json` in the cache folder (`$BITKERAS_CACHE_DIR`, else
`~/.cache/bitkeras`) under the CPU, TensorFlow version, architecture, image
size, batch and precision. A fit shorter than `CALIBRATE_MIN_STEPS` does not
calibrate (XLA's compilation alone would cost more than it can save) and
runs without XLA unless an earlier calibration found it faster. GPUs and
TPUs always get XLA (`distribute.jit_compile_for`).
"""

import json
import os
import platform
import time

import keras
import numpy as np
import tensorflow as tf

from bitkeras import files
from bitkeras.finetuning import distribute
from bitkeras.models import native

CALIBRATE_MIN_STEPS = 500
"""Fits of at least this many steps (the HyperRule's shortest schedule) calibrate."""

CALIBRATION_ROUNDS = 3
"""Timed passes of each kind; their medians are compared."""

CACHE_FILE = "xla.json"


def resolve(jit_compile, strategy, model, rule, batch_size, precision, verbose=0):
    """True or False for a fit: as given, `distribute.jit_compile_for` off CPUs, else measured.

    `batch_size`: the batch one replica's step sees.
    """
    chosen = distribute.jit_compile_for(jit_compile, strategy)
    if jit_compile != "auto" or chosen or not hasattr(model.backbone, "architecture"):
        return chosen
    key = calibration_key(model, rule.crop_size, batch_size, precision)
    cache = read_cache()
    if key in cache:
        return bool(cache[key]["jit_compile"])
    if rule.steps < CALIBRATE_MIN_STEPS:
        return False
    result = calibrate(model, rule.crop_size, batch_size, precision)
    cache = read_cache()  # another process may have written it meanwhile
    cache[key] = result
    path = files.cache_dir() / CACHE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_text(path, json.dumps(cache, indent=1, sort_keys=True) + "\n")
    if verbose:
        seconds = result["seconds"]
        print(f"XLA on this CPU for this model: {seconds['xla']:.3f} s per forward and "
              f"backward pass, {seconds['plain']:.3f} s without: jit_compile="
              f"{result['jit_compile']} (kept in {path})")
    return result["jit_compile"]


def calibration_key(model, image_size, batch_size, precision):
    """What a calibration holds for: this CPU and TensorFlow, the architecture, the step's shape."""
    architecture = model.backbone.architecture
    # Without XLA, GroupNorm, weight standardization and the 3x3 convolutions run on
    # bitkeras's C++ ops where they could be built; new ops make another step.
    layer_ops = (f"op-{native.source_digest()}" if native.enabled() and native.library() is not None
                 else "tf")
    return "|".join(str(part) for part in (
        cpu_name(), os.cpu_count(), tf.__version__, layer_ops, architecture.block_units,
        architecture.width_factor,
        image_size, batch_size, precision, model.num_classes))


def calibrate(model, image_size, batch_size, precision, rounds=CALIBRATION_ROUNDS,
              timer=time.perf_counter):
    """{"jit_compile": bool, "seconds": {"plain", "xla"}}: medians of a pass each way.

    A copy of `model` with the same architecture (its weights do not matter
    for the time) is built under `precision`; the pass is the loss's gradient
    on random images of the fit's shape, the bulk of a training step. XLA is
    chosen only when it is faster.
    """
    with distribute.dtype_policy(precision):
        copy = type(model).from_config(model.get_config())
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 1, (batch_size, image_size, image_size, 3)), tf.float32)
    targets = tf.one_hot(rng.integers(0, model.num_classes, batch_size), model.num_classes)
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    variables = copy.trainable_variables

    def gradients():
        with tf.GradientTape() as tape:
            value = loss(targets, copy(images, training=True))
        return [tf.reduce_sum(g) for g in tape.gradient(value, variables)]

    seconds = {}
    for name, jit in (("plain", False), ("xla", True)):
        step = tf.function(gradients, jit_compile=jit)
        step()  # traced and compiled off the clock
        times = []
        for _ in range(rounds):
            start = timer()
            [value.numpy() for value in step()]
            times.append(timer() - start)
        seconds[name] = float(np.median(times))
    return {"jit_compile": choice(seconds), "seconds": seconds}


def choice(seconds):
    """XLA only when its pass was faster: `seconds` {"plain": s, "xla": s}."""
    return bool(seconds["xla"] < seconds["plain"])


def read_cache():
    """The calibrations kept on this machine ({} when none, or the file is unreadable)."""
    path = files.cache_dir() / CACHE_FILE
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def cpu_name():
    """The CPU's model name, as the operating system gives it."""
    if platform.system() == "Linux":
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                for line in cpuinfo:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
    return platform.processor() or platform.machine()
