"""The images `bitkeras pretrain --data` continues pre-training on, in memory at one size.

`data`: a folder with one sub-folder per class, "tfds:NAME[:SPLIT]", or a
CSV file of `path,labels` rows: an image path (relative to the CSV's folder
or absolute) and its labels separated by spaces, for multi-label data (a
header row `path,labels` is allowed). Every image is resized to a square
`image_size` (BiT's resize, `BiTImageConverter`) and kept as uint8, as
`bitkeras.pretrain` takes them.
"""

import csv
import pathlib

import numpy as np
import tensorflow as tf

from bitkeras.finetuning import pipeline, sources
from bitkeras.models.preprocessing import BiTImageConverter

CSV_HEADER = ["path", "labels"]


def load(data, image_size, multi_label=False):
    """(images (N, size, size, 3) uint8, labels, class names, description).

    Labels are class ids (N,), or multi-hot (N, classes) float32 with
    `multi_label` (a CSV only).
    """
    if str(data).lower().endswith(".csv"):
        paths, label_lists = read_csv(data)
        class_names = tuple(sorted({name for names in label_lists for name in names}))
        ids = {name: index for index, name in enumerate(class_names)}
        if multi_label:
            labels = np.zeros((len(paths), len(class_names)), np.float32)
            for row, names in enumerate(label_lists):
                labels[row, [ids[name] for name in names]] = 1
        else:
            several = [str(path) for path, names in zip(paths, label_lists) if len(names) != 1]
            if several:
                raise ValueError(
                    f"{str(data)!r}: {len(several)} row(s) have several labels (first: "
                    f"{several[0]!r}); pass --multi-label for multi-label data")
            labels = np.array([ids[names[0]] for names in label_lists], np.int64)
        source = sources.open_images(paths)  # unreadable files raise: rows must line up
        description = f"{str(data)!r} ({len(paths)} images)"
    else:
        if multi_label:
            raise ValueError(
                f"--multi-label needs a CSV of path,labels rows; {str(data)!r} is a folder or "
                f"TFDS name, one label per image")
        source = sources.open_source(data)
        labels, class_names, description = source.labels, source.class_names, source.description
    return square_pixels(source, image_size), labels, class_names, description


def read_csv(path):
    """(image paths, label lists) of a `path,labels` CSV; bad rows are named, not skipped."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no CSV file {str(path)!r}")
    with open(path, newline="") as file:
        rows = [row for row in csv.reader(file) if row and any(cell.strip() for cell in row)]
    if rows and [cell.strip().lower() for cell in rows[0]] == CSV_HEADER:
        rows = rows[1:]
    paths, label_lists = [], []
    for number, row in enumerate(rows, start=1):
        if len(row) != 2 or not row[0].strip() or not row[1].split():
            raise ValueError(
                f"{str(path)!r}, data row {number}: {row!r} is not `image path,labels` (labels "
                f"separated by spaces, at least one)")
        image = pathlib.Path(row[0].strip()).expanduser()
        paths.append(image if image.is_absolute() else path.parent / image)
        label_lists.append(row[1].split())
    if not paths:
        raise ValueError(f"{str(path)!r} has no rows of `image path,labels`")
    return paths, label_lists


def square_pixels(source, image_size):
    """Every image of `source`, in order, resized to (image_size, image_size, 3) uint8."""
    converter = BiTImageConverter(image_size=image_size)

    def resize(record, label):
        pixels = converter(source.decode_record(record))  # float in [0, 1]
        return tf.cast(tf.round(tf.clip_by_value(pixels, 0.0, 1.0) * 255.0), tf.uint8)

    dataset = source.records.map(resize, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.with_options(pipeline.dataset_options()).batch(256)
    return np.concatenate([batch.numpy() for batch in dataset]) if len(source.labels) else (
        np.zeros((0, image_size, image_size, 3), np.uint8))
