import json
import os
import pathlib
import subprocess
import sys
import warnings

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

import bitkeras
from bitkeras import BiTBackbone, BiTClassifier, HeadClassifier, load_npz
from bitkeras.finetuning import xla
from tests.helpers import TINY, reference

ROOT = pathlib.Path(__file__).resolve().parents[1]


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
    from bitkeras.io import presets
    from bitkeras.models.architecture import Architecture

    preset = presets.Preset("BiT-T-tiny", Architecture(**TINY).config, "BiT-T-tiny.npz",
                            "test model")
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


def test_from_preset_without_weights_has_no_head_until_fit(monkeypatch, tiny_checkpoint):
    classifier = BiTClassifier.from_preset(_tiny_preset(monkeypatch, tiny_checkpoint[0]),
                                           weights=None)
    assert classifier.head is None
    with pytest.raises(ValueError, match="has no head yet: fit it first, or pass num_classes"):
        classifier.predict(np.zeros((1, 32, 32, 3), "float32"), verbose=0)


def _bright_and_dark(count=48, seed=0):
    """Images of two classes, bright (1) and dark (0): learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    images = rng.uniform(0, 0.4, (count, 16, 16, 3)) + 0.5 * labels[:, None, None, None]
    return images.astype(np.float32), labels


SMALL_RULE = dict(crop_size=16, resize_size=18, base_learning_rate=0.05)
"""Rule overrides that keep a tiny fit on 16x16 images fast."""


def test_keras_style_fit_predict_and_evaluate():
    images, labels = _bright_and_dark()
    keras.utils.set_random_seed(0)
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
    history = classifier.fit(images[:32], labels[:32], epochs=3, batch_size=16, verbose=0,
                             validation_data=(images[32:], labels[32:]), hyperrule=SMALL_RULE)
    assert isinstance(history, keras.callbacks.History) and len(history.epoch) == 3
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.hyperrule.steps == 3 * 2 and history.hyperrule.batch_size == 16
    assert history.hyperrule.base_learning_rate == pytest.approx(0.05)  # given, not scaled

    logits = classifier.predict(images[32:], verbose=0)
    assert isinstance(logits, np.ndarray) and logits.shape == (16, 2)
    np.testing.assert_allclose(  # the same function as calling the model at the crop size
        logits, keras.ops.convert_to_numpy(classifier(images[32:])), rtol=1e-4, atol=1e-4)
    results = classifier.evaluate(images[32:], labels[32:], verbose=0, return_dict=True)
    assert set(results) == {"loss", "accuracy"}
    assert results["accuracy"] == pytest.approx(np.mean(np.argmax(logits, -1) == labels[32:]))
    as_list = classifier.evaluate(images[32:], labels[32:], verbose=0)
    assert as_list == pytest.approx([results["loss"], results["accuracy"]])
    named = classifier.classify(images[32:], verbose=0)
    np.testing.assert_array_equal(named.class_ids, np.argmax(logits, -1))
    assert named.class_names == tuple(str(i) for i in named.class_ids)


def test_keras_callbacks_and_validation_split_work_as_in_keras(tmp_path):
    images, labels = _bright_and_dark(64)
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e9)
    saved = tmp_path / "best.weights.h5"
    history = classifier.fit(images, labels, epochs=5, batch_size=16, verbose=0,
                             validation_split=0.25, callbacks=[
                                 stop, keras.callbacks.ModelCheckpoint(
                                     saved, save_weights_only=True)], hyperrule=SMALL_RULE)
    assert len(history.epoch) == 2 and stop.stopped_epoch == 1  # no epoch improves by 1e9
    assert history.hyperrule.steps == 5 * 3   # 48 training examples: 3 batches an epoch
    assert "val_loss" in history.history and saved.is_file()


def test_validation_under_xla_fills_its_last_batch_and_scores_only_real_rows(tmp_path):
    # With XLA for the whole step, a partial last batch would compile a program of its
    # own: fit's validation fills it up to the others' size and scores its real rows only.
    images, labels = _bright_and_dark(64)
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
    classifier.compile(jit_compile=True)
    shapes, call = [], classifier.call

    def recorded(images, training=None, mask=None):
        if not training:
            shapes.append(tuple(images.shape))
        return call(images, training=training, mask=mask)

    classifier.call = recorded
    history = classifier.fit(images[:44], labels[:44], epochs=2, batch_size=16, verbose=0,
                             validation_data=(images[44:], labels[44:]),
                             validation_batch_size=8, hyperrule=SMALL_RULE)
    classifier.call = call
    assert shapes and {shape[0] for shape in shapes} == {8}, shapes  # 20 images: 8, 8, 4
    logits = classifier.predict(images[44:], verbose=0)
    loss = reference.cross_entropy(logits, labels[44:]).mean()
    assert history.history["val_loss"][-1] == pytest.approx(loss, rel=1e-4)
    assert history.history["val_accuracy"][-1] == pytest.approx(
        np.mean(logits.argmax(-1) == labels[44:]))
    classifier.save(tmp_path / "model.keras")  # what scored the rows is not saved with it
    loaded = bitkeras.load_model(tmp_path / "model.keras")
    assert len(loaded.weights) == len(classifier.weights)
    np.testing.assert_allclose(loaded.predict(images[44:], verbose=0), logits,
                               atol=1e-5 * np.abs(logits).max())


def test_a_users_own_compile_is_respected():
    images, labels = _bright_and_dark()
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
    optimizer = keras.optimizers.Adam(1e-3)
    classifier.compile(optimizer=optimizer, metrics=[keras.metrics.CategoricalAccuracy("hits")])
    history = classifier.fit(images, labels, epochs=1, batch_size=16, verbose=0,
                             hyperrule=SMALL_RULE)
    assert classifier.optimizer is optimizer and int(optimizer.iterations) == 3
    assert "hits" in history.history and "accuracy" not in history.history

    # A loss on class ids gets class ids (and the metrics with it).
    classifier.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       metrics=[keras.metrics.SparseCategoricalAccuracy("hits")])
    history = classifier.fit(images, labels, epochs=1, batch_size=16, verbose=0,
                             hyperrule=SMALL_RULE)
    assert isinstance(classifier.optimizer, keras.optimizers.SGD)  # "auto": the rule's SGD
    assert history.history["loss"][0] > 0 and 0 <= history.history["hits"][0] <= 1
    assert classifier.evaluate(images, labels, verbose=0, return_dict=True)["hits"] >= 0
    with pytest.raises(ValueError, match="pass mixup_alpha=0"):
        classifier.fit(images, labels, epochs=1, batch_size=16, hyperrule=dict(mixup_alpha=0.1),
                       verbose=0)


def test_keras_arguments_that_do_not_apply_are_refused_by_name():
    images, labels = _bright_and_dark(16)
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
    with pytest.raises(ValueError, match="y \\(the labels\\) is missing"):
        classifier.fit(images)
    with pytest.raises(ValueError, match="sample_weight"):
        classifier.fit(images, labels, sample_weight=np.ones(16))
    with pytest.raises(ValueError, match="initial_epoch"):
        classifier.fit(images, labels, initial_epoch=2)
    with pytest.raises(ValueError, match="both epochs=2 and hyperrule's steps=5"):
        classifier.fit(images, labels, epochs=2, hyperrule=dict(steps=5))
    with pytest.raises(ValueError, match="validation_split only applies to arrays"):
        classifier.fit(tf.data.Dataset.from_tensor_slices((images, labels)),
                       validation_split=0.5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'learning_rat'"):
        classifier.fit(images, labels, learning_rat=0.1)
    with pytest.raises(TypeError, match="in one object: fit\\(\\.\\.\\., hyperrule=\\{'crop_size': "
                                        "32, 'flip': False\\}\\)"):
        classifier.fit(images, labels, flip=False, crop_size=32)
    for name, where in (("variant", "hyperrule="), ("split", "x='tfds:NAME:SPLIT'"),
                        ("batch_split", "compile\\(batch_split="),
                        ("jit_compile", "compile\\(jit_compile=")):
        with pytest.raises(TypeError, match=f"fit\\(\\) got {name}=.*give it as {where}"):
            classifier.fit(images, labels, **{name: 1})


def test_the_common_compile_lines_train_the_logits_the_model_returns():
    images, labels = _bright_and_dark(32)
    for loss, targets in (("sparse_categorical_crossentropy", labels),
                          ("categorical_crossentropy", keras.utils.to_categorical(labels, 2))):
        classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
        with pytest.warns(UserWarning, match="returns logits.*from_logits=True"):
            classifier.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
        before = [weight.copy() for weight in classifier.get_weights()]
        history = classifier.fit(images, targets, epochs=1, batch_size=16, verbose=0,
                                 hyperrule=SMALL_RULE)
        after = classifier.get_weights()
        changed = sum(not np.array_equal(a, b) for a, b in zip(before, after))
        # Two steps: the zero head learns in the first, the backbone from the second on.
        assert changed > len(before) // 2, (loss, changed)
        assert np.isfinite(history.history["loss"]).all()
    head = HeadClassifier(BiTBackbone(**TINY), num_classes=2)
    with pytest.warns(UserWarning, match="returns logits"):
        head.compile(loss="SparseCategoricalCrossentropy")
    assert head.loss.from_logits
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        head.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        head.compile(loss="mse")  # not a cross-entropy: the user's own business
    for loss in (keras.losses.SparseCategoricalCrossentropy(),
                 keras.losses.categorical_crossentropy):
        for model in (head, classifier):
            with pytest.raises(ValueError, match="returns logits.*compile with "
                                                 "\\w+Crossentropy\\(from_logits=True\\)"):
                model.compile(loss=loss)


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


@pytest.mark.slow
def test_compiled_classifier_reloads_compiled(tmp_path, images):
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
    classifier.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.8), jit_compile=True)
    classifier.fit(images, np.array([0, 1]), epochs=1, batch_size=2,
                   hyperrule=dict(crop_size=32, resize_size=36), verbose=0)
    classifier.save(tmp_path / "compiled.keras")
    restored = keras.models.load_model(tmp_path / "compiled.keras")
    assert restored.compiled and restored.jit_compile is True
    assert float(restored.optimizer.learning_rate) == pytest.approx(0.05)
    assert restored.optimizer.momentum == pytest.approx(0.8)
    assert int(restored.optimizer.iterations) == 1


def test_from_preset_of_a_headless_file_loads_the_backbone_and_waits_for_fit(monkeypatch, tmp_path):
    arrays = reference.checkpoint_arrays(TINY["block_units"], TINY["width_factor"])
    path = reference.write_checkpoint(tmp_path / "headless.npz", arrays)
    classifier = BiTClassifier.from_preset(_tiny_preset(monkeypatch, path), weights=path)
    assert classifier.head is None  # sized by fit from the data
    np.testing.assert_array_equal(classifier.backbone.get_layer("root_conv").kernel,
                                  arrays["resnet/root_block/standardized_conv2d/kernel"])


def test_a_repeated_fit_starts_its_optimizer_afresh():
    rng = np.random.default_rng(0)
    data = (rng.uniform(0, 1, (40, 16, 16, 3)).astype("float32"), np.arange(40) % 4)
    settings = dict(hyperrule=dict(steps=4, batch_size=8, crop_size=16, resize_size=18), seed=1,
                    verbose=0)

    def fresh():
        keras.utils.set_random_seed(0)
        classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=4)
        classifier.compile(batch_split=2)
        return classifier

    reused = fresh()
    start = reused.get_weights()
    reused.fit(data, **settings)
    optimizer = reused.optimizer
    reused.set_weights(start)
    reused.fit(data, **settings)  # a new optimizer: no momentum or step count carried over
    assert reused.optimizer is not optimizer
    assert int(reused.optimizer.iterations.numpy()) == 4 and reused.batch_split == 2
    reference = fresh()
    reference.fit(data, **settings)
    for ours, theirs in zip(reused.weights, reference.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_fit_traces_its_train_step_once(monkeypatch):
    # The optimizer's slots exist before Keras traces the step: a tf.function
    # that creates variables is traced a second time, doubling the wait for the
    # first step of every fit.
    traces = []
    train_step = BiTClassifier.train_step

    def counted(self, data):
        traces.append(data)
        return train_step(self, data)

    monkeypatch.setattr(BiTClassifier, "train_step", counted)
    images, labels = _bright_and_dark(32)
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
    for _ in range(2):  # each fit compiles afresh: one trace each
        classifier.fit(images, labels, epochs=2, batch_size=16, verbose=0, hyperrule=SMALL_RULE)
    assert len(traces) == 2 and int(classifier.optimizer.iterations) == 4


def test_keras_hub_preset_round_trip_is_exact(tmp_path, tiny_checkpoint, images):
    path, _ = tiny_checkpoint
    classifier = BiTClassifier(BiTBackbone(**TINY), class_names=list("abcde"))
    load_npz(classifier, path)
    assert isinstance(classifier, keras_hub.models.ImageClassifier)
    classifier.save_to_preset(tmp_path / "preset")
    assert "5 (a, b, c, d, e)" in (tmp_path / "preset" / "MODEL_CARD.md").read_text()
    expected = keras.ops.convert_to_numpy(classifier(images))
    for loaded in (BiTClassifier.from_preset(tmp_path / "preset"),
                   keras_hub.models.ImageClassifier.from_preset(str(tmp_path / "preset"))):
        assert type(loaded) is BiTClassifier and loaded.class_names == tuple("abcde")
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(images)), expected)
    new_head = BiTClassifier.from_preset(tmp_path / "preset", num_classes=3)
    assert new_head.num_classes == 3 and not keras.ops.convert_to_numpy(new_head.head.kernel).any()
    np.testing.assert_array_equal(new_head.backbone(images), classifier.backbone(images))


def test_tensorboard_and_backup_and_restore_callbacks_run_as_in_keras(tmp_path):
    images, labels = _bright_and_dark(32)
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
    history = classifier.fit(images, labels, epochs=2, batch_size=16, verbose=0,
                             hyperrule=SMALL_RULE, callbacks=[
        keras.callbacks.TensorBoard(log_dir=str(tmp_path / "logs")),
        keras.callbacks.BackupAndRestore(backup_dir=str(tmp_path / "backup"))])
    assert len(history.epoch) == 2
    assert list((tmp_path / "logs" / "train").glob("events.out.tfevents.*"))
    assert not (tmp_path / "backup").exists()  # Keras removes its backup after a finished fit


def test_predict_and_evaluate_run_the_preprocessor_that_fit_sized(tmp_path):
    images, labels = _bright_and_dark(32)
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
    assert isinstance(classifier.preprocessor, keras_hub.models.ImageClassifierPreprocessor)
    assert classifier.image_size is None  # nothing to size it by yet
    classifier.fit(images, labels, epochs=1, batch_size=16, verbose=0,
                   hyperrule=dict(crop_size=12, resize_size=14))
    assert classifier.image_size == 12
    big = (np.random.default_rng(2).uniform(0, 1, (3, 30, 20, 3)) * 255).astype(np.uint8)
    resized = classifier.preprocessor.image_converter(big)
    assert tuple(resized.shape) == (3, 12, 12, 3) and float(np.max(resized)) <= 1.0
    np.testing.assert_allclose(resized, tf.image.resize(big / 255, [12, 12]), atol=1e-5)
    expected = keras.ops.convert_to_numpy(classifier(resized))
    np.testing.assert_allclose(classifier.predict(big, verbose=0), expected, atol=1e-5)
    at_16 = keras.ops.convert_to_numpy(classifier(tf.image.resize(big / 255, [16, 16])))
    np.testing.assert_allclose(classifier.predict(big, verbose=0, image_size=16), at_16,
                               atol=1e-5)
    assert classifier.image_size == 12  # a size for one call does not stay
    classifier.save(tmp_path / "c.keras")
    classifier.save_to_preset(tmp_path / "preset")
    assert "resize to 12x12" in (tmp_path / "preset" / "MODEL_CARD.md").read_text()
    for loaded in (keras.saving.load_model(tmp_path / "c.keras"),
                   keras_hub.models.ImageClassifier.from_preset(str(tmp_path / "preset"))):
        assert loaded.image_size == 12
        np.testing.assert_allclose(loaded.predict(big, verbose=0), expected, atol=1e-5)


def test_batch_split_given_to_compile_is_kept_saved_and_used_by_fit(tmp_path):
    images, labels = _bright_and_dark(32)
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
    classifier.compile(optimizer=keras.optimizers.SGD(0.01), batch_split=4)
    assert classifier.batch_split == 4
    assert classifier.get_compile_config()["batch_split"] == 4
    classifier.fit(images, labels, epochs=1, batch_size=16, verbose=0, hyperrule=SMALL_RULE)
    assert classifier.batch_split == 4
    classifier.compile(batch_split=3)
    with pytest.raises(ValueError, match="batch_size 16 does not split into 3"):
        classifier.fit(images, labels, epochs=1, batch_size=16, verbose=0,
                       hyperrule=SMALL_RULE)
    classifier.compile(optimizer=keras.optimizers.SGD(0.01), batch_split=4)
    classifier.save(tmp_path / "split.keras")
    assert keras.saving.load_model(tmp_path / "split.keras").batch_split == 4
    with pytest.raises(ValueError, match="batch_split must be a positive integer"):
        classifier.compile(batch_split=0)


def test_a_classifier_is_built_whole_preprocessor_included():
    """Keras builds a model again while any of its layers is unbuilt (under JAX, an
    op-by-op pass on a batch in every predict); the preprocessor, which runs in tf.data
    and holds no weights, is built as it is made."""
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
    again = BiTClassifier.from_config(classifier.get_config())
    for model in (classifier, again):
        assert [layer.name for layer in model._flatten_layers() if not layer.built] == []


def _conv_copies(classifier):
    """The standardized copies kept for the classifier's convolutions: (copy, current) pairs."""
    from bitkeras.models import kernels
    from bitkeras.models.layers import StandardizedConv2D

    return [kernels._ONCE.get(layer) for layer in classifier._flatten_layers()
            if isinstance(layer, StandardizedConv2D)]


