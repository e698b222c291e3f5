"""`predict` when the number of images changes, bitkeras against PyTorch, in one run.

R50x1 (random weights, 10 classes) at 128x128, `predict(batch_size=16)`. Each round
builds a fresh classifier, whose first `predict` (16 images) traces it, then times:

- `predict` of 20 images (16 + a new last batch of 4), then of 7 and of 33:
  calls with counts the classifier has not seen, as a user or a server makes them;
- `predict` of 64 images, warmed up at that count (4 batches of 16).

PyTorch BiT (`benchmarks/torch_bit.py`, eager, `torch.no_grad()`, in batches of 16)
runs the same counts right after, in the same round. Figures are images/s, medians over
rounds; compare the ratios, from one run on one machine. Needs PyTorch.

    python benchmarks/predict_sizes.py [--rounds 5]
"""

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import bitkeras  # noqa: E402
from bitkeras.finetuning.xla import cpu_name  # noqa: E402

try:
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("benchmarks/predict_sizes.py needs PyTorch: pip install torch")
from torch_bit import ResNetV2  # noqa: E402  (this script's folder)

SIZE, BATCH, CLASSES = 128, 16, 10
NEW_COUNTS = (20, 7, 33)


def timed(function, count):
    start = time.perf_counter()
    function(count)
    return count / (time.perf_counter() - start)


def one_round(images, torch_model):
    classifier = bitkeras.BiTClassifier(bitkeras.BiTBackbone.from_preset("R50x1"),
                                        num_classes=CLASSES)

    def ours(count):
        classifier.predict(images[:count], batch_size=BATCH, verbose=0, image_size=SIZE)

    def theirs(count):
        pixels = torch.from_numpy(images[:count]).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            for start in range(0, count, BATCH):
                torch_model(pixels[start:start + BATCH])

    figures = {"first predict (16), bitkeras": timed(ours, 16)}
    theirs(16)
    for count in NEW_COUNTS:
        figures[f"new count {count}, bitkeras"] = timed(ours, count)
        figures[f"new count {count}, PyTorch eager"] = timed(theirs, count)
    ours(64), theirs(64)
    figures["64, warmed up, bitkeras"] = timed(ours, 64)
    figures["64, warmed up, PyTorch eager"] = timed(theirs, 64)
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    torch_model = ResNetV2(bitkeras.ARCHITECTURES["R50x1"], CLASSES).eval()
    images = np.random.default_rng(0).integers(0, 256, (64, SIZE, SIZE, 3), np.uint8)
    runs = [one_round(images, torch_model) for _ in range(rounds)]
    print(f"{cpu_name()} ({platform.machine()}), {os.cpu_count()} cores; R50x1 at "
          f"{SIZE}x{SIZE}, predict(batch_size={BATCH}); images/s, medians of {rounds} "
          f"rounds, each on a fresh classifier")
    for label in runs[0]:
        median = np.median([run[label] for run in runs])
        ratio = ""
        if label.endswith("bitkeras") and label.replace("bitkeras", "PyTorch eager") in runs[0]:
            torch_median = np.median([run[label.replace("bitkeras", "PyTorch eager")]
                                      for run in runs])
            ratio = f"   x{median / torch_median:.2f} of PyTorch"
        print(f"  {label:34s} {median:7.1f}{ratio}")


if __name__ == "__main__":
    main()
