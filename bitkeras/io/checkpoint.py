"""Reads and writes the released BiT `.npz` checkpoint format, strictly.

Keys and layouts are those of the public files (`resnet/...`, kernels HWIO, the
head a 1x1 conv). Loading never half-succeeds: a missing key, an unexpected key
or a shape mismatch raises before any variable is touched.
"""

import contextlib
import os
import re
import zipfile

import numpy as np
from keras import ops

from bitkeras import files
from bitkeras.io.weights import CorruptWeightsError, is_safetensors
from bitkeras.models.architecture import (
    ROOT_CHANNELS,
    ROOT_LAYER_NAME,
    Architecture,
    architecture_name,
    unit_name,
)

HEAD_PREFIX = "resnet/head/"
_UNIT_KEY = re.compile(r"^resnet/block(\d)/unit(\d+)/")
_CONV = "standardized_conv2d/kernel"


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model it is loaded into."""


def _norm_entries(prefix, layer):
    return {
        f"{prefix}group_norm/gamma": layer.gamma,
        f"{prefix}group_norm/beta": layer.beta,
    }


def backbone_variables(backbone):
    """Checkpoint key -> variable for every weight of a BiTBackbone."""
    entries = {f"resnet/root_block/{_CONV}": backbone.get_layer(ROOT_LAYER_NAME).kernel}
    for block, unit, *_ in backbone.architecture.units():
        layer = backbone.get_layer(unit_name(block, unit))
        prefix = f"resnet/block{block}/unit{unit:02d}/"
        for part, norm, conv in (
            ("a", layer.norm_a, layer.conv_a),
            ("b", layer.norm_b, layer.conv_b),
            ("c", layer.norm_c, layer.conv_c),
        ):
            entries.update(_norm_entries(f"{prefix}{part}/", norm))
            entries[f"{prefix}{part}/{_CONV}"] = conv.kernel
        if layer.proj is not None:
            entries[f"{prefix}a/proj/{_CONV}"] = layer.proj.kernel
    entries.update(_norm_entries("resnet/", backbone.get_layer("final_norm")))
    return entries


def model_variables(model):
    """Checkpoint key -> (variable, shape in the file) for a backbone or classifier."""
    backbone = getattr(model, "backbone", model)
    entries = {key: (variable, tuple(variable.shape))
               for key, variable in backbone_variables(backbone).items()}
    if backbone is not model:
        if model.head is None:
            raise CheckpointMismatchError(
                f"classifier {model.name!r} has no head yet: build it with num_classes, or "
                f"load the checkpoint into its backbone (classifier.backbone)"
            )
        kernel, bias = model.head.kernel, model.head.bias
        entries[f"{HEAD_PREFIX}conv2d/kernel"] = (kernel, (1, 1, *kernel.shape))
        entries[f"{HEAD_PREFIX}conv2d/bias"] = (bias, tuple(bias.shape))
    return entries


@contextlib.contextmanager
def _open_npz(path):
    """The lazily read archive, without pickle; damaged files raise CorruptWeightsError naming them."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file {path!r}")
    if not zipfile.is_zipfile(path):
        if is_safetensors(path):
            raise CorruptWeightsError(
                f"{path!r} is a safetensors file (the timm or transformers layout), not a "
                f"released .npz: load it with BiTBackbone.from_preset({path!r}) or "
                f"from_preset(NAME, weights={path!r})")
        raise CorruptWeightsError(
            f"{path!r} is not a .npz archive (a zip of .npy arrays, as BiT's checkpoints are): "
            f"it is empty, truncated or another kind of file; download or write it again"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            yield archive
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if "allow_pickle" in str(error):
            raise CorruptWeightsError(
                f"checkpoint {path!r} holds pickled Python objects, which bitkeras never "
                f"loads (unpickling can run any code); BiT checkpoints hold plain arrays"
            ) from error
        raise CorruptWeightsError(
            f"checkpoint {path!r} is damaged ({type(error).__name__}: {error}); download or "
            f"write it again"
        ) from error


def read_arrays(path):
    """All arrays of a `.npz` file."""
    with _open_npz(path) as archive:
        return {key: archive[key] for key in archive.files}


def describe_arrays(arrays):
    """Infers (Architecture or None, head classes or None) from checkpoint arrays."""
    root = arrays.get(f"resnet/root_block/{_CONV}")
    units = [0, 0, 0, 0]
    for key in arrays:
        match = _UNIT_KEY.match(key)
        if match and 1 <= int(match.group(1)) <= 4:
            block = int(match.group(1)) - 1
            units[block] = max(units[block], int(match.group(2)))
    bias = arrays.get(f"{HEAD_PREFIX}conv2d/bias")
    classes = None if bias is None else int(bias.shape[0])
    try:
        width = root.shape[-1] / ROOT_CHANNELS
        architecture = Architecture(tuple(units), int(width) if width.is_integer() else width)
    except (AttributeError, IndexError, ValueError):
        architecture = None
    return architecture, classes


def head_arrays(arrays):
    """The checkpoint's head as a Dense layer's [kernel (features, classes), bias], or None."""
    kernel, bias = (arrays.get(f"{HEAD_PREFIX}conv2d/{part}") for part in ("kernel", "bias"))
    if kernel is None or bias is None:
        return None
    if kernel.ndim != 4 or kernel.shape[:2] != (1, 1) or kernel.shape[-1] != bias.shape[0]:
        raise CheckpointMismatchError(
            f"the checkpoint's head kernel has shape {kernel.shape} for {bias.shape[0]} "
            f"classes; BiT's head is a 1x1 convolution (1, 1, features, classes)")
    return [kernel.reshape(kernel.shape[2:]), bias]


def describe(architecture, classes):
    """Readable name of an architecture and head, e.g. 'R50x1 with a 1000-class head'."""
    if architecture is None:
        text = "an unrecognised architecture"
    else:
        text = architecture_name(architecture) or (
            f"block_units={architecture.block_units}, width_factor={architecture.width_factor}"
        )
    return text + (" with no head" if classes is None else f" with a {classes}-class head")


def load_npz(model, path):
    """Loads a released-format `.npz` into a BiTBackbone or BiTClassifier.

    A backbone takes every `resnet/` array but the head's (a backbone has no
    head); a classifier takes all of them and its head size must match.
    """
    load_arrays(model, read_arrays(path), path)


def load_arrays(model, arrays, source):
    """Loads arrays under the released keys (`resnet/...`) into a model, all or nothing.

    `source` names where the arrays came from, for error messages.
    """
    entries = model_variables(model)
    is_backbone = getattr(model, "backbone", model) is model
    ignored = {key for key in arrays if key.startswith(HEAD_PREFIX)} if is_backbone else set()
    missing = sorted(set(entries) - set(arrays))
    unexpected = sorted(set(arrays) - set(entries) - ignored)
    mismatched = [
        (key, tuple(arrays[key].shape), shape)
        for key, (_, shape) in entries.items()
        if key in arrays and tuple(arrays[key].shape) != shape
    ]
    not_float = [key for key in entries if key in arrays and arrays[key].dtype.kind != "f"]
    if missing or unexpected or mismatched or not_float:
        raise CheckpointMismatchError(
            _mismatch_message(model, source, arrays, missing, unexpected, mismatched, not_float)
        )
    for key, (variable, _) in entries.items():
        variable.assign(arrays[key].reshape(variable.shape))


def _listing(title, items, limit=5):
    shown = "; ".join(map(str, items[:limit]))
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return f"{title} ({len(items)}): {shown}{more}"


def _mismatch_message(model, source, arrays, missing, unexpected, mismatched, not_float):
    backbone = getattr(model, "backbone", model)
    model_classes = None if backbone is model else model.num_classes
    file_architecture, file_classes = describe_arrays(arrays)
    lines = [
        f"checkpoint {str(source)!r} does not fit {model.name} "
        f"({describe(backbone.architecture, model_classes)}); the file holds "
        f"{describe(file_architecture, file_classes)}."
    ]
    if missing:
        lines.append(_listing("missing keys", missing))
    if unexpected:
        lines.append(_listing("unexpected keys", unexpected))
    if mismatched:
        lines.append(_listing(
            "shape mismatches",
            [f"{key}: file {file} vs model {mine}" for key, file, mine in mismatched],
        ))
    if not_float:
        lines.append(_listing("arrays that are not floating point", not_float))
    if file_architecture is not None and file_architecture != backbone.architecture:
        lines.append(
            f"Build the file's architecture instead: block_units="
            f"{file_architecture.block_units}, width_factor={file_architecture.width_factor}."
        )
    elif model_classes is not None and file_classes != model_classes:
        lines.append(
            "The heads differ: for a new head use BiTClassifier.from_preset(name, "
            f"weights=path, num_classes={model_classes}), or load into classifier.backbone."
        )
    return "\n".join(lines)


def save_npz(model, path):
    """Writes a BiTBackbone or BiTClassifier in the released `.npz` format.

    Written to a temporary file and renamed, so `path` holds either its old
    content or the complete new file.
    """
    arrays = {
        key: np.asarray(ops.convert_to_numpy(variable), dtype=np.float32).reshape(shape)
        for key, (variable, shape) in model_variables(model).items()
    }
    with files.atomic_path(path) as temporary:
        with open(temporary, "wb") as out:
            np.savez(out, **arrays)
