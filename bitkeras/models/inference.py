"""Inference around a classifier: test-time augmentation and named predictions.

`ViewAverage` runs a classifier on several views of each image (ten-crop)
and `MultiScaleAverage` on the whole image at several scales, inside Keras's own
`predict`/`evaluate` loops; `Predictions` is what
`BiTClassifier.classify` returns.
"""

import dataclasses

import keras
import numpy as np
from keras import ops

TEST_TIME_AUGMENTATIONS = (None, "ten_crop", "multi_scale")

MULTI_SCALE_SIDES = (224, 256, 384, 480, 640)
"""The shorter sides of ResNet's fully-convolutional multi-scale testing (He et al., 2015)."""


def check_test_time_augmentation(test_time_augmentation):
    if test_time_augmentation not in TEST_TIME_AUGMENTATIONS:
        raise ValueError(
            f"test_time_augmentation must be one of {list(TEST_TIME_AUGMENTATIONS)}; "
            f"got {test_time_augmentation!r}"
        )


class ViewAverage(keras.Model):
    """Views (batch, views, height, width, 3) -> log of the mean probability over views.

    The output is logits in the sense every softmax loss and metric uses:
    `softmax(output)` is the average of the classifier's probabilities over
    the views, so losses `from_logits=True` and argmax metrics apply unchanged.
    """

    def __init__(self, classifier, **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier

    def call(self, views, training=False):
        shape = ops.shape(views)
        logits = self.classifier(ops.reshape(views, (-1, shape[2], shape[3], shape[4])),
                                 training=training)
        logits = ops.reshape(ops.cast(logits, "float32"), (shape[0], shape[1], -1))
        # log(mean(softmax)) over views, computed stably in log space.
        log_probabilities = ops.log_softmax(logits, axis=-1)
        return ops.logsumexp(log_probabilities, axis=1) - ops.log(
            ops.cast(shape[1], "float32"))


class MultiScaleAverage(keras.Model):
    """Views of one image at several scales -> log of the mean probability over them.

    ResNet's fully-convolutional multi-scale testing: the whole image, its
    aspect kept, resized so its shorter side is each of `MULTI_SCALE_SIDES`
    (`bitkeras.finetuning.pipeline.multi_scale_views` makes the views in
    tf.data), each classified at its own size (BiT's networks pool globally),
    and the probabilities averaged. Takes the views as a dict of batches, one
    per scale; outputs logits in the sense of `ViewAverage`.
    """

    def __init__(self, classifier, **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier

    def call(self, views, training=False):
        log_probabilities = [
            ops.log_softmax(ops.cast(self.classifier(view, training=training), "float32"),
                            axis=-1)
            for view in views.values()]
        return ops.logsumexp(ops.stack(log_probabilities, axis=1), axis=1) - np.log(
            len(log_probabilities)).astype("float32")


@dataclasses.dataclass(frozen=True)
class Predictions:
    """What `BiTClassifier.classify` returns, one entry per image."""

    class_ids: np.ndarray
    """Most probable class of each image, shape (N,)."""
    probabilities: np.ndarray
    """Softmax probabilities, shape (N, num_classes), averaged over views with ten-crop."""
    class_names: tuple
    """Name of each image's most probable class."""

    @classmethod
    def from_logits(cls, logits, class_names):
        probabilities = ops.convert_to_numpy(ops.softmax(ops.convert_to_tensor(logits), -1))
        class_ids = np.argmax(probabilities, axis=1)
        return cls(class_ids, probabilities, tuple(class_names[i] for i in class_ids))
