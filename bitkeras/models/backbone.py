"""ResNetV2Backbone, BiT's network: images in [0, 1] -> pooled pre-logits features (2048 * w).

The network alone, randomly initialised; `bitkeras.BiTBackbone` adds BiT's
weights (presets, released checkpoints, TF-Hub modules) and export.
"""

import keras

from bitkeras.models.architecture import Architecture
from bitkeras.models.resnet_backbone import CONFIG_FIELDS, ResNetFamilyBackbone


@keras.saving.register_keras_serializable(package="bitkeras")
class ResNetV2Backbone(ResNetFamilyBackbone):
    """BiT's ResNet-v2 feature extractor (GroupNorm + Weight Standardization), weights random.

    The ResNet family's network of BiT's configuration (`Architecture(block_units,
    width_factor).config`), built as every family network is
    (`ResNetFamilyBackbone`), and described by BiT's two numbers. Takes NHWC
    RGB images of any size, float in [0, 1] or uint8 (see
    `bitkeras.models.images`), rescales them to [-1, 1] itself (the input contract
    of BiT's TF-Hub modules), and returns the pooled pre-logits features,
    shape (batch, 2048 * width_factor).

    A keras-hub `FeaturePyramidBackbone`: `pyramid_outputs` maps "P2".."P5"
    to the symbolic feature map after blocks 1..4 (strides 4, 8, 16, 32),
    for detection or segmentation tasks such as keras-hub's RetinaNet, or
    `keras.Model(backbone.input, backbone.pyramid_outputs)`. `dtype`: a
    dtype policy (name or `keras.DTypePolicy`) given to every layer; None
    takes Keras's global policy. `from_preset` (keras-hub's) loads a preset
    folder; `bitkeras.BiTBackbone`, a subclass, also loads BiT's released
    models by name.

    Example:

    >>> backbone = ResNetV2Backbone(block_units=(1, 1, 1, 1), width_factor=0.5)
    >>> tuple(backbone(np.zeros((2, 64, 64, 3), "float32")).shape)
    (2, 1024)
    >>> sorted(backbone.pyramid_outputs)
    ['P2', 'P3', 'P4', 'P5']
    """

    def __init__(self, block_units=(3, 4, 6, 3), width_factor=1, dtype=None, **kwargs):
        architecture = Architecture(tuple(block_units), width_factor)
        super().__init__(dtype=dtype, **architecture.config.get_config(), **kwargs)
        self.block_units = architecture.block_units
        self.width_factor = width_factor

    @classmethod
    def from_resnet_config(cls, config, **kwargs):
        """The network of a `ResNetConfig` that is BiT's (`config.bit_layout`)."""
        if not config.bit_layout:
            raise ValueError(
                f"{cls.__name__} builds BiT's networks (bit_config: pre-activation bottlenecks, "
                f"GroupNorm + weight standardization, 32-group channel counts); this "
                f"configuration is another network of the ResNet family: build it with "
                f"bitkeras.ResNetBackbone")
        return cls(config.stage_units, config.width_factor, **kwargs)

    def get_config(self):
        # BiT's two numbers stand for the family's fields.
        config = {k: v for k, v in super().get_config().items() if k not in CONFIG_FIELDS}
        config.update(block_units=list(self.block_units), width_factor=self.width_factor)
        return config