class _CorruptCopies(keras.callbacks.Callback):
    """Sets every standardized copy to zeros when predict begins."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def on_predict_begin(self, logs=None):
        for copy, _ in _conv_copies(self.classifier):
            copy.assign(tf.zeros_like(copy))


def test_predict_standardizes_kernels_once_and_never_reads_a_stale_copy():
    images, labels = _bright_and_dark(32)
    keras.utils.set_random_seed(0)
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
    classifier.fit(images, labels, epochs=1, batch_size=16, verbose=0, hyperrule=SMALL_RULE)
    weight_count = len(classifier.weights)
    # A first predict, if only of one batch, makes the copies (so that no later call
    # traces its graph again to read them); they are current only within a call.
    classifier.predict(images, verbose=0)
    assert all(pair is not None for pair in _conv_copies(classifier))
    assert not any(bool(current.numpy()) for _, current in _conv_copies(classifier))

    def direct():  # the classifier called outside predict: kernels standardized in its graph
        return keras.ops.convert_to_numpy(classifier(images))

    def close(computed, expected):
        np.testing.assert_allclose(computed, expected, atol=1e-5 * np.abs(expected).max())

    close(classifier.predict(images, batch_size=8, verbose=0), direct())
    copies = _conv_copies(classifier)
    assert len(copies) == 1 + 4 * 4 and all(pair is not None for pair in copies)  # root, units
    assert not any(bool(current.numpy()) for _, current in copies)  # current only in predict
    assert len(classifier.weights) == weight_count  # the copies are not weights

    # Within predict the graph reads the copies: zeroed, every image gets the same logits.
    assert np.ptp(direct(), axis=0).max() > 1e-3
    corrupted = classifier.predict(images, batch_size=8, verbose=0,
                                   callbacks=[_CorruptCopies(classifier)])
    assert np.ptp(corrupted, axis=0).max() < 1e-6

    def loss(logits):
        return float(keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True)))

    before = direct()
    close(classifier.evaluate(images, labels, batch_size=8, verbose=0, return_dict=True)["loss"],
          loss(before))
    # After the weights change, neither predict, predict_on_batch (which runs the
    # same traced function outside predict) nor evaluate gives the old weights' outputs.
    classifier.fit(images, labels, epochs=1, batch_size=16, verbose=0, hyperrule=SMALL_RULE)
    after = direct()
    assert np.abs(after - before).max() > 1e-3
    close(classifier.predict_on_batch(images), after)
    close(classifier.predict(images[:8], verbose=0), after[:8])  # one batch: copies stale
    close(classifier.predict(images, batch_size=8, verbose=0), after)
    close(classifier.evaluate(images, labels, batch_size=8, verbose=0, return_dict=True)["loss"],
          loss(after))


def test_load_model_reads_classifiers_saved_before_they_were_functional(tmp_path):
    """Their weights sit under the classifier's attributes (backbone/, head/), where Keras's
    loader of a functional model does not look; the file is written here in that layout
    (a file from the commit before, 3aa9009, loaded alike with identical predictions)."""
    import zipfile

    import h5py

    import bitkeras

    images, labels = _bright_and_dark(8)
    classifier = BiTClassifier(BiTBackbone(**TINY), class_names=["dark", "bright"])
    classifier.fit(images, labels, epochs=1, steps_per_epoch=2, batch_size=4, verbose=0)
    expected = classifier.predict(images, verbose=0)
    classifier.save(tmp_path / "new.keras")
    with zipfile.ZipFile(tmp_path / "new.keras") as archive:
        archive.extractall(tmp_path / "files")
    with h5py.File(tmp_path / "files" / "model.weights.h5", "r+") as weights:
        weights.move("layers/bi_t_backbone", "backbone")
        weights.move("layers/dense", "head")
        weights["backbone/layers"].move("input_scaling", "rescaling")
        del weights["layers"]
    with zipfile.ZipFile(tmp_path / "old.keras", "w") as archive:
        for path in sorted((tmp_path / "files").iterdir()):
            archive.write(path, path.name)
    with pytest.raises(ValueError):  # Keras's own loader cannot place them
        keras.saving.load_model(tmp_path / "old.keras")
    loaded = bitkeras.load_model(tmp_path / "old.keras")
    assert loaded.class_names == ("dark", "bright")
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), expected)
    assert int(loaded.optimizer.iterations) == 2  # the optimizer's state came too


@pytest.mark.parametrize("native_ops", ["1", "0"])
def test_predict_traces_and_compiles_nothing_new_for_another_number_of_images(native_ops,
                                                                              tmp_path):
    # In a process of its own: XLA reads where to dump its programs once per process.
    dump = tmp_path / "xla"
    environment = {**os.environ, "XLA_FLAGS": f"--xla_dump_to={dump}",
                   "BITKERAS_NATIVE": native_ops, "BITKERAS_JIT_COMPILE": "0"}
    ran = subprocess.run([sys.executable, "-m", "tests.helpers.predict_shapes", str(dump)],
                         cwd=ROOT, env=environment, capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    counts = json.loads(ran.stdout.strip().splitlines()[-1])
    assert counts["first_traces"] == 1 and counts["new_traces"] == 0, counts
    assert counts["new_programs"] == 0, counts
    assert counts["rows"] == {"16": 16, "20": 20, "7": 7, "33": 33, "165": 165}, counts
    # Each image's logits whatever else is in its batch, filling rows included.
    assert counts["difference"] < 1e-5, counts
    # The export serves any count without compiling either, and computes the same logits.
    assert counts["serving_new_programs"] == 0 and counts["serving_difference"] < 1e-5, counts
    # evaluate too, with XLA for the whole step or not; the filling scores nothing.
    for name in ("evaluate", "evaluate_xla"):
        assert counts[f"{name}_new_traces"] == 0 and counts[f"{name}_new_programs"] == 0, counts
        assert counts[f"{name}_error"] < 1e-5, counts


@pytest.mark.slow
def test_the_hyperrule_fit_runs_under_keras_jax_backend(tmp_path):
    pytest.importorskip("jax")
    environment = {**os.environ, "KERAS_BACKEND": "jax"}
    environment.pop(xla.OVERRIDE_ENV, None)  # "auto": XLA under JAX (the session sets "0")
    ran = subprocess.run([sys.executable, "-m", "tests.helpers.jax_fit", str(tmp_path / "ck")],
                         cwd=ROOT, env=environment,
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    results = json.loads(ran.stdout.strip().splitlines()[-1])
    assert results["backend"] == "jax" and results["jit_compile"] is True, results
    # Interrupted after its checkpoint at step 10, the same call resumed there and finished.
    assert (results["start_step"], results["iterations"]) == (10, 40), results
    assert results["accuracy"] >= 0.9 and results["finite"], results  # bright vs dark
    assert results["nan_stop_restored"] is True, results
    assert results["compile_jit"] is True, results  # JAX op by op would crawl
    # Half precision: computed in it, loss-scaled for float16, progress as in float32, and
    # the classifier left in float32 (the TensorFlow backend's test asks the same).
    for precision, compute, optimizer in (("mixed_bfloat16", "bfloat16", "SGD"),
                                          ("mixed_float16", "float16", "LossScaleOptimizer")):
        trained = results[precision]
        assert (trained["compute_dtype"], trained["optimizer"]) == (compute, optimizer), results
        assert trained["losses"][1] < 0.5 * trained["losses"][0], results
        assert trained["accuracy"][1] > trained["accuracy"][0] + 0.2, results
        assert trained["dtypes"] == ["float32"], results
        assert trained["classifier_dtype"] == "float32", results
    # Distillation (the teacher run in the loss, under JAX's stateless train step).
    assert results["distill_agreement"] >= 0.9 and results["distill_loss"] >= 0, results
    # keras.distribution's DataParallel over two host devices: the weights on both, the
    # one-device update, and evaluate and predict on the distributed model.
    assert results["devices"] == 2 and results["kernel_devices"] == 2, results
    assert results["data_parallel_difference"] < 1e-4, results
    # Micro-batches accumulate the whole batch's update, on one device and on two.
    assert results["micro_batches_iterations"] == 2, results
    assert results["micro_batches_difference"] < 1e-4, results
    assert results["data_parallel_micro_batches_difference"] < 1e-4, results
    assert 0 <= results["data_parallel_accuracy"] <= 1, results
    assert results["data_parallel_predicted"] == [64, 2], results
