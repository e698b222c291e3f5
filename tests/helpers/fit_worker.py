"""Fits a tiny classifier in a fresh process, for the tests that need one.

    python -m tests.helpers.fit_worker mirrored OUT       # 1 device vs 2 logical CPUs
    python -m tests.helpers.fit_worker multi_worker OUT   # one worker of TF_CONFIG's cluster
    python -m tests.helpers.fit_worker resume OUT CKPT [pause]  # checkpointed fit (resumes)

Each writes its results under OUT (weights as .npy, models as .keras); `start`
runs one and `finish` waits for it. With `pause`, the resumable fit stops
still once it has written a checkpoint, prints PAUSED, and waits to be killed.
Logical devices and multi-worker strategies can only be set up before
TensorFlow runs anything, hence a process of their own.
"""

import os
import pathlib
import subprocess
import sys
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

STEPS = 6
RULE = dict(batch_size=16, crop_size=16, resize_size=20, mixup_alpha=0.2, flip=True,
            base_learning_rate=0.05, steps=STEPS)


def data():
    rng = np.random.default_rng(0)
    labels = np.arange(48) % 4
    images = rng.integers(0, 60, (48, 16, 16, 3)).astype(np.uint8)
    images[..., 0] += (labels * 60).astype(np.uint8)[:, None, None]  # learnable: red = class
    return images, labels


def classifier(seed=0):
    from bitkeras import BiTBackbone, BiTClassifier

    keras.utils.set_random_seed(seed)
    return BiTClassifier(BiTBackbone((1, 1, 1, 1), 0.5), 4)


def weights_of(model):
    return np.concatenate([np.ravel(w) for w in model.get_weights()])


def mirrored(out):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from bitkeras.finetuning import distribute

    results = {}
    for name, strategy, batch_split in (
        ("one_device", "default", 1),
        ("two_devices", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), 1),
        ("two_devices_split", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), 2),
    ):
        model = classifier()
        model.compile(batch_split=batch_split)
        model.fit(data(), hyperrule=RULE, strategy=strategy, verbose=0)
        results[name] = weights_of(model)
        results[name + "_replicas"] = distribute.strategy_for(strategy).num_replicas_in_sync
        if name == "one_device":
            teacher = model
    # Distillation: the student replicated with its teacher (a copy in the strategy's scope).
    from bitkeras import distill

    for name, strategy in (("distilled_one_device", "default"), (
            "distilled_two_devices", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
        student = classifier(seed=1)
        distill(teacher, student, data()[0], hyperrule=dict(RULE, steps=3), strategy=strategy,
                verbose=0)
        results[name] = weights_of(student)
    results["student_start"] = weights_of(classifier(seed=1))
    np.savez(os.path.join(out, "mirrored.npz"), **results)


def multi_worker(out):
    from bitkeras.finetuning import distribute

    strategy = distribute.strategy_for("auto")  # before TensorFlow runs anything
    index = int(os.environ["BITKERAS_TEST_WORKER"])
    model = classifier(seed=index)  # different draws: fit gives every worker the chief's
    history = model.fit(data(), hyperrule=RULE, verbose=0)
    np.save(os.path.join(out, f"worker{index}.npy"), weights_of(model))
    np.save(os.path.join(out, f"worker{index}_loss.npy"), np.array(history.history["loss"]))
    if distribute.is_chief():
        model.save(os.path.join(out, "chief.keras"))
    print(type(strategy).__name__, strategy.num_replicas_in_sync)


PAUSED = "paused after a checkpoint"


class _PauseAfterCheckpoint(keras.callbacks.Callback):
    """Holds the fit still once a checkpoint exists, so a test can kill it mid-run."""

    def __init__(self, checkpoint_dir):
        super().__init__()
        from bitkeras.finetuning import run_state

        self.checkpoint = pathlib.Path(checkpoint_dir) / run_state.CHECKPOINT_FILE

    def on_train_batch_end(self, batch, logs=None):
        if self.checkpoint.exists():
            print(PAUSED, flush=True)
            threading.Event().wait()


def resume(out, checkpoint_dir, pause=None):
    model = classifier()
    callbacks = [_PauseAfterCheckpoint(checkpoint_dir)] if pause == "pause" else []
    history = model.fit(data(), hyperrule=dict(RULE, steps=12), checkpoint_dir=checkpoint_dir,
                        checkpoint_every=3, verbose=0, callbacks=callbacks)
    np.save(os.path.join(out, "final.npy"), weights_of(model))
    print("start_step", history.start_step, "optimizer_step", int(model.optimizer.iterations))


ROOT = pathlib.Path(__file__).resolve().parents[2]


def start(*arguments, env=None):
    """This module, run as a process with `arguments`, its output (stdout and stderr) piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.fit_worker", *map(str, arguments)], cwd=ROOT,
        env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


def finish(process, timeout=300):
    """The output of a `start`ed process, which must end well within `timeout` seconds."""
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


if __name__ == "__main__":
    mode, *arguments = sys.argv[1:]
    {"mirrored": mirrored, "multi_worker": multi_worker, "resume": resume}[mode](*arguments)
