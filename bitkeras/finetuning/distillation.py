"""Knowledge distillation, "patient and consistent" (Beyer et al., CVPR 2022), in the one loop.

`distill(teacher, student, x)` trains `student` to match `teacher`'s predicted
distribution (`DistillationLoss`: the KL divergence at a temperature) on the
training pipeline's augmented images, through `training.train`, so it has
`fit`'s resume, NaN stop, checkpoints, strategies, precisions and progress.
How the two networks see the images is the rule's `mode`
(`bitkeras.finetuning.distill_recipes.MODES`):

- consistent teaching and function matching: one batch, one view; the
  teacher runs on it in the student's train step (one teacher forward pass
  per student step, no pass over the data before);
- independent noise: the pipeline yields two views of each example (same
  example, own crop, flip and MixUp), the teacher runs on the second;
- fixed teacher: the teacher runs once per image on its central view before
  training (`teacher_targets`); the pipeline carries its predictions as the
  targets, and the train step runs only the student.

`Distiller` is the Keras model that trains: its `call` is the student's, its
`compute_loss` runs the teacher; Keras's own train step does the rest, under
every backend. The student comes out an ordinary classifier.
"""

import keras
import numpy as np
import tensorflow as tf

from bitkeras.checks import check_seed
from bitkeras.finetuning import distribute, evaluation, fitting, pipeline, sources, training
from bitkeras.finetuning.distill_recipes import MODES, DistillationRule

INDEPENDENT_VIEW_SEED = 7919
"""Added to the seed for the teacher's own augmentation in independent-noise mode."""


