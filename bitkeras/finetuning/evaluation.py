"""What a fine-tuned classifier's `evaluate`, `predict` and `classify` run: its preprocessing
(the rule's crop size, ten-crop and multi-scale testing) through Keras's own loops.

`FineTuningClassifier`'s methods keep Keras's signatures and checks, and call these.
"""

import contextlib
import types

import keras

from bitkeras import compat
from bitkeras.finetuning import distribute, pipeline, sources, training
from bitkeras.finetuning.hyperrule import HyperRule
from bitkeras.models.inference import (
    MULTI_SCALE_SIDES,
    MultiScaleAverage,
    ViewAverage,
    check_test_time_augmentation,
)
from bitkeras.models import kernels
from bitkeras.models.layers import StandardizedConv2D
from bitkeras.models.preprocessing import ten_crop_views

EVAL_BATCH_SIZE = 32
"""Images per batch in `evaluate` and `predict` (views, with ten-crop)."""

STANDARDIZE_ONCE_MIN_BATCHES = 4
"""`predict` and `evaluate` standardize kernels once per call from this many batches on.

Standardizing R50x1's kernels outside the graph took about 0.1 s on a 2-core
Xeon, and saved about 0.025 s in each batch after (128x128, batch 16); both
scale with the kernels, not the images. A shorter call standardizes them
once only if no call has before, so that every call's graph is traced with
the copies and none is traced again for them.
"""


def evaluate(classifier, x, y, batch_size, verbose, steps, callbacks, return_dict,
             image_size, test_time_augmentation, on_bad_image):
    """Keras's `evaluate` of `classifier` on `x`, `y` (see `FineTuningClassifier.evaluate`)."""
    source = sources.open_source(sources.keras_data(x, y),
                                 class_names=classifier.class_names, on_bad_image=on_bad_image,
                                 default_split="test|validation")
    source.check_labels(classifier.num_classes)
    sparse_labels = training.wants_sparse_labels(classifier.loss)
    model, dataset = inference(classifier, source, test_time_augmentation, image_size,
                               batch_size, None if sparse_labels else classifier.num_classes)
    if padding_needed(model, steps, test_time_augmentation, scoring=True):
        return scored_padded(classifier, model, dataset,
                             batch_size_of(batch_size, test_time_augmentation),
                             verbose, callbacks, return_dict)
    if model is not classifier:
        model.compile(**training.loss_and_metrics(classifier))
        callbacks = classifiers_callbacks(classifier, callbacks, verbose, steps, dataset)
    with standardized_once(classifier, model, dataset, steps):
        return keras.Model.evaluate(model, dataset, verbose=verbose, steps=steps,
                                    callbacks=callbacks, return_dict=return_dict)


def padding_needed(model, steps, test_time_augmentation=None, scoring=False):
    """Whether `model`'s batches are filled up to one size (see `padded`): for whole
    calls (no `steps`), not multi-scale (one image a batch), where XLA compiles a
    program per batch shape; when `scoring` (`evaluate`), as `scores_filled` says."""
    if steps is not None or test_time_augmentation == "multi_scale":
        return False
    jit_compile = getattr(model, "jit_compile", False)
    if scoring:
        return scores_filled(distribute.strategy_of(model), jit_compile)
    return compiled_per_batch_shape(jit_compile)


def compiled_per_batch_shape(jit_compile):
    """Whether inference compiles a program per batch shape: in the XLA clusters
    (`kernels.compiled_per_shape`), or with `jit_compile=True`."""
    return kernels.compiled_per_shape() or jit_compile is True


def scores_filled(strategy, jit_compile):
    """Whether `evaluate` and fit's validation score batches filled up to one size
    (see `RealRows`): where inference compiles per batch shape, under the TensorFlow
    backend and no distribution strategy (elsewhere each new shape compiles once)."""
    return (keras.backend.backend() == "tensorflow" and distribute.is_default(strategy)
            and compiled_per_batch_shape(jit_compile))


def scored_padded(classifier, model, dataset, batch_size, verbose, callbacks, return_dict):
    """Keras's `evaluate` of `model` (`classifier` or a view of it) on `dataset`'s
    (images, labels) batches, each filled up to `batch_size` images (`with_real_rows`)."""
    view = real_rows(classifier, model)
    with standardized_once(classifier, view, dataset, None):
        return score_real_rows(classifier, with_real_rows(dataset, batch_size), None,
                               verbose, callbacks, return_dict, view)


def score_real_rows(classifier, batches, steps, verbose, callbacks, return_dict, view=None):
    """Keras's `evaluate` of a `RealRows` `view` (default: of `classifier` itself,
    `real_rows`) on ((rows, filled images), labels) `batches`."""
    view = real_rows(classifier, classifier) if view is None else view
    return keras.Model.evaluate(
        view, batches, verbose=verbose, steps=steps, return_dict=return_dict,
        callbacks=classifiers_callbacks(classifier, callbacks, verbose, steps, batches))


