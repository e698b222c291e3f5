import keras
import pytest

from bitkeras import HyperRule, WarmupStaircase


def test_warmup_then_staircase():
    schedule = WarmupStaircase(0.003, warmup_steps=100, decay_boundaries=(200, 300, 400))
    rates = [float(schedule(step)) for step in (0, 50, 99, 100, 199, 200, 300, 450)]
    assert rates == pytest.approx([0, 0.0015, 0.00297, 0.003, 0.003, 0.0003, 0.00003, 0.000003])


def test_accumulation_counts_optimizer_steps():
    schedule = WarmupStaircase(0.01, warmup_steps=10, decay_boundaries=(20,), accumulation_steps=4)
    assert float(schedule(4 * 5 + 3)) == pytest.approx(0.005)   # optimizer step 5
    assert float(schedule(4 * 20)) == pytest.approx(0.001)


def test_schedule_serializes_and_follows_the_rule():
    rule = HyperRule.for_dataset(1_000, 32, batch_size=64)
    schedule = WarmupStaircase.from_hyperrule(rule)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, WarmupStaircase)
    assert restored.get_config() == schedule.get_config()
    assert float(restored(rule.warmup_steps)) == pytest.approx(rule.base_learning_rate)
