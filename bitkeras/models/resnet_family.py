"""The ResNet family behind BiT as pure data: one `ResNetConfig` per network, and a table.

ResNet v1 (He et al. 2015, post-activation) and v2 (He et al. 2016,
pre-activation), basic and bottleneck units, ImageNet and CIFAR stems, the
shortcut options A/B/C and plain networks without shortcuts, BatchNorm,
GroupNorm or no normalization, weight standardization, width factors: BiT
is the configuration v2 + GroupNorm + WS (`bit_config`). The papers' networks
and the `keras.applications` twins are made by the functions below and named in
the one preset table, `bitkeras.io.presets.PRESETS`.

No framework import: counts of parameters and multiply-adds come from the
configuration alone, and the Keras model (`bitkeras.models.resnet_backbone`)
is built from the same `units()`.
"""

import dataclasses
import math

GROUPS = 32
"""GroupNorm groups of every normalization layer with at least as many channels (BiT's)."""

BLOCKS = ("basic", "bottleneck")
STEMS = ("imagenet", "cifar")
SHORTCUTS = ("A", "B", "C", "none")
NORMALIZATIONS = ("batch", "group", "none")
STRIDE_POSITIONS = ("first_1x1", "3x3")
DOWNSAMPLE_UNITS = ("first", "last")
CONV_BIASES = ("none", "all", "outputs")
INPUT_SCALINGS = ("tf", "caffe", "torch", "pixel_mean")


def conv_size(size, kernel, stride, padding=0):
    """Output side of a convolution or pooling whose input is padded by `padding` on every side."""
    return math.floor((size + 2 * padding - kernel) / stride) + 1


def multiply_adds(convolutions, feature_channels, num_classes):
    """Multiply-accumulates of `convolutions` and a dense head.

    `convolutions`: (input size, in channels, out channels, kernel, stride,
    padding) tuples, as `ResNetConfig.convolutions` yields them; the head
    maps `feature_channels` to `num_classes`.
    """
    total = 0
    for size, cin, cout, kernel, stride, padding in convolutions:
        out_size = conv_size(size, kernel, stride, padding)
        total += out_size * out_size * kernel * kernel * cin * cout
    return total + feature_channels * num_classes


