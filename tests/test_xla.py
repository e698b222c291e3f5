import itertools
import json

import pytest

from bitkeras import BiTBackbone, BiTClassifier, HyperRule
from bitkeras.finetuning import distribute, xla
from tests.helpers import TINY


def _rule(steps):
    return HyperRule(resize_size=18, crop_size=16, steps=steps, warmup_steps=1,
                     decay_boundaries=(), base_learning_rate=0.01, batch_size=4, mixup_alpha=0.0)


@pytest.fixture(autouse=True)
def measured(monkeypatch):
    """"auto" as users have it: the test session's override (conftest.py) taken off."""
    monkeypatch.delenv(xla.OVERRIDE_ENV, raising=False)


@pytest.fixture
def classifier():
    return BiTClassifier(BiTBackbone(**TINY), num_classes=3)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BITKERAS_CACHE_DIR", str(tmp_path))
    return tmp_path / xla.CACHE_FILE


def _timer(plain_seconds, xla_seconds, rounds=xla.CALIBRATION_ROUNDS):
    """A clock whose timed passes alternate: each plain one lasts `plain_seconds[i]`, each XLA one
    `xla_seconds[i]` (a number: every round)."""
    def per_round(seconds):
        return list(seconds) if isinstance(seconds, (list, tuple)) else [seconds] * rounds
    durations = [d for pair in zip(per_round(plain_seconds), per_round(xla_seconds)) for d in pair]
    clock = itertools.accumulate(d for duration in durations for d in (0.0, duration))
    return lambda: next(clock)


@pytest.mark.slow
def test_calibration_runs_both_passes_and_picks_the_faster(classifier):
    # Real passes with and without XLA (they must compile and run on this CPU),
    # timed by a clock that makes the XLA pass the faster one.
    result = xla.calibrate(classifier, 16, 2, "float32", timer=_timer(2.0, 1.0))
    assert result == {"jit_compile": True, "seconds": {"plain": 2.0, "xla": 1.0}}


def test_the_choice_takes_medians_of_alternating_passes_and_needs_a_margin(
        classifier, monkeypatch):
    # One busy moment (a 9 s plain pass, a 5 s XLA one) moves neither median.
    monkeypatch.setattr(xla, "CALIBRATION_ROUNDS", 5)
    steps = []
    monkeypatch.setattr(xla.tf, "function", lambda f, jit_compile: (
        lambda: steps.append(jit_compile) or []))
    timer = _timer([1.0, 9.0, 1.0, 1.0, 1.0], [0.9, 5.0, 0.9, 0.9, 0.9])
    result = xla.calibrate(classifier, 16, 2, "float32", timer=timer)
    assert result["jit_compile"] is True
    assert result["seconds"] == pytest.approx({"plain": 1.0, "xla": 0.9}, rel=1e-9)
    assert steps == [False, True] + [False, True] * 5  # compiled, then alternating
    # A tie, or a lead within the margin, keeps XLA off.
    assert xla.choice({"plain": 1.0, "xla": 1.0}) is False
    assert xla.choice({"plain": 1.0, "xla": 1.0 - 0.9 * xla.MARGIN}) is False
    assert xla.choice({"plain": 1.0, "xla": 1.0 - 1.1 * xla.MARGIN}) is True


