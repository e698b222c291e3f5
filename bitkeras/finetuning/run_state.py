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
reads the chief's checkpoint (a folder all workers share).
"""

import json
import pathlib

import keras
import numpy as np

from bitkeras import files
from bitkeras.finetuning import distribute

CHECKPOINT_FILE = "latest.weights.h5"
RUN_FILE = "run.json"


class NonFiniteLossError(FloatingPointError):
    """Training met a NaN or Inf loss (or weights) and stopped."""


def resume(model, folder, run):
    """Loads the checkpoint in `folder` into `model`, if any; returns its step (0 if none).

    `model` must be compiled with its optimizer built, so that the
    optimizer's state loads too. `run` (a JSON-able dict) must equal the one
    the checkpoint was written with: a folder from another run raises.
    """
    folder = pathlib.Path(folder)
    checkpoint, run_file = folder / CHECKPOINT_FILE, folder / RUN_FILE
    if not checkpoint.exists():
        return 0
    saved = json.loads(run_file.read_text()) if run_file.exists() else None
    if saved != _as_json(run):
        raise ValueError(
            f"checkpoint folder {str(folder)!r} holds another run ({saved}), not this one "
            f"({_as_json(run)}): pass a new checkpoint folder, or delete that one to start over"
        )
    model.load_weights(checkpoint)
    return optimizer_step(model)


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
    start_step = resume(model, checkpoint_dir, run)
    if start_step:
        print(f"Resuming at step {start_step} of {total_steps} from {checkpoint_dir}")
    every = checkpoint_every or max(1, total_steps // 20)
    callbacks.append(RunCheckpoint(checkpoint_dir, every, run))
    return start_step, callbacks


def _as_json(run):
    return json.loads(json.dumps(run))


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
        for variable in self.model.trainable_variables:
            if not np.isfinite(keras.ops.convert_to_numpy(variable)).all():
                raise NonFiniteLossError(
                    f"weight {variable.path!r} is NaN or Inf after step "
                    f"{optimizer_step(self.model)}; the last good checkpoint is kept in "
                    f"{str(self.folder)!r}. Lower the learning rate (or train in float32) and "
                    f"rerun the same command to resume from it."
                )
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
        kept = (f"the last good checkpoint is kept in {str(self.checkpoint_folder)!r} (rerun "
                f"the same command to resume from it)" if self.checkpoint_folder else
                "no checkpoint was being written (pass checkpoint_dir to keep one)")
        raise NonFiniteLossError(
            f"the training loss became {float(loss)} at step {optimizer_step(self.model)}: "
            f"the model's weights are no longer usable; {kept}. Lower the learning rate, "
            f"check the data for NaN/Inf values, or train in float32."
        )


def optimizer_step(model):
    """The optimizer steps `model` has taken (restored with its checkpoint)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))
