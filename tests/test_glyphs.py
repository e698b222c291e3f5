import numpy as np
import pytest

from bitkeras.data import glyphs


def test_glyphs_are_deterministic_and_any_slice_renders_alone():
    images, labels = glyphs.make_glyphs(20, seed=3, image_size=24)
    again, _ = glyphs.make_glyphs(20, seed=3, image_size=24, workers=1)
    part, part_labels = glyphs.make_glyphs(5, seed=3, image_size=24, start=7)
    assert images.shape == (20, 24, 24, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(part, images[7:12])
    np.testing.assert_array_equal(part_labels, labels[7:12])


def test_another_seed_draws_other_images_of_the_same_classes():
    first, first_labels = glyphs.make_glyphs(10, seed=0, image_size=16)
    second, second_labels = glyphs.make_glyphs(10, seed=1, image_size=16)
    np.testing.assert_array_equal(first_labels, second_labels)
    assert all(not np.array_equal(a, b) for a, b in zip(first, second))


def test_classes_are_balanced_and_named():
    _, labels = glyphs.make_glyphs(2 * glyphs.NUM_CLASSES, seed=0, image_size=8)
    assert np.bincount(labels).tolist() == [2] * glyphs.NUM_CLASSES
    assert len(set(glyphs.CLASS_NAMES)) == glyphs.NUM_CLASSES > 100
    characters = {name[len("char_"):] for name in glyphs.CLASS_NAMES if name.startswith("char_")}
    assert set("0123456789AZaΩ+") <= characters
    assert {"disc", "star", "stripes", "checkerboard"} <= set(glyphs.CLASS_NAMES)


def test_every_class_draws_something_visible():
    images, _ = glyphs.make_glyphs(glyphs.NUM_CLASSES, seed=0, image_size=32)
    contrast = images.reshape(len(images), -1).astype(float).std(axis=1)
    assert contrast.min() > 10, np.array(glyphs.CLASS_NAMES)[contrast <= 10]


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="image_size >= 8"):
        glyphs.make_glyphs(4, image_size=4)


def test_a_class_subset_renders_those_classes_in_turn_with_dense_labels():
    images, labels = glyphs.make_glyphs(30, seed=2, classes=glyphs.FORM_CLASSES, start=20)
    assert len(glyphs.FORM_CLASSES) == 24 and labels.tolist() == [
        k % 24 for k in range(20, 50)]
    # Example k of the subset is rendering k // 24 of class FORM_CLASSES[k % 24].
    index = 25 // 24 * glyphs.NUM_CLASSES + glyphs.FORM_CLASSES[25 % 24]
    np.testing.assert_array_equal(images[5], glyphs.render(index, seed=2))
    assert glyphs.CLASS_NAMES[glyphs.FORM_CLASSES[0]] == glyphs.SHAPES[0]
    with pytest.raises(ValueError, match="class ids"):
        glyphs.make_glyphs(2, classes=[500])
