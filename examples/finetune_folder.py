"""Fine-tune a BiT classifier on a folder of images with the BiT-HyperRule.

The folder holds one sub-folder of images per class (JPEG, PNG, BMP, GIF,
...). Without --train, a demo folder is written first: scikit-learn's
handwritten digit scans as PNG files, digits 0-4, split into train/ and test/.

    python examples/finetune_folder.py --train photos/train --test photos/test \\
        --preset BiT-M-R50x1 --batch-split 8
    python examples/finetune_folder.py --tiny --steps 150 --batch-size 32 \
        --learning-rate 0.01 --crop-size 32                   # the offline demo

Prints the rule it trains with, the test accuracy, and saves the model to
--out/model.keras (reload with bitkeras.load_model).
"""

import argparse
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import bitkeras  # noqa: E402

TINY = dict(block_units=(1, 1, 1, 1), width_factor=0.5)


def write_demo_folders(root, seed=0):
    """Digits 0-4 from scikit-learn as 32x32 PNGs in root/train and root/test (80/20)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for index in rng.permutation(len(digits.target)):
        label = int(digits.target[index])
        if label >= 5:
            continue
        split = "test" if rng.uniform() < 0.2 else "train"
        folder = root / split / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        scan = np.kron(digits.images[index] * (255 / 16), np.ones((4, 4))).astype(np.uint8)
        Image.fromarray(scan).save(folder / f"{index:04d}.png")  # grayscale: converted to RGB
    return root / "train", root / "test"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", help="folder of class sub-folders (default: a demo folder)")
    parser.add_argument("--test", help="held-out folder with the same classes")
    parser.add_argument("--preset", default="BiT-Glyphs-R14x0.5",
                        help="released model or architecture (default: the shipped model)")
    parser.add_argument("--weights", default="default",
                        help="the preset's own weights (default), a .npz path, or 'none'")
    parser.add_argument("--tiny", action="store_true", help="a tiny random BiT (demo, tests)")
    parser.add_argument("--steps", type=int, help="override the rule's step count")
    parser.add_argument("--batch-size", type=int, help="override the rule's batch size")
    parser.add_argument("--learning-rate", type=float, help="override the rule's base rate")
    parser.add_argument("--batch-split", type=int, default=1, help="gradient accumulation")
    parser.add_argument("--examples-per-class", type=int, help="few-shot: K per class")
    parser.add_argument("--trainable", default="all", help="all, head, or block1..block4")
    parser.add_argument("--crop-size", type=int, help="override the rule's crop size")
    parser.add_argument("--out", default="runs/finetune_folder", help="output folder")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train, test = args.train, args.test
    if train is None:
        train, test = write_demo_folders(out / "data")
        print(f"Demo data: {train} and {test}")
    if args.tiny:
        backbone = bitkeras.BiTBackbone(**TINY)
    else:
        weights = None if args.weights == "none" else args.weights
        backbone = bitkeras.BiTBackbone.from_preset(args.preset, weights=weights)
    classifier = bitkeras.BiTClassifier(backbone)
    classifier.compile(batch_split=args.batch_split)

    overrides = {name: value for name, value in (
        ("steps", args.steps), ("batch_size", args.batch_size),
        ("base_learning_rate", args.learning_rate))
        if value is not None}
    if args.crop_size:
        overrides.update(crop_size=args.crop_size, resize_size=args.crop_size * 7 // 6)
    classifier.fit(train, validation_data=test, examples_per_class=args.examples_per_class,
                   trainable=args.trainable, verbose=2, hyperrule=overrides)
    if test is not None:
        results = classifier.evaluate(test, verbose=0, return_dict=True)
        print("Test: " + ", ".join(f"{name} {value:.3f}" for name, value in results.items()))
    classifier.save(out / "model.keras")
    print(f"Saved {out / 'model.keras'} (classes: {', '.join(classifier.class_names)})")


if __name__ == "__main__":
    main()
