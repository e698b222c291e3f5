"""ResNetFamilyBackbone: any network of the ResNet family, images in [0, 1] -> pooled features.

The one builder of every network bitkeras makes, BiT's included. From a
`ResNetConfig` (`bitkeras.models.resnet_family`) it lays out Keras layers
named as `keras.applications` names them (`conv1_conv`, `conv2_block1_1_conv`,
`conv2_block1_preact_bn`, `post_bn`, ...; GroupNorm layers end in `_gn`), so
the application twins' weights map layer by layer; BiT's configuration
(`ResNetConfig.bit_layout`) is laid out as BiT's fused units
(`PreActBottleneck`) under the names of BiT's checkpoints (`root_conv`,
`block1_unit01`, `final_norm`). Random weights: `bitkeras.ResNetBackbone` and
`bitkeras.BiTBackbone` add presets and weight files.
"""

import dataclasses
import itertools

import keras
import keras_hub

from bitkeras.models.architecture import ROOT_LAYER_NAME, architecture_of, unit_name
from bitkeras.models.images import ImageModel
from bitkeras.models.layers import GroupNormalization, PreActBottleneck, StandardizedConv2D
from bitkeras.models.resnet_family import ResNetConfig, groups_for
from bitkeras.models.resnet_layers import InputScaling, ZeroPadShortcut

CONFIG_FIELDS = tuple(field.name for field in dataclasses.fields(ResNetConfig))

BATCH_NORM_MOMENTUM = 0.9
"""Moving-average momentum of BatchNorm statistics (the papers' Torch and PyTorch setting)."""

NESTED_ABOVE_UNITS = 100
"""Networks of more units are laid out as sub-models of `UNITS_PER_PART` units at most.

Keras walks a functional graph recursively (`keras.src.ops.function`), one Python
frame per layer in a chain: a plain network of 1202 layers (3600 in a chain)
exceeds Python's recursion limit. Sub-models keep each walk to a part's depth.
Layers inside a part are not found by the outer model's `get_layer`; no network
that deep has published weights to map by name.
"""

UNITS_PER_PART = 50


@keras.saving.register_keras_serializable(package="bitkeras")
class ResNetFamilyBackbone(ImageModel, keras_hub.models.FeaturePyramidBackbone):
    """A ResNet of the family, weights random: NHWC images -> (batch, feature_channels).

    Takes the fields of `ResNetConfig` as keyword arguments (`block` and
    `stage_units` at least) and Keras's (`name`, `dtype`, ...). Images follow
    `bitkeras.models.images` (float in [0, 1] or uint8); the configured input
    scaling is the first layer. `pyramid_outputs` maps "P2".."P5" ("P0".."P2"
    on CIFAR stems) to the last feature map at each stride 2**n.

    >>> network = ResNetFamilyBackbone(block="basic", stage_units=(1, 1, 1),
    ...                                 stage_channels=(16, 32, 64), stem="cifar")
    >>> tuple(network(np.zeros((2, 32, 32, 3), "float32")).shape)
    (2, 64)
    >>> sorted(network.pyramid_outputs)
    ['P0', 'P1', 'P2']
    """

    def __init__(self, dtype=None, weights_resolution=None, **kwargs):
        fields = {field: kwargs.pop(field) for field in CONFIG_FIELDS if field in kwargs}
        config = ResNetConfig(**fields)
        builder = _Builder(config, dtype)
        images = keras.Input(shape=(None, None, 3), name="images")
        features = builder.network(images)
        super().__init__(inputs=images, outputs=features, dtype=dtype, **kwargs)
        self.resnet_config = config
        # The image side the weights were trained at (a preset's), or None: it sizes the
        # HyperRule of a fine-tuning (`HyperRule.for_dataset(resolution=...)`).
        self.weights_resolution = weights_resolution
        self.pyramid_outputs = builder.pyramid
        self._stage_layers = builder.stage_layers

    @classmethod
    def from_resnet_config(cls, config, **kwargs):
        """The network of a `ResNetConfig`, with Keras's arguments (`name`, `dtype`, ...)."""
        return cls(**config.get_config(), **kwargs)

    @property
    def architecture(self):
        """BiT's `Architecture` of this network, or None for a network that is not BiT's."""
        return architecture_of(self.resnet_config)

    @property
    def feature_channels(self):
        return self.resnet_config.feature_channels

    def layers_before(self, stage):
        """Names of the layers with weights before `stage` (1-based): the stem and earlier units."""
        if stage not in range(1, self.resnet_config.stages + 1):
            raise ValueError(f"block must be 1..{self.resnet_config.stages} for this "
                             f"{self.resnet_config.stages}-stage network; got {stage!r}")
        return [name for earlier in range(stage) for name in self._stage_layers[earlier]]

    def adapt(self, images):
        """Sets a "pixel_mean" input scaling's mean image from training images."""
        self.get_layer("input_scaling").adapt(images)

    def get_config(self):
        config = super().get_config()  # keras-hub's: name, trainable, dtype
        config.update(self.resnet_config.get_config(), weights_resolution=self.weights_resolution)
        return config


