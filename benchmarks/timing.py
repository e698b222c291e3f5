"""Timing for the benchmarks: medians of interleaved rounds (no TensorFlow, no bitkeras)."""

import time

import numpy as np


def median_seconds(run, steps, warmup=2):
    """Median seconds of `run()` over `steps` timed calls, after warm-up calls."""
    return interleaved_median_seconds({"run": run}, steps, warmup)["run"]


def interleaved_median_seconds(runs, rounds, warmup=2):
    """Median seconds per call of each of `runs` (name -> callable), timed in turn.

    Each round times one call of every run, so a slow spell of the machine
    (frequency, neighbours) falls on all of them alike and ratios stay fair.
    """
    for run in runs.values():
        for _ in range(warmup):
            run()
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}