def test_auto_settles_a_choice_only_when_separate_calibrations_agree(
        classifier, cache, monkeypatch, capsys):
    strategy = distribute.strategy_for("default")
    calls, answers = [], []

    def calibrate(model, image_size, batch_size, precision):
        calls.append((image_size, batch_size, precision))
        jit = answers.pop(0)
        return {"jit_compile": jit, "seconds": {"plain": 2.0, "xla": 1.0 if jit else 3.0}}

    monkeypatch.setattr(xla, "calibrate", calibrate)
    # A short fit does not pay for a calibration: XLA stays off on a CPU.
    assert xla.resolve("auto", strategy, classifier, _rule(10), 4, "float32", verbose=1) is False
    assert calls == [] and not cache.exists()
    assert "not measured for fits under 500 steps" in capsys.readouterr().out
    # Given values are kept as they are.
    assert xla.resolve(True, strategy, classifier, _rule(10), 4, "float32") is True
    assert xla.resolve(False, strategy, classifier, _rule(900), 4, "float32") is False
    assert calls == []
    long_rule = _rule(xla.CALIBRATE_MIN_STEPS)
    key = xla.calibration_key(classifier, 16, 4, "float32")

    def long_fit():
        return xla.resolve("auto", strategy, classifier, long_rule, 4, "float32", verbose=1)

    # One calibration is used, by short fits too, but does not settle it: long fits measure
    # again, and one that disagrees starts the count afresh.
    answers[:] = [True, False, False, False, False]
    assert long_fit() is True and "measured now" in capsys.readouterr().out
    assert xla.resolve("auto", strategy, classifier, _rule(10), 4, "float32") is True
    assert long_fit() is False
    assert json.loads(cache.read_text())[key]["agreeing"] == 1
    assert long_fit() is False
    assert long_fit() is False
    assert "3 of 3 agreeing" in capsys.readouterr().out
    assert len(calls) == 4 and answers == [False]
    # Settled: no more measuring, and said so.
    assert long_fit() is False and len(calls) == 4
    assert "as 3 earlier calibration(s)" in capsys.readouterr().out
    # Another batch or precision is another calibration.
    answers[:] = [True]
    xla.resolve("auto", strategy, classifier, long_rule, 2, "mixed_bfloat16")
    assert calls[-1] == (16, 2, "mixed_bfloat16") and len(json.loads(cache.read_text())) == 2
    # Forgotten, it is measured again.
    xla.forget()
    answers[:] = [True]
    assert long_fit() is True and len(calls) == 6


def test_the_environment_overrides_auto(classifier, cache, monkeypatch):
    strategy = distribute.strategy_for("default")
    monkeypatch.setattr(xla, "calibrate", lambda *args: pytest.fail("calibrated"))
    long_rule = _rule(xla.CALIBRATE_MIN_STEPS)
    monkeypatch.setenv(xla.OVERRIDE_ENV, "1")
    assert xla.resolve("auto", strategy, classifier, long_rule, 4, "float32") is True
    assert xla.resolve(False, strategy, classifier, long_rule, 4, "float32") is False
    monkeypatch.setenv(xla.OVERRIDE_ENV, "0")
    assert xla.resolve("auto", strategy, classifier, long_rule, 4, "float32") is False
    monkeypatch.setenv(xla.OVERRIDE_ENV, "yes")
    with pytest.raises(ValueError, match=r"BITKERAS_JIT_COMPILE is 'yes': set it to 1"):
        xla.resolve("auto", strategy, classifier, long_rule, 4, "float32")


def test_an_unreadable_calibration_file_is_ignored(classifier, cache):
    cache.write_text("{not json")
    assert xla.read_cache() == {}
    strategy = distribute.strategy_for("default")
    assert xla.resolve("auto", strategy, classifier, _rule(10), 4, "float32") is False


def test_calibrations_are_kept_per_native_engine(classifier, monkeypatch):
    """With bitkeras's C++ ops off, the step without XLA is another step: another key."""
    from bitkeras.models import native

    with_engine = xla.calibration_key(classifier, 16, 4, "float32")
    monkeypatch.setenv(native.ENABLE_ENV, "0")
    without = xla.calibration_key(classifier, 16, 4, "float32")
    assert without != with_engine or native.library() is None
    assert "|tf|" in without
    if native.library() is not None:  # and per version of the ops (their source)
        monkeypatch.delenv(native.ENABLE_ENV)
        monkeypatch.setattr(native, "source_digest", lambda: "another")
        assert xla.calibration_key(classifier, 16, 4, "float32") not in (with_engine, without)
