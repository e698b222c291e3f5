"""tf.data pipelines from an ImageSource: BiT's training augmentation and evaluation.

Training: pick each example's record by a stateless shuffle of its index,
decode, resize to a `resize_size` square, random crop to `crop_size`, random
horizontal flip, batch, MixUp on the whole batch, soft one-hot labels,
prefetch. Evaluation: decode and resize by the model's image converter (or
ten crops of it). Images leave as float32 in [0, 1], the contract of
bitkeras models.

Randomness is stateless and keyed by `seed` and the position of the example
(or batch) in the stream, so a pipeline replays exactly under the same seed.
"""

import numpy as np
import tensorflow as tf

from bitkeras.models.inference import MULTI_SCALE_SIDES

AUTOTUNE = tf.data.AUTOTUNE

SHUFFLE_BUFFER = 10_000
"""Shuffle buffer for streamed sources (tf.data datasets, TFDS)."""


def float_image(image):
    """uint8 -> float32 in [0, 1]; float images pass through as float32."""
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) / 255.0
    return tf.cast(image, tf.float32)


def resize_square(image, size):
    """Bilinear resize of (height, width, 3) or a batch to a `size` square, kept in [0, 1].

    BiT resizes to a square, ignoring the aspect ratio.
    """
    return tf.clip_by_value(tf.image.resize(image, [size, size]), 0.0, 1.0)


def dataset_options():
    """Deterministic order, and no autotuning thread.

    tf.data's autotuner runs a thread that sleeps for up to a minute between
    optimizations, and an iterator's destruction waited for it: the job
    measured first steps of 8 to 75 s instead of 1.5 s when Python collected
    an earlier fit's pipeline. Without it, AUTOTUNE parallelism and prefetch
    fall back to tf.data's defaults (one call per core).
    """
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = False
    return options


