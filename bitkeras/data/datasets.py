"""Datasets that install with bitkeras: real images, no network.

`digits(split)`: the UCI handwritten digits that scikit-learn bundles, 1,797
real 8x8 scans of the digits 0-9 (43 writers), as RGB uint8 images ready for
`BiTClassifier.fit`. The split is fixed: a stratified quarter of each class is
held out as "test" (450 scans), the rest is "train" (1,347).

>>> images, labels = digits("train")
>>> images.shape, images.dtype, sorted(set(labels.tolist())) == list(range(10))
((1347, 8, 8, 3), dtype('uint8'), True)
"""

import numpy as np

DIGITS_SPLITS = ("train", "test", "all")
DIGITS_TEST_FRACTION = 0.25
DIGITS_CLASS_NAMES = tuple(str(digit) for digit in range(10))
_SPLIT_SEED = 0


def digits(split="train"):
    """(images uint8 (N, 8, 8, 3), labels int64 (N,)) of one split of the UCI digits."""
    if split not in DIGITS_SPLITS:
        raise ValueError(f"digits split must be one of {list(DIGITS_SPLITS)}; got {split!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "the bundled digits come with scikit-learn: pip install scikit-learn"
        ) from error
    scans = load_digits()
    # The scans count ink in 0..16 per cell: 0 is blank paper, shown black.
    grey = np.round(scans.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(grey[..., None], 3, axis=-1)
    labels = scans.target.astype(np.int64)
    if split == "all":
        return images, labels
    test = stratified_mask(labels, DIGITS_TEST_FRACTION, _SPLIT_SEED)
    keep = test if split == "test" else ~test
    return images[keep], labels[keep]


def stratified_mask(labels, fraction, seed):
    """True for a reproducible `fraction` of each class (at least one, never all)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = min(len(members) - 1, max(1, round(len(members) * fraction)))
        mask[rng.choice(members, count, replace=False)] = True
    return mask
