"""Training runs that survive faults: step-exact checkpoints, resume, and a stop on NaN/Inf.

A run's state is the model's and the optimizer's variables (the optimizer's
step count included) plus a description of the run (`run.json`: its rule,
seed and data). Data position needs no saving: bitkeras's training pipelines
are a function of the seed and the step (see `bitkeras.finetuning.pipeline`), so a run
resumed at step `s` replays from batch `s` exactly.

Keras's `BackupAndRestore` resumes at the start of an epoch and cannot
reposition a data pipeline, so `RunCheckpoint` takes its place: it writes
`latest.weights.h5` atomically every `every` steps, and `resume` reloads it.
Under a multi-worker strategy only the chief writes, and every worker
reads the chief's checkpoint (a folder all workers share). While a run
trains, its chief holds the folder (`owned`): a second run on the same
folder is refused instead of interleaving its checkpoints with the first's.
"""

import contextlib
import json
import os
import pathlib
import socket
import time

import keras
import numpy as np

from bitkeras import files
from bitkeras.finetuning import distribute

CHECKPOINT_FILE = "latest.weights.h5"
RUN_FILE = "run.json"
LOCK_FILE = "in-use.lock"


class NonFiniteLossError(FloatingPointError):
    """Training met a NaN or Inf loss (or weights) and stopped."""


def resume(model, folder, run, total_steps=None):
    """Loads the checkpoint in `folder` into `model`, if any; returns its step (0 if none).

    `model` must be compiled with its optimizer built, so that the
    optimizer's state loads too. `run` (a JSON-able dict) must equal the one
    the checkpoint was written with, and its step must be within the run's
    `total_steps`: a folder from another run raises, saying what differs.
    """
    folder = pathlib.Path(folder)
    checkpoint, run_file = folder / CHECKPOINT_FILE, folder / RUN_FILE
    if not checkpoint.exists():
        return 0
    fresh = (f"pass another checkpoint_dir, or delete {str(folder)!r} to start this run "
             f"from step 0")
    saved = _read_run(run_file, fresh)
    run = _as_json(run)
    if saved != run:
        differences = "; ".join(
            f"{key}: {saved.get(key, '(none)')!r} there, {run.get(key, '(none)')!r} here"
            for key in sorted(set(saved) | set(run)) if saved.get(key) != run.get(key))
        raise ValueError(
            f"checkpoint folder {str(folder)!r} holds another run ({differences}): {fresh}"
        )
    try:
        model.load_weights(checkpoint)
    except Exception as error:  # h5py and Keras raise many types for damaged files.
        raise ValueError(
            f"checkpoint {str(checkpoint)!r} cannot be read ({type(error).__name__}: "
            f"{error}): {fresh}"
        ) from error
    step = optimizer_step(model)
    if total_steps is not None and step > total_steps:
        raise ValueError(
            f"checkpoint {str(checkpoint)!r} is at step {step}, past this run's {total_steps} "
            f"steps: {fresh}"
        )
    return step


@contextlib.contextmanager
def owned(folder):
    """Holds checkpoint `folder` for the run inside the block (on the chief; None: nothing).

    A lock file names this host and process; it is removed when the block
    ends, however it ends. A lock left by a process of this host that no
    longer runs (killed) is taken over; a live holder raises.
    """
    if folder is None or not distribute.is_chief():
        yield
        return
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    holder = f"{socket.gethostname()} {os.getpid()}"
    while True:
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _lock_holder(lock)
            # An empty lock is being written (or was left by a kill during that write).
            if (other is not None and _is_dead(other)) or (
                    other is None and _age_seconds(lock) > LOCK_WRITE_SECONDS):
                lock.unlink(missing_ok=True)  # a crashed run's lock
                continue
            holder_name = "a run starting" if other is None else (
                f"another run (process {other[1]} on {other[0]})")
            raise RuntimeError(
                f"checkpoint folder {str(folder)!r} is in use by {holder_name}: wait for it "
                f"to end, or pass another checkpoint_dir. If that process is gone, delete "
                f"{str(lock)!r}."
            ) from None
        with os.fdopen(descriptor, "w") as out:
            out.write(holder)
        break
    try:
        yield
    finally:
        if _lock_holder(lock) == tuple(holder.split(" ")):
            lock.unlink(missing_ok=True)


LOCK_WRITE_SECONDS = 10
"""An empty lock file older than this was left by a process killed while writing it."""


def _age_seconds(path):
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


def _lock_holder(lock):
    """(host, pid) written in a lock file, or None if it is gone or unreadable."""
    try:
        host, pid = lock.read_text().split(" ")
        return host, pid
    except (OSError, ValueError):
        return None


