"""Distillation: the loss, what teacher and student see in each mode, the rule, the student."""

import dataclasses
import io
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import bitkeras
from bitkeras.finetuning import distill_recipes, distillation, training
from bitkeras.finetuning.distill_recipes import DistillationRule
from bitkeras.finetuning.schedules import WarmupCosine
from bitkeras.finetuning.upstream import rule_from_config


def _softmax(logits):
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def test_kl_loss_matches_numpy():
    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(2, 6, 5)) * 3
    temperature = 2.5
    targets = _softmax(teacher / temperature)
    log_student = np.log(_softmax(student / temperature))
    expected = temperature ** 2 * np.mean(np.sum(targets * (np.log(targets) - log_student), -1))
    loss = distillation.DistillationLoss(temperature)(targets.astype("float32"),
                                                      student.astype("float32"))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    # A target of exactly 0 adds nothing (0 log 0 = 0), where a naive log would give NaN.
    one_hot = np.eye(5, dtype="float32")[[0, 3]]
    loss = distillation.DistillationLoss(1.0)(one_hot, student[:2].astype("float32"))
    expected = -np.mean(np.log(_softmax(student[:2]))[[0, 1], [0, 3]])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def _tiny_model(seed, classes=3, recorder=None):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((8, 8, 3))]
    model = keras.Sequential([*layers, *([recorder] if recorder else []),
                              keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(classes)])
    return model


def test_a_student_copy_of_the_teacher_has_zero_loss_and_gradient():
    teacher = _tiny_model(1)
    student = _tiny_model(2)
    student.set_weights(teacher.get_weights())
    distiller = distillation.Distiller(teacher, student, "consistent", temperature=2.0)
    distiller.compile(optimizer="sgd", loss=distillation.DistillationLoss(2.0))
    images = tf.random.stateless_uniform((6, 8, 8, 3), (0, 1))
    with tf.GradientTape() as tape:
        logits = distiller(images, training=True)
        loss = distiller.compute_loss(images, None, logits, training=True)
    gradients = tape.gradient(loss, distiller.trainable_variables)
    assert len(gradients) == len(student.trainable_variables) > 0  # the teacher is frozen
    assert abs(float(loss)) < 1e-6
    for gradient, variable in zip(gradients, distiller.trainable_variables):
        scale = float(tf.reduce_max(tf.abs(variable))) or 1.0
        assert float(tf.reduce_max(tf.abs(gradient))) < 1e-6 * scale, variable.path
    # And a student that differs has a loss and a gradient.
    other = distillation.Distiller(teacher, _tiny_model(3), "consistent", temperature=2.0)
    other.compile(optimizer="sgd", loss=distillation.DistillationLoss(2.0))
    assert float(other.compute_loss(images, None, other(images), training=True)) > 1e-4


