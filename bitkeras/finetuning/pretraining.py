"""Upstream pre-training: BiT's recipe on in-memory data, checkpointed and resumable.

`pretrain` trains a `BiTClassifier` with the `UpstreamRecipe` through
Keras's own loop. With a `checkpoint_dir`, the model and optimizer state are
written there every `checkpoint_every` steps (atomically: a kill mid-write
leaves the previous checkpoint), and a later call with the same folder
resumes from the last one, on exactly the batches the uninterrupted run would
have seen (see `pipeline.train_dataset`).
"""

import hashlib

import keras
import numpy as np

from bitkeras.checks import check_seed
from bitkeras.finetuning import distribute, pipeline, run_state, sources, training, xla
from bitkeras.finetuning.training import check_batching
from bitkeras.finetuning.upstream import UpstreamRecipe


@keras.saving.register_keras_serializable(package="bitkeras")
def multi_label_sigmoid_cross_entropy(targets, logits):
    """Sigmoid cross-entropy summed over classes: one independent yes/no per class.

    For upstream data with several labels per image (multi-hot `targets`).
    Summing over classes, rather than averaging, keeps the gradient of each
    class independent of how many classes there are.
    """
    per_class = keras.ops.binary_crossentropy(targets, logits, from_logits=True)
    return keras.ops.sum(per_class, axis=-1)


def pretrain(classifier, images, labels, recipe=None, *, epochs=90, batch_size=256, seed=0,
             checkpoint_dir=None, checkpoint_every=None, callbacks=None, verbose="auto",
             strategy="auto", precision="float32", jit_compile="auto"):
    """Pre-trains `classifier` on (`images`, `labels`) with BiT's upstream recipe.

    `images`: (N, height, width, 3) uint8 or float in [0, 1]. `labels`: (N,)
    class ids (softmax cross-entropy), or (N, classes) multi-hot 0/1 targets
    for multi-label data (sigmoid cross-entropy over classes). A classifier
    with no head gets one sized from the labels.

    `recipe`: an `UpstreamRecipe`; by default `UpstreamRecipe.for_dataset(N,
    image side, batch_size, epochs)`. `seed` fixes the order and augmentation
    of every example. `checkpoint_dir`: where to write checkpoints and resume
    from (`checkpoint_every` steps apart; default: 20 per run). `strategy`,
    `precision` and `jit_compile` as in `BiTClassifier.fit` (the recipe's batch
    is the global batch). A NaN or Inf loss raises `NonFiniteLossError`.

    Returns the Keras `History` of the steps this call ran, with `recipe`,
    `start_step` (0, or the step it resumed from) and `steps_completed` as
    attributes.
    """
    check_seed(seed, "pretrain(seed=...)")
    images = np.asarray(images)
    targets, multi_label = _targets(labels, len(images))
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(
            f"images must be square RGB, shape (N, side, side, 3); got {images.shape}"
        )
    source = sources.open_source((images, np.zeros(len(images), np.int64)))  # checks pixels
    if recipe is None:
        recipe = UpstreamRecipe.for_dataset(len(images), images.shape[1], batch_size, epochs)
    elif not isinstance(recipe, UpstreamRecipe):
        raise TypeError(f"recipe must be a bitkeras.UpstreamRecipe; got {recipe!r}")
    strategy = distribute.training_strategy(classifier, strategy)
    check_batching(recipe, len(images), 1, strategy.num_replicas_in_sync)
    if classifier.head is None:
        classifier.add_head(targets.shape[1])
    elif classifier.num_classes != targets.shape[1]:
        raise ValueError(
            f"the labels have {targets.shape[1]} classes but {classifier.name} has a "
            f"{classifier.num_classes}-class head"
        )
    # The classifier's own fit setup, with the recipe's loss where the labels are multi-hot.
    request = {"loss": multi_label_sigmoid_cross_entropy, "metrics": []} if multi_label else {}
    run = {"recipe": recipe.get_config(), "seed": seed, "num_examples": len(images),
           "num_classes": targets.shape[1],
           **({"precision": precision} if precision != "float32" else {})}
    if checkpoint_dir is not None:  # only checkpoints need the data's identity
        run.update(data=source.fingerprint(),
                   targets=hashlib.sha1(targets.tobytes()).hexdigest()[:16])

    def batches(start_step):
        return pipeline.train_dataset(source, recipe, targets, recipe.batch_size, seed,
                                      start_step=start_step)

    jit_compile = xla.resolve(jit_compile, strategy, classifier, recipe,
                              recipe.batch_size // strategy.num_replicas_in_sync, precision,
                              verbose)
    with training.on_strategy(classifier, strategy, precision) as model:
        model.compile_for_rule(recipe, jit_compile=jit_compile, request=request)
        history, start_step = training.train(
            model, recipe, batches, training.keras_schedule(recipe, len(images)), run,
            checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
            callbacks=callbacks, verbose=verbose)
        history.steps_completed = run_state.optimizer_step(model)
    history.recipe = recipe
    history.start_step = start_step
    return history


def _targets(labels, num_examples):
    """(float32 targets (N, classes), multi_label) from class ids or multi-hot rows."""
    labels = np.asarray(labels)
    if len(labels) != num_examples:
        raise ValueError(f"{num_examples} images but {len(labels)} labels")
    if labels.ndim == 1:
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
            raise ValueError(
                f"labels must be class ids (non-negative integers) or multi-hot rows; got "
                f"dtype {labels.dtype}, minimum {labels.min()}"
            )
        return np.eye(int(labels.max()) + 1, dtype=np.float32)[labels], False
    if labels.ndim == 2 and np.isin(labels, (0, 1)).all():
        return labels.astype(np.float32), True
    raise ValueError(
        f"labels must be (N,) class ids or (N, classes) multi-hot 0/1 rows; got shape "
        f"{labels.shape}"
    )
