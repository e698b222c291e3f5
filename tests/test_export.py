import io
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from bitkeras import BiTBackbone, BiTClassifier
from bitkeras.io import export
from tests.helpers import COLORS, TINY

ROOT = pathlib.Path(__file__).resolve().parents[1]


def colour_images(size=40):
    """One flat image of each COLORS class, uint8."""
    return np.stack([np.full((size, size, 3), rgb, np.uint8) for rgb in COLORS.values()])


@pytest.fixture(scope="module")
def colour_classifier():
    """A tiny classifier that tells the COLORS apart: a nearest-class-mean head."""
    keras.utils.set_random_seed(0)
    classifier = BiTClassifier(BiTBackbone(**TINY), class_names=tuple(COLORS))
    features = classifier.backbone(colour_images().astype("float32") / 255.0).numpy()
    classifier.head.kernel.assign(features.T)
    classifier.head.bias.assign(-0.5 * (features ** 2).sum(axis=1))
    return classifier


@pytest.fixture(scope="module")
def exported(tmp_path_factory, colour_classifier):
    folder = tmp_path_factory.mktemp("export")
    colour_classifier.export(folder / "logits")
    colour_classifier.export(folder / "features", format="tf_hub", output="features")
    return folder


def test_saved_model_and_hub_load_compute_the_keras_model(exported, colour_classifier):
    hub = pytest.importorskip("tensorflow_hub")
    images = np.random.default_rng(0).uniform(0, 1, (3, 45, 37, 3)).astype("float32")
    logits = colour_classifier(images).numpy()
    features = colour_classifier.backbone(images).numpy()
    # The export traces the portable ops, the model here its XLA clusters:
    # the same function, rounded differently (relative 1e-6 of the scale).
    logits_tolerance = 1e-5 * np.abs(logits).max()
    plain = tf.saved_model.load(str(exported / "logits"))
    np.testing.assert_allclose(plain(images).numpy(), logits, atol=logits_tolerance)
    np.testing.assert_allclose(
        plain(images, training=True).numpy(), logits, atol=logits_tolerance)
    served = plain.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(served["logits"].numpy(), logits, atol=logits_tolerance)
    module = hub.load(str(exported / "features"))
    np.testing.assert_allclose(
        module(images).numpy(), features, atol=1e-5 * np.abs(features).max())
    assert features.shape == (3, 2048 * TINY["width_factor"])
    assert len(module.trainable_variables) == len(colour_classifier.backbone.trainable_weights)
    assert list(module.regularization_losses) == []


