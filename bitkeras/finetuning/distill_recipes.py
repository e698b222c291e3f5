"""Distillation's rule, and the recipes of "A good teacher is patient and consistent" as data.

Pure Python, like the HyperRule. Beyer et al. (CVPR 2022) distil a big BiT
teacher into a small student by matching the two networks' predicted
distributions (KL divergence, at a temperature) on the same augmented
images, for schedules far longer than supervised training: see
`bitkeras.distill` and docs/guide/distillation.md.
"""

import dataclasses
import math

from bitkeras.finetuning.hyperrule import HyperRule, TrainingRule

MODES = ("fixed_teacher", "independent_noise", "consistent", "function_matching")
"""The paper's four ways to teach, worst to best in its experiments:

- "fixed_teacher": the teacher's predictions on each image's central view,
  computed once before training; the student trains on random crops of it.
- "independent_noise": teacher and student each see their own random crop
  and flip of the image.
- "consistent": both see exactly the same crop and flip, every step.
- "function_matching": consistent, plus MixUp of the images (alpha 1 by
  default), which makes each step compare the functions on new points.
"""

DECAYS = ("cosine", "staircase")
OPTIMIZERS = ("sgd", "adam")
FUNCTION_MATCHING_MIXUP = 1.0
"""MixUp's Beta(alpha, alpha) in function matching: the paper's p=1, a uniform mixing weight."""


@dataclasses.dataclass(frozen=True)
class DistillationRule(TrainingRule):
    """A `TrainingRule` for distillation: how to teach, at what temperature, on which schedule.

    Added to `TrainingRule`'s fields:

    - `mode`: one of `MODES`.
    - `temperature`: teacher and student logits are divided by it before
      the softmax; the loss is multiplied by its square (Hinton et al.), so
      its gradients keep their size.
    - `decay`: "cosine" (from `base_learning_rate` after the warm-up to 0 at
      `steps`, the paper's) or "staircase" (divided by 10 at
      `decay_boundaries`, the HyperRule's).
    - `optimizer`: "sgd" (momentum 0.9, the HyperRule's) or "adam" (the
      paper's, Keras's AdamW).
    - `weight_decay`: on kernels, as big_vision states it: each step
      shrinks a kernel by `weight_decay` times the schedule's factor (not
      times the learning rate).
    - `clip_norm`: the gradients' global norm is clipped to it (the paper:
      1.0); None: no clipping.
    """

    mode: str = "function_matching"
    temperature: float = 1.0
    decay: str = "cosine"
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    clip_norm: float | None = None
    title = "Distillation rule"

    def __post_init__(self):
        super().__post_init__()
        for name, choices in (("mode", MODES), ("decay", DECAYS), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"DistillationRule.{name} must be one of {list(choices)}; "
                                 f"got {getattr(self, name)!r}")
        for name, value, allow_zero in (("temperature", self.temperature, False),
                                        ("weight_decay", self.weight_decay, True),
                                        ("clip_norm", self.clip_norm, False)):
            if name == "clip_norm" and value is None:
                continue
            good = isinstance(value, (int, float)) and not isinstance(value, bool) and (
                math.isfinite(value) and (value >= 0 if allow_zero else value > 0))
            if not good:
                raise ValueError(f"DistillationRule.{name} must be a finite number "
                                 f"{'>= 0' if allow_zero else '> 0'}; got {value!r}")

    @classmethod
    def for_dataset(cls, num_examples, image_size, mode="function_matching", batch_size=None,
                    resolution=None, variant="paper"):
        """The HyperRule for the data (see `HyperRule.for_dataset`), teaching in `mode`.

        Sizes, batch, learning rate, warm-up and steps are the HyperRule's;
        the decay is cosine; MixUp is `FUNCTION_MATCHING_MIXUP` in function
        matching and off otherwise. Distillation gains from far longer runs
        (the paper's "patience"): pass more `steps`.
        """
        rule = HyperRule.for_dataset(num_examples, image_size, batch_size, variant, resolution)
        fields = {field.name: getattr(rule, field.name)
                  for field in dataclasses.fields(TrainingRule)}
        fields["mixup_alpha"] = FUNCTION_MATCHING_MIXUP if mode == "function_matching" else 0.0
        return cls(**fields, mode=mode)


