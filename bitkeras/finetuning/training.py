"""The one training loop of bitkeras, and the pieces around it: rule, optimizer, freezing.

`train` runs a compiled classifier through Keras's own `fit` for a rule's
optimizer steps (resuming, checkpointing, stopping on NaN); `on_strategy`
gives the model to train under a tf.distribute strategy and precision.
`BiTClassifier.fit` and `bitkeras.pretrain` both use them; each piece is
usable (and tested) alone.
"""

import contextlib
import dataclasses
import inspect
import math
import time
import warnings

import keras

from bitkeras import compat
from bitkeras.checks import check_positive_integer
from bitkeras.finetuning import distribute, run_state
from bitkeras.finetuning.distill_recipes import DistillationRule
from bitkeras.finetuning.hyperrule import RESOLUTIONS, HyperRule
from bitkeras.finetuning.optimizers import SGD
from bitkeras.finetuning.schedules import WarmupCosine, WarmupStaircase
from bitkeras.finetuning.upstream import UpstreamRecipe

MAX_KERAS_EPOCHS = 20
"""At most this many Keras epochs (progress-bar rounds, validation points) per fit."""

TRAINABLE_CHOICES = ("all", "head", "block1", "block2", "block3", "block4")

_SCHEDULE_FIELDS = ("warmup_steps", "decay_boundaries")


def resolve_rule(num_examples, image_size, hyperrule=None, batch_size=None, resolution=None,
                 kind=HyperRule, **given):
    """The rule a fit runs on `num_examples` images of typical `image_size`.

    `hyperrule` as `fit` takes it: None (the HyperRule for the data), a
    variant name ("paper" or "released", see `HyperRule.for_dataset`), a dict
    of rule fields to change in the rule for the data (and "variant"), or a
    whole rule (a `HyperRule` or `UpstreamRecipe`, run as it is).
    `batch_size`: Keras's, which sets the batch of the rule for the data (its
    learning rate and steps scaled to match) or replaces a whole rule's.
    `resolution`: the side the model was pre-trained at, which sizes the
    rule for the data (see `HyperRule.for_dataset`).
    Changing `steps` alone keeps the shape of the schedule (warm-up and
    decays move in proportion); change `warmup_steps` and `decay_boundaries`
    too to set them yourself.
    `kind`: the class of the rule for the data, `HyperRule` or `distill`'s
    `DistillationRule` (whose whole rules are its own); `given`: more of its
    fields given as a call's own arguments (`distill`'s `mode`), None leaving
    them to the rule. `batch_size` or such an argument is refused where
    `hyperrule` sets the same field to another value.
    """
    given = {name: value for name, value in {"batch_size": batch_size, **given}.items()
             if value is not None}
    if isinstance(hyperrule, (HyperRule, UpstreamRecipe) if kind is HyperRule else kind):
        return dataclasses.replace(hyperrule, **given) if given else hyperrule
    changes = rule_changes(hyperrule, kind)
    variant = changes.pop("variant", "paper")
    for name, value in given.items():
        if changes.setdefault(name, value) != value:
            caller = "fit" if kind is HyperRule else "distill"
            raise ValueError(f"{caller} got {name}={value!r} and hyperrule's {name}="
                             f"{changes[name]!r}; give one")
    sizing = inspect.signature(kind.for_dataset).parameters  # fields the rule is sized by
    rule = kind.for_dataset(num_examples, image_size, variant=variant, resolution=resolution,
                            **{name: changes.pop(name) for name in list(changes)
                               if name in sizing})
    if "steps" in changes and not any(name in changes for name in _SCHEDULE_FIELDS):
        rule = rule.with_steps(changes.pop("steps"))
    return dataclasses.replace(rule, **changes)


