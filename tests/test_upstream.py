import dataclasses

import pytest

from bitkeras.finetuning.upstream import UpstreamRecipe


def test_recipe_follows_bit_upstream_numbers():
    recipe = UpstreamRecipe.for_dataset(num_examples=12_800, image_size=224, batch_size=512)
    assert recipe.steps == 90 * 12_800 // 512 == 2250
    assert recipe.base_learning_rate == pytest.approx(0.03 * 512 / 256)
    assert recipe.decay_boundaries == (750, 1500, 2000)  # 30, 60, 80 of 90 epochs
    assert recipe.warmup_steps == round(2250 * 5000 / 312_000)
    assert (recipe.crop_size, recipe.resize_size) == (224, 256)
    assert recipe.weight_decay == 1e-4 and recipe.mixup_alpha == 0 and recipe.flip


def test_recipe_scales_to_a_short_run_and_round_trips():
    recipe = UpstreamRecipe.for_dataset(1000, 32, batch_size=100, epochs=9, flip=False)
    assert recipe.steps == 90 and recipe.decay_boundaries == (30, 60, 80)
    assert recipe.warmup_steps == 1 and not recipe.flip
    assert UpstreamRecipe(**recipe.get_config()) == recipe
    assert recipe.describe().startswith("BiT upstream recipe:")


def test_recipe_refuses_bad_values():
    with pytest.raises(ValueError, match="weight_decay"):
        dataclasses.replace(UpstreamRecipe.for_dataset(100, 32, 10), weight_decay=-1.0)
    with pytest.raises(ValueError, match="epochs"):
        UpstreamRecipe.for_dataset(100, 32, 10, epochs=0)
    with pytest.raises(ValueError, match="batch_size"):
        UpstreamRecipe.for_dataset(100, 32, 0)
