"""The ResNet papers' colour augmentation: AlexNet's PCA lighting, a Keras layer.

Krizhevsky et al. (2012) shift every pixel of an image by the same RGB vector
drawn along the principal components of the training set's pixel colours:
`eigenvectors @ (alpha * eigenvalues)`, `alpha` ~ N(0, 0.1) per image and
component. He et al. (2015) train their ImageNet ResNets with it (the
"standard colour augmentation").
"""

import keras
import numpy as np
from keras import ops

IMAGENET_EIGENVALUES = (0.2175, 0.0188, 0.0045)
"""Eigenvalues of ImageNet's RGB pixel covariance, pixels in [0, 1] (the values fb.resnet.torch
and most ResNet training code use)."""

IMAGENET_EIGENVECTORS = ((-0.5675, 0.7192, 0.4009),
                         (-0.5808, -0.0045, -0.8140),
                         (-0.5836, -0.6948, 0.4203))
"""The matching eigenvectors, one per column (rows are R, G, B)."""


@keras.saving.register_keras_serializable(package="bitkeras")
class PCALighting(keras.layers.Layer):
    """Adds `eigenvectors @ (alpha * eigenvalues)` to each image, alpha ~ N(0, `std`) per image.

    Images (batch, height, width, 3) or one (height, width, 3), float, with
    pixels spanning `value_range` (the eigenvalues are for [0, 1]; the shift
    is scaled to the range). Active in training only, as Keras's augmentation
    layers are; values are not clipped (clip after it if the model needs it).
    `eigenvalues`, `eigenvectors` (columns): ImageNet's by default, or your
    data's with `PCALighting.from_images`.

    >>> layer = PCALighting(seed=0)
    >>> tuple(layer(np.full((2, 4, 4, 3), 0.5, "float32"), training=True).shape)
    (2, 4, 4, 3)
    """

    def __init__(self, eigenvalues=IMAGENET_EIGENVALUES, eigenvectors=IMAGENET_EIGENVECTORS,
                 std=0.1, value_range=(0.0, 1.0), seed=None, **kwargs):
        super().__init__(**kwargs)
        values = np.asarray(eigenvalues, np.float64)
        vectors = np.asarray(eigenvectors, np.float64)
        if values.shape != (3,) or vectors.shape != (3, 3):
            raise ValueError(f"eigenvalues must have shape (3,) and eigenvectors (3, 3) (one "
                             f"per column); got {values.shape} and {vectors.shape}")
        if np.any(values < 0) or std < 0:
            raise ValueError(f"eigenvalues and std must not be negative; got {values.tolist()} "
                             f"and {std}")
        self.eigenvalues = tuple(values.tolist())
        self.eigenvectors = tuple(map(tuple, vectors.tolist()))
        self.std = float(std)
        self.value_range = tuple(value_range)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    @classmethod
    def from_images(cls, images, **kwargs):
        """The layer for your data: the eigen-decomposition of its pixels' RGB covariance.

        `images`: uint8 (0..255) or float in [0, 1], any shape ending in 3.
        """
        pixels = np.asarray(images).reshape(-1, 3).astype(np.float64)
        if np.asarray(images).dtype == np.uint8:
            pixels /= 255.0
        if len(pixels) < 2:
            raise ValueError("from_images needs at least two pixels")
        values, vectors = np.linalg.eigh(np.cov(pixels, rowvar=False))
        order = np.argsort(values)[::-1]
        return cls(np.maximum(values[order], 0.0), vectors[:, order], **kwargs)

    def call(self, images, training=None):
        if "float" not in str(images.dtype):
            raise ValueError(f"PCALighting takes float images; got {images.dtype}: cast them "
                             f"to float32 first (with value_range=(0, 255) for 0..255 pixels)")
        if not training:
            return images
        single = len(images.shape) == 3
        batch = 1 if single else ops.shape(images)[0]
        alpha = keras.random.normal((batch, 3), stddev=self.std, seed=self.seed_generator,
                                    dtype=self.compute_dtype)
        shift = ops.cast(self.shift(alpha), images.dtype)
        return images + (shift[0] if single else shift[:, None, None, :])

    def shift(self, alpha):
        """The RGB shifts (batch, 3) for draws `alpha` (batch, 3) of N(0, std)."""
        values = ops.convert_to_tensor(self.eigenvalues, alpha.dtype)
        vectors = ops.convert_to_tensor(self.eigenvectors, alpha.dtype)
        low, high = self.value_range
        return ops.matmul(alpha * values, ops.transpose(vectors)) * (high - low)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(eigenvalues=list(self.eigenvalues),
                      eigenvectors=[list(row) for row in self.eigenvectors], std=self.std,
                      value_range=list(self.value_range), seed=self.seed)
        return config
