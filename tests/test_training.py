"""BiTClassifier.fit / evaluate / predict and the training pieces behind them."""

import dataclasses
import warnings

import keras
import numpy as np
import pytest

import bitkeras
from bitkeras import BiTBackbone, BiTClassifier, HyperRule
from bitkeras.finetuning import training
from tests.helpers import TINY, make_image_folder

SMALL = dict(steps=24, batch_size=8, resize_size=40, crop_size=32, base_learning_rate=0.01)
"""Overrides that make the HyperRule tiny enough for tests."""


def _tiny_classifier(num_classes=None):
    keras.utils.set_random_seed(0)
    return BiTClassifier(BiTBackbone(**TINY), num_classes=num_classes)


def _weights(layer):
    return [keras.ops.convert_to_numpy(w).copy() for w in layer.weights]


@pytest.mark.slow
def test_fine_tuning_a_folder_learns_reports_and_reloads(image_folder, tmp_path, capsys):
    classifier = _tiny_classifier()
    with pytest.warns(UserWarning, match="broken.jpg"):
        history = classifier.fit(image_folder, hyperrule=SMALL)
    assert "BiT-HyperRule:" in capsys.readouterr().out
    assert history.hyperrule == classifier.hyperrule and history.hyperrule.steps == 24
    assert history.params["hyperrule"]["crop_size"] == 32
    assert classifier.class_names == ("blue", "green", "red")

    held_out = make_image_folder(tmp_path / "test", per_class=10, seed=1, extras=False)
    results = classifier.evaluate(held_out, verbose=0, return_dict=True)
    assert results["accuracy"] >= 0.9 and "top5_accuracy" not in results

    files = [held_out / "red" / "000.jpg", held_out / "blue" / "001.png"]
    predictions = classifier.classify(files, verbose=0)
    assert predictions.class_names == ("red", "blue")
    np.testing.assert_allclose(predictions.probabilities.sum(1), 1, rtol=1e-5)
    classifier.save(tmp_path / "model.keras")
    restored = bitkeras.load_model(tmp_path / "model.keras")
    assert restored.class_names == classifier.class_names
    assert restored.hyperrule == classifier.hyperrule
    again = restored.classify(files, verbose=0)
    np.testing.assert_array_equal(again.probabilities, predictions.probabilities)
    ten = restored.classify(files, test_time_augmentation="ten_crop", verbose=0)
    assert ten.class_names == ("red", "blue")
    seen = []  # a view of the classifier runs the loop; callbacks see the classifier
    watcher = keras.callbacks.LambdaCallback(on_test_end=lambda logs: seen.append(watcher.model))
    assert restored.evaluate(held_out, verbose=0, test_time_augmentation="ten_crop",
                             return_dict=True, callbacks=[watcher])["accuracy"] >= 0.9
    assert seen == [restored]
    scales = restored.classify(files, test_time_augmentation="multi_scale", verbose=0)
    np.testing.assert_allclose(scales.probabilities.sum(1), 1, rtol=1e-5)
    assert restored.evaluate(held_out, verbose=0, test_time_augmentation="multi_scale",
                             return_dict=True)["accuracy"] >= 0.9
    with pytest.raises(ValueError, match="leave image_size out"):
        restored.predict(files, test_time_augmentation="multi_scale", image_size=64)


def test_gradient_accumulation_equals_the_big_batch_update():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (16, 16, 16, 3)).astype(np.float32)
    labels = np.arange(16) % 2
    rule = HyperRule(resize_size=16, crop_size=16, steps=2, warmup_steps=0,
                     decay_boundaries=(), base_learning_rate=0.1, batch_size=8,
                     mixup_alpha=0.0, flip=False, crop=False)
    trained = []
    for batch_split in (1, 4):
        classifier = _tiny_classifier(num_classes=2)
        classifier.compile(batch_split=batch_split)
        # Class weights reach the loss as per-example weights: each micro-batch takes its own.
        classifier.fit((images, labels), hyperrule=rule, verbose=0,
                       class_weight={0: 1.0, 1: 3.0})
        trained.append(classifier)
    big, accumulated = trained
    assert int(accumulated.optimizer.iterations) == 2
    # The same update up to float summation order (which differs by CPU): compare the
    # change of every weight, relative to the largest change of that weight.
    start = _tiny_classifier(num_classes=2).weights
    for a, b, before in zip(big.weights, accumulated.weights, start):
        update_big = keras.ops.convert_to_numpy(a) - keras.ops.convert_to_numpy(before)
        update_accumulated = keras.ops.convert_to_numpy(b) - keras.ops.convert_to_numpy(before)
        scale = np.abs(update_big).max()
        assert scale > 0, a.path
        assert np.abs(update_accumulated - update_big).max() <= 1e-3 * scale, a.path
    # Two steps: the backbone moved too (the zero head passes no gradient on step one).
    assert not np.allclose(_weights(big.backbone.get_layer("root_conv"))[0],
                           _weights(_tiny_classifier(2).backbone.get_layer("root_conv"))[0])


