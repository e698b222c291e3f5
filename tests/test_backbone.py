import keras
import numpy as np
import pytest

from bitkeras import BiTBackbone, load_npz
from tests import reference
from tests.conftest import TINY


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


def test_pyramid_strides():
    backbone = BiTBackbone(**TINY)
    shapes = {name: tuple(t.shape[1:]) for name, t in backbone.pyramid_outputs.items()}
    assert shapes == {"block1": (None, None, 128), "block2": (None, None, 256),
                      "block3": (None, None, 512), "block4": (None, None, 1024)}
    maps = keras.Model(backbone.input, backbone.pyramid_outputs)(np.zeros((1, 64, 64, 3)))
    assert [maps[f"block{b}"].shape[1] for b in (1, 2, 3, 4)] == [16, 8, 4, 2]


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
