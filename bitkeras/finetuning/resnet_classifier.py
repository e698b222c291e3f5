"""ResNetClassifier: a ResNet of the family with a head, fine-tuned as BiT is.

The same calls as `bitkeras.BiTClassifier` (Keras's `fit`, `evaluate`,
`predict`, HyperRule fine-tuning, ten-crop and multi-scale testing,
`classify`, TF-Hub style `export`, keras-hub `save_to_preset`, and
`from_preset` with the same meaning of `weights=`), on a `bitkeras.ResNetBackbone`.
"""

import keras

from bitkeras.finetuning.classifier import FineTuningClassifier
from bitkeras.io.pretrained import PretrainedClassifier, ResNetBackbone


@keras.saving.register_keras_serializable(package="bitkeras")
class ResNetClassifier(PretrainedClassifier, FineTuningClassifier):
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
