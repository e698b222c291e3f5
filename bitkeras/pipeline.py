"""tf.data pipelines from an ImageSource: BiT's training augmentation and evaluation.

Training: shuffle the (light) records, decode, resize to a `resize_size`
square, random crop to `crop_size`, random horizontal flip, batch, MixUp on the
whole batch, soft one-hot labels, prefetch. Evaluation: decode and resize to
`crop_size` (or ten crops). Images leave as float32 in [0, 1], the contract of
bitkeras models.

Randomness is stateless and keyed by `seed` and the position of the example
(or batch) in the stream, so a pipeline replays exactly under the same seed.
"""

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE

SHUFFLE_BUFFER = 10_000
"""Shuffle buffer for records that hold pixels (file records shuffle all at once)."""


def _float_image(image):
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) / 255.0
    return tf.cast(image, tf.float32)


def _resize(image, size):
    # BiT resizes to a square, ignoring the aspect ratio; clip the bilinear overshoot.
    return tf.clip_by_value(tf.image.resize(image, [size, size]), 0.0, 1.0)


def _options():
    options = tf.data.Options()
    options.deterministic = True
    return options


def train_dataset(source, rule, num_classes, batch_size, seed, skip_bad_images=True):
    """Endless batches (images (B, crop, crop, 3) float32, labels (B, classes) float32).

    `batch_size` is the per-step (micro-)batch; `rule` a HyperRule giving the
    sizes, `flip`, `crop` and `mixup_alpha`.
    """
    buffer = source.num_examples if source.record_kind == "file" else min(
        source.num_examples, SHUFFLE_BUFFER)
    records = source.records.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()

    def augment(index, element):
        record, label = element
        image = _float_image(source.decode_record(record))
        example_seed = tf.stack([tf.cast(seed, tf.int64), index])
        if rule.crop:
            image = _resize(image, rule.resize_size)
            image = tf.image.stateless_random_crop(
                image, [rule.crop_size, rule.crop_size, 3], seed=example_seed)
        else:
            image = _resize(image, rule.crop_size)
        if rule.flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=example_seed + 1)
        return image, tf.one_hot(label, num_classes, dtype=tf.float32)

    dataset = records.enumerate().map(augment, num_parallel_calls=AUTOTUNE)
    if skip_bad_images:
        # Files that passed the header check but fail to decode; TF logs each one.
        dataset = dataset.ignore_errors(log_warning=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if rule.mixup_alpha > 0:
        dataset = dataset.enumerate().map(
            lambda index, batch: mixup(*batch, rule.mixup_alpha,
                                       tf.stack([tf.cast(seed, tf.int64) + 2, index])),
            num_parallel_calls=AUTOTUNE,
        )
    return dataset.prefetch(AUTOTUNE).with_options(_options())


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


def eval_dataset(source, crop_size, batch_size, one_hot_classes=None, resize_size=None,
                 ten_crop=False):
    """Batches of (images, labels) in the source's order, resized to `crop_size`.

    With `ten_crop`, images are resized to `resize_size` and each becomes ten
    views (4 corners and the centre of `crop_size`, and their mirror images):
    shape (B, 10, crop, crop, 3). Labels are class ids, or one-hot floats when
    `one_hot_classes` is given.
    """

    def prepare(record, label):
        image = _float_image(source.decode_record(record))
        if ten_crop:
            image = ten_crops(_resize(image, resize_size), crop_size)
        else:
            image = _resize(image, crop_size)
        if one_hot_classes is not None:
            label = tf.one_hot(label, one_hot_classes, dtype=tf.float32)
        return image, label

    dataset = source.records.map(prepare, num_parallel_calls=AUTOTUNE)
    return dataset.batch(batch_size).prefetch(AUTOTUNE).with_options(_options())


def ten_crops(image, crop_size):
    """The classic 10-crop of one image (size, size, 3): corners, centre, and their flips."""
    size = tf.shape(image)[0]
    far = size - crop_size
    middle = far // 2
    corners = [(0, 0), (0, far), (far, 0), (far, far), (middle, middle)]
    crops = [image[top:top + crop_size, left:left + crop_size] for top, left in corners]
    crops += [tf.image.flip_left_right(crop) for crop in crops]
    return tf.stack(crops)
