"""Argument checks shared by the modules (pure Python), and the names they accept."""

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
"""What `fit(precision=...)` and the CLI's --precision take."""

STRATEGY_NAMES = ("auto", "default", "mirrored", "multi_worker", "tpu")
"""The strategies `fit(strategy=...)` and the CLI's --strategy take by name."""


def check_positive_integer(value, name):
    """Raises ValueError unless `value` is an int >= 1 (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")


def check_seed(seed, name="seed"):
    """Raises ValueError unless `seed` is an int >= 0 (bools are refused)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{name} must be a non-negative integer; got {seed!r}")
