"""The steps of a fine-tuning classifier's `fit`: check Keras's arguments, open the data,
size the rule, and hand the one training loop (`training.train`) its batches.

`FineTuningClassifier.fit` keeps Keras's signature and runs these in order; each
check runs before any work that it could waste. The keywords `fit` adds to Keras's:

- `examples_per_class`, `seed`: few-shot training on K examples of each
  class, drawn reproducibly; `seed` also seeds the augmentation.
- `trainable`: "all" (full fine-tuning), "head" (a linear probe on
  frozen features) or "block1".."block4" (that block onwards).
- `on_bad_image`: "warn" skips unreadable files with one warning that
  names them, "raise" stops.
- `strategy`: "auto" (see `bitkeras.finetuning.distribute`: TPU, several workers,
  several GPUs, else one device), a name ("default", "mirrored",
  "multi_worker", "tpu") or a `tf.distribute.Strategy`. The rule's
  batch is the global batch, split across replicas. A classifier
  built in a strategy's scope trains under that strategy; otherwise a
  copy is built in the strategy's scope, trained, and its weights
  copied back.
- `precision`: "float32", "mixed_bfloat16" or "mixed_float16" (with
  loss scaling); GroupNorm statistics, weight standardization and the
  head stay in float32. The classifier itself stays float32.
- `checkpoint_dir`: write the training state (model, optimizer, step)
  there every `checkpoint_every` steps (default: 20 per run); the
  same call after a crash resumes from it and ends at the same step,
  on the same batches. A NaN or Inf loss stops the run with
  `NonFiniteLossError`, keeping the last good checkpoint.
- `hyperrule`: what to change in the HyperRule computed for the data (a
  dict of its fields, and "variant": "paper" or "released"; a variant name
  alone), or the rule to run, whole (a `HyperRule` or an `UpstreamRecipe`).
- `class_names`: names for the classes of a source that only numbers them.

What `compile` sets stays `compile`'s: `jit_compile` ("auto": XLA on GPU and
TPU; on a CPU, where this machine measured it faster for this model: see
`bitkeras.finetuning.xla`) and `batch_split` (micro-batches whose gradients
each optimizer step accumulates: the same update as the whole batch, with
less memory).
"""

import dataclasses
import types

import keras

from bitkeras.checks import check_seed
from bitkeras.finetuning import distribute, evaluation, pipeline, sources, training, xla
from bitkeras.finetuning.hyperrule import HyperRule
from bitkeras.models.backbone import ResNetV2Backbone
from bitkeras.models.resnet_backbone import ResNetFamilyBackbone


RENAMED = {
    "variant": "hyperrule={'variant': ...} (or hyperrule='released')",
    "split": "x='tfds:NAME:SPLIT'",
    "batch_split": "compile(batch_split=...)",
    "jit_compile": "compile(jit_compile=...)",
}
"""Keywords fit does not take, and where what they ask for is given."""


def check_keras_arguments(x, sample_weight, initial_epoch, seed, epochs, hyperrule, unknown):
    """Refuses Keras arguments the HyperRule pipeline cannot honour, and keywords fit does not
    take (`unknown`), saying what to use."""
    if unknown:
        _refuse_keywords(unknown)
    if x is None:
        raise TypeError("fit() needs data: images and labels, a folder, 'tfds:NAME' or "
                        "a dataset")
    if sample_weight is not None:
        raise ValueError(
            "fit(sample_weight=...) is not supported: the HyperRule pipeline crops, flips "
            "and mixes examples; use class_weight=, or keras.Model.fit on your own batches"
        )
    if initial_epoch:
        raise ValueError(
            f"fit(initial_epoch={initial_epoch!r}) is not supported: pass checkpoint_dir= "
            f"and rerun the same call to resume a fit where it stopped"
        )
    check_seed(seed, "fit(seed=...)")
    if epochs is not None and isinstance(hyperrule, dict) and "steps" in hyperrule:
        raise ValueError(
            f"fit got both epochs={epochs!r} and hyperrule's steps={hyperrule['steps']!r}; "
            f"give one"
        )


def _refuse_keywords(unknown):
    fields = [field.name for field in dataclasses.fields(HyperRule)]
    name = sorted(unknown)[0]
    if name in fields:
        changes = ", ".join(f"{key!r}: {unknown[key]!r}" for key in sorted(unknown)
                            if key in fields)
        raise TypeError(f"fit() takes the rule's fields in one object: "
                        f"fit(..., hyperrule={{{changes}}})")
    if name in RENAMED:
        raise TypeError(f"fit() got {name}={unknown[name]!r}: give it as {RENAMED[name]}")
    raise TypeError(f"fit() got an unexpected keyword argument {name!r}")


def check_strategy(classifier, strategy, precision):
    """A strategy or precision that rebuilds the model needs a backbone bitkeras can rebuild."""
    if distribute.needs_replica(classifier, strategy, precision) and not isinstance(
            classifier.backbone, (ResNetV2Backbone, ResNetFamilyBackbone)):
        raise ValueError(
            f"fit(strategy=..., precision={precision!r}) rebuilds the model for the "
            f"strategy or precision, which needs a native backbone; this one is a "
            f"{type(classifier.backbone).__name__}: convert it (from_hub(..., convert=True))"
        )