def train_dataset(source, rule, targets, batch_size, seed, start_step=0, shuffle=True,
                  view_seed=None):
    """Endless batches (images (B, crop, crop, 3) float32, targets (B, classes) float32).

    The one training pipeline of `fit` and `pretrain`. `targets`: the number
    of classes (targets are the one-hot rows of the source's labels), or an
    array (N, classes) of target rows in the source's order (multi-hot
    upstream labels). `batch_size` is the global batch of one optimizer step
    (a strategy splits it across replicas; MixUp mixes it whole before, so
    the update does not depend on the number of replicas); `rule` a
    HyperRule or UpstreamRecipe giving the sizes, `flip`, `crop` and
    `mixup_alpha`.

    Example `k` of the stream (`k = step * batch_size + position`) is, for a
    source held in memory (files, arrays: `source.table`), record
    `index_shuffle(k mod N)` under the seed (`seed`, epoch `k div N`),
    augmented under the seed (`seed`, `k`): every epoch a fresh permutation,
    and the stream from `start_step` on is exactly what an uninterrupted
    stream gives then, reached without reading the records before it.
    Streamed sources (tf.data datasets, TFDS) shuffle in a buffer of
    `SHUFFLE_BUFFER` records and replay it to `start_step`. `shuffle=False`
    keeps the source's order (augmentation stays random).

    `view_seed` (default `seed`) keys augmentation and MixUp alone: another
    gives the same examples, each with its own crops, flips and mixing.

    No record is skipped here: a folder's files were all decoded when it was
    opened (see `sources`), and a record that fails later raises rather than
    being dropped, so the stream can never spin over records that all fail.
    """
    num_examples = source.num_examples
    target_rows, num_classes = _target_rows(targets, num_examples)
    labels = _lookup(source.labels) if target_rows is None else _lookup(target_rows)

    view_seed = seed if view_seed is None else view_seed

    def view(example, record, label):
        example_seed = tf.stack([tf.cast(view_seed, tf.int64), example])
        if target_rows is None:
            label = tf.one_hot(label, num_classes, dtype=tf.float32)
        return augment(source.decode_record(record), rule, example_seed), label

    first = start_step * batch_size
    if source.table is not None:
        parts = [_lookup(part) for part in source.table]

        def prepare(example):
            index = example % num_examples
            if shuffle:
                index = tf.random.experimental.index_shuffle(
                    index, tf.stack([tf.cast(seed, tf.int64), example // num_examples]),
                    num_examples - 1)
            record = tuple(part(index) for part in parts)
            return view(example, record if len(record) > 1 else record[0], labels(index))

        dataset = tf.data.Dataset.counter(first).map(plain(prepare), num_parallel_calls=AUTOTUNE)
    else:
        records = source.records
        if target_rows is not None:
            records = tf.data.Dataset.zip(
                records, tf.data.Dataset.range(num_examples)).map(
                plain(lambda element, index: (element[0], labels(index))))
        if shuffle:
            records = records.shuffle(min(num_examples, SHUFFLE_BUFFER), seed=seed,
                                      reshuffle_each_iteration=True)
        dataset = records.repeat().enumerate().skip(first).map(
            plain(lambda example, element: view(example, *element)),
            num_parallel_calls=AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if rule.mixup_alpha > 0:
        dataset = dataset.enumerate(start=start_step).map(
            plain(lambda index, batch: mixup(*batch, rule.mixup_alpha,
                                             tf.stack([tf.cast(view_seed, tf.int64) + 2, index]))),
            num_parallel_calls=AUTOTUNE,
        )
    return dataset.prefetch(AUTOTUNE).with_options(dataset_options())


def _target_rows(targets, num_examples):
    """(target rows or None, number of classes) of `train_dataset`'s `targets`."""
    if np.ndim(targets) == 0:
        return None, int(targets)
    target_rows = np.asarray(targets, np.float32)
    if len(target_rows) != num_examples:
        raise ValueError(f"{num_examples} examples but {len(target_rows)} target rows")
    return target_rows, target_rows.shape[1]


def plain(function):
    """`function` for `Dataset.map` as it is written, not converted by AutoGraph.

    The training pipeline's functions hold no Python control flow on tensors,
    so AutoGraph's conversion (about 0.2 s, the first time in a process) buys
    nothing there.
    """
    return tf.autograph.experimental.do_not_convert(function)


IN_GRAPH_BYTES = 16 * 2**20
"""Arrays up to this size are looked up as graph constants; bigger ones from NumPy."""


def _lookup(array):
    """index -> the row of `array` at that index, as a tensor."""
    array = np.asarray(array)
    if array.nbytes <= IN_GRAPH_BYTES:
        table = tf.constant(array)
        return lambda index: tf.gather(table, index)
    spec = tf.TensorSpec(array.shape[1:], tf.as_dtype(array.dtype))

    def row(index):
        value = tf.numpy_function(lambda i: array[i], [index], spec.dtype, stateful=False)
        value.set_shape(spec.shape)
        return value

    return row


def augment(image, rule, example_seed):
    """BiT's training view of one image: resize, random crop (if `rule.crop`), random flip.

    `image`: (height, width, 3) uint8 or float in [0, 1]; returns float32
    (crop, crop, 3) in [0, 1]. `example_seed`: a stateless seed, shape (2,).
    """
    image = float_image(image)
    if rule.crop:
        image = resize_square(image, rule.resize_size)
        image = tf.image.stateless_random_crop(
            image, [rule.crop_size, rule.crop_size, 3], seed=example_seed)
    else:
        image = resize_square(image, rule.crop_size)
    if rule.flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=example_seed + 1)
    return image


def mixup(images, labels, alpha, seed):
    """BiT's MixUp: the batch mixed with itself reversed, one lam ~ Beta(alpha, alpha).

    Returns `lam * x + (1 - lam) * reverse(x)` for images and soft labels alike,
    so each label row still sums to 1. `seed`: a stateless seed, shape (2,).
    """
    seeds = tf.random.experimental.stateless_split(seed, 2)
    first = tf.random.stateless_gamma([], seeds[0], alpha=alpha, dtype=tf.float64)
    second = tf.random.stateless_gamma([], seeds[1], alpha=alpha, dtype=tf.float64)
    total = first + second
    # Both draws can underflow to 0 for tiny alpha; then do not mix.
    lam = tf.cast(tf.where(total > 0, first / tf.where(total > 0, total, 1.0), 1.0), tf.float32)
    mixed_images = lam * images + (1.0 - lam) * tf.reverse(images, axis=[0])
    mixed_labels = lam * labels + (1.0 - lam) * tf.reverse(labels, axis=[0])
    return mixed_images, mixed_labels


def multi_scale_views(image, sides=MULTI_SCALE_SIDES):
    """The whole image (height, width, 3), its aspect kept, at each shorter side in `sides`.

    Returns {"side_224": float32 image in [0, 1], ...}, one per side (the views
    of `bitkeras.models.inference.MultiScaleAverage`; a dict, which Keras's
    loops take as one input, where a tuple would read as (x, y)).
    """
    image = tf.image.convert_image_dtype(image, tf.float32)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    views = {}
    for side in sides:
        size = tf.cast(tf.round(shape * side / tf.reduce_min(shape)), tf.int32)
        views[f"side_{side}"] = tf.image.resize(image, size, antialias=True)
    return views


def eval_dataset(source, batch_size, convert, one_hot_classes=None, views=None):
    """Batches of (images, labels) in the source's order, each image run through `convert`.

    `convert`: one image (height, width, 3) uint8 or float in [0, 1] -> a
    float32 image of a fixed size (a classifier's image converter). `views`:
    None, or a function of the converted image that returns its views
    (V, size, size, 3) (ten-crop); then images are (B, V, size, size, 3).
    Labels are class ids, or one-hot floats when `one_hot_classes` is given.
    """

    def prepare(record, label):
        image = convert(source.decode_record(record))
        if views is not None:
            image = views(image)
        if one_hot_classes is not None:
            label = tf.one_hot(label, one_hot_classes, dtype=tf.float32)
        return image, label

    dataset = source.records.map(prepare, num_parallel_calls=AUTOTUNE)
    return dataset.batch(batch_size).prefetch(AUTOTUNE).with_options(dataset_options())
