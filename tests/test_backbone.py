import os
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest

from bitkeras import BiTBackbone, BiTImageConverter, load_npz
from tests.helpers import TINY, reference


@pytest.mark.parametrize("size", [32, 33, 35, 38])
def test_backbone_equals_the_documented_function(tiny_checkpoint, size):
    # Odd and even sizes exercise the explicit symmetric padding of every
    # stride-2 step (root conv, max-pool, the 3x3 and projection convs).
    path, arrays = tiny_checkpoint
    backbone = BiTBackbone(**TINY)
    load_npz(backbone, path)
    images = np.random.default_rng(size).uniform(0, 1, (2, size, size, 3)).astype(np.float32)
    expected, _, expected_maps = reference.forward(arrays, images, TINY["block_units"])
    np.testing.assert_allclose(backbone(images), expected, rtol=1e-4, atol=1e-4)
    pyramid = keras.Model(backbone.input, backbone.pyramid_outputs)
    maps = pyramid(images)
    for name, expected_map in expected_maps.items():
        assert maps[name].shape == expected_map.shape
        np.testing.assert_allclose(maps[name], expected_map, rtol=1e-3, atol=1e-3)


def test_r50x1_parameter_count_matches_the_release():
    backbone = BiTBackbone(block_units=(3, 4, 6, 3), width_factor=1)
    assert backbone.count_params() == 23_500_352
    assert backbone.feature_channels == 2048


def test_pyramid_levels_follow_keras_hub():
    backbone = BiTBackbone(**TINY)
    assert isinstance(backbone, keras_hub.models.FeaturePyramidBackbone)
    shapes = {name: tuple(t.shape[1:]) for name, t in backbone.pyramid_outputs.items()}
    assert shapes == {"P2": (None, None, 128), "P3": (None, None, 256),
                      "P4": (None, None, 512), "P5": (None, None, 1024)}
    maps = keras.Model(backbone.input, backbone.pyramid_outputs)(np.zeros((1, 64, 64, 3)))
    assert [maps[f"P{level}"].shape[1] for level in (2, 3, 4, 5)] == [16, 8, 4, 2]  # 64 / 2**P


def test_a_keras_hub_detection_backbone_takes_a_bit_backbone():
    retina = keras_hub.models.RetinaNetBackbone(
        image_encoder=BiTBackbone(**TINY), min_level=3, max_level=5, use_p5=False)
    levels = retina(np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 3)).astype("float32"))
    assert {name: tuple(level.shape) for name, level in levels.items()} == {
        "P3": (2, 8, 8, 256), "P4": (2, 4, 4, 256), "P5": (2, 2, 2, 256)}
    assert all(np.isfinite(keras.ops.convert_to_numpy(level)).all() for level in levels.values())


def test_keras_hub_preset_round_trip_is_exact(tmp_path, tiny_checkpoint, images):
    path, _ = tiny_checkpoint
    backbone = BiTBackbone(**TINY)
    load_npz(backbone, path)
    backbone.save_to_preset(tmp_path / "preset")
    for loaded in (BiTBackbone.from_preset(tmp_path / "preset"),
                   keras_hub.models.Backbone.from_preset(str(tmp_path / "preset"))):
        assert type(loaded) is BiTBackbone and loaded.get_config() == backbone.get_config()
        np.testing.assert_array_equal(loaded(images), backbone(images))


def test_the_dtype_policy_reaches_every_layer():
    backbone = BiTBackbone(**TINY, dtype="mixed_bfloat16")
    policies = {layer.dtype_policy.name for layer in backbone._flatten_layers(include_self=False)
                if not isinstance(layer, keras.layers.InputLayer)}
    assert policies == {"mixed_bfloat16"}
    assert BiTBackbone.from_config(backbone.get_config()).dtype_policy.name == "mixed_bfloat16"


def test_uint8_images_are_scaled_by_255(images):
    backbone = BiTBackbone(**TINY)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 33, 33, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        backbone(pixels), backbone(pixels.astype(np.float32) / 255), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        backbone.predict(pixels, verbose=0),
        backbone.predict(pixels.astype(np.float32) / 255, verbose=0),
        rtol=1e-4, atol=1e-5,
    )


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (np.zeros((1, 32, 32, 4), np.float32), ValueError, r"got shape \(1, 32, 32, 4\).*alpha"),
        (np.zeros((1, 3, 32, 32), np.float32), ValueError, "channels-first"),
        (np.zeros((32, 32, 3), np.float32), ValueError, "Add a batch axis"),
        (np.zeros((1, 32, 32, 3), np.int32), TypeError, "got dtype int32"),
        (np.full((1, 32, 32, 3), 200.0, np.float32), ValueError, r"\[200, 200\].*divide"),
        (np.full((1, 32, 32, 3), -1.0, np.float32), ValueError, r"\[-1, -1\].*\(images \+ 1\) / 2"),
    ],
)
def test_bad_images_get_clear_errors(bad, error, message):
    backbone = BiTBackbone(**TINY)
    with pytest.raises(error, match=message):
        backbone(bad)