@pytest.mark.parametrize("trainable, frozen, moving", [
    ("head", ["root_conv", "block4_unit01", "final_norm"], []),
    ("block3", ["root_conv", "block1_unit01", "block2_unit01"], ["block3_unit01", "final_norm"]),
])
def test_trainable_freezes_what_it_leaves_out(trainable, frozen, moving):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (16, 16, 16, 3)).astype(np.float32)
    classifier = _tiny_classifier(num_classes=2)
    before = {name: _weights(classifier.backbone.get_layer(name)) for name in frozen + moving}
    classifier.fit((images, np.arange(16) % 2), trainable=trainable,
                   hyperrule=dict(steps=3, warmup_steps=0, decay_boundaries=(),
                                  base_learning_rate=0.1),
                   batch_size=8, verbose=0)
    for name in frozen:
        for a, b in zip(before[name], _weights(classifier.backbone.get_layer(name))):
            np.testing.assert_array_equal(a, b, err_msg=name)
    for name in moving:
        assert any(not np.array_equal(a, b) for a, b in
                   zip(before[name], _weights(classifier.backbone.get_layer(name)))), name
    assert any(np.any(w) for w in _weights(classifier.head))
    assert all(layer.trainable for layer in classifier.backbone.layers)  # restored


def test_few_shot_fit_uses_k_per_class_and_defaults_the_batch(image_folder, capsys):
    classifier = _tiny_classifier()
    with pytest.warns(UserWarning):
        history = classifier.fit(image_folder, examples_per_class=2, seed=1,
                                 hyperrule=dict(steps=2, resize_size=40, crop_size=32))
    assert history.hyperrule.batch_size == 6    # 2 x 3 classes, fewer than 512: all of them
    assert history.hyperrule.base_learning_rate == 0.003  # the rule's, for the whole data
    assert "6 training examples" in capsys.readouterr().out


def test_evaluate_reports_the_compiled_metrics_top5_included():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (12, 16, 16, 3)).astype(np.float32)
    classifier = _tiny_classifier(num_classes=6)
    classifier.compile(metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(
        k=5, name="top5_accuracy")])
    results = classifier.evaluate((images, np.arange(12) % 6), image_size=16, verbose=0,
                                  return_dict=True)
    assert set(results) == {"accuracy", "top5_accuracy", "loss"}
    assert results["loss"] == pytest.approx(np.log(6), rel=1e-5)   # zero head: uniform


def test_fit_errors_name_the_input_and_the_fix(image_folder):
    images = np.zeros((8, 16, 16, 3), np.float32)
    labels = np.arange(8) % 2
    classifier = _tiny_classifier()
    with pytest.raises(TypeError, match="cannot be a list: pass a folder"):
        classifier.fit([1, 2])
    with pytest.raises(ValueError, match="8 examples, fewer than one batch of 16"):
        classifier.fit((images, labels), batch_size=16)
    with pytest.raises(ValueError, match="single class"):
        classifier.fit((images, np.zeros(8, int)))
    with pytest.raises(ValueError, match="does not split into 3 equal micro-batches"):
        classifier.compile(batch_split=3)
        classifier.fit((images, labels), batch_size=8)
    classifier.compile()
    with pytest.raises(ValueError, match="trainable must be one of"):
        classifier.fit((images, labels), trainable="block5", hyperrule=dict(steps=1), verbose=0)
    two = _tiny_classifier(num_classes=2)
    with pytest.raises(ValueError, match="label 2 \\(example 2 .*outside \\[0, 2\\)"):
        two.fit((images, np.arange(8) % 3))
    with pytest.raises(ValueError, match="3 classes but bi_t_classifier(_\\d+)? has a 2-class head"), \
            pytest.warns(UserWarning):
        two.fit(image_folder)
    with pytest.raises(ValueError, match="no head yet"):
        classifier.predict(images)   # none of the failed fits above added one