@keras.saving.register_keras_serializable(package="bitkeras")
class DistillationLoss(keras.losses.Loss):
    """`temperature**2 * KL(teacher || student)` per example: targets are probabilities.

    `y_true`: the teacher's distribution at the temperature (rows summing to
    1); `y_pred`: the student's logits, divided by `temperature` before the
    softmax. Computed in float32 whatever the student's precision. Zero, with
    zero gradient, where the two distributions are equal.
    """

    def __init__(self, temperature=1.0, name="distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = float(temperature)

    def call(self, y_true, y_pred):
        targets = keras.ops.cast(y_true, "float32")
        log_student = keras.ops.log_softmax(
            keras.ops.cast(y_pred, "float32") / self.temperature, axis=-1)
        safe = keras.ops.where(targets > 0, targets, 1.0)
        terms = keras.ops.where(targets > 0, targets * (keras.ops.log(safe) - log_student), 0.0)
        return self.temperature ** 2 * keras.ops.sum(terms, axis=-1)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


class Distiller(keras.Model):
    """Trains `student` on `teacher`'s predictions: the model `distill` runs through Keras's fit.

    `call` is the student's (on the student's view where inputs are
    `(student_view, teacher_view)`, as in independent-noise training);
    `compute_loss` replaces the targets with the teacher's distribution at
    `temperature` (the teacher running frozen, in inference mode), except in
    fixed-teacher training, whose targets already are (validation runs the
    teacher in every mode). Compile it with a `DistillationLoss`.
    Logs "loss" and "agreement", the share of examples on which the
    student's top class is the teacher's.
    """

    def __init__(self, teacher, student, mode="function_matching", temperature=1.0, **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}; got {mode!r}")
        self.teacher, self.student = teacher, student
        self.teacher.trainable = False
        self.mode, self.temperature = mode, float(temperature)
        self.agreement = keras.metrics.Mean(name="agreement")
        # Nothing of its own to build: its weights are the two networks'.
        self.built = teacher.built and student.built

    def call(self, inputs, training=None):
        return self.student(_views(inputs)[0], training=training)

    def teacher_distribution(self, inputs, targets, training=False):
        """The teacher's probabilities at the temperature for a batch; a fixed teacher's
        training targets are those already."""
        if self.mode == "fixed_teacher" and training:
            return keras.ops.cast(targets, "float32")
        teacher_view = _views(inputs)[1]
        logits = keras.ops.cast(self.teacher(teacher_view, training=False), "float32")
        return keras.ops.stop_gradient(keras.ops.softmax(logits / self.temperature, axis=-1))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        targets = self.teacher_distribution(x, y, training)
        agree = keras.ops.argmax(targets, axis=-1) == keras.ops.argmax(y_pred, axis=-1)
        self.agreement.update_state(keras.ops.cast(agree, "float32"))
        return super().compute_loss(x=x, y=targets, y_pred=y_pred, sample_weight=sample_weight,
                                    training=training)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return self.get_metrics_result()


def _views(inputs):
    """(the student's view, the teacher's) of a batch: two in independent-noise training,
    else one image batch for both."""
    if isinstance(inputs, (tuple, list)):
        return inputs[0], inputs[1]
    return inputs, inputs


def teacher_targets(teacher, source, crop_size, temperature, batch_size=256):
    """The teacher's distributions (N, classes) at `temperature` on each image's central view.

    The fixed teacher's targets: one teacher pass per image, the image
    resized to `crop_size` as evaluation does, in the source's order.
    """
    dataset = pipeline.eval_dataset(source, batch_size, _converter(teacher, crop_size))
    logits = keras.Model.predict(teacher, dataset.map(lambda images, labels: images), verbose=0)
    return keras.ops.convert_to_numpy(
        keras.ops.softmax(keras.ops.convert_to_tensor(logits, "float32") / temperature, -1))


def _converter(model, side):
    """How `model` takes an image at `side` pixels: a classifier's own image converter, else
    a square resize, as evaluation does."""
    if hasattr(model, "preprocessor"):
        return evaluation.converter(model, side)
    return lambda image: pipeline.resize_square(pipeline.float_image(image), side)


def distill(teacher, student, x, y=None, *, hyperrule=None, mode=None, batch_size=None,
            epochs=None, steps_per_epoch=None, seed=0, shuffle=True, class_names=None,
            on_bad_image="warn", validation_data=None, callbacks=None, verbose="auto",
            strategy="auto", precision="float32", checkpoint_dir=None, checkpoint_every=None,
            jit_compile="auto"):
    """Trains `student` to predict as `teacher` does on `x`; returns Keras's `History`.

    `teacher`: any Keras model from images (float32 in [0, 1]) to logits, e.g.
    a bitkeras classifier (`from_preset`, `load_model`, `from_hub`); it is not
    changed. `student`: a bitkeras classifier (any family network; one without
    a head gets the teacher's classes), or any Keras model from images to
    logits over the teacher's classes. `x`, `y`: data in any form `fit`
    takes; labels are optional (an array of images alone), since the teacher
    gives the targets.

    The `DistillationRule` (printed, and kept in `history.hyperrule`) is the
    HyperRule for the data in `mode` ("function_matching" by default: see
    `distill_recipes.MODES`), with cosine decay; `hyperrule` changes it as
    `fit`'s does (a dict of fields: "temperature", "mixup_alpha", "steps",
    "optimizer", ...) or replaces it (a DistillationRule, e.g. a
    `PaperRecipe`'s). `batch_size`, `epochs`, `steps_per_epoch`, `seed`,
    `shuffle`, `class_names`, `on_bad_image`, `validation_data` (the
    distillation loss and agreement on it), `callbacks`, `verbose`, `strategy`,
    `precision`, `checkpoint_dir` and `checkpoint_every` as in `fit` (the
    checkpoints hold the teacher's weights too). `jit_compile`: XLA for the
    step ("auto": as `compile`'s default).
    """
    check_seed(seed, "distill(seed=...)")
    for model, name in ((teacher, "teacher"), (student, "student")):
        if not isinstance(model, keras.Model):
            raise TypeError(f"distill's {name} must be a Keras model (a bitkeras classifier "
                            f"or any model from images to logits); got {type(model).__name__}")
    if y is None and isinstance(x, np.ndarray):
        y = np.zeros(len(x), np.int64)  # unlabelled images: the teacher gives the targets
    source, validation_data = fitting.open_data(x, y, 0.0, validation_data, class_names,
                                                on_bad_image, None, seed)
    num_classes = _adopt_teacher_classes(teacher, student)
    rule = training.resolve_rule(
        source.num_examples, source.image_size, hyperrule, batch_size,
        evaluation.weights_resolution(student) if hasattr(student, "backbone") else None,
        kind=DistillationRule, mode=mode)
    passes = training.keras_schedule(rule, source.num_examples, epochs, steps_per_epoch)
    rule = passes.rule
    strategy = distribute.training_strategy(student, strategy)
    training.check_batching(rule, source.num_examples, 1, strategy.num_replicas_in_sync)
    if verbose:
        print(rule.describe(source.num_examples))
    batches = _batches(teacher, source, rule, num_classes, seed, shuffle)
    validation = None if validation_data is None else pipeline.eval_dataset(
        sources.open_source(validation_data, on_bad_image=on_bad_image,
                            default_split="validation|test"),
        rule.batch_size, _converter(student, rule.crop_size), one_hot_classes=num_classes)
    run = {"rule": rule.get_config(), "seed": seed, "examples": source.num_examples,
           "teacher": [teacher.name, teacher.count_params()], "student": student.name,
           "precision": precision, **({"shuffle": False} if not shuffle else {})}
    if checkpoint_dir is not None:
        run["data"] = source.fingerprint()
    with training.on_strategy(student, strategy, precision) as model:
        distiller = Distiller(_on_strategy(teacher, strategy), model, rule.mode,
                              rule.temperature, name=f"{student.name}_distiller")
        distiller.compile(optimizer=training.make_optimizer(rule),
                          loss=DistillationLoss(rule.temperature),
                          jit_compile=distribute.jit_compile_for(jit_compile, strategy))
        history, start_step = training.train(
            distiller, rule, batches, passes, run, checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every, callbacks=callbacks, verbose=verbose,
            validation_data=validation)
    if getattr(student, "preprocessor", None) is not None:
        student.preprocessor.image_converter.image_size = (rule.crop_size, rule.crop_size)
    if hasattr(student, "hyperrule"):
        student.hyperrule = rule
    return fitting.annotated(history, rule, start_step)


def _adopt_teacher_classes(teacher, student):
    """The teacher's number of classes; a student without a head gets that head."""
    num_classes = int(teacher.output_shape[-1])
    if getattr(student, "head", True) is None:
        student.add_head(num_classes)
    elif int(student.output_shape[-1]) != num_classes:
        raise ValueError(
            f"the student {student.name} predicts {student.output_shape[-1]} classes and the "
            f"teacher {teacher.name} {num_classes}: give a student without a head (it gets "
            f"the teacher's), or one with {num_classes} outputs")
    if getattr(student, "class_names", True) is None:
        student.class_names = getattr(teacher, "class_names", None)
    return num_classes


def _on_strategy(teacher, strategy):
    """The teacher as the strategy needs it: itself, or a copy built in the strategy's scope."""
    if not distribute.needs_replica(teacher, strategy, "float32"):
        return teacher
    return distribute.replicate(teacher, strategy, "float32")


def _batches(teacher, source, rule, num_classes, seed, shuffle):
    """`start_step -> dataset` of a distillation run, shaped for its mode."""
    targets = num_classes
    if rule.mode == "fixed_teacher":
        targets = teacher_targets(teacher, source, rule.crop_size, rule.temperature)

    def from_step(start_step):
        train = pipeline.train_dataset(source, rule, targets, rule.batch_size, seed,
                                       start_step=start_step, shuffle=shuffle)
        if rule.mode != "independent_noise":
            return train
        teacher_views = pipeline.train_dataset(
            source, rule, targets, rule.batch_size, seed, start_step=start_step,
            shuffle=shuffle, view_seed=seed + INDEPENDENT_VIEW_SEED)
        return tf.data.Dataset.zip(train, teacher_views).map(
            pipeline.plain(lambda first, second: ((first[0], second[0]), first[1])))

    return from_step
