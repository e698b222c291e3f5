import itertools
import json

import pytest

from bitkeras import BiTBackbone, BiTClassifier, HyperRule
from bitkeras.finetuning import distribute, xla
from tests.helpers import TINY


def _rule(steps):
    return HyperRule(resize_size=18, crop_size=16, steps=steps, warmup_steps=1,
                     decay_boundaries=(), base_learning_rate=0.01, batch_size=4, mixup_alpha=0.0)


@pytest.fixture
def classifier():
    return BiTClassifier(BiTBackbone(**TINY), num_classes=3)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BITKERAS_CACHE_DIR", str(tmp_path))
    return tmp_path / xla.CACHE_FILE


def _timer(plain_seconds, xla_seconds, rounds=xla.CALIBRATION_ROUNDS):
    """A clock whose timed passes last `plain_seconds`, then `xla_seconds`."""
    durations = [plain_seconds] * rounds + [xla_seconds] * rounds
    clock = itertools.accumulate(d for duration in durations for d in (0.0, duration))
    return lambda: next(clock)


@pytest.mark.slow
def test_calibration_runs_both_passes_and_picks_the_faster(classifier):
    # Real passes with and without XLA (they must compile and run on this CPU),
    # timed by a clock that makes the XLA pass the faster one.
    result = xla.calibrate(classifier, 16, 2, "float32", timer=_timer(2.0, 1.0))
    assert result == {"jit_compile": True, "seconds": {"plain": 2.0, "xla": 1.0}}
    assert xla.choice({"plain": 1.0, "xla": 1.0}) is False  # a tie keeps XLA off
    assert xla.choice({"plain": 1.0, "xla": 0.9}) is True


def test_auto_uses_a_kept_calibration_and_calibrates_only_long_fits(
        classifier, cache, monkeypatch):
    strategy = distribute.strategy_for("default")
    calls = []

    def calibrate(model, image_size, batch_size, precision):
        calls.append((image_size, batch_size, precision))
        return {"jit_compile": True, "seconds": {"plain": 2.0, "xla": 1.0}}

    monkeypatch.setattr(xla, "calibrate", calibrate)
    # A short fit does not pay for a calibration: XLA stays off on a CPU.
    assert xla.resolve("auto", strategy, classifier, _rule(10), 4, "float32") is False
    assert calls == [] and not cache.exists()
    # Given values are kept as they are.
    assert xla.resolve(True, strategy, classifier, _rule(10), 4, "float32") is True
    assert xla.resolve(False, strategy, classifier, _rule(900), 4, "float32") is False
    assert calls == []
    # A long fit calibrates once per machine, model and step shape, and keeps the answer.
    long_rule = _rule(xla.CALIBRATE_MIN_STEPS)
    assert xla.resolve("auto", strategy, classifier, long_rule, 4, "float32") is True
    assert calls == [(16, 4, "float32")]
    kept = json.loads(cache.read_text())
    key = xla.calibration_key(classifier, 16, 4, "float32")
    assert kept[key]["jit_compile"] is True
    assert xla.resolve("auto", strategy, classifier, _rule(10), 4, "float32") is True
    assert len(calls) == 1
    # Another batch or precision is another calibration.
    xla.resolve("auto", strategy, classifier, long_rule, 2, "mixed_bfloat16")
    assert calls[-1] == (16, 2, "mixed_bfloat16") and len(json.loads(cache.read_text())) == 2


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
