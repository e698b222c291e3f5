"""BiT's ResNet-v2 by its two published numbers: units per block and a width factor.

An `Architecture` is BiT's short name for one configuration of the ResNet
family (`bitkeras.models.resnet_family.bit_config`): its `config` is the
`ResNetConfig` every count and the Keras model come from. No framework import:
the checkpoint reader infers an architecture from a file, and the benchmarks
count with it.
"""

import dataclasses
import functools

from bitkeras.models.resnet_family import GROUPS, bit_config

ROOT_CHANNELS = 64
"""Root convolution filters at width factor 1."""


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A BiT ResNet-v2: units per block and a width factor.

    `width_factor` may be fractional (e.g. 0.5 for test models) as long as every
    channel count is a whole multiple of the 32 GroupNorm groups.
    """

    block_units: tuple
    width_factor: float

    def __post_init__(self):
        units = tuple(self.block_units)
        if len(units) != 4 or any(
            not isinstance(count, int) or count < 1 for count in units
        ):
            raise ValueError(
                f"block_units must be four positive integers (units in block1..block4), "
                f"e.g. (3, 4, 6, 3) for R50; got {self.block_units!r}"
            )
        object.__setattr__(self, "block_units", units)
        if not self.width_factor > 0:
            raise ValueError(f"width_factor must be positive; got {self.width_factor!r}")
        channels = ROOT_CHANNELS * self.width_factor
        if channels != int(channels) or int(channels) % GROUPS:
            raise ValueError(
                f"width_factor={self.width_factor!r} gives {channels:g} root channels, which "
                f"is not a whole multiple of the {GROUPS} GroupNorm groups: use a width "
                f"factor that is a multiple of 0.5 (0.5, 1, 2, 3, 4, ...)"
            )

    @functools.cached_property
    def config(self):
        """The family's `ResNetConfig` of this network (`bit_config`), made once."""
        return bit_config(self.block_units, self.width_factor)

    @property
    def root_channels(self):
        return self.config.stem_channels

    def mid_channels(self, block):
        """Bottleneck channels of block 1..4: 64 * w * 2**(block - 1)."""
        return self.config.stage_mid_channels(block)

    def out_channels(self, block):
        return 4 * self.mid_channels(block)

    @property
    def feature_channels(self):
        """Size of the pooled pre-logits features: 2048 * w."""
        return self.config.feature_channels

    def units(self):
        """Yields (block, unit, in_channels, mid_channels, out_channels, stride, projection)."""
        for unit in self.config.units():
            yield (unit.stage, unit.index, unit.in_channels, unit.mid_channels,
                   unit.out_channels, unit.stride, unit.shortcut == "projection")

    def layers_before(self, block):
        """Names of the layers with weights that come before `block` (1..4): root and units."""
        if block not in range(1, len(self.block_units) + 1):
            raise ValueError(f"block must be 1..{len(self.block_units)}; got {block!r}")
        return [ROOT_LAYER_NAME] + [unit_name(b, unit) for b, unit, *_ in self.units()
                                    if b < block]

    def convolutions(self, image_size):
        """(input size, in channels, out channels, kernel, stride, padding) of every conv.

        See `ResNetConfig.convolutions`: the root, then per unit its 1x1, 3x3
        (strided, padded by 1) and 1x1 convolutions and its projection if any.
        """
        return self.config.convolutions(image_size)

    def multiply_adds(self, image_size, num_classes=0):
        """Multiply-accumulates of one forward pass on a square image.

        Counts the convolutions and the head (the work a FLOP count is made of);
        normalisation, activations and pooling are left out, as is customary.
        """
        return self.config.multiply_adds(image_size, num_classes)


ROOT_LAYER_NAME = "root_conv"
"""Layer name of the root convolution, the only weights before block 1."""


def unit_name(block, unit):
    """Layer name of a bottleneck unit, mirroring the checkpoint's `block1/unit01`."""
    return f"block{block}_unit{unit:02d}"


ARCHITECTURES = {
    "R50x1": Architecture((3, 4, 6, 3), 1),
    "R50x3": Architecture((3, 4, 6, 3), 3),
    "R101x1": Architecture((3, 4, 23, 3), 1),
    "R101x3": Architecture((3, 4, 23, 3), 3),
    "R152x2": Architecture((3, 8, 36, 3), 2),
    "R152x4": Architecture((3, 8, 36, 3), 4),
}
"""The published BiT architectures by name."""


def architecture_of(config):
    """BiT's `Architecture` of a `ResNetConfig`, or None for a network that is not BiT's."""
    if not config.bit_layout:
        return None
    return Architecture(config.stage_units, config.width_factor)


def architecture_name(architecture):
    """The published name ('R50x1', ...) of an architecture, or None."""
    for name, known in ARCHITECTURES.items():
        if known == architecture:
            return name
    return None