@dataclasses.dataclass(frozen=True)
class Unit:
    """One residual unit: where it sits, its channels, stride and shortcut."""

    stage: int  # 1-based
    index: int  # 1-based within the stage
    in_channels: int
    mid_channels: int
    out_channels: int
    stride: int
    shortcut: str  # "identity", "subsample", "pad" (option A), "projection", "none"


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """A ResNet: its units, unit kind, stem, shortcuts, normalization and input scaling.

    - `block`: "basic" (two 3x3 convs) or "bottleneck" (1x1, 3x3, 1x1 to 4x channels).
    - `stage_units`: units per stage, e.g. (3, 4, 6, 3) for ResNet-50, (3, 3, 3) for
      ResNet-20 on CIFAR.
    - `stage_channels`: each stage's (mid) channels at width factor 1: (64, 128,
      256, 512) on ImageNet, (16, 32, 64) on CIFAR.
    - `stem`: "imagenet" (7x7/2 convolution, 3x3/2 max-pool) or "cifar" (3x3 convolution).
    - `preactivation`: False for v1 (conv -> norm -> ReLU, ReLU after the sum),
      True for v2 (norm -> ReLU -> conv, a final norm and ReLU before pooling).
    - `shortcut`: where dimensions grow, "A" (identity, strided subsampling and
      zero-padded channels: no parameters), "B" (a strided 1x1 projection) or
      "C" (projections in every unit); "none" for a plain network.
    - `normalization`: "batch", "group" (32 groups) or "none";
      `weight_standardization`: standardized convolution kernels (BiT).
    - `stride_position`: where a bottleneck's stride sits, "first_1x1" (the
      2015 paper and keras.applications' ResNet50) or "3x3" (BiT, torchvision).
    - `downsample_unit`: "first" unit of stages 2.. strides (the papers), or the
      "last" unit of stages 1..3 (keras.applications' ResNet50V2).
    - `conv_bias`: "none", "all" (keras.applications' v1) or "outputs" (the stem,
      projections and each unit's last convolution: keras.applications' v2).
    - `input_scaling`: what the model does to images in [0, 1]: "tf" (to [-1, 1]),
      "caffe" (0..255, BGR, ImageNet channel means subtracted), "torch" (ImageNet
      mean and standard deviation) or "pixel_mean" (a per-pixel mean image,
      learnt from data with `adapt`, subtracted).
    - `width_factor`: multiplies every channel count.
    - `norm_epsilon`: of every normalization layer.
    """

    block: str
    stage_units: tuple
    stage_channels: tuple = (64, 128, 256, 512)
    stem: str = "imagenet"
    preactivation: bool = False
    shortcut: str = "B"
    normalization: str = "batch"
    weight_standardization: bool = False
    stride_position: str = "3x3"
    downsample_unit: str = "first"
    conv_bias: str = "none"
    input_scaling: str = "caffe"
    width_factor: float = 1
    norm_epsilon: float = 1e-5

    def __post_init__(self):
        for field, choices in (("block", BLOCKS), ("stem", STEMS), ("shortcut", SHORTCUTS),
                               ("normalization", NORMALIZATIONS),
                               ("stride_position", STRIDE_POSITIONS),
                               ("downsample_unit", DOWNSAMPLE_UNITS),
                               ("conv_bias", CONV_BIASES), ("input_scaling", INPUT_SCALINGS)):
            if getattr(self, field) not in choices:
                raise ValueError(f"{field} must be one of {list(choices)}; "
                                 f"got {getattr(self, field)!r}")
        for field in ("stage_units", "stage_channels"):
            values = tuple(getattr(self, field))
            if not values or any(not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"{field} must be positive integers, one per stage; "
                                 f"got {getattr(self, field)!r}")
            object.__setattr__(self, field, values)
        if len(self.stage_units) != len(self.stage_channels):
            raise ValueError(
                f"stage_units {self.stage_units} and stage_channels {self.stage_channels} "
                f"must have one entry per stage each")
        if not self.width_factor > 0:
            raise ValueError(f"width_factor must be positive; got {self.width_factor!r}")
        for channels in self.stage_channels:
            scaled = channels * self.width_factor
            if scaled != int(scaled):
                raise ValueError(f"width_factor={self.width_factor!r} makes {channels} "
                                 f"channels {scaled:g}, not a whole number")
        if self.normalization == "group":
            for channels in {self.stem_channels} | {u.mid_channels for u in self.units()}:
                if channels % groups_for(channels):
                    raise ValueError(
                        f"GroupNorm needs channel counts divisible into {GROUPS} groups; "
                        f"this configuration has a layer of {channels}: change width_factor")
        if self.downsample_unit == "last" and not self.preactivation:
            raise ValueError("downsample_unit='last' is keras.applications' ResNet-v2 layout; "
                             "use it with preactivation=True")

    @property
    def stages(self):
        return len(self.stage_units)

    @property
    def expansion(self):
        """Output channels per mid channel of a unit: 4 for bottlenecks, 1 for basic units."""
        return 4 if self.block == "bottleneck" else 1

    @property
    def stem_channels(self):
        return int(self.stage_channels[0] * self.width_factor)

    def stage_mid_channels(self, stage):
        return int(self.stage_channels[stage - 1] * self.width_factor)

    @property
    def feature_channels(self):
        """Channels of the pooled features."""
        return self.stage_mid_channels(self.stages) * self.expansion

    @property
    def depth(self):
        """Layers with weights counted as the papers count them: convs on the main path + head."""
        per_unit = 3 if self.block == "bottleneck" else 2
        return per_unit * sum(self.stage_units) + 2

    @property
    def bit_layout(self):
        """Whether this is BiT's ResNet-v2 (`bit_config`, any units and width factor).

        Such a network is built from BiT's fused units (`PreActBottleneck`)
        under the layer names BiT's checkpoints use (`root_conv`,
        `block1_unit01`, ..., `final_norm`), so released weights map by name.
        Its channel counts must divide into the 32 GroupNorm groups.
        """
        return (self.stages == 4 and self.stem_channels % GROUPS == 0
                and self == bit_config(self.stage_units, self.width_factor))

    def units(self):
        """The `Unit`s in forward order."""
        in_channels = self.stem_channels
        for stage, count in enumerate(self.stage_units, start=1):
            mid = self.stage_mid_channels(stage)
            out = mid * self.expansion
            for index in range(1, count + 1):
                if self.downsample_unit == "first":
                    stride = 2 if stage > 1 and index == 1 else 1
                else:  # keras.applications' v2: the last unit of every stage but the last
                    stride = 2 if stage < self.stages and index == count else 1
                yield Unit(stage, index, in_channels, mid, out, stride,
                           self._shortcut(in_channels, out, stride))
                in_channels = out

    def _shortcut(self, in_channels, out_channels, stride):
        if self.shortcut == "none":
            return "none"
        if self.shortcut == "C" or (self.shortcut == "B" and in_channels != out_channels):
            return "projection"
        if in_channels != out_channels:
            return "pad"  # option A
        return "subsample" if stride > 1 else "identity"

    def convolutions(self, image_size):
        """(input size, in channels, out channels, kernel, stride, padding) of every conv.

        For a square image of `image_size`, in forward order: the stem, then
        per unit its convolutions and its projection if any.
        """
        if self.stem == "imagenet":
            yield image_size, 3, self.stem_channels, 7, 2, 3
            size = conv_size(conv_size(image_size, 7, 2, 3), 3, 2, 1)  # conv, max-pool
        else:
            yield image_size, 3, self.stem_channels, 3, 1, 1
            size = image_size
        for unit in self.units():
            out_size = conv_size(size, 1, unit.stride, 0)
            if self.block == "basic":
                yield size, unit.in_channels, unit.mid_channels, 3, unit.stride, 1
                yield out_size, unit.mid_channels, unit.out_channels, 3, 1, 1
            else:
                first_stride = unit.stride if self.stride_position == "first_1x1" else 1
                yield size, unit.in_channels, unit.mid_channels, 1, first_stride, 0
                middle = conv_size(size, 1, first_stride, 0)
                middle_stride = unit.stride // first_stride
                yield middle, unit.mid_channels, unit.mid_channels, 3, middle_stride, 1
                yield out_size, unit.mid_channels, unit.out_channels, 1, 1, 0
            if unit.shortcut == "projection":
                yield size, unit.in_channels, unit.out_channels, 1, unit.stride, 0
            size = out_size

    def multiply_adds(self, image_size, num_classes=1000):
        """Multiply-accumulates of one forward pass: the convolutions and the dense head.

        Normalization, activations and pooling are left out, as the papers count.
        """
        return multiply_adds(self.convolutions(image_size), self.feature_channels, num_classes)

    def parameter_count(self, num_classes=1000, statistics=True):
        """Weights of the model with a `num_classes` head (0: the backbone alone).

        Normalization layers count their scale and offset, and with
        `statistics` BatchNorm's moving mean and variance (as Keras's
        `count_params` does; the papers count without). A per-pixel mean
        image is not counted.
        """
        total = 0
        norms = []  # channels of each normalization layer
        convolutions = list(self.convolutions(224))
        for _, cin, cout, kernel, _, _ in convolutions:
            total += kernel * kernel * cin * cout
        total += self._bias_count(convolutions)
        if self.normalization != "none":
            norms = self._normalized_channels()
        per_channel = 4 if self.normalization == "batch" and statistics else 2
        total += per_channel * sum(norms)
        if num_classes:
            total += (self.feature_channels + 1) * num_classes
        return total

    def _bias_count(self, convolutions):
        if self.conv_bias == "none":
            return 0
        if self.conv_bias == "all":
            return sum(cout for _, _, cout, _, _, _ in convolutions)
        total = self.stem_channels
        for unit in self.units():
            total += unit.out_channels * (2 if unit.shortcut == "projection" else 1)
        return total

    def _normalized_channels(self):
        """Channels of every normalization layer, in forward order."""
        channels = []
        if not self.preactivation:
            channels.append(self.stem_channels)
        for unit in self.units():
            if self.preactivation:
                channels.append(unit.in_channels)
            middle = [unit.mid_channels] * (2 if self.block == "bottleneck" else 1)
            channels.extend(middle)
            if not self.preactivation:
                channels.append(unit.out_channels)
                if unit.shortcut == "projection":
                    channels.append(unit.out_channels)
        if self.preactivation:
            channels.append(self.feature_channels)
        return channels

    def replace(self, **changes):
        """A copy with fields changed (validated again)."""
        unknown = sorted(set(changes) - {field.name for field in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown ResNetConfig field(s) {unknown}; the fields are "
                            f"{[field.name for field in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)

    def get_config(self):
        config = dataclasses.asdict(self)
        config.update(stage_units=list(self.stage_units),
                      stage_channels=list(self.stage_channels))
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**{**config, "stage_units": tuple(config["stage_units"]),
                      "stage_channels": tuple(config["stage_channels"])})


def groups_for(channels):
    """GroupNorm groups for a layer: 32, or the channel count where it has fewer."""
    return min(GROUPS, channels)


IMAGENET_UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                  152: (3, 8, 36, 3)}
"""Units per stage of the ImageNet ResNets by depth (basic for 18 and 34)."""

CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
"""The CIFAR ResNets of the 2015 paper: 6n + 2 layers."""


def imagenet_v1(depth, shortcut="B"):
    """ResNet-`depth` of the 2015 paper: post-activation, BatchNorm, stride in the first 1x1."""
    return ResNetConfig(
        block="basic" if depth < 50 else "bottleneck", stage_units=IMAGENET_UNITS[depth],
        shortcut=shortcut, stride_position="first_1x1", input_scaling="caffe")


def cifar(depth, shortcut="A"):
    """The CIFAR ResNet of `depth` = 6n + 2 layers: three stages of n basic units."""
    units = (depth - 2) // 6
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has 6n + 2 layers (20, 32, 44, 56, 110, 1202, ...); "
                         f"got depth {depth!r}")
    return ResNetConfig(block="basic", stage_units=(units,) * 3, stage_channels=(16, 32, 64),
                        stem="cifar", shortcut=shortcut, input_scaling="pixel_mean")


def keras_application_v1(depth):
    """keras.applications' ResNet50/101/152: biases on every conv, BatchNorm epsilon 1.001e-5."""
    return imagenet_v1(depth).replace(conv_bias="all", norm_epsilon=1.001e-5)


def keras_application_v2(depth):
    """keras.applications' ResNet50V2/101V2/152V2: pre-activation, strides in stages' last units."""
    return ResNetConfig(
        block="bottleneck", stage_units=IMAGENET_UNITS[depth], preactivation=True,
        downsample_unit="last", conv_bias="outputs", input_scaling="tf", norm_epsilon=1.001e-5)


def bit_config(block_units, width_factor=1):
    """BiT's ResNet-v2: GroupNorm + weight standardization, projections where channels grow."""
    return ResNetConfig(
        block="bottleneck", stage_units=tuple(block_units), preactivation=True,
        normalization="group", weight_standardization=True, input_scaling="tf",
        width_factor=width_factor)
