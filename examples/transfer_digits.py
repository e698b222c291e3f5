"""Transfer learning with a tiny BiT on real handwritten digits, offline.

Upstream: a small BiT (block_units=(1, 1, 1, 1), width_factor=0.5) learns the
digits 0-4 from scikit-learn's bundled UCI scans (8x8, upscaled to 32x32), and
is saved in the released BiT `.npz` format. Downstream: that checkpoint is
loaded into a fresh backbone with a new zero-initialised head and fine-tuned
with `BiTClassifier.fit` (the BiT-HyperRule) on a few examples per class of the
unseen digits 5-9, next to the same model trained from scratch on the same
examples and steps. Prints both accuracies on the held-out 5-9 scans and
writes the fine-tuned model to --out.

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


def pretrain(classifier, images, labels, epochs):
    """Upstream training: a plain Keras loop (the HyperRule is for fine-tuning)."""
    classifier.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    keras.Model.fit(classifier, images, labels, epochs=epochs, batch_size=32, verbose=2)


def fine_tune(classifier, images, labels, steps):
    """The HyperRule on the few-shot data, shortened and at the scans' own size.

    The rule would upsample these 32x32 scans to 128x128 crops and, at a batch
    of only 10 examples, scale its 500 steps up to 25,600: right for a GPU, not
    for a one-minute CPU demo. So: `steps`, a 10x learning rate to match, and
    crops of 32 from 36 pixels; flips stay off because they change digits.
    """
    return classifier.fit((images, labels), steps=steps, base_learning_rate=0.01,
                          resize_size=36, crop_size=32, flip=False, verbose=2)


def accuracy(classifier, images, labels):
    return classifier.evaluate((images, labels), verbose=0)["accuracy"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/transfer_digits", help="output folder")
    parser.add_argument("--upstream-epochs", type=int, default=10)
    parser.add_argument("--downstream-steps", type=int, default=60)
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
    pretrain(pretrained, images[upstream], labels[upstream], args.upstream_epochs)
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
        classifier = bitkeras.BiTClassifier(backbone, class_names=[str(d) for d in range(5, 10)])
        print(f"Fine-tuning the {name} backbone")
        fine_tune(classifier, train_images, train_labels, args.downstream_steps)
        results[name] = accuracy(classifier, test_images, test_labels)
        if name == "pretrained":
            classifier.save(out / "finetuned.keras")

    print(f"Held-out accuracy on digits 5-9 with {args.examples_per_class} examples per class:")
    for name, value in results.items():
        print(f"  {name:>10}: {value:.3f}")
    print(f"Fine-tuned model: {out / 'finetuned.keras'}")


if __name__ == "__main__":
    main()
