"""Layer responses of a ResNet-family network (He et al. 2015, Figure 7).

The response of a 3x3 convolution is its output after normalization and
before any nonlinearity (ReLU or the shortcut's addition): the output of
the normalization layer that directly follows it, or the convolution's own
output where none does (plain v2 units' last convolution, networks without
normalization).
"""

import keras
import numpy as np


def response_layers(backbone):
    """[(3x3 convolution name, name of the layer whose output is its response)], forward order."""
    names = {layer.name for layer in backbone.layers}
    pairs = []
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Conv2D) and tuple(layer.kernel_size) == (3, 3):
            prefix = layer.name.removesuffix("_conv")
            follower = next((f"{prefix}_{kind}" for kind in ("bn", "gn")
                             if f"{prefix}_{kind}" in names), layer.name)
            pairs.append((layer.name, follower))
    if not pairs:
        raise ValueError(f"{backbone.name} has no 3x3 convolutions named as the ResNet family "
                         f"names them (a ResNetBackbone is needed)")
    return pairs


def layer_responses(backbone, images, batch_size=64):
    """{3x3 convolution name: standard deviation of its response over `images`}, forward order.

    `images`: what the backbone takes (float in [0, 1] or uint8). The
    standard deviation is over every example, position and channel, with
    the network in inference mode (BatchNorm's moving statistics).
    """
    pairs = response_layers(backbone)
    probe = keras.Model(backbone.input, [backbone.get_layer(f).output for _, f in pairs])
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype("float32") / 255.0
    sums = np.zeros(len(pairs))
    squares = np.zeros(len(pairs))
    count = np.zeros(len(pairs))
    for start in range(0, len(images), batch_size):
        outputs = probe(images[start:start + batch_size], training=False)
        for index, output in enumerate(outputs):
            values = keras.ops.convert_to_numpy(output).astype(np.float64)
            sums[index] += values.sum()
            squares[index] += np.square(values).sum()
            count[index] += values.size
    means = sums / count
    return {conv: float(np.sqrt(max(square / n - mean ** 2, 0.0)))
            for (conv, _), square, n, mean in zip(pairs, squares, count, means)}