class Recorder(keras.layers.Layer):
    """Passes images on and keeps a copy of every batch it is run on (graph or eager)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def call(self, images):
        def keep(batch):
            self.seen.append(batch.numpy())
            return batch

        kept = tf.py_function(keep, [images], images.dtype)
        return tf.ensure_shape(kept, images.shape)

    def compute_output_shape(self, shape):
        return shape


def _recorded_distill(mode, steps=3, **rule):
    images = np.random.default_rng(4).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    teacher_eye, student_eye = Recorder(), Recorder()
    teacher = _tiny_model(1, recorder=teacher_eye)
    student = _tiny_model(2, recorder=student_eye)
    teacher_eye.seen.clear()
    student_eye.seen.clear()
    history = bitkeras.distill(
        teacher, student, images, mode=mode, jit_compile=False, verbose=0,
        hyperrule={"steps": steps, "batch_size": 8, "resize_size": 10, "crop_size": 8, **rule})
    return images, teacher_eye.seen, student_eye.seen, history


@pytest.mark.parametrize("mode", ["consistent", "function_matching"])
def test_consistent_modes_give_both_networks_bit_identical_inputs(mode):
    _, teacher_seen, student_seen, history = _recorded_distill(mode)
    assert len(student_seen) == 3 and len(teacher_seen) == 3  # one pass each, per step
    for teacher_batch, student_batch in zip(teacher_seen, student_seen):
        assert teacher_batch.tobytes() == student_batch.tobytes()
    assert history.hyperrule.mode == mode
    # Function matching mixes images (alpha 1); consistent teaching does not.
    assert history.hyperrule.mixup_alpha == (1.0 if mode == "function_matching" else 0.0)


def test_independent_noise_gives_each_network_its_own_view_of_the_same_images():
    # No crop: each view is the image resized, flipped or not, so the two views of one
    # example are equal or mirrors of each other, and they must differ somewhere.
    _, teacher_seen, student_seen, _ = _recorded_distill("independent_noise", crop=False)
    assert len(student_seen) == len(teacher_seen) == 3
    mirrored = 0
    for teacher_batch, student_batch in zip(teacher_seen, student_seen):
        for teacher_view, student_view in zip(teacher_batch, student_batch):
            if not np.array_equal(teacher_view, student_view):
                np.testing.assert_array_equal(teacher_view, student_view[:, ::-1])
                mirrored += 1
    assert 0 < mirrored


def test_fixed_teacher_runs_once_per_image_before_training():
    images, teacher_seen, student_seen, _ = _recorded_distill("fixed_teacher", steps=4)
    assert len(student_seen) == 4
    assert sum(len(batch) for batch in teacher_seen) == len(images)  # no pass while training
    views = np.concatenate(teacher_seen)
    expected = tf.image.resize(images.astype("float32") / 255, (8, 8)).numpy()
    np.testing.assert_allclose(views, np.clip(expected, 0, 1), atol=1e-6)


def test_rule_for_the_data_fields_and_errors():
    rule = DistillationRule.for_dataset(1000, 8, mode="consistent")
    hyperrule = bitkeras.HyperRule.for_dataset(1000, 8)
    assert (rule.steps, rule.base_learning_rate, rule.crop_size) == (
        hyperrule.steps, hyperrule.base_learning_rate, hyperrule.crop_size)
    assert (rule.mode, rule.decay, rule.mixup_alpha) == ("consistent", "cosine", 0.0)
    assert rule_from_config(json.loads(json.dumps(rule.get_config()))) == rule
    # distill's rule goes through fit's resolve_rule, its mode a field given beside it.
    changed = training.resolve_rule(1000, 8, {"steps": 2000, "temperature": 3.0},
                                    kind=DistillationRule, mode="function_matching")
    assert (changed.steps, changed.warmup_steps, changed.temperature, changed.mixup_alpha) == (
        2000, 400, 3.0, 1.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        dataclasses.replace(rule, mode="patient")
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        dataclasses.replace(rule, temperature=0)
    with pytest.raises(TypeError, match="unknown field"):
        training.resolve_rule(1000, 8, {"temprature": 2.0}, kind=DistillationRule)
    with pytest.raises(ValueError, match="give one"):
        training.resolve_rule(1000, 8, {"mode": "consistent"}, kind=DistillationRule,
                              mode="fixed_teacher")
    assert training.resolve_rule(1000, 8, rule, 64, kind=DistillationRule) == dataclasses.replace(
        rule, batch_size=64)  # a whole rule runs as it is, Keras's batch_size given
    with pytest.raises(TypeError, match="DistillationRule"):  # not a HyperRule
        training.resolve_rule(1000, 8, hyperrule, kind=DistillationRule)


def test_paper_recipes_as_data():
    recipe = distill_recipes.paper_recipe("imagenet2012-1200ep")
    rule = recipe.rule(1_255_543)  # train[:98%] of ILSVRC-2012
    assert (rule.crop_size, rule.batch_size, rule.optimizer, rule.decay) == (
        224, 4096, "adam", "cosine")
    assert rule.steps == 367_835 and rule.warmup_steps == 5000 and rule.clip_norm == 1.0
    flowers = distill_recipes.paper_recipe("oxford_flowers102-fast")
    assert flowers.teacher in bitkeras.list_presets() and flowers.rule(1020).temperature == 10.0
    # big_vision's decoupled decay is weight_decay x the schedule's factor; AdamW's is
    # learning_rate x weight_decay, so the optimizer gets their ratio.
    optimizer = training.make_optimizer(flowers.rule(1020))
    assert isinstance(optimizer, keras.optimizers.AdamW)
    np.testing.assert_allclose(optimizer.weight_decay * 0.003, 3e-4, rtol=1e-6)
    with pytest.raises(ValueError, match="oxford_iiit_pet-fast"):
        distill_recipes.paper_recipe("pets")


def test_cosine_schedule():
    schedule = WarmupCosine(0.1, warmup_steps=4, steps=12)
    rates = [float(schedule(step)) for step in range(14)]
    np.testing.assert_allclose(rates[:5], [0, 0.025, 0.05, 0.075, 0.1], rtol=1e-6)
    np.testing.assert_allclose(rates[8], 0.05, rtol=1e-6)
    assert rates[12] == rates[13] == 0.0
    assert WarmupCosine.from_config(schedule.get_config()).get_config() == schedule.get_config()


def _png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_distilled_student_resumes_saves_loads_and_serves(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(24) % 3
    teacher = bitkeras.ResNetClassifier.from_preset("ResNet20-CIFAR", num_classes=3)
    teacher.class_names = ("a", "b", "c")
    student = bitkeras.ResNetClassifier.from_preset("ResNet20-CIFAR")
    rule = {"steps": 4, "batch_size": 12, "resize_size": 18, "crop_size": 16}
    arguments = dict(hyperrule=rule, checkpoint_dir=tmp_path / "run", checkpoint_every=2,
                     verbose=0)
    history = bitkeras.distill(teacher, student, images, labels, **arguments)
    assert history.start_step == 0 and len(history.history["loss"]) >= 1
    assert np.isfinite(history.history["loss"]).all()
    assert student.class_names == ("a", "b", "c") and student.hyperrule.steps == 4
    again = bitkeras.distill(teacher, student, images, labels, **arguments)
    assert again.start_step == 4  # the finished run is found and not repeated
    expected = student.predict(images[:5], verbose=0)
    student.save(tmp_path / "student.keras")
    loaded = bitkeras.load_model(tmp_path / "student.keras")
    assert loaded.hyperrule == student.hyperrule
    np.testing.assert_allclose(loaded.predict(images[:5], verbose=0), expected,
                               atol=1e-5 * np.abs(expected).max())
    student.export(tmp_path / "served")
    module = tf.saved_model.load(str(tmp_path / "served"))
    served = module.signatures["serving_bytes"](images=tf.constant([_png(images[0])]))
    assert served["class_names"].numpy()[0].decode() in ("a", "b", "c")
    assert served["class_ids"].numpy()[0] == int(np.argmax(expected[0]))


def test_distill_refuses_what_it_cannot_use():
    teacher = _tiny_model(1, classes=3)
    images = np.zeros((8, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="predicts 4 classes and the teacher"):
        bitkeras.distill(teacher, _tiny_model(2, classes=4), images, verbose=0)
    with pytest.raises(TypeError, match="teacher must be a Keras model"):
        bitkeras.distill("BiT-M-R50x1", _tiny_model(2), images, verbose=0)


def test_distill_job_compares_modes_and_patience_and_writes_its_report(tmp_path, capsys):
    # The default job shortened: 30 steps for the teacher and each student, one of the
    # four modes (each mode's inputs are tested above), one more schedule length.
    pytest.importorskip("sklearn")
    from bitkeras.jobs import cli

    report = cli.run(["distill", "--out", str(tmp_path), "--steps", "30", "--patience", "15",
                      "--modes", "function_matching", "--evaluations", "2"])
    printed = capsys.readouterr().out
    assert "Distillation rule" not in printed  # the job prints its budget rule once
    assert list(report["models"]) == ["teacher", "labels alone", "function_matching"]
    teacher, student = report["models"]["teacher"], report["models"]["function_matching"]
    assert student["parameters"] * 3 < teacher["parameters"]
    assert student["multiply_adds"] * 3 < teacher["multiply_adds"]
    assert all(0 <= row["test_accuracy"] <= 1 and 0 <= row["test_agreement"] <= 1
               and row["images_per_second"] > 0 for row in report["models"].values())
    assert report["models"]["teacher"]["test_agreement"] == 1.0
    patience = report["patience"]
    assert patience["steps"] == [15, 30]
    assert patience["function_matching"][1] == student["test_accuracy"]
    assert patience["labels alone"][1] == report["models"]["labels alone"]["test_accuracy"]
    assert report["curves"]["labels alone"]["steps"] == [15, 30]
    assert report["findings"]["modes_worst_to_best"] == ["function_matching"]
    assert report["findings"]["function_matching_minus_labels"] == pytest.approx(
        student["test_accuracy"] - report["models"]["labels alone"]["test_accuracy"])
    assert report["machine"]["cores"] >= 1 and report["seconds"] > 0
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    with Image.open(tmp_path / "report.png") as png:
        png.load()
        assert png.format == "PNG" and png.size[0] > 1000
    distilled = bitkeras.load_model(tmp_path / "distilled.keras")
    assert distilled.class_names == tuple(str(d) for d in range(10))
    assert distilled.hyperrule.mode == "function_matching" and distilled.hyperrule.steps == 30


def test_distill_recipe_offline_says_what_to_download(tmp_path, monkeypatch):
    from bitkeras.jobs import cli

    monkeypatch.setenv("BITKERAS_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(Exception, match="R152x2_T_flowers128.npz") as raised:
        cli.run(["distill", "--recipe", "oxford_flowers102-fast", "--out", str(tmp_path / "o")])
    assert isinstance(raised.value, OSError)


def test_distill_in_mixed_precision_trains_a_float32_student_and_validates():
    images = np.random.default_rng(1).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    teacher = bitkeras.ResNetClassifier.from_preset("ResNet20-CIFAR", num_classes=3)
    student = bitkeras.ResNetClassifier.from_preset("ResNet20-CIFAR", num_classes=3)
    before = [weight.copy() for weight in student.get_weights()]
    history = bitkeras.distill(teacher, student, images, precision="mixed_bfloat16", verbose=0,
                               validation_data=(images[:6], np.zeros(6, int)),
                               hyperrule={"steps": 2, "batch_size": 8, "resize_size": 18,
                                          "crop_size": 16})
    assert np.isfinite(history.history["loss"]).all()
    # Validation runs the teacher too: the distillation loss and agreement, not labels'.
    assert np.isfinite(history.history["val_loss"]).all()
    assert 0 <= history.history["val_agreement"][-1] <= 1
    assert student.dtype_policy.name == "float32"
    changed = sum(not np.array_equal(a, b) for a, b in zip(before, student.get_weights()))
    assert changed > len(before) // 2  # the replica's training came back into the student


def test_a_nan_loss_stops_distillation_with_the_student_as_it_was():
    images = np.random.default_rng(2).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    teacher, student = _tiny_model(1), _tiny_model(2)
    kernel, bias = teacher.layers[-1].get_weights()
    teacher.layers[-1].set_weights([np.full_like(kernel, np.nan), bias])  # NaN targets
    before = student.get_weights()
    with pytest.raises(bitkeras.NonFiniteLossError, match="back to what they were"):
        bitkeras.distill(teacher, student, images, verbose=0, hyperrule={
            "steps": 6, "batch_size": 8, "resize_size": 10, "crop_size": 8})
    for kept, weight in zip(before, student.get_weights()):
        np.testing.assert_array_equal(kept, weight)


@pytest.mark.slow
def test_a_paper_recipe_runs_on_its_data_where_the_data_and_teacher_are_had(tmp_path,
                                                                           monkeypatch):
    # The recipe path end to end, on a recipe shaped as the paper's (Adam, cosine, clipping,
    # MixUp 1, its teacher and data named) but sized for a tiny TFDS dataset in the official
    # format: the real ones need batches of 512.
    pytest.importorskip("importlib_resources")  # what TFDS needs to build datasets
    from bitkeras.jobs import cli
    from tests.helpers.tiny_tfds import BitkerasTinyColours, prepare

    prepare(BitkerasTinyColours, tmp_path / "tfds", monkeypatch)
    teacher = bitkeras.ResNetClassifier.from_preset("ResNet20-CIFAR", num_classes=2,
                                                     class_names=("blue", "red"))
    teacher.save(tmp_path / "teacher.keras")
    paper = distill_recipes.paper_recipe("oxford_iiit_pet-fast")
    recipe = dataclasses.replace(
        paper, data="tfds:bitkeras_tiny_colours:train", student="R14x0.25", epochs=2,
        warmup_steps=1, rule_fields={**paper.rule_fields, "batch_size": 6, "resize_size": 18,
                                     "crop_size": 16})
    monkeypatch.setitem(distill_recipes.PAPER_RECIPES, "tiny_colours-fast", recipe)
    out = tmp_path / "run"
    report = cli.run(["distill", "--recipe", "tiny_colours-fast", "--teacher",
                      str(tmp_path / "teacher.keras"), "--out", str(out)])
    assert report["rule"]["steps"] == 2 and report["rule"]["optimizer"] == "adam"
    assert report["rule"]["temperature"] == paper.rule_fields["temperature"]
    assert set(report["models"]) == {"teacher", "function_matching"}
    assert 0 <= report["models"]["function_matching"]["test_accuracy"] <= 1
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    with Image.open(out / "report.png") as png:
        png.load()
        assert png.format == "PNG"
    student = bitkeras.load_model(out / "distilled.keras")
    assert student.class_names == ("blue", "red") and student.hyperrule.steps == 2
    assert (tmp_path / "run-checkpoints" / "latest.weights.h5").exists()  # rerun resumes
