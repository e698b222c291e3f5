"""The ResNet papers' recipes as data, layer responses, and the experiments end to end."""

import json
import types

import keras
import numpy as np
import pytest

from bitkeras import ResNetBackbone
from bitkeras.finetuning.resnet_recipes import (
    CIFAR_RECIPE,
    IMAGENET_RECIPE,
    RecipeLearningRate,
    ResNetRecipe,
)
from bitkeras.finetuning import run_state
from bitkeras.jobs import cli, experiments
from bitkeras.models import resnet_family
from bitkeras.models.augmentation import IMAGENET_EIGENVALUES, IMAGENET_EIGENVECTORS
from bitkeras.models.responses import layer_responses, response_layers


def test_recipes_state_the_papers():
    cifar = CIFAR_RECIPE
    assert (cifar.learning_rate, cifar.batch_size, cifar.steps, cifar.decay_steps) == (
        0.1, 128, 64000, (32000, 48000))
    assert (cifar.momentum, cifar.weight_decay, cifar.padding, cifar.crop_size) == (
        0.9, 1e-4, 4, 32)
    assert cifar.for_depth(56).warmup_learning_rate is None
    deep = cifar.for_depth(110)
    assert (deep.warmup_learning_rate, deep.warmup_error) == (0.01, 0.8)
    imagenet = IMAGENET_RECIPE
    assert (imagenet.batch_size, imagenet.learning_rate, imagenet.plateau) == (256, 0.1, True)
    assert (imagenet.scale_range, imagenet.crop_size, imagenet.pca_lighting_std) == (
        (256, 480), 224, 0.1)
    assert isinstance(imagenet.callbacks()[0], keras.callbacks.ReduceLROnPlateau)


def test_scaled_recipes_keep_the_shape_of_the_schedule():
    small = CIFAR_RECIPE.scaled(steps=640, batch_size=32)
    assert small.decay_steps == (320, 480) and small.learning_rate == pytest.approx(0.025)
    rates = [small.learning_rate_at(step) for step in (0, 319, 320, 479, 480, 639)]
    np.testing.assert_allclose(rates, [0.025, 0.025, 0.0025, 0.0025, 0.00025, 0.00025])
    assert small.for_depth(110).learning_rate_at(500, warmed=False) == pytest.approx(0.0025)
    with pytest.raises(ValueError, match="inside the"):
        ResNetRecipe("bad", 0.1, 8, steps=10, decay_steps=(20,))


def test_warm_up_holds_until_the_training_error_falls_below_the_bar():
    recipe = CIFAR_RECIPE.scaled(steps=100, batch_size=128).for_depth(110)
    callback = RecipeLearningRate(recipe)
    optimizer = keras.optimizers.SGD(1.0)
    callback.set_model(types.SimpleNamespace(optimizer=optimizer))
    callback.on_train_batch_begin(0)
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
    callback.on_train_batch_end(0, {"accuracy": 0.15})  # error 0.85: still warming up
    callback.on_train_batch_begin(1)
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
    callback.on_train_batch_end(1, {"accuracy": 0.25})  # error 0.75 < 0.8
    callback.on_train_batch_begin(2)
    assert float(optimizer.learning_rate) == pytest.approx(0.1)


def test_cifar_augmentation_pads_crops_and_flips_reproducibly():
    images = np.full((8, 32, 32, 3), 255, np.uint8)
    recipe = CIFAR_RECIPE.scaled(steps=10, batch_size=8)
    batch, labels = next(iter(recipe.dataset(images, np.arange(8), seed=3)))
    assert batch.shape == (8, 32, 32, 3) and sorted(labels.numpy()) == list(range(8))
    # A random crop of the 4-pixel zero border shows black rows or columns in most images.
    black = [(image.numpy() == 0).all(axis=-1).any() for image in batch]
    assert 0 < sum(black) <= 8
    again, _ = next(iter(recipe.dataset(images, np.arange(8), seed=3)))
    np.testing.assert_array_equal(batch, again)


def test_imagenet_augmentation_shifts_colours_along_the_eigenvectors():
    recipe = ResNetRecipe("imagenet-small", 0.1, batch_size=64, steps=10, crop_size=16,
                          scale_range=(256, 480), pca_lighting_std=0.1)
    images = np.full((64, 20, 30, 3), 0.5, np.float32)
    batch, _ = next(iter(recipe.dataset(images, np.zeros(64, np.int64))))
    assert batch.shape == (64, 16, 16, 3)
    shifts = batch.numpy().reshape(64, -1, 3) - 0.5
    np.testing.assert_allclose(shifts, np.broadcast_to(shifts[:, :1], shifts.shape),
                               atol=1e-5)  # one shift per image
    # Per image: shift = V (alpha * lambda), alpha ~ N(0, 0.1).
    alphas = (shifts[:, 0] @ np.asarray(IMAGENET_EIGENVECTORS)) / np.asarray(IMAGENET_EIGENVALUES)
    assert 0.05 < alphas.std() < 0.2
    assert abs(alphas.mean()) < 0.05


