"""An independent NumPy statement of the documented BiT function and file format.

Written from ../shared/docs/bit-reference.md alone, sharing no code with
bitkeras, so that tests compare the package against the definition.
"""

import numpy as np


def checkpoint_arrays(block_units, width_factor, num_classes=None, seed=0):
    """Random arrays under the released `.npz` keys and shapes (float32)."""
    rng = np.random.default_rng(seed)
    arrays = {}

    def conv(key, shape):
        arrays[key] = rng.normal(0.1, 1.0, shape).astype(np.float32)

    def norm(prefix, channels):
        arrays[f"{prefix}group_norm/gamma"] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
        arrays[f"{prefix}group_norm/beta"] = rng.normal(0, 0.3, channels).astype(np.float32)

    root = int(64 * width_factor)
    conv("resnet/root_block/standardized_conv2d/kernel", (7, 7, 3, root))
    cin = root
    for block, units in enumerate(block_units, start=1):
        cmid = root * 2 ** (block - 1)
        for unit in range(1, units + 1):
            prefix = f"resnet/block{block}/unit{unit:02d}/"
            norm(prefix + "a/", cin)
            conv(prefix + "a/standardized_conv2d/kernel", (1, 1, cin, cmid))
            norm(prefix + "b/", cmid)
            conv(prefix + "b/standardized_conv2d/kernel", (3, 3, cmid, cmid))
            norm(prefix + "c/", cmid)
            conv(prefix + "c/standardized_conv2d/kernel", (1, 1, cmid, 4 * cmid))
            if unit == 1:
                conv(prefix + "a/proj/standardized_conv2d/kernel", (1, 1, cin, 4 * cmid))
            cin = 4 * cmid
    norm("resnet/", cin)
    if num_classes is not None:
        arrays["resnet/head/conv2d/kernel"] = rng.normal(0, 0.05, (1, 1, cin, num_classes)).astype(np.float32)
        arrays["resnet/head/conv2d/bias"] = rng.normal(0, 0.1, num_classes).astype(np.float32)
    return arrays


def standardize(kernel):
    mean = kernel.mean(axis=(0, 1, 2))
    variance = kernel.var(axis=(0, 1, 2))  # population variance
    return (kernel - mean) / np.sqrt(variance + 1e-10)


def pad(x, amount):
    return np.pad(x, [(0, 0), (amount, amount), (amount, amount), (0, 0)])


def conv_valid(x, kernel, stride):
    kh, kw, _, cout = kernel.shape
    n, h, w, _ = x.shape
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    out = np.zeros((n, oh, ow, cout))
    for i in range(kh):
        for j in range(kw):
            window = x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            out += window @ kernel[i, j]
    return out


def max_pool_valid(x, size=3, stride=2):
    n, h, w, c = x.shape
    oh, ow = (h - size) // stride + 1, (w - size) // stride + 1
    out = np.full((n, oh, ow, c), -np.inf)
    for i in range(size):
        for j in range(size):
            out = np.maximum(out, x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride])
    return out


def group_norm(x, gamma, beta, groups=32, epsilon=1e-5):
    n, h, w, c = x.shape
    grouped = x.reshape(n, h, w, groups, c // groups)
    mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    variance = grouped.var(axis=(1, 2, 4), keepdims=True)
    return ((grouped - mean) / np.sqrt(variance + epsilon)).reshape(x.shape) * gamma + beta


def cross_entropy(logits, labels):
    """Softmax cross-entropy of each row of `logits` (N, classes) at its class id, in float64."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probabilities[np.arange(len(logits)), labels]


def relu(x):
    return np.maximum(x, 0)


def forward(arrays, images, block_units):
    """(pre-logits features, logits or None, per-block maps "P2".."P5") of images in [0, 1]."""
    a = {key: value.astype(np.float64) for key, value in arrays.items()}

    def gn(prefix, x):
        return group_norm(x, a[prefix + "group_norm/gamma"], a[prefix + "group_norm/beta"])

    def sconv(key, x, stride=1):
        return conv_valid(x, standardize(a[key]), stride)

    x = images.astype(np.float64) * 2 - 1
    x = sconv("resnet/root_block/standardized_conv2d/kernel", pad(x, 3), 2)
    x = max_pool_valid(pad(x, 1))
    maps = {}
    for block, units in enumerate(block_units, start=1):
        for unit in range(1, units + 1):
            prefix = f"resnet/block{block}/unit{unit:02d}/"
            stride = 2 if (block > 1 and unit == 1) else 1
            p = relu(gn(prefix + "a/", x))
            shortcut = (sconv(prefix + "a/proj/standardized_conv2d/kernel", p, stride)
                        if unit == 1 else x)
            h = sconv(prefix + "a/standardized_conv2d/kernel", p)
            h = sconv(prefix + "b/standardized_conv2d/kernel", pad(relu(gn(prefix + "b/", h)), 1), stride)
            h = sconv(prefix + "c/standardized_conv2d/kernel", relu(gn(prefix + "c/", h)))
            x = h + shortcut
        maps[f"P{block + 1}"] = x  # keras-hub's level: the map is 2 ** (block + 1) smaller
    features = relu(gn("resnet/", x)).mean(axis=(1, 2))
    logits = None
    if "resnet/head/conv2d/kernel" in a:
        logits = features @ a["resnet/head/conv2d/kernel"][0, 0] + a["resnet/head/conv2d/bias"]
    return features, logits, maps


def write_checkpoint(path, arrays):
    np.savez(path, **arrays)
    return path


_PYTORCH_PARTS = {"a": ("norm1", "conv1"), "b": ("norm2", "conv2"), "c": ("norm3", "conv3")}


def pytorch_layout(arrays, library):
    """Released arrays renamed and transposed as timm or transformers write them.

    timm's `ResNetV2` state dict (`resnetv2_50x1_bit`) and transformers'
    `BitForImageClassification` (layer_type "preactivation"): OIHW
    convolutions; timm's head a 1x1 convolution, transformers' a dense layer.
    """
    if library == "timm":
        root, unit_prefix, final, head = "stem.conv.", "stages.{}.blocks.{}.", "norm.", "head.fc."
    else:
        root = "bit.embedder.convolution."
        unit_prefix, final, head = "bit.encoder.stages.{}.layers.{}.", "bit.norm.", "classifier.1."
    tensors = {}
    for key, value in arrays.items():
        parts = key.split("/")
        if key.startswith("resnet/root_block/"):
            name = root + "weight"
        elif key.startswith("resnet/block"):
            prefix = unit_prefix.format(int(parts[1][5:]) - 1, int(parts[2][4:]) - 1)
            norm, conv = _PYTORCH_PARTS[parts[3]]
            if parts[4] == "proj":
                name = prefix + "downsample.conv.weight"
            elif parts[4] == "group_norm":
                name = prefix + norm + (".weight" if parts[5] == "gamma" else ".bias")
            else:
                name = prefix + conv + ".weight"
        elif key.startswith("resnet/group_norm/"):
            name = final + ("weight" if parts[2] == "gamma" else "bias")
        else:  # the head
            name = head + ("bias" if parts[3] == "bias" else "weight")
            if parts[3] == "kernel":
                value = value[0, 0].T  # (classes, features)
                if library == "timm":
                    value = value[:, :, None, None]
        if value.ndim == 4 and not name.startswith(head):
            value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        tensors[name] = np.ascontiguousarray(value)
    return tensors
