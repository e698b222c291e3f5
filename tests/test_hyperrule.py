import dataclasses

import pytest

from bitkeras import HyperRule


@pytest.mark.parametrize("num_examples, steps, warmup, boundaries, mixup", [
    (1_000, 500, 100, (200, 300, 400), 0.0),
    (19_999, 500, 100, (200, 300, 400), 0.0),
    (20_000, 10_000, 500, (3_000, 6_000, 9_000), 0.1),
    (499_999, 10_000, 500, (3_000, 6_000, 9_000), 0.1),
    (500_000, 20_000, 500, (6_000, 12_000, 18_000), 0.1),
    (1_281_167, 20_000, 500, (6_000, 12_000, 18_000), 0.1),
])
def test_schedule_follows_the_dataset_size(num_examples, steps, warmup, boundaries, mixup):
    rule = HyperRule.for_dataset(num_examples, (500, 375))
    assert (rule.steps, rule.warmup_steps, rule.decay_boundaries) == (steps, warmup, boundaries)
    assert rule.mixup_alpha == mixup
    assert rule.base_learning_rate == 0.003 and rule.batch_size == 512
    assert rule.flip and rule.crop


@pytest.mark.parametrize("image_size, variant, sizes", [
    (32, "paper", (160, 128)),
    ((95, 96), "paper", (160, 128)),      # area just below 96 * 96
    ((96, 96), "paper", (448, 384)),
    ((500, 375), "paper", (448, 384)),
    ((28, 28), "released", (160, 128)),
    ((500, 375), "released", (512, 480)),
])
def test_resolution_follows_the_image_area(image_size, variant, sizes):
    rule = HyperRule.for_dataset(1_000, image_size, variant=variant)
    assert (rule.resize_size, rule.crop_size) == sizes


@pytest.mark.parametrize("resolution, image_size, sizes", [
    (None, 32, (160, 128)),           # BiT's rule as stated
    (224, (500, 375), (448, 384)),    # BiT's models: the rule as stated
    (480, 32, (160, 128)),
    (32, 8, (40, 32)),                # pre-trained at 32 px: fine-tuned at 32
    (32, (500, 375), (37, 32)),
    (96, 32, (120, 96)),
])
def test_a_model_pretrained_below_bits_resolution_fine_tunes_at_its_own(resolution, image_size,
                                                                         sizes):
    rule = HyperRule.for_dataset(1_000, image_size, resolution=resolution)
    assert (rule.resize_size, rule.crop_size) == sizes


def test_other_batch_sizes_scale_learning_rate_and_steps_keeping_epochs():
    reference = HyperRule.for_dataset(50_000, 32)
    rule = HyperRule.for_dataset(50_000, 32, batch_size=128)
    assert rule.base_learning_rate == pytest.approx(0.00075)
    assert (rule.steps, rule.warmup_steps, rule.decay_boundaries) == (
        40_000, 2_000, (12_000, 24_000, 36_000))
    assert rule.epochs(50_000) == pytest.approx(reference.epochs(50_000))


def test_data_smaller_than_a_batch_is_one_batch_at_the_rules_steps_and_rate():
    rule = HyperRule.for_dataset(40, 32)
    assert (rule.batch_size, rule.steps, rule.base_learning_rate) == (40, 500, 0.003)
    assert (rule.warmup_steps, rule.decay_boundaries) == (100, (200, 300, 400))
    half = HyperRule.for_dataset(40, 32, batch_size=20)
    assert (half.steps, half.warmup_steps, half.decay_boundaries) == (1000, 200, (400, 600, 800))
    assert half.base_learning_rate == pytest.approx(0.0015)
    assert half.epochs(40) == pytest.approx(rule.epochs(40)) == 500


def test_with_steps_keeps_the_shape_of_the_schedule():
    rule = HyperRule.for_dataset(1_000, 32).with_steps(50)
    assert (rule.steps, rule.warmup_steps, rule.decay_boundaries) == (50, 10, (20, 30, 40))
    tiny = HyperRule.for_dataset(1_000, 32).with_steps(2)
    assert tiny.steps == 2 and tiny.warmup_steps <= tiny.decay_boundaries[0]


def test_fields_are_replaceable_and_validated():
    rule = HyperRule.for_dataset(1_000, 32)
    assert dataclasses.replace(rule, flip=False).flip is False
    with pytest.raises(ValueError, match="crop_size \\(200\\) cannot exceed resize_size"):
        dataclasses.replace(rule, crop_size=200)
    with pytest.raises(ValueError, match="decay_boundaries must be increasing"):
        dataclasses.replace(rule, decay_boundaries=(300, 200))
    with pytest.raises(ValueError, match="warmup_steps must be an integer in \\[0, steps=500\\]"):
        dataclasses.replace(rule, warmup_steps=600)
    with pytest.raises(ValueError, match="batch_size must be a positive integer; got 0"):
        dataclasses.replace(rule, batch_size=0)
    with pytest.raises(ValueError, match="variant must be one of"):
        HyperRule.for_dataset(1_000, 32, variant="timm")


def test_config_round_trip_and_readable_description():
    rule = HyperRule.for_dataset(30_000, (500, 375), batch_size=64)
    assert HyperRule(**rule.get_config()) == rule
    text = rule.describe(30_000)
    assert "crop_size            384" in text and "mixup_alpha          0.1" in text
    assert "epochs" in text
