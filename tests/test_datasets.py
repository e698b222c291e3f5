import numpy as np
import pytest

from bitkeras.data import datasets


def test_digits_splits_are_fixed_disjoint_and_stratified():
    pytest.importorskip("sklearn")
    train_images, train_labels = datasets.digits("train")
    test_images, test_labels = datasets.digits("test")
    all_images, _ = datasets.digits("all")
    assert train_images.shape == (1347, 8, 8, 3) and test_images.shape == (450, 8, 8, 3)
    assert train_images.dtype == np.uint8 and all_images.max() == 255
    assert np.bincount(test_labels).min() >= 44 and np.bincount(train_labels).min() >= 130
    train_rows = {image.tobytes() + bytes([label]) for image, label in zip(train_images, train_labels)}
    overlap = sum(image.tobytes() + bytes([label]) in train_rows
                  for image, label in zip(test_images, test_labels))
    assert overlap <= 5  # a handful of scans are exact duplicates in the UCI data
    np.testing.assert_array_equal(datasets.digits("test")[0], test_images)


def test_digits_refuses_an_unknown_split():
    with pytest.raises(ValueError, match="train"):
        datasets.digits("validation")
