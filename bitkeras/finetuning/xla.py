"""`jit_compile="auto"` on CPUs: XLA where this machine measured it faster for this model.

Whether XLA speeds up training on a CPU depends on the CPU and the model: it
made the R50x1 step 15% slower on a 2-core Intel Xeon with AVX-512 and 23%
faster on a 2-core AMD EPYC with AVX2 (benchmarks/throughput.py). So on a CPU
"auto" times forward and backward passes of the model, at the fit's image
size, batch and precision, with XLA and without (`calibrate`), and keeps what
it measured in `xla.json` in the cache folder (`$BITKERAS_CACHE_DIR`, else
`~/.cache/bitkeras`) under the CPU, TensorFlow version, bitkeras's ops,
architecture, image size, batch and precision.

One noisy measurement cannot fix the choice for good:
- the two kinds of pass alternate, so a busy moment slows both, and their
  medians are compared;
- XLA is chosen only when it is faster by more than `MARGIN`; a closer race
  keeps it off, the choice that needs no compilation;
- a choice is settled only once `CONFIRMATIONS` calibrations, in separate
  fits, agree; until then every fit long enough calibrates again, and one
  that disagrees starts the count afresh.

A fit shorter than `CALIBRATE_MIN_STEPS` does not calibrate (XLA's
compilation alone would cost more than it can save) and takes the kept
choice, else runs without XLA. With `verbose`, each fit prints the choice and
where it came from. `$BITKERAS_JIT_COMPILE` ("0" or "1") overrides "auto" in
every fit, CLI jobs included; `compile(jit_compile=True)` (or `False`) overrides
it for one model; `forget()` (or deleting the file) drops what was kept. GPUs and TPUs
always get XLA (`distribute.jit_compile_for`).
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

CALIBRATION_ROUNDS = 5
"""Timed passes of each kind, alternating; their medians are compared."""

MARGIN = 0.05
"""XLA is chosen only when its median pass is at least this much faster (a fraction)."""

CONFIRMATIONS = 3
"""Agreeing calibrations, in separate fits, after which a choice is no longer measured."""

OVERRIDE_ENV = "BITKERAS_JIT_COMPILE"

CACHE_FILE = "xla.json"


def resolve(jit_compile, strategy, model, rule, batch_size, precision, verbose=0):
    """True or False for a fit: as given, `distribute.jit_compile_for` under JAX or off CPUs,
    else measured.

    `batch_size`: the batch one replica's step sees.
    """
    jit_compile = _overridden(jit_compile)
    chosen = distribute.jit_compile_for(jit_compile, strategy)
    if jit_compile != "auto" or chosen or getattr(model.backbone, "architecture", None) is None:
        return chosen
    key = calibration_key(model, rule.crop_size, batch_size, precision)
    kept = read_cache().get(key)
    if kept is not None and (_settled(kept) or rule.steps < CALIBRATE_MIN_STEPS):
        _say(verbose, f"jit_compile={kept['jit_compile']}, as {_agreeing(kept)} earlier "
                      f"calibration(s) on this CPU measured ({_measured(kept['seconds'])})")
        return bool(kept["jit_compile"])
    if rule.steps < CALIBRATE_MIN_STEPS:
        _say(verbose, f"jit_compile=False: XLA is not measured for fits under "
                      f"{CALIBRATE_MIN_STEPS} steps on a CPU")
        return False
    result = calibrate(model, rule.crop_size, batch_size, precision)
    cache = read_cache()  # another process may have written it meanwhile
    result["agreeing"] = 1
    if key in cache and cache[key]["jit_compile"] == result["jit_compile"]:
        result["agreeing"] = _agreeing(cache[key]) + 1
    cache[key] = result
    path = files.cache_dir() / CACHE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_text(path, json.dumps(cache, indent=1, sort_keys=True) + "\n")
    _say(verbose, f"jit_compile={result['jit_compile']}, measured now "
                  f"({_measured(result['seconds'])}); {result['agreeing']} of "
                  f"{CONFIRMATIONS} agreeing calibrations settle it (kept in {path})")
    return result["jit_compile"]


def forget():
    """Drops every kept calibration of this machine: the next long fits measure afresh."""
    (files.cache_dir() / CACHE_FILE).unlink(missing_ok=True)


def _overridden(jit_compile):
    value = os.environ.get(OVERRIDE_ENV, "")
    if jit_compile != "auto" or value == "":
        return jit_compile
    if value not in ("0", "1"):
        raise ValueError(f"${OVERRIDE_ENV} is {value!r}: set it to 1 (XLA on), 0 (off), or "
                         f"unset it for the measured choice")
    return value == "1"


def _agreeing(kept):
    return int(kept.get("agreeing", 1))


def _settled(kept):
    return _agreeing(kept) >= CONFIRMATIONS


def _measured(seconds):
    return f"{seconds['xla']:.3f} s per pass with XLA, {seconds['plain']:.3f} s without"


def _say(verbose, message):
    if verbose:
        print(f"XLA on this CPU for this model: {message}", flush=True)


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
    """{"jit_compile": bool, "seconds": {"plain", "xla"}}: medians of passes each way.

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

    steps = {name: tf.function(gradients, jit_compile=jit)
             for name, jit in (("plain", False), ("xla", True))}
    for step in steps.values():
        step()  # traced and compiled off the clock
    times = {name: [] for name in steps}
    for _ in range(rounds):  # alternating, so that a busy moment slows both kinds
        for name, step in steps.items():
            start = timer()
            [value.numpy() for value in step()]
            times[name].append(timer() - start)
    seconds = {name: float(np.median(values)) for name, values in times.items()}
    return {"jit_compile": choice(seconds), "seconds": seconds}


def choice(seconds):
    """XLA only when its pass was faster by more than `MARGIN`: `seconds` {"plain", "xla"}."""
    return bool(seconds["xla"] < (1 - MARGIN) * seconds["plain"])


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
