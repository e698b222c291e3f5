"""BiT's upstream (pre-training) recipe, scaled to any dataset and run length.

Pure Python, like the HyperRule: SGD with momentum 0.9, a learning rate of
0.03 * batch / 256 after a linear warm-up, divided by 10 at 30, 60 and 80 of
90 epochs, weight decay 1e-4, random crops and flips, no MixUp (see
../shared/docs/bit-reference.md).
"""

import dataclasses
import math

from bitkeras.checks import check_positive_integer
from bitkeras.finetuning.distill_recipes import DistillationRule
from bitkeras.finetuning.hyperrule import HyperRule, TrainingRule

UPSTREAM_LEARNING_RATE = 0.03
"""Learning rate at batch size 256."""

UPSTREAM_REFERENCE_BATCH = 256
UPSTREAM_EPOCHS = 90
DECAY_EPOCHS = (30, 60, 80)
WEIGHT_DECAY = 1e-4

WARMUP_FRACTION = 5_000 / 312_000
"""BiT-M warms up for 5,000 of its ~312,000 steps (90 epochs of ImageNet-21k's
14.2M images at batch 4096); runs of other lengths warm up for the same share."""

CROP_RATIO = 224 / 256
"""Upstream crops: 224 from 256 at ImageNet scale; the same ratio at any size."""


@dataclasses.dataclass(frozen=True)
class UpstreamRecipe(TrainingRule):
    """BiT's pre-training recipe: a `TrainingRule` plus `weight_decay`; HyperRule's sibling.

    `weight_decay` is Keras's decoupled weight decay on kernels (each step
    shrinks every convolution and head kernel by `learning_rate *
    weight_decay` of itself); GroupNorm scales and offsets and biases are not
    decayed.
    """

    weight_decay: float = WEIGHT_DECAY
    title = "BiT upstream recipe"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.weight_decay, bool) or not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0; got {self.weight_decay!r}")

    @classmethod
    def for_dataset(cls, num_examples, image_size, batch_size=4096, epochs=UPSTREAM_EPOCHS,
                    flip=True):
        """BiT's recipe for `epochs` passes over `num_examples` images of side `image_size`.

        The decays fall at 30/90, 60/90 and 80/90 of the run whatever its
        length; the learning rate is 0.03 * batch_size / 256. Crops have side
        `image_size`, taken from images resized to `image_size / 0.875`.
        `flip=False` for data whose classes mirroring would change (letters).
        """
        for value, name in ((num_examples, "num_examples"), (image_size, "image_size"),
                            (batch_size, "batch_size")):
            check_positive_integer(value, name)
        if not epochs > 0:
            raise ValueError(f"epochs must be positive; got {epochs!r}")
        steps = max(1, math.ceil(epochs * num_examples / batch_size))
        boundaries = tuple(sorted({round(steps * decay / UPSTREAM_EPOCHS)
                                   for decay in DECAY_EPOCHS}))
        warmup_steps = min(max(1, round(steps * WARMUP_FRACTION)), boundaries[0])
        return cls(
            resize_size=round(image_size / CROP_RATIO),
            crop_size=image_size,
            steps=steps,
            warmup_steps=warmup_steps,
            decay_boundaries=boundaries,
            base_learning_rate=UPSTREAM_LEARNING_RATE * batch_size / UPSTREAM_REFERENCE_BATCH,
            batch_size=batch_size,
            mixup_alpha=0.0,
            flip=flip,
        )


def rule_from_config(config):
    """The HyperRule, UpstreamRecipe or DistillationRule a `get_config()` dict describes
    (only recipes decay, only distillation has a mode)."""
    if "mode" in config:
        return DistillationRule(**config)
    return (UpstreamRecipe if "weight_decay" in config else HyperRule)(**config)
