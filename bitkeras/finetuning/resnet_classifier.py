"""ResNetClassifier: a ResNet of the family with a head, fine-tuned as BiT is.

The same calls as `bitkeras.BiTClassifier` (Keras's `fit`, `evaluate`,
`predict`, HyperRule fine-tuning, ten-crop and multi-scale testing,
`classify`, TF-Hub style `export`, keras-hub `save_to_preset`), on a
`bitkeras.ResNetBackbone`.
"""

import keras

from bitkeras.finetuning.classifier import FineTuningClassifier
from bitkeras.io import presets
from bitkeras.io.pretrained import ExportableClassifier
from bitkeras.io.resnet_weights import ResNetBackbone, family_config, load_application_weights
from bitkeras.models.resnet_family import get_family_preset

APPLICATION_IMAGE_SIZE = 224
"""The resolution keras.applications' ImageNet heads were trained at."""


@keras.saving.register_keras_serializable(package="bitkeras")
class ResNetClassifier(ExportableClassifier, FineTuningClassifier):
    """A ResNet-family backbone and a dense head returning logits, shape (batch, num_classes).

    See `BiTClassifier` for the calls; the head is zero-initialised, and a
    classifier without `num_classes` gets its head from the data in `fit`.

    >>> classifier = ResNetClassifier.from_preset("ResNet20-CIFAR", num_classes=10)
    >>> classifier.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0).shape
    (2, 10)
    """

    backbone_cls = ResNetBackbone

    def __init__(self, backbone, num_classes=None, class_names=None, hyperrule=None,
                 preprocessor=None, **kwargs):
        super().__init__(backbone, num_classes, class_names, hyperrule, preprocessor, **kwargs)

    @classmethod
    def from_preset(cls, name, weights="default", num_classes=None, **changes):
        """A classifier of a named network (see `ResNetBackbone.from_preset`).

        `weights`: None, "imagenet", a keras.applications weight file of
        the preset's twin, or "default" (a preset folder's own weights, none
        for a named network). With `num_classes=None` and weights that have a
        head, the head is kept (as many classes as it has, images resized to
        224); with a number, a new zero-initialised head of that size; with
        neither, no head until `fit`. `changes`: `ResNetConfig` fields
        (`shortcut="A"`, ...) and the classifier's own keyword arguments
        (`class_names`, `preprocessor`, `name`).
        """
        if presets.is_keras_hub_preset(name):
            if num_classes is not None:
                changes.update(num_classes=num_classes, class_names=None)
            return super().from_preset(str(name), load_weights=weights is not None, **changes)
        fields = set(get_family_preset(name).config.get_config())
        architecture = {k: v for k, v in changes.items() if k in fields}
        classifier_arguments = {k: v for k, v in changes.items() if k not in fields}
        backbone = ResNetBackbone(**family_config(name, architecture))
        if weights in (None, "default"):
            return cls(backbone, num_classes, **classifier_arguments)
        head = load_application_weights(backbone, name, weights, architecture)
        if num_classes is not None or head is None:
            return cls(backbone, num_classes, **classifier_arguments)
        classifier = cls(backbone, head[1].shape[0], **classifier_arguments)
        classifier.head.set_weights(head)
        if "preprocessor" not in classifier_arguments:
            classifier.preprocessor.image_converter.image_size = (APPLICATION_IMAGE_SIZE,) * 2
        return classifier
