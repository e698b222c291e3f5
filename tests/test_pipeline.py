import dataclasses

import numpy as np
import tensorflow as tf

from bitkeras import HyperRule
from bitkeras.finetuning import pipeline, sources

RULE = HyperRule(resize_size=24, crop_size=16, steps=10, warmup_steps=2, decay_boundaries=(5,),
                 base_learning_rate=0.01, batch_size=4, mixup_alpha=0.0)


def _arrays_source(count=8, size=(20, 30)):
    images = np.random.default_rng(0).integers(0, 255, (count, *size, 3)).astype(np.uint8)
    return sources.open_source((images, np.arange(count) % 3)), images


def _first_batches(dataset, count=3):
    return [tuple(part.numpy() for part in batch) for batch in dataset.take(count)]


def test_train_batches_have_crop_size_and_one_hot_labels():
    source, _ = _arrays_source()
    images, labels = next(iter(pipeline.train_dataset(source, RULE, 3, 4, seed=0)))
    assert images.shape == (4, 16, 16, 3) and images.dtype == tf.float32
    assert 0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1
    np.testing.assert_array_equal(tf.reduce_sum(labels, 1), np.ones(4))


def test_pipeline_replays_under_a_seed_and_varies_with_it():
    source, _ = _arrays_source()
    rule = dataclasses.replace(RULE, mixup_alpha=0.5)
    first = _first_batches(pipeline.train_dataset(source, rule, 3, 4, seed=3))
    again = _first_batches(pipeline.train_dataset(source, rule, 3, 4, seed=3))
    other = _first_batches(pipeline.train_dataset(source, rule, 3, 4, seed=4))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(first[0][0], other[0][0])


def test_without_crop_and_flip_images_are_only_resized():
    source, images = _arrays_source(count=4)
    rule = dataclasses.replace(RULE, crop=False, flip=False)
    batch, _ = next(iter(pipeline.train_dataset(source, rule, 3, 4, seed=0)))
    expected = tf.image.resize(images / 255.0, [16, 16]).numpy()
    # Shuffled: match each output to its source image.
    for image in batch.numpy():
        assert min(np.abs(image - e).max() for e in expected) < 1e-5


def test_mixup_is_a_convex_combination_with_soft_labels():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (6, 5, 5, 3)).astype(np.float32)
    labels = tf.one_hot([0, 1, 2, 0, 1, 2], 3).numpy()
    mixed, soft = pipeline.mixup(images, labels, 0.5, tf.constant([1, 2], tf.int64))
    lam = float(soft[0, 0])  # row 0 mixes class 0 (lam) with row 5's class 2
    assert 0 <= lam <= 1 and lam not in (0.0, 1.0)
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[::-1], atol=1e-6)
    np.testing.assert_allclose(soft, lam * labels + (1 - lam) * labels[::-1], atol=1e-6)
    np.testing.assert_allclose(np.sum(soft, 1), np.ones(6), atol=1e-6)


def test_eval_resizes_to_the_crop_size_in_order():
    source, images = _arrays_source(count=5)
    batches = list(pipeline.eval_dataset(source, 16, batch_size=2))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    np.testing.assert_allclose(batches[0][0][1], tf.image.resize(images[1] / 255.0, [16, 16]),
                               atol=1e-5)
    assert np.concatenate([b[1] for b in batches]).tolist() == source.labels.tolist()


def test_ten_crops_are_corners_centre_and_their_mirrors():
    image = tf.reshape(tf.range(6 * 6 * 3, dtype=tf.float32), (6, 6, 3))
    crops = pipeline.ten_crops(image, 4).numpy()
    assert crops.shape == (10, 4, 4, 3)
    np.testing.assert_array_equal(crops[0], image[:4, :4])
    np.testing.assert_array_equal(crops[3], image[2:, 2:])
    np.testing.assert_array_equal(crops[4], image[1:5, 1:5])
    np.testing.assert_array_equal(crops[5:], crops[:5, :, ::-1])


def test_resumable_dataset_replays_the_tail_of_a_run_and_permutes_each_epoch():
    from bitkeras.finetuning.pipeline import resumable_train_dataset
    from bitkeras.finetuning.upstream import UpstreamRecipe

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 12, 12, 3), dtype=np.uint8)
    targets = np.eye(10, dtype=np.float32)
    rule = UpstreamRecipe.for_dataset(10, 8, batch_size=4, epochs=3)
    full = list(resumable_train_dataset(images, targets, rule, seed=1).as_numpy_iterator())
    tail = list(resumable_train_dataset(images, targets, rule, seed=1, start_step=5)
                .as_numpy_iterator())
    assert len(full) == rule.steps == 8 and len(tail) == 3
    for (full_images, full_targets), (tail_images, tail_targets) in zip(full[5:], tail):
        np.testing.assert_array_equal(full_images, tail_images)
        np.testing.assert_array_equal(full_targets, tail_targets)
    first_epoch = np.concatenate([batch_targets for _, batch_targets in full])[:10]
    assert sorted(first_epoch.argmax(axis=1).tolist()) == list(range(10))
    assert full[0][0].shape == (4, 8, 8, 3) and full[0][0].dtype == np.float32
    other_seed = next(resumable_train_dataset(images, targets, rule, seed=2).as_numpy_iterator())
    assert not np.array_equal(other_seed[1], full[0][1])
