"""BiT weights as the PyTorch libraries publish them: timm and transformers, in safetensors.

timm (`timm/resnetv2_50x1_bit.goog_in21k` on the Hugging Face Hub, and every
other BiT name there) and transformers (`google/bit-50`: `BitModel`,
`BitForImageClassification`) hold the same tensors as the released `.npz`
files under other names and in PyTorch's layouts: convolutions OIHW, the head
a 1x1 convolution (timm) or a dense matrix (transformers). This module maps
them onto the released keys (`resnet/...`, HWIO) strictly, so that loading
goes through `bitkeras.io.checkpoint` like any `.npz`: a tensor that has no
place, a missing one or a wrong shape names itself.

`hf://owner/name` handles are fetched by `huggingface_hub` into its cache
(`HF_HOME`, `HF_HUB_OFFLINE` as that library defines them). The Hub publishes
the SHA-256 of every large (LFS) file, and its cache names each such file by
it: the weights are checked against that name before they are read.
"""

import hashlib
import json
import os
import pathlib
import re

import numpy as np

from bitkeras.io import checkpoint
from bitkeras.io.checkpoint import HEAD_PREFIX, CheckpointMismatchError
from bitkeras.io.weights import CorruptWeightsError, WeightsUnavailableError, is_safetensors

HF_SCHEME = "hf://"
SAFETENSORS_INDEX = "model.safetensors.index.json"

# Each library's names for the parts of a unit, and their released names.
_UNIT_PARTS = {
    "norm1": "a/group_norm", "conv1": "a/standardized_conv2d",
    "norm2": "b/group_norm", "conv2": "b/standardized_conv2d",
    "norm3": "c/group_norm", "conv3": "c/standardized_conv2d",
    "downsample.conv": "a/proj/standardized_conv2d",
}
_PARAMETER = {"group_norm": {"weight": "gamma", "bias": "beta"},
              "standardized_conv2d": {"weight": "kernel"}}
_PATTERNS = {
    "timm": {
        "root": r"stem\.conv\.weight",
        "unit": r"stages\.(\d+)\.blocks\.(\d+)\.(norm[123]|conv[123]|downsample\.conv)\.(\w+)",
        "final": r"norm\.(\w+)",
        "head": r"head\.fc\.(\w+)",
    },
    "transformers": {
        "root": r"(?:bit\.)?embedder\.convolution\.weight",
        "unit": r"(?:bit\.)?encoder\.stages\.(\d+)\.layers\.(\d+)\."
                r"(norm[123]|conv[123]|downsample\.conv)\.(\w+)",
        "final": r"(?:bit\.)?norm\.(\w+)",
        "head": r"classifier\.1\.(\w+)",
    },
}


def layout_of(tensors, source):
    """"timm" or "transformers", from the tensor names; anything else is refused by name."""
    names = list(tensors)
    if any(name.startswith(("stem.", "stages.")) for name in names):
        return "timm"
    if any(name.startswith(("bit.", "embedder.", "encoder.")) for name in names):
        return "transformers"
    if any(name.startswith("resnet/") for name in names):
        hint = "it holds the released .npz names: save it with numpy.savez as a .npz"
    else:
        hint = f"its first tensors are {names[:4]}"
    raise CheckpointMismatchError(
        f"{source!r} is not a BiT checkpoint in the timm layout (stem.conv.weight, "
        f"stages.N.blocks.M...) or the transformers layout (bit.embedder.convolution.weight, "
        f"bit.encoder.stages.N.layers.M...): {hint}")


def to_released(tensors, source):
    """(arrays under the released `.npz` keys and layouts, the layout's name)."""
    layout = layout_of(tensors, source)
    patterns = _PATTERNS[layout]
    arrays, unplaced = {}, []
    for name, tensor in tensors.items():
        key = _released_key(patterns, name)
        if key is None:
            unplaced.append(name)
        else:
            arrays[key] = _released_layout(key, np.asarray(tensor), name, source)
    if unplaced:
        raise CheckpointMismatchError(
            f"{source!r} ({layout} layout) has {len(unplaced)} tensor(s) that are no part of "
            f"a BiT model: {unplaced[:5]}; is it another ResNet, or a BiT model with extra "
            f"layers?")
    return arrays, layout


def _released_key(patterns, name):
    if re.fullmatch(patterns["root"], name):
        return "resnet/root_block/standardized_conv2d/kernel"
    if match := re.fullmatch(patterns["unit"], name):
        stage, unit, part, parameter = match.groups()
        path = _UNIT_PARTS[part]
        released = _PARAMETER[path.rsplit("/", 1)[-1]].get(parameter)
        if released is None:
            return None
        return f"resnet/block{int(stage) + 1}/unit{int(unit) + 1:02d}/{path}/{released}"
    if match := re.fullmatch(patterns["final"], name):
        released = _PARAMETER["group_norm"].get(match.group(1))
        return released and f"resnet/group_norm/{released}"
    if match := re.fullmatch(patterns["head"], name):
        released = {"weight": "kernel", "bias": "bias"}.get(match.group(1))
        return released and f"{HEAD_PREFIX}conv2d/{released}"
    return None


