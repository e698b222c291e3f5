"""HeadClassifier: a backbone and BiT's dense head, images in [0, 1] -> logits.

The network of a BiT classifier as a keras-hub `ImageClassifier`, with its
preprocessor; `bitkeras.BiTClassifier`, a subclass, adds fine-tuning with the
BiT-HyperRule, BiT's weights and export.
"""

import warnings

import keras
import keras_hub

from bitkeras import compat
from bitkeras.checks import check_positive_integer
from bitkeras.files import AtomicSaveMixin
from bitkeras.models.backbone import ResNetV2Backbone
from bitkeras.models.images import standardize_images
from bitkeras.models.inference import Predictions
from bitkeras.models.preprocessing import BiTImageClassifierPreprocessor


@keras.saving.register_keras_serializable(package="bitkeras")
class HeadClassifier(AtomicSaveMixin, keras_hub.models.ImageClassifier):
    """A backbone and a dense head returning logits, shape (batch, num_classes).

    The head is initialised to zeros (weights and bias), as BiT fine-tuning
    starts, and computes in float32 under any dtype policy. Without
    `num_classes` (or `class_names`) the classifier has no head until
    `add_head` is called (fine-tuning calls it from the data). `backbone`: a
    `ResNetV2Backbone`, or any model with a `feature_channels` attribute that
    maps images to pooled features. `preprocessor`: a
    `BiTImageClassifierPreprocessor` (by default one that leaves the size of
    images alone), which keras-hub's `predict` and `evaluate` run on the data.
    `compile`: keras-hub's, compile with the task's defaults now (True) or leave
    compiling to the caller (False).

    A functional Keras model, made as keras-hub makes its tasks (`Task.__init__`
    on images -> backbone -> head); a head added later joins that graph.

    >>> backbone = ResNetV2Backbone(block_units=(1, 1, 1, 1), width_factor=0.5)
    >>> classifier = HeadClassifier(backbone, class_names=["cat", "dog"])
    >>> logits = classifier(np.zeros((3, 32, 32, 3), "uint8"))
    >>> tuple(logits.shape), float(np.abs(logits).max())
    ((3, 2), 0.0)
    """

    backbone_cls = ResNetV2Backbone
    preprocessor_cls = BiTImageClassifierPreprocessor

    def __init__(self, backbone, num_classes=None, class_names=None, preprocessor=None,
                 compile=True, **kwargs):
        if class_names is not None:
            class_names = tuple(str(name) for name in class_names)
            if num_classes is None:
                num_classes = len(class_names)
            elif len(class_names) != num_classes:
                raise ValueError(
                    f"class_names has {len(class_names)} names for num_classes={num_classes}"
                )
        if num_classes is not None:
            check_positive_integer(num_classes, "num_classes")
        # keras-hub's path for a task: its parts first, then the functional graph through
        # Task.__init__ (which compiles with the task's defaults unless compile=False).
        # Not ImageClassifier's own graph: it pools the backbone's output, which BiT's
        # backbones have pooled already, and it cannot wait for the data to size the head.
        self.backbone = backbone
        self.preprocessor = preprocessor or BiTImageClassifierPreprocessor()
        head = None if num_classes is None else _head(num_classes)
        images = keras.Input(shape=(None, None, 3), name="images")
        features = backbone(images)
        keras_hub.models.Task.__init__(
            self, inputs=images, outputs=features if head is None else head(features),
            compile=compile, **kwargs)
        self.head = head
        self.num_classes = num_classes
        self.class_names = class_names

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """keras-hub's `compile`, with a loss that takes the logits this model returns
        (`logits_loss`: a cross-entropy named by string is taken on logits, with a warning;
        a loss object on probabilities is refused, naming the fix)."""
        super().compile(optimizer, logits_loss(loss, self.name), metrics=metrics, **kwargs)

    def add_head(self, num_classes):
        """Adds the zero-initialised head of `num_classes` outputs (once), on the features."""
        if self.head is not None:
            raise ValueError(f"{self.name} already has a {self.num_classes}-class head")
        check_positive_integer(num_classes, "num_classes")
        self.head = _head(num_classes)
        compat.rebuild_functional(self, self.head(self.outputs[0]))
        self.num_classes = num_classes

    def require_head(self):
        """Raises a ValueError that says what to do unless the classifier has its head."""
        if self.head is None:
            raise ValueError(f"{self.name} has no head yet: fit it first, or pass num_classes")

    @property
    def image_size(self):
        """The square side the preprocessor resizes images to, or None (sizes kept, or no
        preprocessor: keras-hub's `preprocessor=None`, images taken as they come)."""
        if self.preprocessor is None:
            return None
        size = self.preprocessor.image_converter.image_size
        return None if size is None else size[0]

    def call(self, images, training=None, mask=None):
        self.require_head()
        images = standardize_images(images, self.name)
        return super().call(images, training=training, mask=mask)

    def classify(self, x, batch_size=None, verbose="auto", **predict_arguments):
        """Class ids, probabilities and class names for images: a `Predictions`.

        Takes what `predict` takes. Returns class_ids (N,), probabilities
        (N, classes) and class_names (N names; class ids as strings for a
        classifier without names).
        """
        logits = self.predict(x, batch_size=batch_size, verbose=verbose, **predict_arguments)
        return Predictions.from_logits(logits, self.names())

    def names(self):
        """The class names, or the class ids as strings for a classifier without names."""
        self.require_head()
        return self.class_names or tuple(str(i) for i in range(self.num_classes))

    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "class_names": None if self.class_names is None else list(self.class_names),
            "preprocessor": (None if self.preprocessor is None
                             else keras.saving.serialize_keras_object(self.preprocessor)),
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("backbone", "preprocessor"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _head(num_classes):
    """BiT's head: a Dense of `num_classes` logits, zero-initialised, computed in float32."""
    return keras.layers.Dense(num_classes, kernel_initializer="zeros", bias_initializer="zeros",
                              name="head", dtype="float32")


_ON_LOGITS = {
    "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
    "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
    "binary_crossentropy": keras.losses.BinaryCrossentropy,
    "categorical_focal_crossentropy": keras.losses.CategoricalFocalCrossentropy,
    "binary_focal_crossentropy": keras.losses.BinaryFocalCrossentropy,
}
"""Keras's cross-entropies, by their functions' names, and the classes that take logits."""


def logits_loss(loss, model_name):
    """`loss` for a model that returns logits: a cross-entropy named by string as its class
    with `from_logits=True` (warned about once), other losses as they are.

    A Keras loss on probabilities given logits trains on clipped values (a zero head's
    logits of 0 give every class the loss of probability 0, and no gradient): a loss object
    or function with `from_logits=False` is refused with the fix.
    """
    if isinstance(loss, str) and loss != "auto":
        function = keras.losses.get(loss)
        name = getattr(function, "__name__", type(function).__name__)
        key = _snake(name)
        if key in _ON_LOGITS:
            warnings.warn(
                f"{model_name} returns logits: loss={loss!r} is compiled as "
                f"{_ON_LOGITS[key].__name__}(from_logits=True); pass that object to say so",
                UserWarning, stacklevel=3)
            return _ON_LOGITS[key](from_logits=True)
        return loss
    on_probabilities = (
        (isinstance(loss, keras.losses.Loss) and getattr(loss, "from_logits", None) is False)
        or (callable(loss) and getattr(loss, "__name__", None) in _ON_LOGITS))
    if on_probabilities:
        kind = type(loss).__name__ if isinstance(loss, keras.losses.Loss) else (
            _ON_LOGITS[loss.__name__].__name__)
        raise ValueError(
            f"{model_name} returns logits, and this {kind} takes probabilities "
            f"(from_logits=False), which would train on clipped values: compile with "
            f"{kind}(from_logits=True)")
    return loss


def _snake(name):
    """A Keras loss class name as its function's name ("SparseCategoricalCrossentropy" ->
    "sparse_categorical_crossentropy")."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")

