"""Is the input pipeline faster than the model it feeds? Images/s of both, one run.

Writes a folder of JPEG photos-like images (500x375, smooth colour fields with
grain), then measures in the same run:

- the training pipeline of `BiTClassifier.fit` (read, decode, resize, random
  crop, flip, batch, MixUp) in images/s, at the HyperRule's 448 -> 384 and at
  160 -> 128, both as `fit` runs it on a folder (each example's file picked by
  a stateless index shuffle) and as it runs on streamed data (the file records
  shuffled in a buffer), the way `fit` read folders before: the baseline;
- R50x1's training step (SGD with momentum, Keras's compiled train step) in
  images/s at the same crop sizes.

The pipeline should run at >= 3x the model's speed so it never starves it.

    python benchmarks/pipeline.py [--images 256] [--batch 16]
"""

import argparse
import dataclasses
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from timing import median_seconds  # noqa: E402  (this script's folder is on sys.path)

import bitkeras  # noqa: E402
from bitkeras.finetuning import sources  # noqa: E402
from bitkeras.finetuning import pipeline

TARGET_RATIO = 3.0


def write_photos(root, count, seed=0):
    """`count` 500x375 JPEGs in two class folders: smooth colour fields plus grain."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:375, 0:500] / 500.0
    for index in range(count):
        folder = root / f"class_{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        phase = rng.uniform(0, 6, 3)
        field = 0.5 + 0.4 * np.sin(rows[..., None] * 7 + cols[..., None] * 5 + phase)
        pixels = np.clip(field * 255 + rng.normal(0, 12, (375, 500, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index:04d}.jpg", quality=90)


def pipeline_images_per_second(source, rule, batch, batches):
    dataset = pipeline.train_dataset(source, rule, 2, batch, seed=0)
    iterator = iter(dataset)
    for _ in range(3):  # warm-up: tracing, thread pools, first prefetch
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch / (time.perf_counter() - start)


def model_images_per_second(crop_size, batch, steps):
    classifier = bitkeras.BiTClassifier(bitkeras.BiTBackbone.from_preset("R50x1"), 2)
    classifier.compile(optimizer=keras.optimizers.SGD(0.003, momentum=0.9),
                       loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (batch, crop_size, crop_size, 3)).astype(np.float32)
    labels = np.eye(2, dtype=np.float32)[rng.integers(0, 2, batch)]
    return batch / median_seconds(lambda: classifier.train_on_batch(images, labels), steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pipeline-batches", type=int, default=30)
    parser.add_argument("--model-steps", type=int, default=3)
    args = parser.parse_args()
    print(f"CPU cores: {os.cpu_count()}")

    with tempfile.TemporaryDirectory() as folder:
        import pathlib

        root = pathlib.Path(folder)
        write_photos(root, args.images)
        source = sources.open_source(root)
        print(f"{args.images} JPEGs of 500x375; typical size read from headers: "
              f"{source.image_size}")
        base = bitkeras.HyperRule.for_dataset(source.num_examples, source.image_size,
                                              batch_size=args.batch)
        failed = False
        for resize_size, crop_size in ((448, 384), (160, 128)):
            rule = dataclasses.replace(base, resize_size=resize_size, crop_size=crop_size,
                                       mixup_alpha=0.1)
            data_rate = pipeline_images_per_second(source, rule, args.batch,
                                                   args.pipeline_batches)
            streamed_rate = pipeline_images_per_second(
                dataclasses.replace(source, table=None), rule, args.batch,
                args.pipeline_batches)
            model_batch = args.batch if crop_size <= 128 else max(1, args.batch // 2)
            model_rate = model_images_per_second(crop_size, model_batch, args.model_steps)
            ratio = data_rate / model_rate
            failed |= ratio < TARGET_RATIO
            print(f"crop {crop_size} (from {resize_size}): pipeline {data_rate:7.1f} img/s "
                  f"(index shuffle; shuffle buffer {streamed_rate:7.1f} img/s), "
                  f"R50x1 train step {model_rate:6.2f} img/s (batch {model_batch}), "
                  f"ratio {ratio:6.1f}x (target >= {TARGET_RATIO:.0f}x)")
    print("pipeline keeps ahead of the model" if not failed else "BELOW TARGET")


if __name__ == "__main__":
    main()