def _released_layout(key, tensor, name, source):
    """A tensor as the released file holds it: convolutions HWIO, the head (1, 1, in, out)."""
    if key.endswith("standardized_conv2d/kernel"):
        if tensor.ndim != 4:
            raise CheckpointMismatchError(
                f"{source!r}: convolution {name!r} has shape {tensor.shape}; a PyTorch "
                f"convolution weight is 4-D (out, in, height, width)")
        return np.ascontiguousarray(tensor.transpose(2, 3, 1, 0))
    if key == f"{HEAD_PREFIX}conv2d/kernel":
        if tensor.ndim == 4 and tensor.shape[2:] == (1, 1):  # timm: a 1x1 convolution
            tensor = tensor[:, :, 0, 0]
        if tensor.ndim != 2:
            raise CheckpointMismatchError(
                f"{source!r}: head {name!r} has shape {tensor.shape}; expected (classes, "
                f"features) or (classes, features, 1, 1)")
        return np.ascontiguousarray(tensor.T[None, None])
    return tensor


def read_safetensors(paths):
    """All tensors of one or more safetensors files, as NumPy arrays."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    tensors = {}
    for path in paths:
        try:
            tensors.update(load_file(os.fspath(path)))
        except (SafetensorError, OSError, ValueError) as error:
            raise CorruptWeightsError(
                f"{str(path)!r} is not a readable safetensors file ({error}): it is truncated "
                f"or damaged; download it again") from error
    return tensors


def read_weights(path):
    """(released arrays, source description, config or {}) from a file or folder.

    A file: `.npz` (released) or `.safetensors` (timm or transformers). A
    folder: a Hugging Face model folder (config.json and model.safetensors, or
    its shards listed in model.safetensors.index.json).
    """
    path = pathlib.Path(path).expanduser()
    config = {}
    if path.is_dir():
        config_path = path / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        files = _folder_files(path)
    elif is_safetensors(path):
        files = [path]
    else:
        return checkpoint.read_arrays(path), str(path), config
    _check_config(config, path)
    arrays, layout = to_released(read_safetensors(files), str(path))
    return arrays, f"{path} ({layout} layout)", config


def _folder_files(folder):
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / shard for shard in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        found = sorted(entry.name for entry in folder.iterdir())[:8]
        raise FileNotFoundError(
            f"{str(folder)!r} holds no .safetensors weights (found {found}); bitkeras reads "
            f"timm and transformers folders in safetensors, not pytorch_model.bin (which "
            f"would need pickle): download the repository's model.safetensors")
    return files


def _check_config(config, path):
    """Refuses transformers' non-BiT Bit configurations (ViT-hybrid's post-activation stem)."""
    layer_type = config.get("layer_type")
    if config.get("model_type") == "bit" and layer_type not in (None, "preactivation"):
        raise CheckpointMismatchError(
            f"{str(path)!r} is a transformers Bit model with layer_type={layer_type!r} (the "
            f"ViT-hybrid backbone); BiT's models are layer_type='preactivation'")


def class_names(config, classes):
    """The head's class names from a timm or transformers config, if it has them all."""
    names = config.get("label_names")
    if names is None and isinstance(config.get("id2label"), dict):
        labels = config["id2label"]
        names = [labels.get(str(index)) for index in range(len(labels))]
    if not names or len(names) != classes or not all(isinstance(name, str) for name in names):
        return None
    if names == [f"LABEL_{index}" for index in range(classes)]:
        return None  # transformers' placeholders, written when a model has no labels
    return tuple(names)


def image_size(config):
    """The input size a timm config was trained at, if it says."""
    size = config.get("pretrained_cfg", {}).get("input_size")
    return int(size[-1]) if size else None


def is_hf_handle(name):
    return isinstance(name, str) and name.startswith(HF_SCHEME)


def hf_folder(handle):
    """The local folder of `hf://owner/name[@revision]`: Hugging Face's cache, else downloaded."""
    repo_id, _, revision = handle[len(HF_SCHEME):].partition("@")
    if repo_id.count("/") != 1:
        raise ValueError(f"{handle!r}: a Hugging Face handle is hf://owner/name, such as "
                         f"hf://timm/resnetv2_50x1_bit.goog_in21k or hf://google/bit-50")
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = pathlib.Path(huggingface_hub.snapshot_download(
            repo_id, revision=revision or None,
            allow_patterns=["*.json", "*.safetensors", "*.weights.h5"]))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise WeightsUnavailableError(
            f"{handle!r} is not in Hugging Face's cache and cannot be downloaded here "
            f"({type(error).__name__}). On a machine with internet, run "
            f"`hf download {repo_id}` (or huggingface_hub.snapshot_download({repo_id!r})) "
            f"and copy its cache folder ({huggingface_hub.constants.HF_HUB_CACHE}) here, or "
            f"pass the downloaded folder's path instead of the handle") from error
    for path in sorted(folder.glob("*.safetensors")):
        verify_hub_blob(path, handle)
    return folder


def verify_hub_blob(path, handle):
    """Checks a file of Hugging Face's cache against the SHA-256 the Hub published for it.

    The cache keeps an LFS file as `blobs/<sha256>` (the Hub's etag for it) and
    links the snapshot's name to it; a file whose blob is not named by a SHA-256
    (a small git file, a copied folder) has nothing published to check against.
    """
    published = pathlib.Path(path).resolve().name
    if not re.fullmatch(r"[0-9a-f]{64}", published):
        return
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 24):
            digest.update(chunk)
    if digest.hexdigest() != published:
        raise CorruptWeightsError(
            f"{path} (from {handle!r}) has SHA-256 {digest.hexdigest()}, not the "
            f"{published} the Hub published for it: the cached file is damaged. Delete "
            f"{pathlib.Path(path).resolve()} and load the handle again where there is internet"
        )
