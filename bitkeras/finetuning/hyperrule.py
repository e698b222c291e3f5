"""The BiT-HyperRule: fine-tuning hyper-parameters from the size of the data.

Pure Python (no TensorFlow): the rule is a table lookup plus batch-size
arithmetic, testable without building a model. Numbers from the BiT paper and
its released code (see ../shared/docs/bit-reference.md).
"""

import dataclasses
import math

from bitkeras.checks import check_positive_integer

REFERENCE_BATCH_SIZE = 512
"""The batch size the rule's learning rate and step counts are stated for."""

BASE_LEARNING_RATE = 0.003
"""Learning rate at the reference batch size (SGD, momentum 0.9)."""

BIT_RESOLUTION = 224
"""The side BiT's models were pre-trained at, which the rule's sizes are for."""

SMALL_IMAGE_AREA = 96 * 96
"""Images with a smaller typical area (pixels) get the low-resolution regime."""

MIXUP_ALPHA = 0.1
MIXUP_MIN_EXAMPLES = 20_000

# (fewer than this many examples, steps, warm-up steps, decay boundaries), at batch 512.
SCHEDULES = (
    (20_000, 500, 100, (200, 300, 400)),
    (500_000, 10_000, 500, (3_000, 6_000, 9_000)),
    (math.inf, 20_000, 500, (6_000, 12_000, 18_000)),
)

# variant -> ((resize, crop) for small images, (resize, crop) for the others)
RESOLUTIONS = {
    "paper": ((160, 128), (448, 384)),
    "released": ((160, 128), (512, 480)),
}


@dataclasses.dataclass(frozen=True)
class TrainingRule:
    """What one training run needs, as training uses it; the base of BiT's two rules.

    `HyperRule` (downstream fine-tuning) and `bitkeras.UpstreamRecipe`
    (pre-training, with weight decay) are its siblings: each computes these
    fields from the data its own way (`for_dataset`), and the training loop
    takes either.

    Fields (sizes in pixels, step counts in optimizer steps at `batch_size`):

    - `resize_size`: training images are resized to this square, then
    - `crop_size`: randomly cropped to this square (if `crop`); evaluation
      images are resized to `crop_size` only.
    - `steps`, `warmup_steps`, `decay_boundaries`: linear warm-up from 0 to
      `base_learning_rate` over `warmup_steps`, then the rate divided by 10 at
      each boundary, until `steps`.
    - `base_learning_rate`: the peak learning rate of SGD (momentum 0.9, no
      weight decay) at this `batch_size`.
    - `mixup_alpha`: MixUp's Beta(alpha, alpha) parameter; 0 turns MixUp off.
    - `flip`, `crop`: random horizontal flips and random crops; turn them off
      for tasks they would break (orientation, position, counting). Without
      `crop`, training images are resized straight to `crop_size`.

    Change any field with `dataclasses.replace(rule, ...)`.
    """

    resize_size: int
    crop_size: int
    steps: int
    warmup_steps: int
    decay_boundaries: tuple
    base_learning_rate: float
    batch_size: int
    mixup_alpha: float
    flip: bool = True
    crop: bool = True

    def __post_init__(self):
        object.__setattr__(self, "decay_boundaries", tuple(self.decay_boundaries))
        kind = type(self).__name__
        for name in ("resize_size", "crop_size", "steps", "batch_size"):
            check_positive_integer(getattr(self, name), f"{kind}.{name}")
        if not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(
                f"{kind}.warmup_steps must be an integer in [0, steps={self.steps}]; "
                f"got {self.warmup_steps!r}"
            )
        boundaries = self.decay_boundaries
        if any(not isinstance(b, int) for b in boundaries) or list(boundaries) != sorted(
                set(boundaries)) or any(not self.warmup_steps <= b <= self.steps
                                        for b in boundaries):
            raise ValueError(
                f"{kind}.decay_boundaries must be increasing integers between warmup_steps="
                f"{self.warmup_steps} and steps={self.steps}; got {boundaries!r}"
            )
        if self.crop and self.crop_size > self.resize_size:
            raise ValueError(
                f"{kind}.crop_size ({self.crop_size}) cannot exceed resize_size "
                f"({self.resize_size}) when crop=True"
            )
        for name, low in (("base_learning_rate", "positive"), ("mixup_alpha", ">= 0")):
            value = getattr(self, name)
            good = isinstance(value, (int, float)) and not isinstance(value, bool) and (
                math.isfinite(value) and (value > 0 if low == "positive" else value >= 0))
            if not good:
                raise ValueError(f"{kind}.{name} must be a finite number {low}; got {value!r}")

    def with_steps(self, steps):
        """This rule shortened or lengthened to `steps`, warm-up and decays in proportion."""
        check_positive_integer(steps, "steps")
        scale = steps / self.steps
        boundaries = sorted({min(steps, round(b * scale)) for b in self.decay_boundaries})
        warmup_steps = min([round(self.warmup_steps * scale), steps, *boundaries])
        return dataclasses.replace(
            self, steps=steps, warmup_steps=warmup_steps, decay_boundaries=tuple(boundaries)
        )

    def epochs(self, num_examples):
        """How many passes over `num_examples` images the rule trains for."""
        return self.steps * self.batch_size / num_examples

    title = "Training rule"

    def describe(self, num_examples=None):
        """The rule as a readable block of text, one field a line."""
        lines = [f"{self.title}:"]
        for field in dataclasses.fields(self):
            lines.append(f"  {field.name:<20} {getattr(self, field.name)!r}")
        if num_examples is not None:
            lines.append(f"  ({num_examples} training examples: "
                         f"{self.epochs(num_examples):.1f} epochs)")
        return "\n".join(lines)

    def get_config(self):
        """The rule as a JSON-friendly dict; `rule_from_config` (or the class) restores it."""
        config = dataclasses.asdict(self)
        config["decay_boundaries"] = list(self.decay_boundaries)
        return config