def open_data(x, y, validation_split, validation_data, class_names, on_bad_image,
              examples_per_class, seed):
    """(the training source, the validation data) of a fit's arguments, checked."""
    data = sources.keras_data(x, y)
    if validation_split and validation_data is None:
        data, validation_data = sources.split_validation(data, validation_split)
    if validation_data is not None:
        sources.data_form(validation_data, "validation_data")  # fail before any work
    source = sources.open_source(data, class_names=class_names, on_bad_image=on_bad_image)
    if examples_per_class is not None:
        source = source.few_shot(examples_per_class, seed)
    return source, validation_data


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a fit runs: the rule, its passes for Keras, and how batches are fed."""

    rule: object
    passes: object  # training.keras_schedule's
    batch_split: int
    sparse_labels: bool  # the compiled loss takes class ids, not one-hot rows


def plan(classifier, source, hyperrule, batch_size, epochs, steps_per_epoch, strategy,
         trainable):
    """The `Plan` of a fit of `classifier` on `source`, every sizing checked."""
    rule = training.resolve_rule(source.num_examples, source.image_size, hyperrule, batch_size,
                                 evaluation.weights_resolution(classifier))
    passes = training.keras_schedule(rule, source.num_examples, epochs, steps_per_epoch)
    rule = passes.rule
    request = classifier.compile_request
    batch_split = request.get("batch_split", 1)
    training.check_batching(rule, source.num_examples, batch_split,
                            strategy.num_replicas_in_sync)
    training.check_trainable(trainable, classifier.backbone)
    sparse_labels = training.wants_sparse_labels(request.get("loss", "auto"))
    if sparse_labels and rule.mixup_alpha > 0:
        raise ValueError(
            f"the compiled loss takes class ids, but the rule mixes labels (MixUp, alpha "
            f"{rule.mixup_alpha}): pass mixup_alpha=0 to fit, or compile with a loss on "
            f"one-hot labels such as CategoricalCrossentropy(from_logits=True)"
        )
    return Plan(rule, passes, batch_split, sparse_labels)


def jit_compile(classifier, strategy, fit_plan, precision, verbose):
    """Whether the fit's step is XLA-compiled: as given to `compile`, else `xla.resolve`'s
    choice for one replica's micro-batch."""
    rule = fit_plan.rule
    return xla.resolve(
        classifier.compile_request.get("jit_compile", "auto"), strategy, classifier, rule,
        rule.batch_size // (strategy.num_replicas_in_sync * fit_plan.batch_split), precision,
        verbose)


def validation_dataset(classifier, validation_data, fit_plan, on_bad_image, batch_size):
    """`validation_data`'s batches and the size a batch holds (see `validation_batches`),
    or None."""
    if validation_data is None:
        return None
    source = sources.open_source(validation_data, class_names=classifier.class_names,
                                 on_bad_image=on_bad_image, default_split="validation|test")
    source.check_labels(classifier.num_classes)
    rule = fit_plan.rule
    batch_size = batch_size or rule.batch_size
    batches = pipeline.eval_dataset(
        source, batch_size, evaluation.converter(classifier, rule.crop_size),
        one_hot_classes=None if fit_plan.sparse_labels else classifier.num_classes)
    return types.SimpleNamespace(batches=batches,
                                 batch_size=min(batch_size, source.num_examples))


def validation_batches(validation, strategy, jit_compile):
    """The batches Keras's `fit` validates on (None without `validation`): as they come,
    or, where XLA would compile a program for the last one's shape, filled up to one
    size, the real rows marked (`evaluation.with_real_rows`, scored by `RealRows`)."""
    if validation is None:
        return None
    if evaluation.scores_filled(strategy, jit_compile):
        return evaluation.with_real_rows(validation.batches, validation.batch_size)
    return validation.batches


def run_record(classifier, source, fit_plan, seed, examples_per_class, trainable, precision,
               shuffle, checkpoint_dir):
    """What identifies the run, for its checkpoints: a resume must be the same run."""
    run = {"rule": fit_plan.rule.get_config(), "seed": seed, "examples": source.num_examples,
           "classes": classifier.num_classes, "examples_per_class": examples_per_class,
           "trainable": trainable, "batch_split": fit_plan.batch_split, "precision": precision,
           **({"shuffle": False} if not shuffle else {})}
    if checkpoint_dir is not None:  # only checkpoints need the data's identity
        run["data"] = source.fingerprint()
    return run


def batches(classifier, source, fit_plan, seed, shuffle):
    """`start_step -> dataset`: the training batches from a step on (a resume's)."""
    rule = fit_plan.rule

    def from_step(start_step):
        train = pipeline.train_dataset(source, rule, classifier.num_classes, rule.batch_size,
                                       seed, start_step=start_step, shuffle=shuffle)
        if fit_plan.sparse_labels:
            train = train.map(lambda images, labels: (
                images, keras.ops.argmax(labels, axis=-1)))
        return train

    return from_step


def annotated(history, rule, start_step):
    """Keras's `History` of a fit, with the rule it ran and the step it started at."""
    history.hyperrule = rule
    history.start_step = start_step
    history.params["hyperrule"] = rule.get_config()
    return history


def adopt_classes(classifier, source):
    """Sizes `classifier`'s missing head from `source`, or checks `source` against the head."""
    if source.num_classes < 2:
        raise ValueError(
            f"{source.description} has a single class; a classifier needs at least 2"
        )
    if classifier.head is None:
        classifier.add_head(source.num_classes)
        classifier.class_names = source.class_names
        return source
    if source.named and source.num_classes != classifier.num_classes:
        raise ValueError(
            f"{source.description} has {source.num_classes} classes but {classifier.name} has a "
            f"{classifier.num_classes}-class head; build a new classifier (or "
            f"from_preset(..., num_classes={source.num_classes})) for this data"
        )
    if classifier.class_names is None:
        classifier.class_names = source.class_names if source.named else tuple(
            str(i) for i in range(classifier.num_classes))
    source.check_labels(classifier.num_classes)
    return source.relabel(classifier.class_names)
