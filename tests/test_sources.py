import hashlib

import numpy as np
import pytest
import tensorflow as tf

from bitkeras import BadImageError, DataUnavailableError
from bitkeras.finetuning import sources
from tests.helpers import make_image_folder


def _decoded(source):
    return [source.decode_record(record).numpy()
            for record, _ in source.records]


def test_folder_source_reads_classes_sizes_and_reports_bad_files(image_folder):
    with pytest.warns(UserWarning, match=r"(?s)1 file\(s\).*red/broken\.jpg.*skipped") as caught:
        source = sources.open_source(image_folder)
    assert len(caught) == 1
    assert source.class_names == ("blue", "green", "red") and source.named
    assert source.num_examples == 3 * 12 + 5          # the broken file is left out
    assert np.bincount(source.labels).tolist() == [12, 13, 16]
    assert [path for path, _ in source.skipped] == [str(image_folder / "red" / "broken.jpg")]
    assert all(30 <= side <= 60 for side in source.image_size)


def test_bad_files_raise_when_asked(image_folder):
    with pytest.raises(BadImageError, match="red/broken.jpg"):
        sources.open_source(image_folder, on_bad_image="raise")


def test_every_mode_decodes_to_the_rgb_pillow_sees(image_folder):
    from PIL import Image

    files = ["red/palette.png", "red/alpha.png", "red/cmyk.jpg", "red/palette.bmp",
             "green/gray.png", "blue/003.gif"]
    source = sources.open_images([image_folder / name for name in files])
    for name, decoded in zip(files, _decoded(source)):
        with Image.open(image_folder / name) as image:
            expected = np.asarray(image.convert("RGB"), np.float32)
        assert decoded.shape == expected.shape and decoded.dtype == np.uint8
        # JPEG decoders differ by a few levels; other formats are exact.
        assert np.abs(decoded - expected).mean() < (3 if name.endswith("jpg") else 1e-6), name


def test_reading_a_folder_changes_nothing_on_disk(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=2)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*")
              if p.is_file()}
    with pytest.warns(UserWarning):
        source = sources.open_source(root)
    _decoded(source)
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*")
             if p.is_file()}
    assert before == after


def test_empty_class_folder_and_single_class_are_refused(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=2, extras=False)
    (root / "zebra").mkdir()
    with pytest.raises(ValueError, match="class folder .*zebra' is empty"):
        sources.open_source(root)
    single = make_image_folder(tmp_path / "one", per_class=2, extras=False)
    for name in ("blue", "green"):
        for path in (single / name).iterdir():
            path.unlink()
        (single / name).rmdir()
    with pytest.raises(ValueError, match="has 1 class sub-folder"):
        sources.open_source(single)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        sources.open_source(tmp_path / "missing")


def test_a_folder_of_only_unreadable_files_is_refused(tmp_path):
    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="notes.txt"), \
            pytest.raises(ValueError, match="has no readable images"):
        sources.open_source(tmp_path)


def test_array_source_checks_its_inputs():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    source = sources.open_source((images, np.array([0, 1, 2, 1])))
    assert source.class_names == ("0", "1", "2") and source.image_size == (8, 8)
    with pytest.raises(ValueError, match="differ in length: 4 images, 3 labels"):
        sources.open_source((images, np.array([0, 1, 1])))
    with pytest.raises(ValueError, match="label -1 \\(example 2"):
        sources.open_source((images, np.array([0, 1, -1, 1])))
    with pytest.raises(ValueError, match="got values in \\[255, 255\\]: divide 0..255"):
        sources.open_source((np.full((4, 8, 8, 3), 255.0), np.array([0, 1, 0, 1])))
    grey = sources.open_source((np.zeros((4, 8, 8)), np.array([0, 1, 0, 1])))
    assert grey.table[0].shape == (4, 8, 8, 3)  # one channel three times, as grey files
    with pytest.raises(ValueError, match="shaped \\(examples, height, width, 3\\)"):
        sources.open_source((np.zeros((4, 8, 8, 2)), np.array([0, 1, 0, 1])))


