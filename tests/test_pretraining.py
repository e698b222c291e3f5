import json
import os
import pathlib
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from bitkeras import BiTBackbone, BiTClassifier
from bitkeras.data import glyphs
from bitkeras.finetuning import pretraining, run_state
from tests.helpers import TINY, paused_cli, wait_for_line

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def glyph_data():
    return glyphs.make_glyphs(128, seed=0, image_size=16)


def tiny_classifier():
    keras.utils.set_random_seed(0)
    return BiTClassifier(BiTBackbone(**TINY))


class StopAt(keras.callbacks.Callback):
    """Raises (as a kill would stop the run) once the optimizer has taken `step` steps."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            raise KeyboardInterrupt


def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(tmp_path, glyph_data):
    images, labels = glyph_data
    settings = dict(epochs=2, batch_size=32, seed=5, checkpoint_every=2, verbose=0)
    straight = tiny_classifier()
    history = pretraining.pretrain(straight, images, labels,
                                   checkpoint_dir=tmp_path / "straight", **settings)
    assert history.recipe.steps == 8 and history.start_step == 0
    assert straight.num_classes == labels.max() + 1  # a head sized from the labels

    interrupted = tiny_classifier()
    with pytest.raises(KeyboardInterrupt):
        pretraining.pretrain(interrupted, images, labels, checkpoint_dir=tmp_path / "resumed",
                             callbacks=[StopAt(5)], **settings)
    resumed = tiny_classifier()
    history = pretraining.pretrain(resumed, images, labels, checkpoint_dir=tmp_path / "resumed",
                                   **settings)
    assert history.start_step == 4  # the last checkpoint before the interruption
    assert int(resumed.optimizer.iterations.numpy()) == 8
    for expected, actual in zip(straight.weights, resumed.weights):
        np.testing.assert_allclose(actual.numpy(), expected.numpy(), atol=1e-5, err_msg=actual.path)


def test_a_checkpoint_folder_of_another_run_is_refused(tmp_path, glyph_data):
    images, labels = glyph_data
    pretraining.pretrain(tiny_classifier(), images, labels, epochs=1, batch_size=64,
                         checkpoint_dir=tmp_path, verbose=0)
    with pytest.raises(ValueError, match="holds another run"):
        pretraining.pretrain(tiny_classifier(), images, labels, epochs=1, batch_size=32,
                             checkpoint_dir=tmp_path, verbose=0)


def test_multi_hot_labels_train_with_sigmoid_cross_entropy(glyph_data):
    images, _ = glyph_data
    targets = np.random.default_rng(0).integers(0, 2, (len(images), 6))
    classifier = tiny_classifier()
    history = pretraining.pretrain(classifier, images, targets, epochs=2, batch_size=32,
                                   verbose=0)
    assert classifier.loss is pretraining.multi_label_sigmoid_cross_entropy
    assert classifier.num_classes == 6 and len(history.history["loss"]) >= 1
    # Summed over classes: a zero logit costs log 2 per class.
    loss = pretraining.multi_label_sigmoid_cross_entropy(
        targets[:2].astype("float32"), np.zeros((2, 6), "float32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss), [6 * np.log(2)] * 2, rtol=1e-6)


def test_weight_decay_leaves_norms_and_biases_alone(glyph_data):
    images, labels = glyph_data
    classifier = tiny_classifier()
    pretraining.pretrain(classifier, images, labels, epochs=0.25, batch_size=32, verbose=0)
    optimizer = classifier.optimizer
    assert optimizer.weight_decay == pytest.approx(1e-4)
    decayed = {v.path for v in classifier.trainable_variables if optimizer._use_weight_decay(v)}
    assert any(path.endswith("kernel") for path in decayed)
    assert not any(path.endswith(("gamma", "beta", "bias")) for path in decayed)


def test_pretrain_under_a_strategy_in_mixed_precision_trains_the_float32_classifier(glyph_data):
    import tensorflow as tf

    images, labels = glyph_data
    classifier = tiny_classifier()
    before = [w.copy() for w in classifier.get_weights()]
    history = pretraining.pretrain(
        classifier, images, labels, epochs=1, batch_size=32, verbose=0,
        strategy=tf.distribute.MirroredStrategy(["/cpu:0"]), precision="mixed_bfloat16")
    assert history.steps_completed == 4 and np.isfinite(history.history["loss"]).all()
    unchanged = [variable.path for variable, old in zip(classifier.weights, before)
                 if np.array_equal(keras.ops.convert_to_numpy(variable), old)]
    # The weights trained in the bfloat16 copy came back: all but GroupNorm scales,
    # which 4 warm-up steps leave at 1.0 in float32 too.
    assert all(path.endswith("gamma") for path in unchanged)
    assert classifier.compute_dtype == "float32"


@pytest.mark.parametrize("labels, message", [
    (np.zeros(5, np.int64), "128 images but 5 labels"),
    (np.zeros(128, np.float32), "class ids"),
    (np.full((128, 3), 2), "multi-hot"),
])
def test_bad_labels_are_refused(glyph_data, labels, message):
    with pytest.raises(ValueError, match=message):
        pretraining.pretrain(tiny_classifier(), glyph_data[0], labels, verbose=0)


def test_a_head_of_the_wrong_size_is_refused(glyph_data):
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=3)
    with pytest.raises(ValueError, match="3-class head"):
        pretraining.pretrain(classifier, *glyph_data, epochs=1, batch_size=32, verbose=0)


def kill_after_a_checkpoint_and_resume(arguments, out):
    """Runs `bitkeras ARGUMENTS`, SIGKILLs it once it has written a checkpoint (it waits there),
    and runs the same command again to the end."""
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    first = subprocess.Popen([sys.executable, "-m", "tests.helpers.paused_cli", *arguments],
                             cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    wait_for_line(first, paused_cli.PAUSED)
    first.send_signal(signal.SIGKILL)
    first.wait()
    first.stdout.close()
    checkpoint = out / "checkpoints" / run_state.CHECKPOINT_FILE
    assert checkpoint.exists() and not (out / "model.npz").exists()
    second = subprocess.run([sys.executable, "-m", "bitkeras", *arguments], cwd=ROOT,
                            env=environment, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "Resuming at step" in second.stdout


@pytest.mark.slow
def test_pretrain_command_is_killed_resumes_and_finishes_its_planned_steps(tmp_path):
    out = tmp_path / "run"
    arguments = ["pretrain", "--out", str(out), "--examples", "256", "--image-size", "16",
                 "--epochs", "16", "--batch-size", "32", "--checkpoint-every", "8",
                 "--eval-examples", "122", "--verbose", "0"]
    kill_after_a_checkpoint_and_resume(arguments, out)
    record = json.loads((out / "upstream.json").read_text())
    assert record["recipe"]["steps"] == 16 * 256 // 32 == record["steps_completed"]
    assert 8 <= record["resumed_from_step"] < 128
    assert 0 <= record["evaluation"]["accuracy"] <= 1
    assert (out / "MODEL_CARD.md").read_text().count(record["command"]) == 1
    assert not (out / "checkpoints").exists()
    reloaded = BiTClassifier(BiTBackbone(**TINY), num_classes=glyphs.NUM_CLASSES)
    from bitkeras import load_npz

    load_npz(reloaded, out / "model.npz")


@pytest.mark.slow
def test_continued_pretraining_on_a_folder_resumes_after_a_kill_and_fine_tunes(tmp_path):
    from bitkeras.jobs import cli
    from tests.helpers import COLORS, make_image_folder

    data = make_image_folder(tmp_path / "photos", per_class=8, extras=False)
    out = tmp_path / "continued"
    arguments = ["pretrain", "--model", "BiT-Glyphs-R14x0.5", "--data", str(data), "--out",
                 str(out), "--image-size", "32", "--epochs", "24", "--batch-size", "8",
                 "--checkpoint-every", "4", "--verbose", "0"]
    kill_after_a_checkpoint_and_resume(arguments, out)
    record = json.loads((out / "upstream.json").read_text())
    assert record["started_from"] == "BiT-Glyphs-R14x0.5" and record["evaluation"] is None
    assert record["data"]["examples"] == 8 * len(COLORS)
    assert record["steps_completed"] == record["recipe"]["steps"] == 24 * 24 // 8
    assert record["resumed_from_step"] >= 4
    # It started from the shipped model's backbone, and moved away from it.
    shipped = BiTBackbone.from_preset("BiT-Glyphs-R14x0.5")
    continued = BiTClassifier.from_preset(out / "model.npz")
    assert record["class_names"] == sorted(COLORS) and continued.num_classes == len(COLORS)
    start = keras.ops.convert_to_numpy(shipped.get_layer("root_conv").kernel)
    end = keras.ops.convert_to_numpy(continued.backbone.get_layer("root_conv").kernel)
    assert 0 < np.abs(end - start).max() < 0.5 * np.abs(start).max()
    # The result fine-tunes as any model does.
    report = cli.run(["finetune", "--data", str(data), "--model", str(out / "model.npz"),
                      "--out", str(tmp_path / "downstream"), "--steps", "4", "--batch-size",
                      "8", "--crop-size", "32", "--resize-size", "36", "--few-shot",
                      "--evaluations", "1", "--verbose", "0"])
    assert report["num_classes"] == len(COLORS)


def test_multi_label_csv_data_and_refused_combinations(tmp_path):
    from bitkeras.jobs import cli, upstream_data
    from tests.helpers import make_image_folder

    folder = make_image_folder(tmp_path / "photos", per_class=2, extras=False)
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    rows = ["path,labels"] + [f"{path.relative_to(tmp_path)},{path.parent.name} shiny"
                              if index % 2 else f"{path.relative_to(tmp_path)},{path.parent.name}"
                              for index, path in enumerate(files)]
    table = tmp_path / "labels.csv"
    table.write_text("\n".join(rows) + "\n")
    images, labels, names, _ = upstream_data.load(table, 24, multi_label=True)
    assert images.shape == (len(files), 24, 24, 3) and images.dtype == np.uint8
    assert "shiny" in names and labels.shape == (len(files), len(names))
    for index, path in enumerate(files):
        expected = {path.parent.name} | ({"shiny"} if index % 2 else set())
        assert {names[i] for i in np.flatnonzero(labels[index])} == expected
    with pytest.raises(ValueError, match="several labels.*--multi-label"):
        upstream_data.load(table, 24)
    table.write_text("path,labels\n" + f"{files[0].relative_to(tmp_path)}\n")
    with pytest.raises(ValueError, match="row 1"):
        upstream_data.load(table, 24)
    with pytest.raises(ValueError, match="--examples"):
        cli.run(["pretrain", "--data", str(folder), "--examples", "10", "--out",
                 str(tmp_path / "x")])
    with pytest.raises(ValueError, match="--width-factor"):
        cli.run(["pretrain", "--model", "BiT-Glyphs-R14x0.5", "--width-factor", "1", "--out",
                 str(tmp_path / "x")])