def rule_changes(hyperrule, kind=HyperRule):
    """`fit`'s `hyperrule` that is not a whole rule, as a dict of fields of `kind` (a rule
    class whose `for_dataset` takes a variant) and "variant"."""
    if hyperrule is None:
        return {}
    if isinstance(hyperrule, str):
        hyperrule = {"variant": hyperrule}
    if not isinstance(hyperrule, dict):
        whole = "a bitkeras.HyperRule or UpstreamRecipe" if kind is HyperRule else (
            f"a bitkeras.{kind.__name__}")
        raise TypeError(
            f"hyperrule must be {whole}, a variant name ({', '.join(map(repr, RESOLUTIONS))}) "
            f"or a dict of {kind.__name__} fields to change; got {type(hyperrule).__name__}")
    fields = [field.name for field in dataclasses.fields(kind)]
    unknown = sorted(set(hyperrule) - {*fields, "variant"})
    if unknown:
        raise TypeError(f"hyperrule has unknown field(s) {unknown}; a {kind.__name__}'s "
                        f"fields are {fields} (and 'variant')")
    if hyperrule.get("variant", "paper") not in RESOLUTIONS:
        raise ValueError(f"hyperrule's variant must be one of {sorted(RESOLUTIONS)}; got "
                         f"{hyperrule['variant']!r}")
    return dict(hyperrule)


def check_batch_split(batch_split):
    """Raises where micro-batches cannot run: their accumulated step is TensorFlow's and JAX's."""
    if batch_split != 1 and keras.backend.backend() not in ("tensorflow", "jax"):
        raise NotImplementedError(
            f"compile(batch_split={batch_split}) accumulates micro-batches in TensorFlow's or "
            f"JAX's train step; under Keras's {keras.backend.backend()} backend use "
            f"batch_split=1 (and a smaller batch_size, or another backend)")


def check_batching(rule, num_examples, batch_split, replicas=1):
    """Raises unless `rule.batch_size` examples exist and split evenly into micro-batches.

    The rule's batch is the global batch: each of `replicas` devices takes an
    equal share, which it cuts into `batch_split` micro-batches.
    """
    check_positive_integer(batch_split, "batch_split")
    parts = replicas * batch_split
    if rule.batch_size % parts:
        where = f"{replicas} replicas x batch_split={batch_split}" if replicas > 1 else (
            f"batch_split={batch_split}")
        raise ValueError(
            f"batch_size {rule.batch_size} does not split into {parts} equal micro-batches "
            f"({where}); pick a batch_size that is a multiple of {parts}, or another batch_split"
        )
    if num_examples < rule.batch_size:
        raise ValueError(
            f"the data has {num_examples} examples, fewer than one batch of {rule.batch_size}; "
            f"pass batch_size={num_examples} or smaller"
        )


NOT_DECAYED = ("gamma", "beta", "bias")
"""Variables an upstream recipe's weight decay leaves alone: GroupNorm's and biases."""


def make_optimizer(rule):
    """SGD, momentum 0.9, on the rule's schedule; with an UpstreamRecipe's decay on kernels.

    A HyperRule has no weight decay (BiT fine-tunes without it); a
    DistillationRule names its own optimizer and schedule (`distillation_optimizer`).
    """
    if isinstance(rule, DistillationRule):
        return distillation_optimizer(rule)
    weight_decay = rule.weight_decay if isinstance(rule, UpstreamRecipe) else None
    optimizer = SGD(learning_rate=WarmupStaircase.from_hyperrule(rule), momentum=0.9,
                    weight_decay=weight_decay or None)
    if weight_decay:
        optimizer.exclude_from_weight_decay(var_names=list(NOT_DECAYED))
    return optimizer


def distillation_optimizer(rule):
    """The optimizer a `DistillationRule` names, on its schedule, decay and clipping.

    Adam is Keras's AdamW, whose decay is `learning_rate * weight_decay`:
    big_vision's decay (`weight_decay` times the schedule's factor) is that
    with `weight_decay / base_learning_rate`.
    """
    if rule.decay == "cosine":
        schedule = WarmupCosine(rule.base_learning_rate, rule.warmup_steps, rule.steps)
    else:
        schedule = WarmupStaircase.from_hyperrule(rule)
    decay = rule.weight_decay / rule.base_learning_rate or None
    clipping = {"global_clipnorm": rule.clip_norm} if rule.clip_norm else {}
    if rule.optimizer == "adam":
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=decay or 0.0,
                                           **clipping)
    else:
        optimizer = SGD(learning_rate=schedule, momentum=0.9, weight_decay=decay, **clipping)
    if decay:
        optimizer.exclude_from_weight_decay(var_names=list(NOT_DECAYED))
    return optimizer