def classifiers_callbacks(classifier, callbacks, verbose, steps, batches):
    """`callbacks` as Keras's `evaluate` sets them up, but with `classifier` as their
    model where a view of it runs the loop (a `CallbackList` stays as it is)."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        return callbacks
    batch_count = int(batches.cardinality())
    return keras.callbacks.CallbackList(
        callbacks, add_progbar=verbose != 0, verbose=verbose, epochs=1,
        steps=steps or (batch_count if batch_count >= 0 else None), model=classifier)


def holds_real_rows(batches):
    """Whether `batches` (fit's validation) are filled, their real rows marked (`with_real_rows`)."""
    spec = getattr(batches, "element_spec", None)
    return isinstance(spec, tuple) and isinstance(spec[0], tuple)


class RealRows(keras.Model):
    """Inputs (rows, batch) -> `model`'s outputs for the batch's first `len(rows)` rows.

    Scores batches filled up to one size (see `with_real_rows`): `model` runs
    on the whole batch, one shape for XLA, and the loss, the metrics and
    Keras's count of examples (the length of the first input) see the real
    rows alone. With `model.jit_compile`, the model's call is one XLA program;
    the slicing after it, whose size changes, is not.
    """

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.scored = model
        self.compiled_forward = None
        if getattr(model, "jit_compile", False) is True:
            import tensorflow as tf

            self.compiled_forward = tf.function(
                lambda batch: model(batch, training=False), jit_compile=True)

    def call(self, inputs, training=False):
        rows, batch = inputs
        outputs = (self.compiled_forward(batch) if self.compiled_forward is not None
                   else self.scored(batch, training=training))
        return outputs[:keras.ops.shape(rows)[0]]


def real_rows(classifier, model):
    """A `RealRows` of `model`, compiled with `classifier`'s loss and metrics; kept on the
    classifier for `model` itself while its compilation holds, so that later calls
    trace nothing anew."""
    compile_config = classifier.get_compile_config()
    kept = getattr(classifier, "_bitkeras_real_rows", None)
    key = (compile_config, getattr(model, "jit_compile", False))
    if model is classifier and kept is not None and kept.key == key:
        return kept.view
    view = RealRows(model)
    view.compile(**training.loss_and_metrics(classifier), jit_compile=False,
                 run_eagerly=classifier.run_eagerly)
    if model is classifier:
        # A plain object: Keras tracks no layer inside it, so nothing is saved with it.
        classifier._bitkeras_real_rows = types.SimpleNamespace(key=key, view=view)
    return view



def weights_resolution(classifier):
    """The side the classifier's backbone weights were trained at, or None where unknown."""
    return getattr(classifier.backbone, "weights_resolution", None)

def predict(classifier, x, batch_size, verbose, steps, callbacks, image_size,
            test_time_augmentation):
    """Keras's `predict` of `classifier` on images `x` (see `FineTuningClassifier.predict`).

    No call after the first traces or compiles again for another number of
    images: see `any_batch_size`, and `padded` where XLA compiles per shape.
    """
    source = sources.open_images(x)
    model, dataset = inference(classifier, source, test_time_augmentation, image_size,
                               batch_size)
    images = dataset.map(lambda images, labels: images)
    pad = padding_needed(model, steps, test_time_augmentation)
    if pad:
        images = padded(images, batch_size_of(batch_size, test_time_augmentation))
    with standardized_once(classifier, model, dataset, steps):
        any_batch_size(model, images)
        outputs = keras.Model.predict(model, images, verbose=verbose, steps=steps,
                                      callbacks=callbacks)
    return outputs[:source.num_examples] if pad else outputs


def any_batch_size(model, batches):
    """Traces `model`'s predict function, before its first call, for `batches` of any size.

    Keras's `predict` hands its function each batch as a tensor of that
    batch's shape, so a first trace fits one batch size only, and the first
    call that meets another (a partial last batch, a call with another number
    of images) traces the whole model again. Traced here with the batch size
    unknown, the function serves every size from then on; images of another
    size still trace once per size. Only under the TensorFlow backend, one step
    an execution and no distribution strategy; elsewhere Keras's own tracing.
    """
    if (keras.backend.backend() != "tensorflow" or model.run_eagerly
            or model.steps_per_execution != 1
            or not distribute.is_default(distribute.strategy_of(model))):
        return
    import tensorflow as tf

    model.make_predict_function()  # Keras's, kept as `predict_function` (made if missing)
    function = model.predict_function
    if function.experimental_get_tracing_count() == 0:
        spec = tf.nest.map_structure(lambda spec: tf.TensorSpec([None, *spec.shape[1:]],
                                                                spec.dtype),
                                     batches.element_spec)
        function.get_concrete_function([spec])


def padded(batches, batch_size):
    """`batches` each filled up to `batch_size` rows with zeros (after the real ones).

    Where XLA compiles a program per shape (the inference clusters without
    bitkeras's C++ ops, or `jit_compile=True`), a partial last batch would
    compile anew; filled up, every batch has one shape. Every row is computed
    on its own at inference (GroupNorm per image, BatchNorm from its moving
    statistics), so the filling changes no real row; the caller drops its rows.
    """
    return batches.map(lambda images: _filled(images, batch_size))


def with_real_rows(batches, batch_size):
    """(images, labels) `batches` -> ((rows, images filled up to `batch_size`), labels):
    `rows` the real rows' indices, labels as they were (see `RealRows`)."""
    import tensorflow as tf

    return batches.map(lambda images, labels: (
        (tf.range(tf.shape(images)[0]), _filled(images, batch_size)), labels))


def _filled(images, batch_size):
    import tensorflow as tf

    missing = batch_size - tf.shape(images)[0]
    filled = tf.pad(images, [[0, missing]] + [[0, 0]] * (images.shape.rank - 1))
    return tf.ensure_shape(filled, [batch_size, *images.shape[1:]])


def batch_size_of(batch_size, test_time_augmentation):
    """Images a batch of `predict`/`evaluate`: `batch_size` views (default `EVAL_BATCH_SIZE`),
    ten to an image with ten-crop."""
    views = 10 if test_time_augmentation == "ten_crop" else 1
    return max(1, (batch_size or EVAL_BATCH_SIZE) // views)


@contextlib.contextmanager
def standardized_once(classifier, model, dataset, steps):
    """Within the block, the inference of `model` (`classifier`, or a view of it) standardizes
    each kernel once, not per batch.

    See `kernels.standardized_once`: the weights must not change within
    the block. Calls shorter than `STANDARDIZE_ONCE_MIN_BATCHES` batches
    standardize in the graph, unless no copies exist yet: then they make
    them, so that no later call traces its function again to read them. Not
    under a distribution strategy (the copies would be one device's variables).
    """
    batches = int(dataset.cardinality())  # negative: unknown or endless
    if steps is not None:
        batches = steps if batches < 0 else min(batches, steps)
    if not distribute.is_default(distribute.strategy_of(classifier)):
        yield
        return
    convolutions = [layer for layer in compat.all_layers(classifier)
                    if isinstance(layer, StandardizedConv2D)]
    refresh = not 0 <= batches < STANDARDIZE_ONCE_MIN_BATCHES
    with kernels.standardized_once(convolutions, refresh=refresh) as new:
        if new:  # functions traced before the copies existed do not read them
            model.predict_function = model.test_function = None
        yield


def inference(classifier, source, test_time_augmentation, image_size, batch_size,
              one_hot_classes=None):
    """(the model to run, batches of (images, labels)) for `source`, preprocessed as
    `classifier` was fine-tuned, with `test_time_augmentation` (None, "ten_crop", "multi_scale")."""
    check_test_time_augmentation(test_time_augmentation)
    if test_time_augmentation == "multi_scale" and image_size is not None:
        raise ValueError("image_size does not apply to test_time_augmentation="
                         "'multi_scale', which sees each image whole at several "
                         "scales; leave image_size out")
    rule = classifier.hyperrule or HyperRule.for_dataset(
        source.num_examples, source.image_size, resolution=weights_resolution(classifier))
    crop_size = image_size or classifier.image_size or rule.crop_size
    if test_time_augmentation == "multi_scale":
        # ResNet's sides are for 224-pixel training crops: scaled to this classifier's.
        sides = [max(1, round(side * crop_size / 224)) for side in MULTI_SCALE_SIDES]
        # Each image's views at every scale; sizes differ, so one image a batch.
        dataset = pipeline.eval_dataset(
            source, 1, lambda image: pipeline.multi_scale_views(image, sides),
            one_hot_classes=one_hot_classes)
        return MultiScaleAverage(classifier), dataset
    ten_crop = test_time_augmentation == "ten_crop"
    resize_size = crop_size
    if ten_crop:
        # Resized as the rule resizes for its crops (160 for 128, 448 for 384, ...).
        resize_size = max(crop_size, round(crop_size * rule.resize_size / rule.crop_size))
    dataset = pipeline.eval_dataset(
        source, batch_size_of(batch_size, test_time_augmentation),
        converter(classifier, resize_size),
        one_hot_classes=one_hot_classes,
        views=(lambda image: ten_crop_views(image, crop_size)) if ten_crop else None)
    return (ViewAverage(classifier) if ten_crop else classifier), dataset


def converter(classifier, image_size):
    """`classifier`'s image converter, resizing to an `image_size` square; without a
    preprocessor (keras-hub's `preprocessor=None`), images as they come, as floats."""
    if classifier.preprocessor is None:
        return pipeline.float_image
    own = classifier.preprocessor.image_converter
    return type(own).from_config({**own.get_config(), "image_size": (image_size, image_size)})