@dataclasses.dataclass(frozen=True)
class PaperRecipe:
    """One of the paper's distillation runs, as data: what to distil into what, and how.

    `rule_fields`: the `DistillationRule`'s fields other than sizes of the
    run (steps follow from `epochs`, the data's size and the batch).
    `epochs`: passes over `split`; the paper's patience is in these numbers.
    Crops: big_vision takes Inception crops (random area and aspect) where
    bitkeras's pipeline takes BiT's square random crops of a resized image.
    """

    data: str  # "tfds:NAME:SPLIT", the training data
    teacher: str  # a preset
    student: str  # a preset (an architecture: students start from scratch)
    epochs: int
    warmup_steps: int
    rule_fields: dict

    def rule(self, num_examples, mode="function_matching"):
        """The `DistillationRule` of this recipe on `num_examples` training images."""
        batch_size = self.rule_fields["batch_size"]
        steps = max(1, math.ceil(self.epochs * num_examples / batch_size))
        fields = dict(self.rule_fields)
        if mode != "function_matching":
            fields["mixup_alpha"] = 0.0
        return DistillationRule(steps=steps, warmup_steps=min(self.warmup_steps, steps),
                                decay_boundaries=(), mode=mode, **fields)


def _recipe(data, teacher, epochs, warmup_steps, learning_rate, weight_decay, temperature,
            batch_size, side):
    """A recipe with the paper's constants: R50x1 student, Adam, cosine, clip 1, MixUp 1."""
    resize = {224: 256, 128: 160}[side]
    return PaperRecipe(data, teacher, "R50x1", epochs, warmup_steps, dict(
        resize_size=resize, crop_size=side, base_learning_rate=learning_rate,
        batch_size=batch_size, mixup_alpha=FUNCTION_MATCHING_MIXUP, temperature=temperature,
        optimizer="adam", weight_decay=weight_decay, clip_norm=1.0, decay="cosine"))


# (teacher preset tail, epochs, learning rate, weight decay, temperature) per variant, from
# big_vision's configs/proj/distill (bigsweep_flowers_pet.py, bigsweep_food_sun.py).
_SMALL_DATA = {
    "oxford_flowers102": ("train", "flowers", {
        "fast": (10_000, 0.003, 3e-4, 10.0), "medium": (100_000, 0.001, 1e-4, 1.0),
        "long": (1_000_000, 0.0003, 1e-5, 1.0)}),
    "oxford_iiit_pet": ("train[:90%]", "pet", {
        "fast": (1_000, 0.01, 1e-3, 5.0), "medium": (3_000, 0.003, 3e-4, 10.0),
        "long": (30_000, 0.003, 1e-5, 2.0)}),
    "food101": ("train[:90%]", "food", {
        "fast": (100, 0.01, 1e-3, 10.0), "medium": (1_000, 0.001, 3e-4, 10.0),
        "long": (3_000, 0.01, 1e-4, 5.0)}),
    "sun397": ("train", "sun", {
        "fast": (100, 0.01, 1e-3, 10.0), "medium": (1_000, 0.001, 1e-4, 10.0),
        "long": (3_000, 0.01, 3e-5, 10.0)}),
}

PAPER_RECIPES = {
    **{f"imagenet2012-{epochs}ep": _recipe(
        "tfds:imagenet2012:train[:98%]", "BiT-M-R152x2-distill-teacher-224", epochs, 5_000,
        0.03, 3e-4, 1.0, 4096, 224) for epochs in (300, 1200, 4800, 9600)},
    **{f"{name}-{variant}": _recipe(
        f"tfds:{name}:{split}", f"BiT-M-R152x2-distill-teacher-{short}-128", epochs, 1_500,
        learning_rate, weight_decay, temperature, 512, 128)
       for name, (split, short, variants) in _SMALL_DATA.items()
       for variant, (epochs, learning_rate, weight_decay, temperature) in variants.items()},
}
"""The paper's runs by name: ImageNet (224 px, batch 4096; 1200 epochs is big_vision's
default, 9600 the paper's longest) and Flowers, Pets, Food-101, SUN397 (128 px, batch
512, "fast", "medium", "long"): BiT-M-R152x2 teachers into an R50x1 student."""


def paper_recipe(name):
    """The recipe called `name` in `PAPER_RECIPES`, or an error listing them."""
    if name not in PAPER_RECIPES:
        raise ValueError(f"unknown distillation recipe {name!r}; known: "
                         f"{', '.join(PAPER_RECIPES)}")
    return PAPER_RECIPES[name]