def accumulated_train_step(model, *arguments):
    """One optimizer step on a replica's batch, cut into equal micro-batches.

    `arguments`: (data, micro_batches) under TensorFlow, (state, data,
    micro_batches) under JAX (`_accumulated_jax_step`). The gradients of the
    micro-batches are averaged and applied once: the update of the whole
    batch, with the activations of one micro-batch in memory at a time (each
    forward pass waits for the previous gradients). It runs per replica, so
    under a strategy each replica accumulates its share and the optimizer
    all-reduces once per step. Keras's own `gradient_accumulation_steps`
    cannot do that (its all-reduce sits inside a conditional, which
    tf.distribute rejects), and it spreads one update over several steps.
    """
    if len(arguments) == 3:
        return _accumulated_jax_step(model, *arguments)
    data, micro_batches = arguments
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    images, targets, weights = keras.utils.unpack_x_y_sample_weight(data)
    size = tf.shape(images)[0] // micro_batches
    variables = model.trainable_variables
    total = [tf.zeros(v.shape, v.dtype) for v in variables]
    for index in range(micro_batches):
        part = slice(index * size, (index + 1) * size)
        x, y = images[part], targets[part]
        weight = None if weights is None else weights[part]
        with tf.control_dependencies(total):
            with tf.GradientTape() as tape:
                predictions = model(x, training=True)
                loss = model.compute_loss(x=x, y=y, y_pred=predictions, sample_weight=weight,
                                          training=True)
                # As Keras's own train step: the logged loss, undoing the 1/replicas
                # that compute_loss applies for the all-reduce (a sum).
                compat.loss_tracker(model).update_state(loss * replicas, sample_weight=size)
                scaled = model.optimizer.scale_loss(loss)
            gradients = tape.gradient(scaled, variables)
        total = [sum_ + gradient for sum_, gradient in zip(total, gradients)]
        results = model.compute_metrics(x, y, predictions, sample_weight=weight)
    model.optimizer.apply_gradients(
        zip([sum_ / micro_batches for sum_ in total], variables))
    return results


def _accumulated_jax_step(model, state, data, micro_batches):
    """`accumulated_train_step` under JAX: Keras's stateless step, its micro-batches in a
    `jax.lax.scan` (one after the other, whatever XLA schedules). A micro-batch takes
    every `micro_batches`-th example, so that where the batch is split across devices
    (`keras.distribution.DataParallel`) each micro-batch is split across them too."""
    import jax

    trainable, non_trainable, optimizer_variables, metrics_variables = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)

    def micro(tensor):  # (batch, ...) -> (micro_batches, batch / micro_batches, ...)
        if tensor is None:
            return None
        strided = tensor.reshape((-1, micro_batches, *tensor.shape[1:]))
        return strided.swapaxes(0, 1)

    gradient = jax.value_and_grad(model.compute_loss_and_updates, has_aux=True)

    def one(carry, part):
        total, non_trainable, metrics_variables = carry
        x, y, sample_weight = part
        (_, (loss, predictions, non_trainable, metrics_variables)), gradients = gradient(
            trainable, non_trainable, metrics_variables, x, y, sample_weight, training=True,
            optimizer_variables=optimizer_variables)
        _, metrics_variables = compat.stateless_metrics_update(
            model, metrics_variables, loss, x, y, predictions, sample_weight)
        total = jax.tree.map(lambda sum_, new: sum_ + new, total, gradients)
        return (total, non_trainable, metrics_variables), None

    zeros = jax.tree.map(keras.ops.zeros_like, trainable)
    (total, non_trainable, metrics_variables), _ = jax.lax.scan(
        one, (zeros, non_trainable, metrics_variables),
        (micro(x), micro(y), micro(sample_weight)))
    trainable, optimizer_variables = model.optimizer.stateless_apply(
        optimizer_variables, [sum_ / micro_batches for sum_ in total], trainable)
    with keras.StatelessScope(state_mapping=list(zip(model.metrics_variables,
                                                     metrics_variables))):
        logs = model.get_metrics_result()
    return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)


