"""BiT weights in timm's and transformers' layouts: files, folders and hf:// handles."""

import hashlib
import json
import os

import keras
import numpy as np
import pytest
from safetensors.numpy import save_file

from bitkeras import (
    BiTBackbone,
    BiTClassifier,
    CheckpointMismatchError,
    CorruptWeightsError,
    WeightsUnavailableError,
    load_npz,
)
from tests.helpers import TINY, reference

LIBRARIES = ["timm", "transformers"]


def features(model, images):
    return keras.ops.convert_to_numpy(model(images))


@pytest.fixture
def npz_backbone(tiny_checkpoint):
    path, _ = tiny_checkpoint
    backbone = BiTBackbone(**TINY)
    load_npz(backbone, path)
    return backbone


@pytest.mark.parametrize("library", LIBRARIES)
def test_a_safetensors_file_loads_as_the_same_weights_from_npz(library, tiny_checkpoint,
                                                               npz_backbone, images, tmp_path):
    _, arrays = tiny_checkpoint
    path = tmp_path / "model.safetensors"
    save_file(reference.pytorch_layout(arrays, library), str(path))
    backbone = BiTBackbone.from_preset(path)  # the architecture read from the tensors
    assert (backbone.architecture.block_units, backbone.architecture.width_factor) == (
        TINY["block_units"], TINY["width_factor"])
    np.testing.assert_array_equal(features(backbone, images), features(npz_backbone, images))
    # The head too, and the same file as the weights of a named architecture.
    classifier = BiTClassifier.from_preset(path)
    head = keras.ops.convert_to_numpy(classifier.head.kernel)
    np.testing.assert_array_equal(head, arrays["resnet/head/conv2d/kernel"][0, 0])
    # The shipped preset has the tiny architecture: the file as its weights.
    named = BiTBackbone.from_preset("BiT-Glyphs-R14x0.5", weights=path)
    np.testing.assert_array_equal(features(named, images), features(npz_backbone, images))
    random = BiTBackbone.from_preset(path, weights=None)
    assert not np.array_equal(features(random, images), features(npz_backbone, images))
    unloaded = BiTClassifier.from_preset(path, weights=None)
    assert unloaded.num_classes == 5
    assert not np.array_equal(keras.ops.convert_to_numpy(unloaded.backbone.get_layer(
        "root_conv").kernel), arrays["resnet/root_block/standardized_conv2d/kernel"])