@pytest.mark.parametrize("changes, expected", [
    ({}, [("conv2_block1_1_conv", "conv2_block1_1_bn"), ("conv2_block1_2_conv",
                                                         "conv2_block1_2_bn")]),
    ({"preactivation": True}, [("conv2_block1_1_conv", "conv2_block1_1_bn"),
                               ("conv2_block1_2_conv", "conv2_block1_2_conv")]),
    ({"normalization": "none"}, [("conv2_block1_1_conv", "conv2_block1_1_conv"),
                                 ("conv2_block1_2_conv", "conv2_block1_2_conv")]),
])
def test_layer_responses_are_taken_after_normalization_before_the_nonlinearity(changes,
                                                                              expected):
    config = resnet_family.cifar(8).replace(stage_units=(1, 1), stage_channels=(4, 8),
                                            **changes)
    backbone = ResNetBackbone(**config.get_config())
    pairs = response_layers(backbone)
    assert pairs[1:3] == expected  # after the stem's 3x3 convolution
    images = np.random.default_rng(0).uniform(0, 1, (5, 12, 12, 3)).astype("float32")
    responses = layer_responses(backbone, images, batch_size=2)
    assert list(responses) == [conv for conv, _ in pairs]
    probe = keras.Model(backbone.input, backbone.get_layer(pairs[1][1]).output)
    expected_std = np.asarray(probe(images)).std()
    assert responses[pairs[1][0]] == pytest.approx(expected_std, rel=1e-4)


@pytest.mark.slow
def test_degradation_experiment_runs_end_to_end(tmp_path):
    report = cli.run(["experiment", "degradation", "--out", str(tmp_path), "--steps", "4",
                      "--batch-size", "8", "--examples", "48", "--depths", "8", "14"])
    assert set(report["models"]) == {"Plain8-CIFAR", "Plain14-CIFAR", "ResNet8-CIFAR",
                                     "ResNet14-CIFAR"}
    for model in report["models"].values():
        assert len(model["curve"]["steps"]) == 4 and 0 <= model["test_error"] <= 1
    assert isinstance(report["deeper_plain_trains_worse"], bool)
    assert len(report["layer_responses"]["ResNet14-CIFAR"]) == 1 + 12  # stem + 2 per unit
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["models"]["Plain8-CIFAR"]["parameters"] == report["models"]["Plain8-CIFAR"][
        "parameters"]
    assert (tmp_path / "report.png").stat().st_size and (tmp_path / "responses.png").stat().st_size


@pytest.mark.slow
def test_normalization_ablation_runs_end_to_end(tmp_path):
    report = experiments.normalization_ablation(
        tmp_path, upstream_steps=2, batch_size=4, device_batch_size=2, examples=32,
        transfer_steps=1, transfer_batch_size=8, width_factor=1, verbose=0)
    assert list(report["variants"]) == ["BN", "GN", "GN+WS"]
    for variant in report["variants"].values():
        assert 0 <= variant["transfer_accuracy"] <= 1
        assert 0 <= variant["upstream"]["test_error"] <= 1
    assert (tmp_path / "report.png").stat().st_size
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["per_device_batch"] == 2 and saved["upstream_rule"]["batch_size"] == 4


def test_the_recipes_train_through_the_one_loop_and_its_nan_stop():
    # The experiments' recipes run where every rule runs (training.train): a loss that
    # turns NaN stops the run by name, with the model put back as it started.
    recipe = CIFAR_RECIPE.scaled(steps=6, batch_size=8)
    backbone = ResNetBackbone(**resnet_family.cifar(8, shortcut="A").replace(
        width_factor=0.25).get_config())
    model = experiments._classifier(backbone, 3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (16, 32, 32, 3)).astype(np.uint8)
    labels = np.arange(16) % 3
    head = model.get_layer("head")
    poisoned = [np.full_like(head.kernel.numpy(), np.nan), head.bias.numpy()]
    head.set_weights(poisoned)
    with pytest.raises(run_state.NonFiniteLossError, match="loss became nan at step 1"):
        experiments._train(model, recipe, (images, labels), (images, labels), 0, 0, "test")
    np.testing.assert_array_equal(head.kernel.numpy(), poisoned[0])  # as it started
