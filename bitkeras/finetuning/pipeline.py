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


def _options():
    options = tf.data.Options()
    options.deterministic = True
    return options


def train_dataset(source, rule, num_classes, batch_size, seed, skip_bad_images=True,
                  start_step=0, shuffle=True):
    """Endless batches (images (B, crop, crop, 3) float32, labels (B, classes) float32).

    `batch_size` is the global batch of one optimizer step (a strategy
    splits it across replicas; MixUp mixes it whole before, so the update
    does not depend on the number of replicas); `rule` a HyperRule giving
    the sizes, `flip`, `crop` and `mixup_alpha`. `start_step`: the stream
    from that step's batch on, the same batches an uninterrupted stream
    would give then (the record order is replayed; only records are skipped,
    not decoded). Unreadable files that are skipped shift it by their number.
    `shuffle=False` keeps the source's order (augmentation stays random).
    """
    records = source.records
    if shuffle:
        buffer = source.num_examples if source.record_kind == "file" else min(
            source.num_examples, SHUFFLE_BUFFER)
        records = records.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    records = records.repeat()

    def prepare(index, element):
        record, label = element
        example_seed = tf.stack([tf.cast(seed, tf.int64), index])
        image = augment(source.decode_record(record), rule, example_seed)
        return image, tf.one_hot(label, num_classes, dtype=tf.float32)

    dataset = records.enumerate().skip(start_step * batch_size)
    dataset = dataset.map(prepare, num_parallel_calls=AUTOTUNE)
    if skip_bad_images:
        # Files that passed the header check but fail to decode; TF logs each one.
        dataset = dataset.ignore_errors(log_warning=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if rule.mixup_alpha > 0:
        dataset = dataset.enumerate(start=start_step).map(
            lambda index, batch: mixup(*batch, rule.mixup_alpha,
                                       tf.stack([tf.cast(seed, tf.int64) + 2, index])),
            num_parallel_calls=AUTOTUNE,
        )
    return dataset.prefetch(AUTOTUNE).with_options(_options())


def resumable_train_dataset(images, targets, rule, seed, start_step=0):
    """The batches of steps `start_step .. rule.steps - 1` of a run over in-memory arrays.

    `images`: (N, height, width, 3) uint8 or float in [0, 1]; `targets`: (N,
    classes) float32 (one-hot or multi-hot). Example `k` of the run (`k = step
    * batch_size + position`) is image `index_shuffle(k mod N)` under seed
    (`seed`, epoch `k div N`), augmented under seed (`seed`, `k`): every epoch
    is a fresh permutation, and the stream depends only on `seed` and `k`, so
    a run resumed at any step sees exactly the batches an uninterrupted run
    would. Yields (images (B, crop, crop, 3) float32, targets (B, classes)).
    """
    num_examples = len(images)
    if len(targets) != num_examples:
        raise ValueError(f"{num_examples} images but {len(targets)} targets")
    image_spec = tf.TensorSpec(images.shape[1:], tf.as_dtype(images.dtype))

    def load(index):
        return images[index], targets[index]

    def prepare(example):
        epoch, position = example // num_examples, example % num_examples
        index = tf.random.experimental.index_shuffle(
            position, tf.stack([tf.cast(seed, tf.int64), epoch]), num_examples - 1)
        image, target = tf.numpy_function(load, [index], [image_spec.dtype, tf.float32],
                                          stateful=False)
        image.set_shape(image_spec.shape)
        target.set_shape(targets.shape[1:])
        example_seed = tf.stack([tf.cast(seed, tf.int64) + 3, example])
        return augment(image, rule, example_seed), target

    batch = rule.batch_size
    dataset = tf.data.Dataset.range(start_step * batch, rule.steps * batch)
    dataset = dataset.map(prepare, num_parallel_calls=AUTOTUNE)
    return dataset.batch(batch, drop_remainder=True).prefetch(AUTOTUNE).with_options(_options())


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


def eval_dataset(source, crop_size, batch_size, one_hot_classes=None, resize_size=None,
                 ten_crop=False):
    """Batches of (images, labels) in the source's order, resized to `crop_size`.

    With `ten_crop`, images are resized to `resize_size` and each becomes ten
    views (4 corners and the centre of `crop_size`, and their mirror images):
    shape (B, 10, crop, crop, 3). Labels are class ids, or one-hot floats when
    `one_hot_classes` is given.
    """

    def prepare(record, label):
        image = float_image(source.decode_record(record))
        if ten_crop:
            image = ten_crops(resize_square(image, resize_size), crop_size)
        else:
            image = resize_square(image, crop_size)
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