APPLICATION_NAMES = {"stem_pad": "conv1_pad", "stem_conv": "conv1_conv",
                     "pool_pad": "pool1_pad", "pool": "pool1_pool", "final_norm": None,
                     "final_relu": "post_relu", "features": "avg_pool"}
"""Names of the layers outside units, as keras.applications names them (None: the
normalization's own, "post_bn" or "post_gn")."""

BIT_NAMES = {"stem_pad": "root_pad", "stem_conv": ROOT_LAYER_NAME, "pool_pad": "root_pool_pad",
             "pool": "root_pool", "final_norm": "final_norm", "final_relu": "final_relu",
             "features": "pool"}
"""Names of the layers outside units in BiT's layout (its checkpoints' `root_block`,
`pre_logits` normalization)."""


class _Builder:
    """Lays the layers of one configuration out on a Keras tensor."""

    def __init__(self, config, dtype):
        self.config = config
        self.dtype = dtype
        self.bit = config.bit_layout
        self.names = BIT_NAMES if self.bit else APPLICATION_NAMES
        self.pyramid = {}
        self.stage_layers = {}  # stage -> names of its layers with weights (0: the stem)
        self.stage = 0
        self.stride = 1
        self.recording = True  # names of layers with weights go to stage_layers

    def layer(self, layer, *inputs):
        outputs = layer(*inputs)
        if self.recording and layer.weights:
            self.stage_layers.setdefault(self.stage, []).append(layer.name)
        return outputs

    def network(self, images):
        config = self.config
        x = self.layer(InputScaling(config.input_scaling, name="input_scaling",
                                    dtype=self.dtype), images)
        x = self.stem(x)
        units = list(config.units())
        nested = len(units) > NESTED_ABOVE_UNITS
        for _, stage_units in itertools.groupby(units, key=lambda unit: unit.stage):
            stage_units = list(stage_units)
            size = UNITS_PER_PART if nested else len(stage_units)
            for start in range(0, len(stage_units), size):
                x = self.units(x, stage_units[start:start + size], nested)
        if config.preactivation:
            x = self.norm(x, "post", name=self.names["final_norm"])
            x = self.relu(x, self.names["final_relu"])
        return keras.layers.GlobalAveragePooling2D(name=self.names["features"],
                                                   dtype=self.dtype)(x)

    def units(self, x, units, nested):
        """`units` (of one stage) on `x`; with `nested`, as one functional sub-model."""
        self.stage = units[0].stage
        if not nested:
            for unit in units:
                x = self.unit(x, unit)
                self._advance(unit, x)
            return x
        inputs = keras.Input(x.shape[1:], dtype=x.dtype)
        self.recording = False  # the part is recorded, not what is inside it
        y = inputs
        for unit in units:
            y = self.unit(y, unit)
        self.recording = True
        first, last = units[0], units[-1]
        part = keras.Model(inputs, y, name=f"conv{first.stage + 1}_block{first.index}_to_"
                                             f"block{last.index}")
        x = self.layer(part, x)
        for unit in units:
            self._advance(unit, x)
        return x

    def _advance(self, unit, x):
        self.stride *= unit.stride
        self.pyramid[f"P{self.stride.bit_length() - 1}"] = x

    def stem(self, x):
        config = self.config
        imagenet = config.stem == "imagenet"
        kernel, stride = (7, 2) if imagenet else (3, 1)
        x = self.pad(x, kernel // 2, self.names["stem_pad"])
        x = self.conv(x, config.stem_channels, kernel, stride, self.names["stem_conv"],
                      bias=config.conv_bias != "none")
        if not config.preactivation:
            x = self.relu(self.norm(x, "conv1"), "conv1_relu")
        if imagenet:
            x = self.pad(x, 1, self.names["pool_pad"])
            x = keras.layers.MaxPooling2D(3, strides=2, name=self.names["pool"],
                                          dtype=self.dtype)(x)
        self.stride = 4 if imagenet else 1
        return x

    def unit(self, x, unit):
        if self.bit:  # BiT's unit, with its fused GroupNorm paths (bitkeras.models.kernels)
            return self.layer(PreActBottleneck(
                out_channels=unit.out_channels, mid_channels=unit.mid_channels,
                strides=unit.stride, projection=unit.shortcut == "projection",
                name=unit_name(unit.stage, unit.index), dtype=self.dtype), x)
        config = self.config
        name = f"conv{unit.stage + 1}_block{unit.index}"
        inputs = x
        if config.preactivation:
            x = self.relu(self.norm(x, f"{name}_preact"), f"{name}_preact_relu")
        shortcut = self.shortcut(inputs, x, unit, name)
        bias = config.conv_bias == "all"
        if config.block == "basic":
            widths, kernels = (unit.mid_channels, unit.out_channels), (3, 3)
            strides = (unit.stride, 1)
        else:
            widths, kernels = (unit.mid_channels, unit.mid_channels, unit.out_channels), (1, 3, 1)
            strides = ((unit.stride, 1, 1) if config.stride_position == "first_1x1"
                       else (1, unit.stride, 1))
        last = len(widths)
        for number, (width, kernel, stride) in enumerate(zip(widths, kernels, strides), 1):
            if kernel == 3:
                x = self.pad(x, 1, f"{name}_{number}_pad")
            x = self.conv(x, width, kernel, stride, f"{name}_{number}_conv",
                          bias=bias or (number == last and config.conv_bias == "outputs"))
            if number < last:
                x = self.relu(self.norm(x, f"{name}_{number}"), f"{name}_{number}_relu")
            elif not config.preactivation:
                x = self.norm(x, f"{name}_{number}")
        if shortcut is not None:
            x = keras.layers.Add(name=f"{name}_add" if not config.preactivation
                                 else f"{name}_out", dtype=self.dtype)([shortcut, x])
        if not config.preactivation:
            x = self.relu(x, f"{name}_out")
        return x

    def shortcut(self, inputs, preactivated, unit, name):
        """The shortcut of `unit`: None for a plain network."""
        kind = unit.shortcut
        if kind == "none":
            return None
        if kind == "identity":
            return inputs
        if kind == "subsample":
            return keras.layers.MaxPooling2D(1, strides=unit.stride, name=f"{name}_0_pool",
                                             dtype=self.dtype)(inputs)
        if kind == "pad":
            return ZeroPadShortcut(unit.out_channels, unit.stride, name=f"{name}_0_pad",
                                   dtype=self.dtype)(inputs)
        # A projection: of the pre-activation in v2 (it is the unit's input there), with
        # its own normalization in v1.
        bias = self.config.conv_bias != "none"
        x = self.conv(preactivated, unit.out_channels, 1, unit.stride, f"{name}_0_conv", bias)
        return x if self.config.preactivation else self.norm(x, f"{name}_0")

    def conv(self, x, filters, kernel, stride, name, bias):
        convolution = (StandardizedConv2D if self.config.weight_standardization
                       else keras.layers.Conv2D)
        # BiT's root starts as its units' convolutions do, from Keras's default.
        initializer = "glorot_uniform" if self.bit else "he_normal"
        return self.layer(convolution(filters, kernel, strides=stride, use_bias=bias,
                                      kernel_initializer=initializer, name=name,
                                      dtype=self.dtype), x)

    def norm(self, x, prefix, name=None):
        """The configured normalization, named `name` or after `prefix` ("conv1" -> "conv1_bn")."""
        normalization = self.config.normalization
        if normalization == "none":
            return x
        epsilon = self.config.norm_epsilon
        if normalization == "batch":
            layer = keras.layers.BatchNormalization(
                epsilon=epsilon, momentum=BATCH_NORM_MOMENTUM, name=name or f"{prefix}_bn",
                dtype=self.dtype)
        else:
            layer = GroupNormalization(groups=groups_for(x.shape[-1]), epsilon=epsilon,
                                       name=name or f"{prefix}_gn", dtype=self.dtype)
        return self.layer(layer, x)

    def relu(self, x, name):
        return keras.layers.ReLU(name=name, dtype=self.dtype)(x)

    def pad(self, x, amount, name):
        return keras.layers.ZeroPadding2D(amount, name=name, dtype=self.dtype)(x)
