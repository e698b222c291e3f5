"""The BiT ResNet-v2 architecture as pure data: channel plan and compute cost.

No framework import: these rules are shared by the Keras model, the checkpoint
reader (which infers an architecture from a file) and the benchmarks.
"""

import dataclasses
import math

GROUPS = 32
"""GroupNorm groups in every BiT normalisation layer."""

ROOT_CHANNELS = 64
"""Root convolution filters at width factor 1."""

STAGE_STRIDES = (1, 2, 2, 2)
"""Stride of the first unit of block1..block4."""


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

    @property
    def root_channels(self):
        return int(ROOT_CHANNELS * self.width_factor)

    def mid_channels(self, block):
        """Bottleneck channels of block 1..4: 64 * w * 2**(block - 1)."""
        return self.root_channels * 2 ** (block - 1)

    def out_channels(self, block):
        return 4 * self.mid_channels(block)

    @property
    def feature_channels(self):
        """Size of the pooled pre-logits features: 2048 * w."""
        return self.out_channels(4)

    def units(self):
        """Yields (block, unit, in_channels, mid_channels, out_channels, stride, projection)."""
        in_channels = self.root_channels
        for block, count in enumerate(self.block_units, start=1):
            mid, out = self.mid_channels(block), self.out_channels(block)
            for unit in range(1, count + 1):
                stride = STAGE_STRIDES[block - 1] if unit == 1 else 1
                yield block, unit, in_channels, mid, out, stride, unit == 1
                in_channels = out

    def layers_before(self, block):
        """Names of the layers with weights that come before `block` (1..4): root and units."""
        if block not in range(1, len(self.block_units) + 1):
            raise ValueError(f"block must be 1..{len(self.block_units)}; got {block!r}")
        return [ROOT_LAYER_NAME] + [unit_name(b, unit) for b, unit, *_ in self.units()
                                    if b < block]

    def convolutions(self, image_size):
        """Yields (input size, in channels, out channels, kernel, stride, padding) of every conv.

        For a square image of `image_size`, in the order the forward pass runs
        them: the root, then per unit conv a (1x1), the projection if any
        (1x1, strided), conv b (3x3, strided) and conv c (1x1). Each pads its
        input by `padding` on every side and convolves VALID.
        """
        yield image_size, 3, self.root_channels, 7, 2, 3
        size = conv_size(conv_size(image_size, 7, 2, 3), 3, 2, 1)  # root conv, max-pool
        for _, _, cin, mid, out, stride, projection in self.units():
            out_size = conv_size(size, 3, stride, 1)
            yield size, cin, mid, 1, 1, 0
            if projection:
                yield size, cin, out, 1, stride, 0
            yield size, mid, mid, 3, stride, 1
            yield out_size, mid, out, 1, 1, 0
            size = out_size

    def multiply_adds(self, image_size, num_classes=0):
        """Multiply-accumulates of one forward pass on a square image.

        Counts the convolutions and the head (the work a FLOP count is made of);
        normalisation, activations and pooling are left out, as is customary.
        """
        return multiply_adds(self.convolutions(image_size), self.feature_channels, num_classes)


ROOT_LAYER_NAME = "root_conv"
"""Layer name of the root convolution, the only weights before block 1."""


def unit_name(block, unit):
    """Layer name of a bottleneck unit, mirroring the checkpoint's `block1/unit01`."""
    return f"block{block}_unit{unit:02d}"


def conv_size(size, kernel, stride, padding=0):
    """Output side of a convolution or pooling whose input is padded by `padding` on every side."""
    return math.floor((size + 2 * padding - kernel) / stride) + 1


def multiply_adds(convolutions, feature_channels, num_classes):
    """Multiply-accumulates of `convolutions` and a dense head.

    `convolutions`: (input size, in channels, out channels, kernel, stride,
    padding) tuples, as `Architecture.convolutions` yields them; the head
    maps `feature_channels` to `num_classes`.
    """
    total = 0
    for size, cin, cout, kernel, stride, padding in convolutions:
        out_size = conv_size(size, kernel, stride, padding)
        total += out_size * out_size * kernel * kernel * cin * cout
    return total + feature_channels * num_classes


ARCHITECTURES = {
    "R50x1": Architecture((3, 4, 6, 3), 1),
    "R50x3": Architecture((3, 4, 6, 3), 3),
    "R101x1": Architecture((3, 4, 23, 3), 1),
    "R101x3": Architecture((3, 4, 23, 3), 3),
    "R152x2": Architecture((3, 8, 36, 3), 2),
    "R152x4": Architecture((3, 8, 36, 3), 4),
}
"""The published BiT architectures by name."""


def architecture_name(architecture):
    """The published name ('R50x1', ...) of an architecture, or None."""
    for name, known in ARCHITECTURES.items():
        if known == architecture:
            return name
    return None
