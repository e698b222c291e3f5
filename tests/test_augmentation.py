"""The ResNet papers' augmentation and testing: AlexNet's PCA lighting, multi-scale testing."""

import keras
import numpy as np
import pytest

from bitkeras.models.augmentation import IMAGENET_EIGENVALUES, IMAGENET_EIGENVECTORS, PCALighting
from bitkeras.finetuning.pipeline import multi_scale_views
from bitkeras.models.inference import MultiScaleAverage


def _shifts(layer, count):
    images = np.zeros((count, 1, 1, 3), "float32")
    return keras.ops.convert_to_numpy(layer(images, training=True)).reshape(count, 3)


def test_pca_lighting_shifts_along_the_components_with_the_documented_scale():
    shifts = _shifts(PCALighting(seed=1), 20_000)
    # In the eigenbasis, coordinate i is alpha_i * eigenvalue_i with alpha ~ N(0, 0.1).
    alphas = shifts @ np.asarray(IMAGENET_EIGENVECTORS) / np.asarray(IMAGENET_EIGENVALUES)
    np.testing.assert_allclose(alphas.std(axis=0), 0.1, rtol=0.05)
    np.testing.assert_allclose(alphas.mean(axis=0), 0, atol=0.005)
    assert np.corrcoef(alphas, rowvar=False)[np.triu_indices(3, 1)].max() < 0.05
    # Each image gets one shift for all its pixels; pixel values scale the shift with them.
    image = np.full((2, 5, 4, 3), 0.5, "float32")
    shifted = keras.ops.convert_to_numpy(PCALighting(seed=2)(image, training=True))
    assert np.ptp(shifted.reshape(2, -1, 3), axis=1).max() < 1e-6
    bytes_range = PCALighting(seed=2, value_range=(0, 255))(image * 255, training=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bytes_range) - image * 255,
                               (shifted - image) * 255, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(PCALighting(seed=2)(image, training=False), image)


def test_pca_lighting_from_grey_images_shifts_only_along_grey():
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 256, (50, 8, 8, 1)), 3, axis=-1).astype(np.uint8)
    layer = PCALighting.from_images(grey, seed=0)
    assert layer.eigenvalues[0] > 0.05 and max(layer.eigenvalues[1:]) < 1e-12
    shifts = _shifts(layer, 200)
    grey_axis = np.ones(3) / np.sqrt(3)
    # The shift lies in the span of the eigenvectors with a non-zero eigenvalue: grey.
    np.testing.assert_allclose(np.cross(shifts, grey_axis), 0, atol=1e-6)
    assert np.abs(shifts @ grey_axis).max() > 0.001
    restored = PCALighting.from_config(layer.get_config())
    assert restored.eigenvalues == layer.eigenvalues and restored.std == 0.1
    with pytest.raises(ValueError, match="one per column"):
        PCALighting(eigenvalues=(1, 2))
    with pytest.raises(ValueError, match="takes float images"):
        layer(grey[:1], training=True)


class SizeLogits(keras.Model):
    """Logits that record the view: (height / 1000, width / 1000, mean pixel)."""

    def call(self, images, training=False):
        shape = keras.ops.shape(images)
        ones = keras.ops.ones((shape[0], 1))
        return keras.ops.concatenate([
            ones * keras.ops.cast(shape[1], "float32") / 1000,
            ones * keras.ops.cast(shape[2], "float32") / 1000,
            keras.ops.mean(images, axis=(1, 2, 3))[:, None]], axis=-1)


def test_multi_scale_testing_averages_the_whole_image_at_each_shorter_side():
    image = np.full((100, 150, 3), 64, "uint8")
    views = multi_scale_views(image, sides=(224, 256, 480))
    # The whole image, aspect kept, shorter side at each scale, read as [0, 1].
    assert {name: tuple(view.shape) for name, view in views.items()} == {
        "side_224": (224, 336, 3), "side_256": (256, 384, 3), "side_480": (480, 720, 3)}
    np.testing.assert_allclose(views["side_256"].numpy(), 64 / 255, rtol=1e-5)
    output = MultiScaleAverage(SizeLogits())({name: view[None] for name, view in views.items()})
    logits = np.array([[h / 1000, w / 1000, 64 / 255] for h, w in ((224, 336), (256, 384),
                                                                  (480, 720))])
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.softmax(output))[0],
                               probabilities.mean(axis=0), rtol=1e-5)
    assert [tuple(view.shape[:2]) for view in multi_scale_views(image).values()] == [
        (224, 336), (256, 384), (384, 576), (480, 720), (640, 960)]  # ResNet's scales