@dataclasses.dataclass(frozen=True)
class KerasSchedule:
    """A rule's optimizer steps laid out as Keras epochs.

    With `epochs` given (Keras's meaning), the rule lasts `epochs` rounds of
    `steps_per_epoch` steps; otherwise its own `steps`, in rounds of at least
    one pass over the data (`steps_per_epoch`, if given, sets the round).
    """

    rule: object  # any rule with `steps`: HyperRule, UpstreamRecipe, ResNetRecipe, DetectionRule
    steps_per_pass: int
    epochs: int | None = None
    steps_per_epoch: int | None = None

    def keras_epochs(self, remaining_steps):
        """(epochs, steps per epoch) for the last `remaining_steps` of the run."""
        if self.epochs is not None:
            return math.ceil(remaining_steps / self.steps_per_epoch), self.steps_per_epoch
        return keras_epochs(remaining_steps, self.steps_per_epoch or self.steps_per_pass)


def keras_schedule(rule, num_examples, epochs=None, steps_per_epoch=None):
    """The rule, resized to Keras's `epochs` x `steps_per_epoch` when given, as a KerasSchedule."""
    steps_per_pass = math.ceil(num_examples / rule.batch_size)
    if steps_per_epoch is not None:
        check_positive_integer(steps_per_epoch, "steps_per_epoch")
    if epochs is None:
        return KerasSchedule(rule, steps_per_pass, steps_per_epoch=steps_per_epoch)
    check_positive_integer(epochs, "epochs")
    steps_per_epoch = steps_per_epoch or steps_per_pass
    return KerasSchedule(rule.with_steps(epochs * steps_per_epoch), steps_per_pass, epochs,
                         steps_per_epoch)


def wants_sparse_labels(loss):
    """Whether a compiled Keras loss takes class ids rather than one-hot rows."""
    if isinstance(loss, str):
        return "sparse" in loss
    if isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        return True
    function = getattr(loss, "fn", loss)  # a LossFunctionWrapper's function, or the loss
    return getattr(function, "__name__", "").startswith("sparse")


def loss_and_metrics(model):
    """Fresh copies of a compiled model's loss and metrics, to compile a model around it."""
    config = keras.saving.deserialize_keras_object(model.get_compile_config())
    return {"loss": config["loss"], "metrics": config.get("metrics")}


def keras_epochs(total_steps, steps_per_pass):
    """(epochs, steps per epoch) covering `total_steps` in rounds of about one pass.

    Rounds are at least one pass over the data and at most `MAX_KERAS_EPOCHS`
    in number; the last round may be cut short (see `StopAfterSteps`).
    """
    steps_per_epoch = max(1, steps_per_pass, math.ceil(total_steps / MAX_KERAS_EPOCHS))
    steps_per_epoch = min(steps_per_epoch, total_steps)
    return math.ceil(total_steps / steps_per_epoch), steps_per_epoch


@contextlib.contextmanager
def on_strategy(classifier, strategy, precision):
    """Yields the model that trains `classifier` under `strategy` and `precision`, in scope.

    The classifier itself, or a replica built in the strategy's scope under
    the precision's dtype policy (see `distribute.replicate`) whose weights
    are copied back into the classifier when the block ends without error.
    """
    replicated = distribute.needs_replica(classifier, strategy, precision)
    model = distribute.replicate(classifier, strategy, precision) if replicated else classifier
    with strategy.scope():
        yield model
    if model is not classifier:
        classifier.set_weights(model.get_weights())


