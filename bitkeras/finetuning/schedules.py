"""Learning-rate schedules as Keras LearningRateSchedules: BiT's fine-tuning staircase, and the
cosine of distillation."""

import math

import keras
from keras import ops

from bitkeras.checks import check_positive_integer


@keras.saving.register_keras_serializable(package="bitkeras")
class WarmupStaircase(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0, then the rate divided by 10 at each boundary.

    At optimizer step `s`: `base_learning_rate * s / warmup_steps` while
    `s < warmup_steps`, else `base_learning_rate * decay_factor ** k` where `k`
    counts the boundaries `b <= s`.

    `accumulation_steps`: with gradient accumulation Keras calls the schedule
    with the micro-batch count; the schedule divides it back to optimizer steps.

    Example:

    >>> schedule = WarmupStaircase(0.003, warmup_steps=100, decay_boundaries=(200, 300, 400))
    >>> round(float(schedule(50)), 6), round(float(schedule(250)), 6)
    (0.0015, 0.0003)
    """

    def __init__(self, base_learning_rate, warmup_steps, decay_boundaries, decay_factor=0.1,
                 accumulation_steps=1):
        if not base_learning_rate > 0:
            raise ValueError(f"base_learning_rate must be positive; got {base_learning_rate!r}")
        check_positive_integer(accumulation_steps, "accumulation_steps")
        self.base_learning_rate = float(base_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.decay_boundaries = tuple(int(b) for b in decay_boundaries)
        self.decay_factor = float(decay_factor)
        self.accumulation_steps = accumulation_steps

    @classmethod
    def from_hyperrule(cls, rule, accumulation_steps=1):
        """The schedule of a `bitkeras.HyperRule`."""
        return cls(rule.base_learning_rate, rule.warmup_steps, rule.decay_boundaries,
                   accumulation_steps=accumulation_steps)

    def __call__(self, step):
        step = ops.cast(ops.floor_divide(step, self.accumulation_steps), "float32")
        decays = sum((ops.cast(step >= boundary, "float32") for boundary in self.decay_boundaries),
                     ops.zeros((), "float32"))
        rate = self.base_learning_rate * ops.power(self.decay_factor, decays)
        if self.warmup_steps > 0:
            warmup = self.base_learning_rate * step / self.warmup_steps
            rate = ops.where(step < self.warmup_steps, warmup, rate)
        return rate

    def get_config(self):
        return {
            "base_learning_rate": self.base_learning_rate,
            "warmup_steps": self.warmup_steps,
            "decay_boundaries": list(self.decay_boundaries),
            "decay_factor": self.decay_factor,
            "accumulation_steps": self.accumulation_steps,
        }


@keras.saving.register_keras_serializable(package="bitkeras")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0, then a cosine from `base_learning_rate` down to 0 at `steps`.

    The schedule of big_vision's distillation runs. At optimizer step `s`:
    `base_learning_rate * s / warmup_steps` while `s < warmup_steps`, else
    `base_learning_rate * (1 + cos(pi * t)) / 2` with `t = (s - warmup_steps)
    / (steps - warmup_steps)`, held at 0 after `steps`.

    Example:

    >>> schedule = WarmupCosine(0.01, warmup_steps=10, steps=110)
    >>> tuple(round(float(schedule(step)), 6) for step in (5, 10, 60, 110))
    (0.005, 0.01, 0.005, 0.0)
    """

    def __init__(self, base_learning_rate, warmup_steps, steps):
        if not base_learning_rate > 0:
            raise ValueError(f"base_learning_rate must be positive; got {base_learning_rate!r}")
        check_positive_integer(steps, "steps")
        self.base_learning_rate = float(base_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.steps = int(steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        span = max(1, self.steps - self.warmup_steps)
        progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        rate = self.base_learning_rate * 0.5 * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_steps > 0:
            warmup = self.base_learning_rate * step / self.warmup_steps
            rate = ops.where(step < self.warmup_steps, warmup, rate)
        return rate

    def get_config(self):
        return {"base_learning_rate": self.base_learning_rate,
                "warmup_steps": self.warmup_steps, "steps": self.steps}