def test_dataset_source_reads_labels_and_takes_batches_apart():
    images = np.random.default_rng(0).integers(0, 255, (6, 10, 12, 3)).astype(np.uint8)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.array([0, 1, 0, 1, 2, 2])))
    source = sources.open_source(dataset)
    assert source.labels.tolist() == [0, 1, 0, 1, 2, 2] and source.image_size == (10, 12)
    np.testing.assert_array_equal(_decoded(source)[3], images[3])
    batched = sources.open_source(dataset.batch(4))  # as Keras users pass them
    assert batched.labels.tolist() == source.labels.tolist()
    np.testing.assert_array_equal(_decoded(batched)[3], images[3])
    with pytest.raises(ValueError, match="lambda e: \\(e\\['image'\\], e\\['label'\\]\\)"):
        sources.open_source(tf.data.Dataset.from_tensor_slices({"image": images}))
    weighted = tf.data.Dataset.from_tensor_slices((images, np.zeros(6, int), np.ones(6)))
    with pytest.raises(ValueError, match=r"sample_weight\) triples .*lambda image, label, "
                                         r"weight: \(image, label\).*class_weight="):
        sources.open_source(weighted)


def test_labels_come_in_every_form_keras_losses_take():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    ids = np.array([2, 0, 1, 2])
    one_hot = np.eye(5, dtype=np.float32)[ids]  # keras.utils.to_categorical(ids, 5)
    for labels in (ids, ids[:, None], ids.astype(np.float32), list(ids), one_hot):
        source = sources.open_source((images, labels))
        assert source.labels.tolist() == [2, 0, 1, 2], labels
        assert [int(label) for _, label in source.records] == [2, 0, 1, 2]
    # A one-hot row's width is the class count, classes 3 and 4 never occur here.
    assert sources.open_source((images, one_hot)).num_classes == 5
    assert sources.open_source((images, ids)).num_classes == 3
    with pytest.raises(ValueError, match=r"has 5 classes \(.*one-hot rows that wide\) but only 3"):
        sources.open_source((images, one_hot), class_names=("a", "b", "c"))  # a 3-class head
    for labels in (one_hot, ids[:, None], ids.astype(np.float64)):
        source = sources.open_source(tf.data.Dataset.from_tensor_slices((images, labels)).batch(3))
        assert source.labels.tolist() == [2, 0, 1, 2]
        assert [int(label) for _, label in source.records] == [2, 0, 1, 2]
    assert sources.open_source(tf.data.Dataset.from_tensor_slices(
        (images, one_hot))).num_classes == 5
    soft = one_hot * 0.9 + 0.02  # label smoothing: turning it into ids would change it
    with pytest.raises(ValueError, match=r"one-hot rows .* row 0 is \[0\.02, 0\.02, 0\.92"):
        sources.open_source((images, soft))
    with pytest.raises(ValueError, match="row 0 is"):
        sources.open_source(tf.data.Dataset.from_tensor_slices((images, soft)))
    with pytest.raises(ValueError, match=r"label 0\.5 \(example 1 of the array labels\) is not a "
                                         r"whole number"):
        sources.open_source((images, np.array([1.0, 0.5, 1.0, 0.0])))
    with pytest.raises(ValueError, match=r"class ids shaped \(N,\) or \(N, 1\).*\(4, 2, 2\)"):
        sources.open_source((images, np.zeros((4, 2, 2))))


def test_a_dataset_of_float_pixels_outside_0_1_is_refused_with_the_map_that_fixes_it():
    pixels = np.random.default_rng(0).uniform(0, 255, (5, 8, 8, 3)).astype(np.float32)
    labels = np.array([0, 1, 0, 1, 0])

    def dataset(images):
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)

    # As keras.utils.image_dataset_from_directory yields them.
    with pytest.raises(ValueError, match=r"values in \[.*, 254\.\d+\] \(its first 5 images "
                                         r"read\).*lambda image, label: \(image / 255, label\)"):
        sources.open_source(dataset(pixels))
    with pytest.raises(ValueError, match=r"\(\(image \+ 1\) / 2, label\)"):
        sources.open_source(dataset(pixels / 127.5 - 1))
    broken = pixels / 255
    broken[3, 1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="image 3 of .* NaN or Inf"):
        sources.open_source(dataset(broken))
    assert sources.open_source(dataset(pixels / 255)).num_examples == 5
    assert sources.open_source(dataset(pixels.astype(np.uint8))).num_examples == 5


def test_few_shot_is_reproducible_and_balanced(image_folder):
    with pytest.warns(UserWarning):
        source = sources.open_source(image_folder)
    first = source.few_shot(3, seed=7)
    assert np.bincount(first.labels).tolist() == [3, 3, 3]
    paths = [record[0] for record, _ in first.records.as_numpy_iterator()]
    again = [record[0] for record, _ in source.few_shot(3, seed=7).records.as_numpy_iterator()]
    other = [record[0] for record, _ in source.few_shot(3, seed=8).records.as_numpy_iterator()]
    assert paths == again and paths != other
    labels = [label for _, label in first.records.as_numpy_iterator()]
    assert labels == first.labels.tolist()
    with pytest.raises(ValueError, match="class 'blue' has only 12 examples"):
        source.few_shot(13, seed=0)