def train(model, rule, batches, schedule, run, *, checkpoint_dir=None, checkpoint_every=None,
          callbacks=None, verbose="auto", validation_data=None, **keras_arguments):
    """The one training loop of every rule; returns (History, start step).

    Fine-tuning (`fit`), pre-training (`pretrain`), the ResNet papers' recipes
    and detection's rule (`bitkeras experiment`, `bitkeras detect`) all train
    here, so each gets the same resume, NaN stop and checkpoints.

    Runs the compiled `model` through Keras's `fit` for the `rule.steps`
    optimizer steps not yet done: with a `checkpoint_dir` (held by this run
    while it trains), it resumes from the last checkpoint there (see
    `run_state`) and writes new ones; a NaN or Inf loss stops it, with the
    model put back at its last checkpoint or, without one, at the weights it
    started with. `batches(start_step)`: the training batches from that
    step on (the same ones an uninterrupted run sees then). `schedule`: a
    `KerasSchedule` laying the steps out as Keras epochs. `run`: what
    identifies the run in its checkpoints. Other keyword arguments go to
    Keras's `fit` (validation_steps, class_weight, ...).
    """
    with run_state.owned(checkpoint_dir):
        # A resume is announced whatever `verbose` says: training that silently starts
        # late would be a surprise.
        start_step, run_callbacks = run_state.begin(
            model, checkpoint_dir, checkpoint_every, run, rule.steps)
        remaining = rule.steps - start_step
        history = keras.callbacks.History()
        history.params = {}
        if remaining > 0:
            epochs, steps_per_epoch = schedule.keras_epochs(remaining)
            before = model.get_weights()
            try:
                with without_graph_rewrites(distribute.strategy_of(model)):
                    history = keras.Model.fit(
                        model, batches(start_step), validation_data=validation_data,
                        epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=verbose,
                        shuffle=False,
                        callbacks=[*run_callbacks, StopAfterSteps(remaining),
                                   *_estimate(model, remaining, verbose, validation_data),
                                   *(callbacks or [])],
                        **keras_arguments)
            except run_state.NonFiniteLossError as error:
                restored = run_state.restore_last_good(model, checkpoint_dir, before)
                raise run_state.NonFiniteLossError(f"{error} {restored}") from None
    return history, start_step


def _estimate(model, steps, verbose, validation_data):
    """The `DurationEstimate` of a run that prints (`verbose`), as a list of callbacks."""
    if not verbose:
        return []
    return [DurationEstimate(steps, on_cpu=not distribute.on_accelerator(
        distribute.strategy_of(model)), validates=validation_data is not None)]


GRAPH_REWRITES_OFF = ("constant_folding", "layout_optimizer", "remapping")
"""Grappler's passes `fit` skips on CPUs: the slowest on a train step, and no faster after."""


@contextlib.contextmanager
def without_graph_rewrites(strategy):
    """Within the block, this thread's TensorFlow functions skip three Grappler passes, on CPUs.

    Grappler, TensorFlow's graph optimizer, rewrites a function's graph the
    first time it is called. For the R50x1 train step (128x128, batch 16, on
    a 2-core Xeon) its constant folding, layout optimizer (which serves GPUs)
    and remapper (op fusions; BiT's convolutions have no bias to fuse) took
    0.7-0.8 s of the 6.2-6.6 s from calling `fit` to the end of its first
    step, and the steps after it ran no slower without them (0.77-0.82 s both
    ways, 2 runs each; ResNet50 v1, whose convolutions have biases the
    remapper fuses, 0.82-0.85 s both ways). Turning all of Grappler off saved
    0.2 s more but made each later step about 3% slower. Under GPUs and TPUs nothing changes.
    TensorFlow keeps function-call options per thread, so nothing outside
    this thread and this block is affected; a function first called in the
    block and called again after it is rewritten then, as usual.
    """
    if distribute.on_accelerator(strategy):
        yield
        return
    with compat.graph_rewrites_off(GRAPH_REWRITES_OFF):
        yield