def test_predict_checks_the_range_of_numpy_images():
    backbone = BiTBackbone(**TINY)
    with pytest.raises(ValueError, match="divide 0..255 pixel values by 255"):
        backbone.predict(np.full((2, 32, 32, 3), 255.0, np.float32), verbose=0)


def test_keras_file_round_trip(tmp_path, tiny_checkpoint, images):
    path, _ = tiny_checkpoint
    backbone = BiTBackbone(**TINY)
    load_npz(backbone, path)
    backbone.save(tmp_path / "backbone.keras")
    restored = keras.models.load_model(tmp_path / "backbone.keras")
    assert isinstance(restored, BiTBackbone)
    assert restored.block_units == (1, 1, 1, 1) and restored.width_factor == 0.5
    np.testing.assert_array_equal(backbone(images), restored(images))


def test_from_preset_builds_the_named_architecture():
    backbone = BiTBackbone.from_preset("R50x1")
    assert backbone.block_units == (3, 4, 6, 3) and backbone.width_factor == 1
    with pytest.raises(ValueError, match="bare architecture with no released weights"):
        BiTBackbone.from_preset("R50x1", weights="auto")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        BiTBackbone.from_preset("BiT-M-R50x1", weights="missing.npz")


OTHER_BACKEND = """
import sys, numpy as np, keras
assert keras.backend.backend() == sys.argv[1]
from bitkeras import BiTBackbone, BiTClassifier, load_npz
from bitkeras.models.layers import PreActBottleneck
unit = PreActBottleneck(out_channels=128, mid_channels=32, strides=2, projection=True)
assert tuple(unit(np.zeros((1, 9, 9, 64), "float32")).shape) == (1, 5, 5, 128)
classifier = BiTClassifier(BiTBackbone(block_units=(1, 1, 1, 1), width_factor=0.5), 5)
load_npz(classifier, sys.argv[2])
images = np.load(sys.argv[3])
pyramid = keras.Model(classifier.backbone.input, classifier.backbone.pyramid_outputs)
# keras-hub's predict runs the preprocessor (BiT's resize) on this backend too.
from bitkeras import BiTImageClassifierPreprocessor, BiTImageConverter, HeadClassifier
network = HeadClassifier(classifier.backbone, 5, preprocessor=BiTImageClassifierPreprocessor(
    BiTImageConverter(image_size=24)))
network.head.set_weights(classifier.head.get_weights())
pixels = (images * 255).round().astype("uint8")
predicted = network.predict(pixels, batch_size=2, verbose=0)
logits = keras.ops.convert_to_numpy(classifier(images))
maps = {name: keras.ops.convert_to_numpy(value) for name, value in pyramid(images).items()}
network.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
fit_loss = network.fit(pixels, np.array([0, 1]), batch_size=2, verbose=0).history["loss"]
np.savez(sys.argv[4], logits=logits, predicted=predicted, fit_loss=fit_loss, **maps)
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_models_compute_the_same_function_under_other_backends(backend, tiny_checkpoint,
                                                               images, tmp_path):
    pytest.importorskip(backend)
    path, arrays = tiny_checkpoint
    np.save(tmp_path / "images.npy", images)
    result = subprocess.run(
        [sys.executable, "-c", OTHER_BACKEND, backend, str(path), str(tmp_path / "images.npy"),
         str(tmp_path / "out.npz")],
        env=dict(os.environ, KERAS_BACKEND=backend), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    _, expected_logits, expected_maps = reference.forward(arrays, images, TINY["block_units"])
    computed = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(computed["logits"], expected_logits, rtol=1e-4, atol=1e-4)
    converter = BiTImageConverter(image_size=24)  # here, under TensorFlow
    resized = converter((images * 255).round().astype("uint8"))
    _, expected_predicted, _ = reference.forward(arrays, np.asarray(resized), TINY["block_units"])
    np.testing.assert_allclose(computed["predicted"], expected_predicted, rtol=1e-3, atol=1e-3)
    # Keras's own fit runs there too, on the preprocessed images: its loss is the
    # cross-entropy of those logits (labels 0 and 1) before the step.
    expected_loss = reference.cross_entropy(expected_predicted, [0, 1]).mean()
    np.testing.assert_allclose(computed["fit_loss"], [expected_loss], rtol=1e-3)
    for name, expected_map in expected_maps.items():
        np.testing.assert_allclose(computed[name], expected_map, rtol=1e-3, atol=1e-3)
