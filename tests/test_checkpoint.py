import numpy as np
import pytest

from bitkeras import (
    BiTBackbone,
    BiTClassifier,
    CheckpointMismatchError,
    CorruptWeightsError,
    load_npz,
    save_npz,
)
from bitkeras.io.checkpoint import describe_arrays
from bitkeras.models.architecture import Architecture
from tests.helpers import TINY, reference


def test_round_trip_is_bit_exact(tmp_path, tiny_checkpoint, images):
    path, arrays = tiny_checkpoint
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=5)
    load_npz(classifier, path)
    save_npz(classifier, tmp_path / "copy.npz")
    with np.load(tmp_path / "copy.npz", allow_pickle=False) as copy:
        assert sorted(copy.files) == sorted(arrays)
        for key, value in arrays.items():
            assert copy[key].dtype == np.float32
            np.testing.assert_array_equal(copy[key], value, err_msg=key)
    reloaded = BiTClassifier(BiTBackbone(**TINY), num_classes=5)
    load_npz(reloaded, tmp_path / "copy.npz")
    np.testing.assert_array_equal(reloaded(images), classifier(images))


def test_backbone_ignores_the_head_and_writes_none(tmp_path, tiny_checkpoint):
    path, arrays = tiny_checkpoint
    backbone = BiTBackbone(**TINY)
    load_npz(backbone, path)
    save_npz(backbone, tmp_path / "backbone.npz")
    with np.load(tmp_path / "backbone.npz") as written:
        assert sorted(written.files) == sorted(k for k in arrays if not k.startswith("resnet/head/"))


def test_missing_key_is_named(tmp_path, tiny_checkpoint):
    _, arrays = tiny_checkpoint
    del arrays["resnet/block3/unit01/b/group_norm/beta"]
    path = reference.write_checkpoint(tmp_path / "missing.npz", arrays)
    backbone = BiTBackbone(**TINY)
    before = [w.numpy() for w in backbone.weights]
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\): resnet/block3/unit01/b/group_norm/beta"):
        load_npz(backbone, path)
    # Nothing was half-loaded.
    for old, new in zip(before, backbone.weights):
        np.testing.assert_array_equal(old, new.numpy())


def test_deeper_checkpoint_names_its_architecture(tmp_path):
    arrays = reference.checkpoint_arrays((1, 2, 1, 1), 0.5, num_classes=5)
    path = reference.write_checkpoint(tmp_path / "deeper.npz", arrays)
    with pytest.raises(CheckpointMismatchError) as error:
        load_npz(BiTBackbone(**TINY), path)
    message = str(error.value)
    assert "unexpected keys (9): resnet/block2/unit02/" in message
    assert "block_units=(1, 2, 1, 1), width_factor=0.5" in message


def test_wider_checkpoint_reports_both_shapes(tmp_path):
    arrays = reference.checkpoint_arrays((1, 1, 1, 1), 1, num_classes=5)
    path = reference.write_checkpoint(tmp_path / "wider.npz", arrays)
    with pytest.raises(CheckpointMismatchError) as error:
        load_npz(BiTBackbone(**TINY), path)
    message = str(error.value)
    assert "resnet/root_block/standardized_conv2d/kernel: file (7, 7, 3, 64) vs model (7, 7, 3, 32)" in message
    assert "width_factor=1" in message


def test_head_size_mismatch_explains_num_classes(tiny_checkpoint):
    path, _ = tiny_checkpoint
    with pytest.raises(CheckpointMismatchError, match=r"num_classes=10\), or load into classifier.backbone"):
        load_npz(BiTClassifier(BiTBackbone(**TINY), num_classes=10), path)


def test_classifier_needs_a_head_in_the_file(tmp_path):
    arrays = reference.checkpoint_arrays(TINY["block_units"], TINY["width_factor"])
    path = reference.write_checkpoint(tmp_path / "headless.npz", arrays)
    with pytest.raises(CheckpointMismatchError, match="missing keys.*resnet/head/conv2d"):
        load_npz(BiTClassifier(BiTBackbone(**TINY), num_classes=5), path)


def test_pickled_arrays_are_refused(tmp_path, tiny_checkpoint):
    _, arrays = tiny_checkpoint
    arrays["resnet/group_norm/beta"] = np.array([object()] * 1024, dtype=object)
    path = tmp_path / "pickled.npz"
    np.savez(path, **arrays)
    with pytest.raises(CorruptWeightsError, match="pickled Python objects"):
        load_npz(BiTBackbone(**TINY), path)


@pytest.mark.parametrize("damage", ["empty", "truncated", "crc", "text"])
def test_damaged_npz_files_raise_an_error_naming_the_file(tmp_path, tiny_checkpoint, damage):
    source, _ = tiny_checkpoint
    path = tmp_path / "damaged.npz"
    data = source.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "crc":
        middle = len(data) // 2  # inside an array's bytes (stored, not compressed)
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    else:
        path.write_text("resnet/root_block/standardized_conv2d/kernel = 1\n")
    with pytest.raises(CorruptWeightsError, match="damaged.npz") as error:
        load_npz(BiTBackbone(**TINY), path)
    assert "allow_pickle" not in str(error.value)


def test_describe_arrays_infers_architecture_and_head():
    arrays = reference.checkpoint_arrays((3, 4, 6, 3), 0.5, num_classes=7)
    assert describe_arrays(arrays) == (Architecture((3, 4, 6, 3), 0.5), 7)
    assert describe_arrays({"resnet/x": np.zeros(1)}) == (None, None)