@pytest.mark.parametrize("library", LIBRARIES)
def test_a_hugging_face_folder_brings_its_class_names_and_resolution(library, tiny_checkpoint,
                                                                     tmp_path):
    _, arrays = tiny_checkpoint
    names = ["ant", "bee", "cat", "dog", "eel"]
    if library == "timm":
        config = {"architecture": "resnetv2_tiny_bit", "num_classes": 5, "label_names": names,
                  "pretrained_cfg": {"input_size": [3, 160, 160]}}
    else:
        config = {"model_type": "bit", "layer_type": "preactivation",
                  "id2label": {str(index): name for index, name in enumerate(names)}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(reference.pytorch_layout(arrays, library), str(tmp_path / "model.safetensors"))
    classifier = BiTClassifier.from_preset(tmp_path)
    assert classifier.class_names == tuple(names)
    assert classifier.image_size == (160 if library == "timm" else None)
    # transformers' placeholder labels are no class names.
    if library == "transformers":
        config["id2label"] = {str(index): f"LABEL_{index}" for index in range(5)}
        (tmp_path / "config.json").write_text(json.dumps(config))
        assert BiTClassifier.from_preset(tmp_path).class_names != tuple(config["id2label"].values())
    # A new head instead, as for the released presets.
    assert BiTClassifier.from_preset(tmp_path, num_classes=3).num_classes == 3


def test_named_architecture_checks_the_file_it_is_given(tiny_checkpoint, tmp_path):
    _, arrays = tiny_checkpoint
    path = tmp_path / "tiny.safetensors"
    save_file(reference.pytorch_layout(arrays, "timm"), str(path))
    with pytest.raises(CheckpointMismatchError, match="R50x1"):
        BiTBackbone.from_preset("R50x1", weights=path)


def test_wrong_layouts_and_damaged_files_name_themselves(tiny_checkpoint, tmp_path):
    _, arrays = tiny_checkpoint
    other = tmp_path / "other.safetensors"
    save_file({"features.0.weight": np.zeros((8, 3, 3, 3), np.float32)}, str(other))
    with pytest.raises(CheckpointMismatchError, match="timm layout.*transformers layout"):
        BiTBackbone.from_preset(other)
    extra = tmp_path / "extra.safetensors"
    tensors = reference.pytorch_layout(arrays, "timm")
    tensors["stages.0.blocks.0.se.fc.weight"] = np.zeros((4, 4), np.float32)
    save_file(tensors, str(extra))
    with pytest.raises(CheckpointMismatchError, match=r"stages\.0\.blocks\.0\.se\.fc\.weight"):
        BiTBackbone.from_preset(extra)
    # A safetensors file where a released .npz is expected says what it is.
    timm_file = tmp_path / "timm.safetensors"
    save_file(reference.pytorch_layout(arrays, "timm"), str(timm_file))
    with pytest.raises(CorruptWeightsError, match="safetensors file"):
        load_npz(BiTBackbone(**TINY), timm_file)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(timm_file.read_bytes()[:-100])
    with pytest.raises(CorruptWeightsError, match="truncated"):
        BiTBackbone.from_preset(truncated)
    hybrid = tmp_path / "hybrid"
    hybrid.mkdir()
    (hybrid / "config.json").write_text(json.dumps({"model_type": "bit",
                                                    "layer_type": "bottleneck"}))
    save_file(reference.pytorch_layout(arrays, "transformers"), str(hybrid / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="ViT-hybrid"):
        BiTBackbone.from_preset(hybrid)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"PK")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        BiTBackbone.from_preset(pickled)


def hub_cache(root, repo_id, files):
    """A Hugging Face cache holding one snapshot of `repo_id`, laid out as huggingface_hub does.

    Weights files are LFS blobs named by their SHA-256, linked from the snapshot.
    """
    commit = "0" * 40
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, write in files.items():
        write(snapshot / name)
        if name.endswith(".safetensors"):
            blob = repo / "blobs" / hashlib.sha256((snapshot / name).read_bytes()).hexdigest()
            (snapshot / name).rename(blob)
            (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return root


def test_hf_handles_load_from_the_cache_and_fail_fast_offline(tiny_checkpoint, npz_backbone,
                                                              images, tmp_path, monkeypatch):
    from huggingface_hub import constants

    _, arrays = tiny_checkpoint
    cache = hub_cache(tmp_path / "hub", "timm/resnetv2_tiny_bit.test", {
        "config.json": lambda path: path.write_text(json.dumps({"num_classes": 5})),
        "model.safetensors": lambda path: save_file(
            reference.pytorch_layout(arrays, "timm"), str(path)),
    })
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    backbone = BiTBackbone.from_preset("hf://timm/resnetv2_tiny_bit.test")
    np.testing.assert_array_equal(features(backbone, images), features(npz_backbone, images))
    snapshot = cache / "models--timm--resnetv2_tiny_bit.test" / "snapshots" / ("0" * 40)
    blob = (snapshot / "model.safetensors").resolve()
    with open(blob, "r+b") as damaged:
        damaged.seek(-1, os.SEEK_END)
        damaged.write(b"\xff" if damaged.read(1) != b"\xff" else b"\x00")
    with pytest.raises(CorruptWeightsError, match="not the .* the Hub published"):
        BiTBackbone.from_preset("hf://timm/resnetv2_tiny_bit.test")
    with pytest.raises(WeightsUnavailableError, match="hf download timm/resnetv2_50x1_bit"):
        BiTClassifier.from_preset("hf://timm/resnetv2_50x1_bit.goog_in21k")
    with pytest.raises(ValueError, match="hf://owner/name"):
        BiTBackbone.from_preset("hf://resnetv2_50x1_bit")