def test_resolve_rule_applies_the_changes_of_one_object():
    rule = training.resolve_rule(1_000, (500, 375), {"steps": 100, "flip": False}, 64)
    assert rule.batch_size == 64 and rule.base_learning_rate == pytest.approx(0.003 / 8)
    assert (rule.steps, rule.warmup_steps, rule.decay_boundaries) == (100, 20, (40, 60, 80))
    assert rule.flip is False and rule.crop_size == 384
    assert training.resolve_rule(1_000, (500, 375), "released").crop_size == 480
    released = training.resolve_rule(1_000, (500, 375), {"variant": "released", "crop": False})
    assert (released.crop_size, released.crop) == (480, False)
    given = HyperRule.for_dataset(1_000, 32)
    assert training.resolve_rule(10, 32, given) is given
    assert training.resolve_rule(10, 32, given, 8) == dataclasses.replace(given, batch_size=8)
    with pytest.raises(TypeError, match="unknown field\\(s\\) \\['crop_sise'\\]"):
        training.resolve_rule(10, 32, {"crop_sise": 3})
    with pytest.raises(ValueError, match="variant must be one of"):
        training.resolve_rule(10, 32, "timm")
    with pytest.raises(TypeError, match="hyperrule must be a bitkeras.HyperRule.*got list"):
        training.resolve_rule(10, 32, [1])
    with pytest.raises(ValueError, match="batch_size=8 and hyperrule's batch_size=4"):
        training.resolve_rule(10, 32, {"batch_size": 4}, 8)


def test_keras_epochs_cover_exactly_the_steps():
    assert training.keras_epochs(500, 2) == (20, 25)
    assert training.keras_epochs(24, 5) == (5, 5)
    assert training.keras_epochs(3, 100) == (1, 3)


def test_fit_takes_an_upstream_recipe_with_its_weight_decay(tmp_path):
    from bitkeras.finetuning.upstream import UpstreamRecipe, rule_from_config

    recipe = UpstreamRecipe.for_dataset(16, 16, batch_size=8, epochs=1, flip=False)
    assert not isinstance(recipe, HyperRule)  # siblings: neither reads as the other
    images = np.random.default_rng(0).uniform(0, 1, (16, 16, 16, 3)).astype(np.float32)
    classifier = _tiny_classifier(num_classes=2)
    classifier.fit(images, np.arange(16) % 2, hyperrule=recipe, verbose=0)
    assert classifier.optimizer.weight_decay == pytest.approx(recipe.weight_decay)
    assert classifier.hyperrule == recipe
    classifier.save(tmp_path / "recipe.keras")
    assert bitkeras.load_model(tmp_path / "recipe.keras").hyperrule == recipe
    rule = HyperRule.for_dataset(100, 32)
    assert rule_from_config(rule.get_config()) == rule
    plain = _tiny_classifier(num_classes=2)
    plain.fit(images, np.arange(16) % 2, hyperrule=dict(steps=1), batch_size=8, verbose=0)
    assert plain.optimizer.weight_decay is None  # the HyperRule fine-tunes without decay


def _rewrites_off():
    """Grappler's passes this thread's TensorFlow function calls skip."""
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.eager import context

    config = config_pb2.ConfigProto()
    config.ParseFromString(context.context().function_call_options.config_proto_serialized)
    options = config.graph_options.rewrite_options
    return {name for name in ("constant_folding", "layout_optimizer", "remapping",
                              "arithmetic_optimization", "function_optimization")
            if getattr(options, name) == rewriter_config_pb2.RewriterConfig.OFF}


