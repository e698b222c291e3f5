import keras
import numpy as np
import pytest

from bitkeras import BiTBackbone, BiTClassifier, load_npz
from tests import reference
from tests.conftest import TINY


@pytest.mark.parametrize("num_classes, parameters", [(1000, 25_549_352), (21843, 68_256_659)])
def test_r50x1_classifier_parameter_counts(num_classes, parameters):
    classifier = BiTClassifier(BiTBackbone(), num_classes)
    assert classifier.count_params() == parameters


def test_classifier_equals_the_documented_function(tiny_checkpoint, images):
    path, arrays = tiny_checkpoint
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=5)
    load_npz(classifier, path)
    _, expected_logits, _ = reference.forward(arrays, images, TINY["block_units"])
    np.testing.assert_allclose(classifier(images), expected_logits, rtol=1e-4, atol=1e-4)


def test_new_head_starts_at_zero(images):
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=7)
    np.testing.assert_array_equal(classifier(images), np.zeros((2, 7)))


def _tiny_preset(monkeypatch, path):
    from bitkeras import presets
    from bitkeras.architecture import Architecture

    preset = presets.Preset("BiT-T-tiny", Architecture(**TINY), "BiT-T-tiny.npz", "test model")
    monkeypatch.setitem(presets.PRESETS, preset.name, preset)
    return preset.name


def test_from_preset_keeps_the_checkpoint_head(monkeypatch, tiny_checkpoint, images):
    path, arrays = tiny_checkpoint
    name = _tiny_preset(monkeypatch, path)
    classifier = BiTClassifier.from_preset(name, weights=path)
    assert classifier.num_classes == 5  # read from the file
    _, expected_logits, _ = reference.forward(arrays, images, TINY["block_units"])
    np.testing.assert_allclose(classifier(images), expected_logits, rtol=1e-4, atol=1e-4)


def test_from_preset_with_num_classes_adds_a_zero_head(monkeypatch, tiny_checkpoint, images):
    path, arrays = tiny_checkpoint
    classifier = BiTClassifier.from_preset(_tiny_preset(monkeypatch, path), weights=path,
                                           num_classes=3)
    np.testing.assert_array_equal(classifier(images), np.zeros((2, 3)))
    expected_features, _, _ = reference.forward(arrays, images, TINY["block_units"])
    np.testing.assert_allclose(classifier.backbone(images), expected_features, rtol=1e-4, atol=1e-4)


def test_from_preset_without_weights_needs_num_classes():
    with pytest.raises(ValueError, match="needs num_classes"):
        BiTClassifier.from_preset("R50x1")


def test_plain_keras_compile_and_fit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 32)
    # Class 1 is bright, class 0 dark: learnable in a few steps.
    images = (rng.uniform(0, 0.4, (32, 32, 32, 3)) + 0.5 * labels[:, None, None, None]).astype(np.float32)
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
    classifier.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    # BiTClassifier.fit is the HyperRule; Keras's own loop stays reachable.
    history = keras.Model.fit(classifier, images, labels, batch_size=8, epochs=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["accuracy"][-1] >= 0.9


def test_compile_defaults_follow_bit():
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
    classifier.compile()
    assert isinstance(classifier.optimizer, keras.optimizers.SGD)
    assert classifier.optimizer.momentum == 0.9
    assert float(classifier.optimizer.learning_rate) == pytest.approx(0.003)
    assert classifier.jit_compile is False
    classifier.compile(jit_compile=True)
    assert classifier.jit_compile is True


def test_save_and_load_give_identical_outputs(tmp_path, tiny_checkpoint, images):
    path, _ = tiny_checkpoint
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=5)
    load_npz(classifier, path)
    expected = keras.ops.convert_to_numpy(classifier(images))

    classifier.save(tmp_path / "classifier.keras")
    restored = keras.models.load_model(tmp_path / "classifier.keras")
    assert isinstance(restored, BiTClassifier) and restored.num_classes == 5
    np.testing.assert_array_equal(restored(images), expected)

    classifier.save_weights(tmp_path / "classifier.weights.h5")
    fresh = BiTClassifier(BiTBackbone(**TINY), num_classes=5)
    fresh.load_weights(tmp_path / "classifier.weights.h5")
    np.testing.assert_array_equal(fresh(images), expected)


def test_num_classes_is_validated():
    with pytest.raises(ValueError, match="num_classes must be a positive integer; got 0"):
        BiTClassifier(BiTBackbone(**TINY), num_classes=0)


def test_compiled_classifier_reloads_compiled(tmp_path, images):
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
    classifier.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.8), jit_compile=True)
    keras.Model.fit(classifier, images, np.array([0, 1]), epochs=1, verbose=0)
    classifier.save(tmp_path / "compiled.keras")
    restored = keras.models.load_model(tmp_path / "compiled.keras")
    assert restored.compiled and restored.jit_compile is True
    assert float(restored.optimizer.learning_rate) == pytest.approx(0.05)
    assert restored.optimizer.momentum == pytest.approx(0.8)
    assert int(restored.optimizer.iterations) == 1


def test_from_preset_keeping_a_head_needs_one_in_the_file(monkeypatch, tmp_path):
    arrays = reference.checkpoint_arrays(TINY["block_units"], TINY["width_factor"])
    path = reference.write_checkpoint(tmp_path / "headless.npz", arrays)
    with pytest.raises(ValueError, match="has no head: pass num_classes"):
        BiTClassifier.from_preset(_tiny_preset(monkeypatch, path), weights=path)


def test_a_repeated_fit_setup_starts_its_optimizer_afresh():
    rng = np.random.default_rng(0)
    data = (rng.uniform(0, 1, (40, 16, 16, 3)).astype("float32"), np.arange(40) % 4)
    settings = dict(steps=4, batch_size=8, crop_size=16, resize_size=18, seed=1, verbose=0,
                    batch_split=2)

    def fresh():
        keras.utils.set_random_seed(0)
        return BiTClassifier(BiTBackbone(**TINY), num_classes=4)

    reused = fresh()
    start = reused.get_weights()
    reused.fit(data, **settings)
    optimizer = reused.optimizer
    reused.set_weights(start)
    reused.fit(data, **settings)  # same setup: same optimizer, its state zeroed
    assert reused.optimizer is optimizer and int(optimizer.iterations.numpy()) == 4
    reference = fresh()
    reference.fit(data, **settings)
    for ours, theirs in zip(reused.weights, reference.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    reused.compile()  # a compile of the user's own resets the cache
    reused.fit(data, **settings)
    assert reused.optimizer is not optimizer
