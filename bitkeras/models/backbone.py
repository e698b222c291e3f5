"""ResNetV2Backbone, BiT's network: images in [0, 1] -> pooled pre-logits features (2048 * w).

The network alone, randomly initialised; `bitkeras.BiTBackbone` adds BiT's
weights (presets, released checkpoints, TF-Hub modules) and export.
"""

import keras
import keras_hub

from bitkeras.models.architecture import ROOT_LAYER_NAME, Architecture, unit_name
from bitkeras.models.images import ImageModel
from bitkeras.models.layers import PreActBottleneck, StandardizedConv2D, group_normalization


@keras.saving.register_keras_serializable(package="bitkeras")
class ResNetV2Backbone(ImageModel, keras_hub.models.FeaturePyramidBackbone):
    """BiT's ResNet-v2 feature extractor (GroupNorm + Weight Standardization), weights random.

    Takes NHWC RGB images of any size, float in [0, 1] or uint8 (see
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
        images = keras.Input(shape=(None, None, 3), name="images")
        # The released weights expect x / 127.5 - 1 on 0..255 pixels.
        x = keras.layers.Rescaling(scale=2.0, offset=-1.0, name="rescale", dtype=dtype)(images)
        x = keras.layers.ZeroPadding2D(3, name="root_pad", dtype=dtype)(x)
        x = StandardizedConv2D(
            architecture.root_channels, 7, strides=2, name=ROOT_LAYER_NAME, dtype=dtype
        )(x)
        x = keras.layers.ZeroPadding2D(1, name="root_pool_pad", dtype=dtype)(x)
        x = keras.layers.MaxPooling2D(3, strides=2, name="root_pool", dtype=dtype)(x)
        pyramid_outputs = {}
        for block, unit, _, mid, out, stride, projection in architecture.units():
            x = PreActBottleneck(
                out_channels=out,
                mid_channels=mid,
                strides=stride,
                projection=projection,
                name=unit_name(block, unit),
                dtype=dtype,
            )(x)
            # Block b halves the resolution b + 1 times: level P(b + 1).
            pyramid_outputs[f"P{block + 1}"] = x
        x = group_normalization(name="final_norm", dtype=dtype)(x)
        x = keras.layers.ReLU(name="final_relu", dtype=dtype)(x)
        features = keras.layers.GlobalAveragePooling2D(name="pool", dtype=dtype)(x)
        super().__init__(inputs=images, outputs=features, dtype=dtype, **kwargs)
        self.architecture = architecture
        self.block_units = architecture.block_units
        self.width_factor = width_factor
        self.pyramid_outputs = pyramid_outputs

    @property
    def feature_channels(self):
        """Size of the pooled features: 2048 * width_factor."""
        return self.architecture.feature_channels

    def layers_before(self, block):
        """Names of the layers with weights before `block` (1..4): the root and earlier units."""
        return self.architecture.layers_before(block)

    def get_config(self):
        config = super().get_config()  # keras-hub's: name, trainable, dtype
        config.update(block_units=list(self.block_units), width_factor=self.width_factor)
        return config