@dataclasses.dataclass(frozen=True)
class HyperRule(TrainingRule):
    """The BiT-HyperRule: fine-tuning settings from the size of the data (`for_dataset`).

    Fields as `TrainingRule`; SGD with momentum 0.9 and no weight decay.
    Change any field with `dataclasses.replace(rule, ...)`.
    """

    title = "BiT-HyperRule"

    @classmethod
    def for_dataset(cls, num_examples, image_size, batch_size=None, variant="paper",
                    resolution=None):
        """The rule for `num_examples` training images of typical `image_size`.

        `image_size`: (height, width) or one side of a square, in pixels; below
        96*96 pixels of area the rule picks resize 160 / crop 128, else 448 / 384
        (`variant="paper"`) or 512 / 480 (`variant="released"`, the released
        code's choice). Those sizes are for BiT's models, pre-trained at 224
        pixels. `resolution`: the side the model was pre-trained at; below 224
        the crop is that side (the resize as much larger as the rule's), since
        a model fine-tunes best near its own scale: bitkeras's 32-pixel glyph
        model on the 8x8 digits, 57 steps, reached 0.83 test accuracy at 32
        and 0.61, 0.21 and 0.12 at 18, 55 and 128 (one run each).

        The rule is stated at batch size 512: its learning rate (0.003) and
        steps (500 for fewer than 20,000 examples) are for that batch. Data
        smaller than 512 images is one batch of itself instead, with the same
        steps and learning rate: a batch of 512 from N < 512 images repeats
        each image about 512 / N times, so each of the rule's steps is a step
        on the whole data, which a batch of the N images takes at N / 512 of
        the cost. That whole batch, `min(512, num_examples)`, is the default
        `batch_size`; another batch size scales the learning rate linearly
        (x batch_size / whole batch) and the step counts (steps, warm-up,
        decay boundaries) inversely, rounded, so training sees as many images.
        """
        check_positive_integer(num_examples, "num_examples")
        if variant not in RESOLUTIONS:
            raise ValueError(f"variant must be one of {sorted(RESOLUTIONS)}; got {variant!r}")
        whole_batch = min(REFERENCE_BATCH_SIZE, num_examples)
        batch_size = whole_batch if batch_size is None else batch_size
        check_positive_integer(batch_size, "batch_size")
        height, width = _height_width(image_size)
        small, large = RESOLUTIONS[variant]
        resize_size, crop_size = small if height * width < SMALL_IMAGE_AREA else large
        if resolution is not None and resolution < BIT_RESOLUTION:
            check_positive_integer(resolution, "resolution")
            resize_size, crop_size = round(resolution * resize_size / crop_size), resolution
        _, steps, warmup_steps, boundaries = next(s for s in SCHEDULES if num_examples < s[0])
        scale = whole_batch / batch_size
        return cls(
            resize_size=resize_size,
            crop_size=crop_size,
            steps=max(1, round(steps * scale)),
            warmup_steps=round(warmup_steps * scale),
            decay_boundaries=tuple(round(b * scale) for b in boundaries),
            base_learning_rate=BASE_LEARNING_RATE / scale,
            batch_size=batch_size,
            mixup_alpha=MIXUP_ALPHA if num_examples >= MIXUP_MIN_EXAMPLES else 0.0,
        )


def _height_width(image_size):
    if isinstance(image_size, (int, float)) and not isinstance(image_size, bool):
        sides = (image_size, image_size)
    else:
        sides = tuple(image_size)
    if len(sides) != 2 or any(not side > 0 for side in sides):
        raise ValueError(
            f"image_size must be (height, width) or one positive side; got {image_size!r}"
        )
    return sides