def test_fit_skips_graph_rewrites_on_cpus_in_its_own_thread_only():
    import threading

    skipped = set(training.GRAPH_REWRITES_OFF)
    seen = {}

    class Look(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen["fit"] = _rewrites_off()
            other = threading.Thread(target=lambda: seen.update(thread=_rewrites_off()))
            other.start()
            other.join()

    assert not _rewrites_off()
    rng = np.random.default_rng(0)
    images, labels = rng.uniform(size=(16, 16, 16, 3)).astype(np.float32), np.arange(16) % 2
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
    classifier.fit(images, labels, hyperrule=dict(steps=2, crop_size=16, resize_size=16),
                   batch_size=8,
                   verbose=0, callbacks=[Look()])
    assert seen == {"fit": skipped, "thread": set()}
    assert not _rewrites_off()  # restored when fit returns
    with pytest.raises(ZeroDivisionError):  # and when the block ends in an error
        with training.without_graph_rewrites(classifier.distribute_strategy):
            assert _rewrites_off() == skipped
            1 / 0
    assert not _rewrites_off()


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_takes_keras_steps_in_one_fused_op_per_variable(nesterov):
    import tensorflow as tf

    from bitkeras.finetuning.optimizers import SGD

    rng = np.random.default_rng(0)
    start = [rng.normal(size=(3, 3, 4, 8)), rng.normal(size=(8,))]
    gradients = [[rng.normal(size=value.shape) for value in start] for _ in range(3)]

    def steps(optimizer):
        variables = [keras.Variable(value, dtype="float32") for value in start]
        optimizer.build(variables)
        apply = tf.function(lambda grads: optimizer.apply(grads, variables))
        for grads in gradients:
            apply([tf.constant(grad, tf.float32) for grad in grads])
        ops = {op.type for op in apply.get_concrete_function(
            [tf.TensorSpec(value.shape, tf.float32) for value in start]).graph.get_operations()}
        return [variable.numpy() for variable in variables], ops

    settings = dict(learning_rate=0.1, momentum=0.9, nesterov=nesterov)
    ours, our_ops = steps(SGD(**settings))
    theirs, their_ops = steps(keras.optimizers.SGD(**settings))
    assert "ResourceApplyKerasMomentum" in our_ops
    assert "ResourceApplyKerasMomentum" not in their_ops
    for mine, keras_own in zip(ours, theirs):
        np.testing.assert_allclose(mine, keras_own, rtol=1e-6, atol=1e-6 * np.abs(keras_own).max())
    ours, theirs = (SGD(**settings, name="sgd").get_config(),
                    keras.optimizers.SGD(**settings, name="sgd").get_config())
    assert ours == theirs


def test_fit_compiles_bitkeras_sgd_and_saved_models_reload_it(tmp_path):
    from bitkeras.finetuning.optimizers import SGD

    rng = np.random.default_rng(0)
    images, labels = rng.uniform(size=(16, 16, 16, 3)).astype(np.float32), np.arange(16) % 2
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
    classifier.fit(images, labels, hyperrule=dict(steps=2, crop_size=16, resize_size=16),
                   batch_size=8, verbose=0)
    assert isinstance(classifier.optimizer, SGD)
    classifier.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(reloaded.optimizer, SGD)
    assert int(reloaded.optimizer.iterations) == 2


def test_the_duration_estimate_comes_from_the_first_steps_and_warns_of_hours_on_a_cpu():
    now = [130.0]  # the first step ends here, after tracing and compiling: not measured
    lines = []
    estimate = training.DurationEstimate(1006, clock=lambda: now[0], say=lines.append)
    estimate.on_train_batch_end(0)
    for batch in range(1, 5):
        now[0] += 4.0  # 4 s a step after the first
        estimate.on_train_batch_end(batch)
    now[0] += 4.0
    with pytest.warns(UserWarning, match="about 67 min on this CPU; for about 10 min, pass "
                                         "hyperrule=\\{'steps': 150\\}"):
        estimate.on_train_batch_end(5)
    assert lines == ["Estimated: 67 min for the other 1000 of 1006 steps on this machine "
                     "(4.00 s a step over steps 2-6)"]
    now[0] += 4.0 * 94
    estimate.steps += 94
    estimate.on_epoch_end(0)
    assert lines[-1] == "Step 100 of 1006: about 60 min left"
    quick = training.DurationEstimate(1006, on_cpu=False, clock=lambda: now[0], say=lines.append)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an accelerator's long run is estimated, not warned of
        for batch in range(6):
            quick.on_train_batch_end(batch)
            now[0] += 4.0
    assert lines[-1].startswith("Estimated: 67 min")


def test_the_count_down_adds_validation_and_keeps_it_out_of_the_steps_pace():
    now = [0.0]
    lines = []
    estimate = training.DurationEstimate(1000, validates=True, clock=lambda: now[0],
                                         say=lines.append)
    estimate.set_params({"epochs": 10, "steps": 100})
    estimate.on_train_batch_end(0)
    for batch in range(1, 6):
        now[0] += 1.0  # 1 s a step after the first
        estimate.on_train_batch_end(batch)
    assert lines == ["Estimated: 17 min for the other 994 of 1000 steps on this machine "
                     "(1.00 s a step over steps 2-6, validation not included)"]
    for epoch in range(2):  # 100 steps an epoch, then a 30-s validation pass
        while estimate.steps < 100 * (epoch + 1):
            now[0] += 1.0
            estimate.on_train_batch_end(estimate.steps)
        estimate.on_test_begin()
        now[0] += 30.0
        estimate.on_test_end()
        estimate.on_epoch_end(epoch)
    # 800 steps at 1 s (validation kept out of the pace), and 8 passes of 30 s.
    assert lines[-1] == f"Step 200 of 1000: about {(800 + 8 * 30) / 60:.0f} min left"
