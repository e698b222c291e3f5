"""Few-shot transfer with bitkeras's shipped pretrained model, in plain Python.

The `bitkeras finetune` command does this (and more) from the shell; this is
the same idea through the library: the BiT-Glyphs-R14x0.5 backbone (pre-trained
by bitkeras on generated glyphs, shipped in saved_models/, no network) is
fine-tuned with `BiTClassifier.fit` on a few of the real handwritten digit
scans that scikit-learn bundles, next to the same architecture trained from
scratch on the same examples, steps and seed.

    python examples/transfer_digits.py --examples-per-class 10
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

import bitkeras  # noqa: E402
from bitkeras.data import datasets  # noqa: E402

PRESET = "BiT-Glyphs-R14x0.5"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples-per-class", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="save the fine-tuned model here (.keras)")
    args = parser.parse_args()
    train, test = datasets.digits("train"), datasets.digits("test")

    accuracies = {}
    for name, weights in (("pretrained", "default"), ("scratch", None)):
        keras.utils.set_random_seed(args.seed)
        backbone = bitkeras.BiTBackbone.from_preset(PRESET, weights=weights)
        classifier = bitkeras.BiTClassifier(backbone)
        # The HyperRule, shortened for a CPU: 40->32 px instead of 160->128 for
        # these 8x8 scans, a fixed number of steps, and no flips (they change digits).
        classifier.fit(train, examples_per_class=args.examples_per_class, seed=args.seed,
                       hyperrule=dict(steps=args.steps, base_learning_rate=0.01, resize_size=40,
                                      crop_size=32, flip=False), verbose=0)
        accuracies[name] = classifier.evaluate(test, verbose=0, return_dict=True)["accuracy"]
        print(f"{name:>10}: test accuracy {accuracies[name]:.3f} "
              f"({args.examples_per_class} training scans per digit)")
        if name == "pretrained" and args.out:
            classifier.save(args.out)
    print(f"Transfer gain: {accuracies['pretrained'] - accuracies['scratch']:+.3f}")


if __name__ == "__main__":
    main()