class DurationEstimate(keras.callbacks.Callback):
    """Says how long a run will take on this machine, from its first steps, and as it goes.

    After `MEASURED_STEPS` steps past the first (which traces and compiles),
    prints the estimate for the rest of the `total_steps`; a run estimated
    over `LONG_SECONDS` on a CPU is warned about, with the number of steps that
    would take about `SHORT_SECONDS` instead. At each Keras epoch's end it
    prints the time left at the pace so far, while a minute or more is left: the
    steps' own pace (validation excluded) for the steps left, plus, once a
    validation pass has run, the mean pass for the passes left at the pace of
    one every so many epochs seen so far. The first estimate, before any
    validation, says that validation will add to it (`validates`).
    `clock`: seconds, monotonic (tests pass their own); `say`: where lines go.
    """

    MEASURED_STEPS = 5
    LONG_SECONDS = 3600
    SHORT_SECONDS = 600

    def __init__(self, total_steps, on_cpu=True, validates=False, clock=time.monotonic,
                 say=print):
        super().__init__()
        self.total_steps = total_steps
        self.on_cpu, self.validates = on_cpu, validates
        self.clock, self.say = clock, say
        self.steps = 0
        self.start = None  # when the first step had ended
        self.validating = 0.0  # seconds in validation passes since then, and their count
        self.validations = 0
        self._validation_start = None

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == 1:
            self.start = self.clock()
        elif self.steps == 1 + self.MEASURED_STEPS and self.total_steps > self.steps:
            per_step = (self.clock() - self.start) / self.MEASURED_STEPS
            left = per_step * (self.total_steps - self.steps)
            validation = ", validation not included" if self.validates else ""
            self.say(f"Estimated: {_duration(left)} for the other "
                     f"{self.total_steps - self.steps} of {self.total_steps} steps on this "
                     f"machine ({per_step:.2f} s a step over steps 2-{self.steps}"
                     f"{validation})")
            if self.on_cpu and left > self.LONG_SECONDS:
                short = max(1, int(self.SHORT_SECONDS / per_step))
                warnings.warn(
                    f"this run takes about {_duration(left)} on this CPU; for about "
                    f"{_duration(self.SHORT_SECONDS)}, pass hyperrule={{'steps': {short}}} to "
                    f"fit (--steps {short} to the CLI), or a smaller crop_size", UserWarning,
                    stacklevel=2)

    def on_test_begin(self, logs=None):  # Keras's fit runs validation as a test loop
        if self.start is not None:
            self._validation_start = self.clock()

    def on_test_end(self, logs=None):
        if self._validation_start is not None:
            self.validating += self.clock() - self._validation_start
            self.validations += 1
            self._validation_start = None

    def on_epoch_end(self, epoch, logs=None):
        if self.steps > 1 + self.MEASURED_STEPS and self.steps < self.total_steps:
            per_step = (self.clock() - self.start - self.validating) / (self.steps - 1)
            left = per_step * (self.total_steps - self.steps)
            epochs_left = max(0, (self.params or {}).get("epochs", epoch + 1) - epoch - 1)
            if self.validations:
                passes_left = self.validations / (epoch + 1) * epochs_left
                left += self.validating / self.validations * passes_left
            if left >= 60:  # the last minute needs no count-down
                self.say(f"Step {self.steps} of {self.total_steps}: about {_duration(left)} "
                         f"left")


def _duration(seconds):
    """Seconds as a person reads them: "40 s", "12 min", "3.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class StopAfterSteps(keras.callbacks.Callback):
    """Ends training after exactly `total_steps` batches, mid-epoch if need be."""

    def __init__(self, total_steps):
        super().__init__()
        self.total_steps = total_steps
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen >= self.total_steps:
            self.model.stop_training = True


def check_trainable(trainable, backbone=None):
    """Raises unless `trainable` names what fit can train (blocks need a native backbone)."""
    if trainable not in TRAINABLE_CHOICES:
        raise ValueError(f"trainable must be one of {list(TRAINABLE_CHOICES)}; got {trainable!r}")
    if trainable.startswith("block") and backbone is not None and not hasattr(
            backbone, "layers_before"):
        raise ValueError(
            f"trainable={trainable!r} freezes by block, which a TF-Hub module layer does "
            f"not expose: use 'all' or 'head', or convert the module "
            f"(from_hub(..., convert=True))"
        )
    if trainable.startswith("block") and backbone is not None:
        backbone.layers_before(int(trainable.removeprefix("block")))  # names the valid blocks


@contextlib.contextmanager
def trainable_from(classifier, trainable):
    """Freezes what `trainable` leaves out, restoring every flag on exit.

    "all": everything (BiT's full fine-tuning); "head": a linear probe on
    frozen features; "blockK": block K onwards, the final norm and the head.
    """
    check_trainable(trainable, classifier.backbone)
    backbone = classifier.backbone
    saved = [(layer, layer.trainable) for layer in backbone.layers]
    saved.append((backbone, backbone.trainable))
    try:
        if trainable == "head":
            backbone.trainable = False
        elif trainable.startswith("block"):
            first_block = int(trainable.removeprefix("block"))
            for name in backbone.layers_before(first_block):
                backbone.get_layer(name).trainable = False
        yield
    finally:
        for layer, flag in reversed(saved):
            layer.trainable = flag