def test_relabel_matches_folders_by_name(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=2, extras=False)
    for path in (root / "blue").iterdir():
        path.unlink()
    (root / "blue").rmdir()
    source = sources.open_source(root, class_names=("blue", "green", "red"))
    assert source.labels.tolist() == [1, 1, 2, 2]
    assert [label for _, label in source.records.as_numpy_iterator()] == [1, 1, 2, 2]
    with pytest.raises(ValueError, match="classes \\['red'\\] that the model does not know"):
        sources.open_source(root, class_names=("blue", "green"))


def test_tfds_names_and_splits():
    assert sources.parse_tfds_name("oxford_flowers102") == ("oxford_flowers102", None)
    assert sources.parse_tfds_name("cifar10:test") == ("cifar10", "test")
    assert sources.parse_tfds_name("mnist:3.0.1") == ("mnist:3.0.1", None)
    assert sources.parse_tfds_name("mnist:3.0.1:train[:10%]") == ("mnist:3.0.1", "train[:10%]")


def test_tfds_offline_says_how_to_supply_the_data(monkeypatch, tmp_path):
    import tensorflow_datasets as tfds

    class Unprepared:
        data_dir = str(tmp_path / "oxford_flowers102")

        def is_prepared(self):
            return False

        def download_and_prepare(self):
            raise ConnectionError("Name or service not known")

    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: Unprepared())
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(DataUnavailableError, match="tfds build oxford_flowers102"):
        sources.open_source("tfds:oxford_flowers102")


def test_tfds_offline_fails_without_trying_to_download(monkeypatch, tmp_path):
    import tensorflow_datasets as tfds

    class Unprepared:
        data_dir = str(tmp_path / "cifar10" / "3.0.2")

        def is_prepared(self):
            return False

        def download_and_prepare(self):
            raise AssertionError("no download is tried offline")

    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: Unprepared())
    monkeypatch.setattr(sources, "_reachable", lambda host: False)
    with pytest.raises(DataUnavailableError, match="no connection to storage.googleapis.com"):
        sources.open_source("tfds:cifar10")


def test_a_failed_tfds_download_leaves_the_data_folder_as_it_was(monkeypatch, tmp_path):
    import tensorflow_datasets as tfds

    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "kept.txt").write_text("a file that was there before")

    class HalfDownloaded:
        data_dir = str(tmp_path / "cifar10" / "3.0.2")

        def is_prepared(self):
            return False

        def download_and_prepare(self):
            partial = tmp_path / "cifar10" / "3.0.2.incomplete_X"
            partial.mkdir(parents=True)
            (partial / "cifar10-train.tfrecord-00000-of-00001").write_bytes(b"half")
            (tmp_path / "downloads").mkdir()
            (tmp_path / "downloads" / "cifar.tar.gz.tmp.123").write_bytes(b"half")
            raise ConnectionError("connection reset")

    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: HalfDownloaded())
    monkeypatch.setattr(sources, "_reachable", lambda host: True)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(DataUnavailableError, match="connection reset"):
        sources.open_source("tfds:cifar10")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "mnist", "mnist/kept.txt"]


def test_tfds_source_reads_a_prepared_dataset(monkeypatch, tmp_path):
    pytest.importorskip("importlib_resources")  # what TFDS needs to build datasets
    from tests.helpers.tiny_tfds import BitkerasTinyColours, prepare

    prepare(BitkerasTinyColours, tmp_path, monkeypatch)
    train = sources.open_source("tfds:bitkeras_tiny_colours")
    assert train.class_names == ("blue", "red") and train.named
    assert train.num_examples == 6 and sorted(train.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert train.image_size[1] == 24
    images = _decoded(train)
    for image, label in zip(images, train.labels):
        assert image.shape[1:] == (24, 3)
        assert np.argmax(image.reshape(-1, 3).mean(0)) == (2 if label == 0 else 0)
    test = sources.open_source("tfds:bitkeras_tiny_colours", default_split="test|validation")
    assert test.num_examples == 4
    assert sources.open_source("tfds:bitkeras_tiny_colours:train[:3]").num_examples == 3
