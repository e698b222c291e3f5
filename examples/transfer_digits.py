"""Transfer learning with a tiny BiT on real handwritten digits, offline.

Upstream: a small BiT (block_units=(1, 1, 1, 1), width_factor=0.5) learns the
digits 0-4 from scikit-learn's bundled UCI scans (8x8, upscaled to 32x32), and
is saved in the released BiT `.npz` format. Downstream: that checkpoint is
loaded into a fresh backbone with a new zero-initialised head and fine-tuned on
a few examples per class of the unseen digits 5-9, next to the same model
trained from scratch on the same examples and steps. Prints both accuracies on
the held-out 5-9 scans and writes the fine-tuned model to --out.

    python examples/transfer_digits.py --out runs/transfer_digits
"""

import argparse
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import bitkeras  # noqa: E402

TINY = dict(block_units=(1, 1, 1, 1), width_factor=0.5)


def digit_images():
    """(images, labels): 1,797 scans as 32x32 RGB floats in [0, 1]."""
    digits = load_digits()
    scans = digits.images / 16.0  # the scans hold 0..16 ink levels
    images = np.kron(scans, np.ones((4, 4)))[..., None].repeat(3, axis=-1)
    return images.astype(np.float32), digits.target


def few_per_class(labels, classes, count, rng):
    """Indices of `count` random examples of each class."""
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), count, replace=False)
                           for c in classes])


def train(classifier, images, labels, epochs, batch_size, learning_rate):
    classifier.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9))
    classifier.fit(images, labels, epochs=epochs, batch_size=batch_size, verbose=2)


def accuracy(classifier, images, labels):
    predictions = classifier.predict(images, batch_size=256, verbose=0).argmax(axis=-1)
    return float(np.mean(predictions == labels))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/transfer_digits", help="output folder")
    parser.add_argument("--upstream-epochs", type=int, default=10)
    parser.add_argument("--downstream-epochs", type=int, default=30)
    parser.add_argument("--examples-per-class", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    images, labels = digit_images()
    upstream = labels < 5
    print(f"Upstream: {upstream.sum()} scans of digits 0-4")
    pretrained = bitkeras.BiTClassifier(bitkeras.BiTBackbone(**TINY), num_classes=5)
    train(pretrained, images[upstream], labels[upstream], args.upstream_epochs, 32, 0.01)
    checkpoint = out / "upstream.npz"
    bitkeras.save_npz(pretrained, checkpoint)
    print(f"Upstream accuracy (training scans): "
          f"{accuracy(pretrained, images[upstream], labels[upstream]):.3f}; saved {checkpoint}")

    downstream_indices = np.flatnonzero(~upstream)
    chosen = few_per_class(labels, range(5, 10), args.examples_per_class, rng)
    held_out = np.setdiff1d(downstream_indices, chosen)
    train_images, train_labels = images[chosen], labels[chosen] - 5
    test_images, test_labels = images[held_out], labels[held_out] - 5
    print(f"Downstream: {len(chosen)} training scans of digits 5-9, {len(held_out)} held out")

    results = {}
    for name in ("pretrained", "scratch"):
        keras.utils.set_random_seed(args.seed)
        backbone = bitkeras.BiTBackbone(**TINY)
        if name == "pretrained":
            bitkeras.load_npz(backbone, checkpoint)
        classifier = bitkeras.BiTClassifier(backbone, num_classes=5)
        print(f"Fine-tuning the {name} backbone")
        train(classifier, train_images, train_labels, args.downstream_epochs, 10, 0.01)
        results[name] = accuracy(classifier, test_images, test_labels)
        if name == "pretrained":
            classifier.save(out / "finetuned.keras")

    print(f"Held-out accuracy on digits 5-9 with {args.examples_per_class} examples per class:")
    for name, value in results.items():
        print(f"  {name:>10}: {value:.3f}")
    print(f"Fine-tuned model: {out / 'finetuned.keras'}")


if __name__ == "__main__":
    main()