def _is_dead(holder):
    """Whether a lock's process is known to have ended (only knowable on this host)."""
    host, pid = holder
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _read_run(run_file, fresh):
    try:
        saved = json.loads(run_file.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{str(run_file)!r}, the description of the run checkpointed beside it, is "
            f"missing or damaged ({type(error).__name__}: {error}): {fresh}"
        ) from error
    if not isinstance(saved, dict):
        raise ValueError(f"{str(run_file)!r} does not describe a run: {fresh}")
    return saved


def begin(model, checkpoint_dir, checkpoint_every, run, total_steps):
    """(start step, callbacks) of a run of `total_steps` optimizer steps on a compiled `model`.

    The callbacks stop on a NaN/Inf loss and, with a `checkpoint_dir`, write
    checkpoints every `checkpoint_every` steps (default: 20 per run) after
    resuming from the last one there, if any (announced on standard output).
    Put them ahead of other callbacks: a non-finite step must stop before
    it is checkpointed.
    """
    callbacks = [StopOnNonFiniteLoss(checkpoint_dir)]
    if checkpoint_dir is None:
        return 0, callbacks
    model.optimizer.build(model.trainable_variables)
    start_step = resume(model, checkpoint_dir, run, total_steps)
    if start_step:
        print(f"Resuming at step {start_step} of {total_steps} from {checkpoint_dir}")
    every = checkpoint_every or max(1, total_steps // 20)
    callbacks.append(RunCheckpoint(checkpoint_dir, every, run))
    return start_step, callbacks


def _as_json(run):
    return json.loads(json.dumps(run))


def restore_last_good(model, folder, weights_before):
    """After a non-finite step: `model` back to its last checkpoint, or to `weights_before`.

    Returns a sentence saying which, for the error message.
    """
    checkpoint = None if folder is None else pathlib.Path(folder) / CHECKPOINT_FILE
    if checkpoint is not None and checkpoint.exists():
        model.load_weights(checkpoint)
        return (f"The model is back at its last good checkpoint, step {optimizer_step(model)} "
                f"in {str(folder)!r}; rerun the same call to resume from it.")
    model.set_weights(weights_before)
    return "The model's weights are back to what they were before this fit."


class RunCheckpoint(keras.callbacks.Callback):
    """Writes model + optimizer state to `folder` every `every` steps and at the end.

    Before writing it checks that the weights are finite, so the checkpoint
    on disk is always the last good state: weights that went NaN or Inf
    raise `NonFiniteLossError` instead. Under a multi-worker strategy only
    the chief writes.
    """

    def __init__(self, folder, every, run):
        super().__init__()
        self.folder, self.every, self.run = pathlib.Path(folder), every, run
        self.saved_step = None

    def on_train_begin(self, logs=None):
        if not distribute.is_chief():
            return
        # The run's description goes first, so any checkpoint has one beside it.
        self.folder.mkdir(parents=True, exist_ok=True)
        files.write_text(self.folder / RUN_FILE, json.dumps(self.run))

    def on_train_batch_end(self, batch, logs=None):
        if optimizer_step(self.model) % self.every == 0:
            self.save()

    def on_train_end(self, logs=None):
        if self.saved_step != optimizer_step(self.model):  # the last step may be saved already
            self.save()

    def save(self):
        raise_on_non_finite_weights(self.model)
        if distribute.is_chief():
            self.model.save_weights(self.folder / CHECKPOINT_FILE)
        self.saved_step = optimizer_step(self.model)


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first NaN or Inf loss, raising `NonFiniteLossError` that names the step.

    Keras's `TerminateOnNaN` stops quietly and leaves a broken model behind;
    this raises, so no caller mistakes the result for a trained model, and
    it runs before any checkpoint callback of the same step (put it first),
    so the last checkpoint stays the last good one.
    """

    def __init__(self, checkpoint_folder=None):
        super().__init__()
        self.checkpoint_folder = checkpoint_folder

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or np.isfinite(float(loss)):
            return
        self.model.stop_training = True
        raise NonFiniteLossError(
            f"the training loss became {float(loss)} at step {optimizer_step(self.model)}. "
            f"Lower the learning rate, check the data for NaN/Inf values, or train in float32."
        )

    def on_train_end(self, logs=None):
        # The loss can stay finite while weights do not: a max pool passes a NaN
        # image on as the lowest float, whose GroupNorm is finite, yet the
        # gradient of the convolution before it is NaN. One check per fit.
        raise_on_non_finite_weights(self.model)


def raise_on_non_finite_weights(model):
    """Raises `NonFiniteLossError` naming the first trainable weight that holds NaN or Inf."""
    for variable in model.trainable_variables:
        if not np.isfinite(keras.ops.convert_to_numpy(variable)).all():
            raise NonFiniteLossError(
                f"weight {variable.path!r} is NaN or Inf after step {optimizer_step(model)}. "
                f"Lower the learning rate, check the data for NaN/Inf values, or train in "
                f"float32."
            )


def optimizer_step(model):
    """The optimizer steps `model` has taken (restored with its checkpoint)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))
