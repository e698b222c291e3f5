import hashlib
import http.server
import pathlib
import shutil
import tarfile
import threading

import numpy as np
import pytest

import bitkeras
from bitkeras import BiTBackbone, BiTClassifier
from bitkeras.io import hub
from tests.helpers import TINY, reference
from tests.helpers.released_hub import write_released_module


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """Feature-vector and classification modules in the released BiT layout."""
    folder = tmp_path_factory.mktemp("released")
    units = TINY["block_units"]
    features = reference.checkpoint_arrays(units, TINY["width_factor"], seed=3)
    classes = reference.checkpoint_arrays(units, TINY["width_factor"], num_classes=4, seed=4)
    return (write_released_module(folder / "feature_vector", features, units), features,
            write_released_module(folder / "classification", classes, units), classes)


@pytest.fixture
def images():
    return np.random.default_rng(2).uniform(0, 1, (2, 48, 40, 3)).astype("float32")


def test_released_feature_vector_module_loads_as_a_layer_and_converts(released, images):
    path, arrays, _, _ = released
    expected, _, _ = reference.forward(arrays, images, TINY["block_units"])
    layer_backbone = BiTBackbone.from_hub(str(path))
    assert isinstance(layer_backbone, hub.HubBackbone)
    assert layer_backbone.feature_channels == 1024
    assert len(layer_backbone.trainable_weights) == len(arrays)
    np.testing.assert_allclose(layer_backbone(images).numpy(), expected, rtol=1e-4, atol=1e-4)
    native = BiTBackbone.from_hub(str(path), convert=True)
    assert type(native) is BiTBackbone and native.block_units == TINY["block_units"]
    np.testing.assert_allclose(native(images).numpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(native(images).numpy(), layer_backbone(images).numpy(),
                               atol=1e-5)  # the converted backbone computes the module


def test_released_classification_module_converts_with_its_head(released, images):
    _, _, path, arrays = released
    _, expected_logits, _ = reference.forward(arrays, images, TINY["block_units"])
    classifier = BiTClassifier.from_hub(str(path), convert=True)
    assert classifier.num_classes == 4
    np.testing.assert_allclose(classifier(images).numpy(), expected_logits, rtol=1e-4, atol=1e-4)
    with pytest.warns(UserWarning, match="classification module.*put a new head"):
        unasked = BiTClassifier.from_hub(str(path), num_classes=3)  # no second call needed
    new_head = BiTClassifier.from_hub(str(path), num_classes=3, convert=True)
    for made in (unasked, new_head):
        assert type(made.backbone) is BiTBackbone
        assert made.num_classes == 3 and not made.head.kernel.numpy().any()
        np.testing.assert_allclose(made.backbone(images).numpy(),
                                   classifier.backbone(images).numpy(), atol=1e-6)


@pytest.mark.slow
def test_own_export_reloads_fine_tunes_and_saves(tmp_path, images):
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    source = BiTClassifier(BiTBackbone(**TINY), class_names=("x", "y"))
    source.export(tmp_path / "features", output="features")
    expected = source.backbone(images).numpy()

    classifier = BiTClassifier.from_hub(str(tmp_path / "features"), class_names=("cat", "dog"))
    np.testing.assert_allclose(classifier.backbone(images).numpy(), expected, atol=1e-5)
    native = BiTBackbone.from_hub(str(tmp_path / "features"), convert=True)
    np.testing.assert_allclose(native(images).numpy(), expected, atol=1e-5)

    before = [w.numpy().copy() for w in classifier.backbone.trainable_weights]
    data = (np.random.default_rng(0).uniform(0, 1, (16, 32, 32, 3)).astype("float32"),
            np.arange(16) % 2)
    classifier.fit(data, hyperrule=dict(steps=3, resize_size=36, crop_size=32), batch_size=8,
                   verbose=0)
    changed = sum(not np.array_equal(a, w.numpy())
                  for a, w in zip(before, classifier.backbone.trainable_weights))
    assert changed >= len(before) // 2  # the module's own variables train, not only the head

    classifier.save(tmp_path / "hub.keras")
    with pytest.raises(ValueError, match="safe_mode=False"):
        bitkeras.load_model(tmp_path / "hub.keras")  # Keras's rule for SavedModel layers
    reloaded = bitkeras.load_model(tmp_path / "hub.keras", safe_mode=False)
    np.testing.assert_allclose(reloaded(images).numpy(), classifier(images).numpy(), atol=1e-5)
    assert reloaded.class_names == ("cat", "dog")

    with pytest.raises(ValueError, match="freezes by block"):
        classifier.fit(data, hyperrule=dict(steps=1), batch_size=8, trainable="block3", verbose=0)


class _ModuleServer(http.server.ThreadingHTTPServer):
    """Serves one compressed module, as tfhub.dev does for ?tf-hub-format=compressed."""

    def __init__(self, archive):
        self.archive, self.requests = archive, []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(handler):  # noqa: N805 (the server is self)
                self.requests.append(handler.path)
                if not handler.path.endswith("?tf-hub-format=compressed"):
                    handler.send_error(404)
                    return
                body = self.archive.read_bytes()
                handler.send_response(200)
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body)

            def log_message(handler, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def test_remote_handles_download_once_into_tf_hubs_cache(released, images, tmp_path,
                                                         monkeypatch):
    path, arrays, _, _ = released
    archive = tmp_path / "module.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for item in path.iterdir():
            tar.add(item, arcname=item.name)
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub_cache"))
    server = _ModuleServer(archive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    handle = f"http://127.0.0.1:{server.server_address[1]}/google/bit/tiny/1"
    try:
        backbone = BiTBackbone.from_hub(handle, convert=True)
    finally:
        server.shutdown()
        server.server_close()
    expected, _, _ = reference.forward(arrays, images, TINY["block_units"])
    np.testing.assert_allclose(backbone(images).numpy(), expected, rtol=1e-4, atol=1e-4)
    folder = tmp_path / "hub_cache" / hashlib.sha1(handle.encode()).hexdigest()
    assert (folder / "saved_model.pb").is_file() and len(server.requests) == 1
    assert not [p for p in folder.parent.iterdir() if p != folder]  # nothing half-written
    assert hub.resolve(handle) == folder  # from the cache, with the server gone
    tensorflow_hub = pytest.importorskip("tensorflow_hub")
    assert pathlib.Path(tensorflow_hub.resolve(handle)) == folder  # the same cache layout


def test_offline_remote_handle_fails_fast_and_says_where_to_put_the_module(
        tmp_path, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub_cache"))
    with pytest.raises(hub.HubUnavailableError) as raised:
        BiTBackbone.from_hub("https://tfhub.invalid/google/bit/m-r50x1/1")
    message = str(raised.value)
    assert "tf-hub-format=compressed" in message and str(tmp_path / "hub_cache") in message


def test_kaggle_handles_resolve_through_kagglehubs_cache_and_fail_fast_offline(
        released, images, tmp_path, monkeypatch):
    path, arrays, _, _ = released
    # kagglehub's cache layout: models/<owner>/<model>/<framework>/<variation>/<version>,
    # complete when <version>.complete sits beside it.
    variation = tmp_path / "kagglehub" / "models" / "google" / "bit" / "tensorFlow2" / "m-r50x1"
    shutil.copytree(path, variation / "1")
    (variation / "1.complete").touch()
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    backbone = BiTBackbone.from_hub("kaggle://google/bit/tensorFlow2/m-r50x1/1", convert=True)
    expected, _, _ = reference.forward(arrays, images, TINY["block_units"])
    np.testing.assert_allclose(backbone(images).numpy(), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(hub.HubUnavailableError, match=r"kagglehub.model_download\('google/bit/"
                                                      r"tensorFlow2/m-r101x1/1'\)"):
        BiTBackbone.from_hub("kaggle://google/bit/tensorFlow2/m-r101x1/1")


def test_folders_that_are_not_modules_are_refused(tmp_path):
    import tensorflow as tf

    with pytest.raises(FileNotFoundError, match="no TF-Hub module"):
        BiTBackbone.from_hub(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a SavedModel"):
        BiTBackbone.from_hub(str(tmp_path))

    maps = tf.__internal__.tracking.AutoTrackable()  # reusable API, but maps out
    maps.scale = tf.Variable(2.0)
    maps.variables = [maps.scale]
    maps.__call__ = tf.function(lambda images: images * maps.scale, input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.float32)])
    tf.saved_model.save(maps, str(tmp_path / "maps"))
    signature_only = tf.Module()
    signature_only.scale = tf.Variable(1.0)
    serve = tf.function(lambda images: {"out": images * signature_only.scale},
                        input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    tf.saved_model.save(signature_only, str(tmp_path / "signature_only"), signatures=serve)
    with pytest.raises(ValueError, match="lacks __call__"):
        BiTBackbone.from_hub(str(tmp_path / "signature_only"))
    with pytest.raises(ValueError, match="one vector each"):
        BiTBackbone.from_hub(str(tmp_path / "maps"))
    with pytest.raises(ValueError, match="does not hold BiT variables"):
        BiTBackbone.from_hub(str(tmp_path / "maps"), convert=True)
