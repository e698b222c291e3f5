"""BiTClassifier: a BiTBackbone with a dense head, images in [0, 1] -> logits."""

import keras

from bitkeras import checkpoint, presets
from bitkeras.backbone import BiTBackbone
from bitkeras.images import ImageModel
from bitkeras.weights import resolve_weights

BASE_LEARNING_RATE = 0.003
"""BiT-HyperRule learning rate at batch size 512 (SGD, momentum 0.9)."""


@keras.saving.register_keras_serializable(package="bitkeras")
class BiTClassifier(ImageModel):
    """A BiT backbone and a dense head returning logits, shape (batch, num_classes).

    The head is initialised to zeros (weights and bias), as BiT fine-tuning
    starts. `compile()` with no arguments uses BiT's fine-tuning optimizer (SGD,
    momentum 0.9, learning rate 0.003), sparse categorical cross-entropy on the
    logits and accuracy.

    Example:

    >>> backbone = BiTBackbone(block_units=(1, 1, 1, 1), width_factor=0.5)
    >>> classifier = BiTClassifier(backbone, num_classes=10)
    >>> classifier.compile()
    >>> classifier.fit(images, labels, epochs=1)  # images in [0, 1] or uint8
    >>> imagenet = BiTClassifier.from_preset("BiT-M-R50x1-ILSVRC2012", weights="auto")
    """

    def __init__(self, backbone, num_classes, **kwargs):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")
        images = keras.Input(shape=(None, None, 3), name="images")
        features = backbone(images)
        logits = keras.layers.Dense(
            num_classes, kernel_initializer="zeros", bias_initializer="zeros", name="head"
        )(features)
        kwargs.setdefault("name", "bit_classifier")
        super().__init__(inputs=images, outputs=logits, **kwargs)
        self.backbone = backbone
        self.num_classes = num_classes
        self.head = self.get_layer("head")

    def compile(self, optimizer="auto", loss="auto", metrics="auto", jit_compile=False,
                **kwargs):
        """Keras `compile` with BiT defaults for the arguments left at "auto".

        XLA is off by default: on CPU it made the R50x1 training step slower
        and inference faster (figures in README.md, from
        benchmarks/throughput.py); pass `jit_compile=True` for inference-heavy use.
        """
        if optimizer == "auto":
            optimizer = keras.optimizers.SGD(learning_rate=BASE_LEARNING_RATE, momentum=0.9)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics == "auto":
            metrics = ["accuracy"]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics,
                        jit_compile=jit_compile, **kwargs)

    def compile_from_config(self, config):
        """Restores the compile arguments saved in a `.keras` file."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)

    @classmethod
    def from_preset(cls, name, weights=None, num_classes=None, **kwargs):
        """A classifier of a named architecture or released model.

        `weights` as in `BiTBackbone.from_preset`. With `num_classes=None` the
        checkpoint's own head is kept (its size read from the file: 21843 for
        BiT-M, 1000 for BiT-S and the ILSVRC-2012 models); with a number, the
        backbone is loaded and a new zero-initialised head of that size added.
        """
        preset = presets.get_preset(name)
        path = resolve_weights(preset, weights)
        if num_classes is None:
            if path is None:
                raise ValueError(
                    f"BiTClassifier.from_preset({name!r}) without weights needs num_classes"
                )
            num_classes = checkpoint.read_head_classes(path)
            if num_classes is None:
                raise ValueError(
                    f"checkpoint {str(path)!r} has no head: pass num_classes to add a new one"
                )
            keep_head = True
        else:
            keep_head = False
        architecture = preset.architecture
        backbone = BiTBackbone(architecture.block_units, architecture.width_factor)
        classifier = cls(backbone, num_classes, **kwargs)
        if path is not None:
            checkpoint.load_npz(classifier if keep_head else backbone, path)
        return classifier
