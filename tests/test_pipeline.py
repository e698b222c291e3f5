import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from bitkeras import BiTImageConverter, HyperRule
from bitkeras.finetuning import pipeline, sources
from bitkeras.models.preprocessing import ten_crop_views

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


def test_pipelines_run_without_the_autotuning_thread():
    # Its thread delayed the destruction of a finished fit's pipeline by up to a minute.
    source, _ = _arrays_source()
    datasets = [pipeline.train_dataset(source, RULE, 3, 4, seed=0),
                pipeline.eval_dataset(source, 4, BiTImageConverter(image_size=16))]
    for dataset in datasets:
        options = dataset.options()
        assert options.autotune.enabled is False and options.deterministic is True


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


def test_eval_runs_the_image_converter_in_order():
    source, images = _arrays_source(count=5)
    batches = list(pipeline.eval_dataset(source, 2, BiTImageConverter(image_size=16)))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    np.testing.assert_allclose(batches[0][0][1], tf.image.resize(images[1] / 255.0, [16, 16]),
                               atol=1e-5)
    assert np.concatenate([b[1] for b in batches]).tolist() == source.labels.tolist()


def test_ten_crops_are_corners_centre_and_their_mirrors():
    image = tf.reshape(tf.range(6 * 6 * 3, dtype=tf.float32), (6, 6, 3))
    crops = keras.ops.convert_to_numpy(ten_crop_views(image, 4))
    assert crops.shape == (10, 4, 4, 3)
    np.testing.assert_array_equal(crops[0], image[:4, :4])
    np.testing.assert_array_equal(crops[3], image[2:, 2:])
    np.testing.assert_array_equal(crops[4], image[1:5, 1:5])
    np.testing.assert_array_equal(crops[5:], crops[:5, :, ::-1])


def test_the_stream_replays_from_any_step_and_permutes_each_epoch():
    from bitkeras.finetuning.upstream import UpstreamRecipe

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 12, 12, 3), dtype=np.uint8)
    source = sources.open_source((images, np.zeros(10, np.int64)))
    targets = np.eye(10, dtype=np.float32)
    rule = UpstreamRecipe.for_dataset(10, 8, batch_size=4, epochs=3)

    def stream(seed=1, start_step=0):
        dataset = pipeline.train_dataset(source, rule, targets, 4, seed, start_step=start_step)
        return list(dataset.take(rule.steps - start_step).as_numpy_iterator())

    full, tail = stream(), stream(start_step=5)
    assert len(full) == rule.steps == 8 and len(tail) == 3
    for (full_images, full_targets), (tail_images, tail_targets) in zip(full[5:], tail):
        np.testing.assert_array_equal(full_images, tail_images)
        np.testing.assert_array_equal(full_targets, tail_targets)
    first_epoch = np.concatenate([batch_targets for _, batch_targets in full])[:10]
    assert sorted(first_epoch.argmax(axis=1).tolist()) == list(range(10))
    assert full[0][0].shape == (4, 8, 8, 3) and full[0][0].dtype == np.float32
    assert not np.array_equal(stream(seed=2)[0][1], full[0][1])


@pytest.mark.parametrize("form", ["arrays", "dataset", "few_shot"])
def test_fit_streams_replay_from_any_step(form):
    images = np.random.default_rng(1).integers(0, 255, (12, 10, 10, 3)).astype(np.uint8)
    labels = np.arange(12) % 3
    if form == "dataset":  # streamed: no table, a shuffle buffer replayed to the step
        source = sources.open_source(tf.data.Dataset.from_tensor_slices((images, labels)))
        assert source.table is None
    else:
        source = sources.open_source((images, labels))
        if form == "few_shot":
            source = source.few_shot(2, seed=0)
            chosen = source.table[0]
            assert [int(np.flatnonzero((images == image).all(axis=(1, 2, 3)))[0]) % 3
                    for image in chosen] == source.labels.tolist()
    rule = dataclasses.replace(RULE, resize_size=10, crop_size=8, batch_size=3)

    def stream(start_step):
        dataset = pipeline.train_dataset(source, rule, 3, 3, seed=5, start_step=start_step)
        return _first_batches(dataset, 6 - start_step)

    full, tail = stream(0), stream(4)
    for (full_images, full_labels), (tail_images, tail_labels) in zip(full[4:], tail):
        np.testing.assert_array_equal(full_images, tail_images)
        np.testing.assert_array_equal(full_labels, tail_labels)
    per_epoch = source.num_examples // 3
    first_epoch = np.concatenate([batch_labels for _, batch_labels in full[:per_epoch]])
    assert sorted(first_epoch.argmax(axis=1).tolist()) == sorted(source.labels.tolist())
