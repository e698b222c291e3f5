"""The model bitkeras pre-trained and ships in saved_models/ (see its MODEL_CARD.md)."""

import json

import numpy as np
import pytest

from bitkeras import BiTBackbone, BiTClassifier
from bitkeras.data import glyphs
from bitkeras.io import presets
from bitkeras.jobs.pretrain_job import upstream_accuracy

NAME = "BiT-Glyphs-R14x0.5"
FOLDER = presets.SAVED_MODELS / NAME


def test_shipped_preset_loads_offline_with_its_glyph_head():
    classifier = BiTClassifier.from_preset(NAME)
    assert classifier.num_classes == glyphs.NUM_CLASSES
    assert classifier.class_names == glyphs.CLASS_NAMES
    backbone = BiTBackbone.from_preset(NAME)
    assert backbone.block_units == (1, 1, 1, 1) and backbone.width_factor == 0.5
    images = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(backbone(images).numpy(),
                               classifier.backbone(images).numpy(), atol=1e-6)


def test_keras_style_fit_of_the_shipped_model_on_the_digits_learns_them():
    """README's Keras line, shortened by `epochs` far below the HyperRule's 4,000 steps at
    batch 64: sized for the model's own 32 pixels, it learns the digits (at the rule's 128
    pixels it stayed at chance, 0.12)."""
    from bitkeras.data import datasets

    classifier = BiTClassifier.from_preset(NAME, num_classes=10)
    assert classifier.backbone.weights_resolution == 32
    history = classifier.fit(*datasets.digits("train"), epochs=3, batch_size=64,
                             validation_split=0.1, verbose=0)
    assert history.hyperrule.crop_size == 32 and history.hyperrule.steps == 57
    accuracy = classifier.evaluate(*datasets.digits("test"), verbose=0, return_dict=True)
    assert accuracy["accuracy"] > 0.5  # chance: 0.1 (0.83 measured)


@pytest.mark.slow
def test_upstream_accuracy_on_fresh_glyphs_matches_the_model_card():
    record = json.loads((FOLDER / "upstream.json").read_text())
    card = (FOLDER / "MODEL_CARD.md").read_text()
    claimed = record["evaluation"]["accuracy"]
    assert f"{claimed:.4f}" in card and record["command"] in card
    assert record["steps_completed"] == record["recipe"]["steps"]
    # A sample neither the training run (seed 0) nor the card's evaluation has seen.
    measured = upstream_accuracy(BiTClassifier.from_preset(NAME), 50 * glyphs.NUM_CLASSES,
                                 seed=424242, image_size=record["data"]["image_size"])
    assert abs(measured["accuracy"] - claimed) <= 0.02, (measured, claimed)