def test_exports_hold_nothing_only_xla_or_bitkeras_runs(exported, colour_classifier, tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2

    def only_here(graph):
        """Functions that only XLA runs, and ops that only bitkeras's op library defines."""
        functions = graph.library.function
        nodes = [*graph.node, *(node for function in functions for node in function.node_def)]
        return ([f.signature.name for f in functions if f.attr["_XlaMustCompile"].b]
                + [node.op for node in nodes if node.op.startswith("Bitkeras")])

    def saved_graph(folder):
        saved = saved_model_pb2.SavedModel()
        saved.ParseFromString((folder / "saved_model.pb").read_bytes())
        return saved.meta_graphs[0].graph_def

    colour_classifier.export(tmp_path / "keras", format="tf_saved_model")
    # TensorFlow's own call, not bitkeras's export: the same plain graph.
    tf.saved_model.save(colour_classifier, str(tmp_path / "direct"))
    for folder in (exported / "logits", exported / "features", tmp_path / "keras",
                   tmp_path / "direct"):
        assert only_here(saved_graph(folder)) == [], folder
    # The same model traced outside `portable()` holds them.
    graph = tf.function(lambda x: colour_classifier(x, training=False)).get_concrete_function(
        tf.TensorSpec((None, 8, 8, 3), tf.float32)).graph.as_graph_def()
    assert only_here(graph)


def test_bytes_signature_decodes_uploads_and_names_the_class(exported):
    module = tf.saved_model.load(str(exported / "logits"))
    uploads = []
    for index, image in enumerate(colour_images(size=60)):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG" if index % 2 == 0 else "PNG")
        uploads.append(buffer.getvalue())
    result = module.signatures["serving_bytes"](images=tf.constant(uploads))
    assert [name.decode() for name in result["class_names"].numpy()] == list(COLORS)
    assert result["class_ids"].numpy().tolist() == [0, 1, 2]
    probabilities = result["probabilities"].numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(result["scores"].numpy(), probabilities.max(axis=1))
    labels = (exported / "logits" / "assets" / export.LABELS_FILE).read_text().splitlines()
    assert labels == list(COLORS)


@pytest.mark.slow
def test_keras2_users_fine_tune_the_export_with_hub_keras_layer(exported):
    pytest.importorskip("tf_keras")
    script = f"""
import json, numpy as np, tensorflow_hub as hub, tf_keras
layer = hub.KerasLayer({str(exported / 'features')!r}, trainable=True)
model = tf_keras.Sequential([tf_keras.Input((32, 32, 3)), layer, tf_keras.layers.Dense(2)])
model.compile(tf_keras.optimizers.SGD(0.05, momentum=0.9),
              tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
before = [w.numpy().copy() for w in layer.trainable_weights]
rng = np.random.default_rng(0)
model.fit(rng.uniform(0, 1, (16, 32, 32, 3)).astype("float32"), np.arange(16) % 2,
          batch_size=8, epochs=2, verbose=0)
changed = sum(not np.allclose(a, w.numpy()) for a, w in zip(before, layer.trainable_weights))
print(json.dumps({{"weights": len(before), "changed": changed,
                  "keras": tf_keras.__version__}}))
"""
    environment = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=environment, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["keras"].startswith("2.")
    assert report["weights"] > 0 and report["changed"] >= report["weights"] // 2


def test_export_is_atomic(tmp_path, colour_classifier, monkeypatch):
    target = tmp_path / "model"
    colour_classifier.export(target)
    before = sorted(p.name for p in target.rglob("*"))

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        colour_classifier.export(target)
    with pytest.raises(RuntimeError, match="disk full"):
        colour_classifier.export(tmp_path / "new")
    assert sorted(p.name for p in target.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_export_refuses_what_it_cannot_write(tmp_path, colour_classifier):
    with pytest.raises(ValueError, match="Unrecognized format=tfjs.*format='tf_hub'"):
        colour_classifier.export(tmp_path / "m", format="tfjs")
    with pytest.raises(ValueError, match="output must be one of"):
        colour_classifier.export(tmp_path / "m", output="probabilities")
    with pytest.raises(ValueError, match="no head yet"):
        BiTClassifier(BiTBackbone(**TINY)).export(tmp_path / "m")
    with pytest.raises(ValueError, match="backbone has no logits"):
        export.export_model(colour_classifier.backbone, tmp_path / "m", output="logits")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        colour_classifier.export(tmp_path / "file")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_graphs_exif_orientation_turns_images_as_pillow_does(orientation):
    from PIL import ImageOps

    pixels = np.random.default_rng(orientation).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    jpeg, png = io.BytesIO(), io.BytesIO()
    Image.fromarray(pixels).save(jpeg, format="JPEG", exif=exif, quality=100)
    data = tf.constant(jpeg.getvalue())
    assert int(export.exif_orientation(data)) == orientation
    decoded = tf.io.decode_image(data, channels=3)
    turned = export.apply_orientation(decoded, export.exif_orientation(data))
    # Pillow turns the same pixels, carrying the same EXIF, for display.
    Image.fromarray(decoded.numpy()).save(png, format="PNG", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(png.getvalue()))))
    np.testing.assert_array_equal(turned.numpy(), expected)


def test_images_without_an_orientation_read_as_one():
    plain = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(plain, format="JPEG")
    for data in (plain.getvalue(), b"", b"Exif\0\0MM\0*garbage", b"\xff" * 10):
        assert int(export.exif_orientation(tf.constant(data))) == 1


def test_bytes_signature_reads_a_turned_photo_as_predict_does(exported, colour_classifier,
                                                               tmp_path):
    rng = np.random.default_rng(3)
    pixels = np.concatenate([np.full((30, 20, 3), rgb, np.uint8) for rgb in
                             list(COLORS.values())[:2]], axis=1)  # red | green, 30x40
    pixels = np.clip(pixels + rng.integers(-8, 8, pixels.shape), 0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 8  # shown turned: the halves become top and bottom
    Image.fromarray(pixels).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    module = tf.saved_model.load(str(exported / "logits"))
    served = module.signatures["serving_bytes"](
        images=tf.constant([(tmp_path / "turned.jpg").read_bytes()]))
    predicted = colour_classifier.classify([tmp_path / "turned.jpg"], verbose=0,
                                           image_size=export.DEFAULT_CROP_SIZE)
    np.testing.assert_allclose(served["probabilities"].numpy(), predicted.probabilities,
                               atol=2e-3)
