"""Fine-tune from a TF-Hub module and export the result for serving.

    python examples/hub_finetune_export.py --module https://tfhub.dev/google/bit/m-r50x1/1 \
        --data flowers/train --test flowers/test --out runs/flowers_hub

The module (a TF-Hub URL, cached by tensorflow_hub under $TFHUB_CACHE_DIR, or a
SavedModel folder) becomes the backbone of a BiTClassifier: as a Keras 3 layer
whose variables fit() trains, or, with --convert, as a native BiTBackbone.
The fine-tuned classifier is exported as a TF-Hub style SavedModel with a
serving signature for raw JPEG/PNG uploads, which the script then calls.

Offline, with no --module, it makes its own module first: the shipped
BiT-Glyphs-R14x0.5 backbone exported as a feature-vector module, and fine-tunes
it on a demo folder of handwritten digit PNGs.
"""

import argparse
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

import bitkeras  # noqa: E402
from bitkeras.data import datasets  # noqa: E402


def demo_module(folder):
    """The shipped backbone as a TF-Hub feature-vector module (offline stand-in)."""
    backbone = bitkeras.BiTBackbone.from_preset("BiT-Glyphs-R14x0.5")
    return str(backbone.export(folder / "glyphs_feature_vector"))


def demo_folder(folder, split):
    """Digit scans written as PNGs in class sub-folders."""
    images, labels = datasets.digits(split)
    for index, (image, label) in enumerate(zip(images, labels)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / str(label) / f"{index:04d}.png")
    return str(folder)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", help="TF-Hub handle or SavedModel folder (default: a demo)")
    parser.add_argument("--data", help="training folder of class sub-folders")
    parser.add_argument("--test", help="test folder")
    parser.add_argument("--convert", action="store_true",
                        help="make the module a native BiTBackbone first")
    parser.add_argument("--steps", type=int, default=None,
                        help="fine-tuning steps (default: the HyperRule's; 100 for the demo)")
    parser.add_argument("--out", default="runs/hub_finetune_export")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    overrides = {}
    if args.module is None or args.data is None:
        print("Demo: the shipped backbone as a hub module, on handwritten digit PNGs")
        # A CPU-sized HyperRule for 8x8 scans: 40->32 px, no flips (they change digits).
        overrides = dict(steps=100, batch_size=64, base_learning_rate=0.01, resize_size=40,
                         crop_size=32, flip=False)
    module = args.module or demo_module(out)
    train = args.data or demo_folder(out / "digits_train", "train")
    test = args.test or (None if args.data else demo_folder(out / "digits_test", "test"))
    if args.steps:
        overrides["steps"] = args.steps

    classifier = bitkeras.BiTClassifier.from_hub(module, convert=args.convert)
    print(f"Backbone: {type(classifier.backbone).__name__} from {module}")
    classifier.fit(train, verbose=2, hyperrule=overrides)
    if test:
        print(f"Test: {classifier.evaluate(test, verbose=0, return_dict=True)}")

    exported = classifier.export(out / "serving")
    print(f"Exported a SavedModel for serving to {exported}")
    served = tf.saved_model.load(str(exported))
    upload = next(pathlib.Path(test or train).rglob("*.png"), None) or next(
        pathlib.Path(test or train).rglob("*.jp*g"))
    result = served.signatures["serving_bytes"](images=tf.constant([upload.read_bytes()]))
    name = result["class_names"].numpy()[0].decode()
    print(f"serving_bytes on {upload}: class {name!r}, score "
          f"{float(np.asarray(result['scores'])[0]):.3f} (true class: {upload.parent.name!r})")


if __name__ == "__main__":
    main()
