"""The ResNet papers' training recipes as data, like the HyperRule: CIFAR-10 and ImageNet.

`CIFAR_RECIPE` (He et al. 2015, section 4.2): SGD with momentum 0.9 and
weight decay 1e-4, batch 128, learning rate 0.1 divided by 10 at 32k and
48k iterations, stopping at 64k; 4-pixel zero padding, a random 32x32
crop and horizontal flips; per-pixel mean subtraction (the model's
"pixel_mean" input scaling); He initialisation (the family's default).
Networks of 110 layers and more warm up at 0.01 until the training error is
below 80% (`for_depth`).

`IMAGENET_RECIPE` (section 3.4): batch 256, learning rate 0.1 divided by 10
when the error plateaus (Keras's `ReduceLROnPlateau`), up to 60e4
iterations; the shorter side resized at random in [256, 480], a random 224
crop, flips, and AlexNet's PCA colour augmentation (std 0.1).

`scaled` fits a recipe to a budget as the HyperRule scales: decay points
in proportion to the steps, the learning rate in proportion to the batch.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from bitkeras.finetuning.optimizers import SGD
from bitkeras.models.augmentation import PCALighting


@dataclasses.dataclass(frozen=True)
class ResNetRecipe:
    """A ResNet training recipe; see the module docstring for the two published ones.

    `decay_steps`: steps at which the learning rate is multiplied by
    `decay_factor` (empty with `plateau`, which decays when the loss stops
    falling). `warmup_learning_rate`: held until the training error falls
    below `warmup_error`. Augmentation: `padding` then a random `crop_size`
    crop, or with `scale_range` the shorter side resized at random within it
    (for 224 crops; scaled with `crop_size`) then cropped; `flip`;
    `pca_lighting_std` (0: none).
    """

    name: str
    learning_rate: float
    batch_size: int
    steps: int
    decay_steps: tuple = ()
    decay_factor: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    plateau: bool = False
    warmup_learning_rate: float = None
    warmup_error: float = None
    crop_size: int = 32
    padding: int = 0
    scale_range: tuple = None
    flip: bool = True
    pca_lighting_std: float = 0.0

    def __post_init__(self):
        for field in ("batch_size", "steps", "crop_size"):
            value = getattr(self, field)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{field} must be a positive integer; got {value!r}")
        object.__setattr__(self, "decay_steps", tuple(int(s) for s in self.decay_steps))
        if any(not 0 < step < self.steps for step in self.decay_steps):
            raise ValueError(f"decay_steps {self.decay_steps} must lie inside the {self.steps} "
                             f"steps")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive; got {self.learning_rate!r}")
        if (self.warmup_learning_rate is None) != (self.warmup_error is None):
            raise ValueError("warmup_learning_rate and warmup_error go together")

    def for_depth(self, depth):
        """The recipe for a network of `depth` layers: on CIFAR, 110 and more warm up.

        The warm-up rate is a tenth of the recipe's (0.01 for the paper's 0.1).
        """
        if self.name == "cifar" and depth >= 110:
            return dataclasses.replace(
                self, warmup_learning_rate=0.01 * self.learning_rate / 0.1, warmup_error=0.8)
        return self

    def scaled(self, steps=None, batch_size=None):
        """The recipe for `steps` steps of `batch_size`: decays in proportion, rate by batch."""
        steps = steps or self.steps
        batch_size = batch_size or self.batch_size
        decays = tuple(sorted({max(1, round(s * steps / self.steps)) for s in self.decay_steps}))
        return dataclasses.replace(
            self, steps=steps, batch_size=batch_size,
            decay_steps=tuple(s for s in decays if s < steps),
            learning_rate=self.learning_rate * batch_size / self.batch_size,
            warmup_learning_rate=None if self.warmup_learning_rate is None
            else self.warmup_learning_rate * batch_size / self.batch_size)

    def learning_rate_at(self, step, warmed=True):
        """The recipe's learning rate at optimizer step `step` (0-based)."""
        if not warmed and self.warmup_learning_rate is not None:
            return self.warmup_learning_rate
        passed = sum(step >= boundary for boundary in self.decay_steps)
        return self.learning_rate * self.decay_factor ** passed

    def compile(self, model, metrics=("accuracy",)):
        """Compiles `model` (logits, integer labels) with the recipe's SGD and cross-entropy."""
        model.compile(
            optimizer=SGD(self.learning_rate, momentum=self.momentum,
                          weight_decay=self.weight_decay),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=list(metrics))

    def callbacks(self):
        """What schedules the learning rate in `fit`: the recipe's steps or a plateau."""
        if self.plateau:
            return [keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=self.decay_factor,
                                                      patience=2)]
        return [RecipeLearningRate(self)]

    def augment(self, image, seed, lighting=None):
        """One training image (height, width, 3), float in [0, 1], augmented; `seed`: (2,) int.

        `lighting`: the `PCALighting` whose eigenvectors shift the colours
        (default: ImageNet's), made outside any traced function.
        """
        seeds = tf.random.experimental.stateless_split(seed, 4)
        if self.scale_range is not None:
            low, high = (round(side * self.crop_size / 224) for side in self.scale_range)
            shorter = tf.random.stateless_uniform((), seeds[0], low, high + 1, tf.int32)
            shape = tf.cast(tf.shape(image)[:2], tf.float32)
            scale = tf.cast(shorter, tf.float32) / tf.reduce_min(shape)
            size = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), self.crop_size)
            image = tf.image.resize(image, size)
        if self.padding:
            image = tf.pad(image, [[self.padding] * 2, [self.padding] * 2, [0, 0]])
        image = tf.image.stateless_random_crop(image, (self.crop_size, self.crop_size, 3),
                                               seeds[1])
        if self.flip:
            image = tf.image.stateless_random_flip_left_right(image, seeds[2])
        if self.pca_lighting_std:
            alpha = tf.random.stateless_normal((1, 3), seeds[3], stddev=self.pca_lighting_std)
            shift = (lighting or PCALighting()).shift(alpha)
            image = tf.clip_by_value(image + shift[0], 0.0, 1.0)
        return image

    def dataset(self, images, labels, seed=0):
        """Endless shuffled, augmented batches of (images in [0, 1], labels) for `fit`."""
        images = np.asarray(images)
        if images.dtype == np.uint8:
            images = images.astype("float32") / 255.0
        data = tf.data.Dataset.from_tensor_slices((images, np.asarray(labels)))
        data = data.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).repeat()
        counter = tf.data.Dataset.counter()
        lighting = PCALighting(std=self.pca_lighting_std) if self.pca_lighting_std else None
        data = tf.data.Dataset.zip((data, counter)).map(
            lambda example, index: (self.augment(
                example[0], tf.stack([tf.cast(seed, tf.int64), index]), lighting), example[1]),
            num_parallel_calls=tf.data.AUTOTUNE)
        return data.batch(self.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


class RecipeLearningRate(keras.callbacks.Callback):
    """Sets the optimizer's learning rate every step from a `ResNetRecipe`.

    With a warm-up, the warm-up rate holds until the epoch's running training
    error (1 - "accuracy" in the logs) is below the recipe's `warmup_error`.
    """

    def __init__(self, recipe):
        super().__init__()
        self.recipe = recipe
        self.warmed = recipe.warmup_learning_rate is None

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.model.optimizer.learning_rate = self.recipe.learning_rate_at(step, self.warmed)

    def on_train_batch_end(self, batch, logs=None):
        if not self.warmed and logs and "accuracy" in logs:
            if 1.0 - float(logs["accuracy"]) < self.recipe.warmup_error:
                self.warmed = True


CIFAR_RECIPE = ResNetRecipe(
    name="cifar", learning_rate=0.1, batch_size=128, steps=64000, decay_steps=(32000, 48000),
    crop_size=32, padding=4)
"""He et al. 2015's CIFAR-10 recipe (about 164 epochs of 45k/50k images)."""

IMAGENET_RECIPE = ResNetRecipe(
    name="imagenet", learning_rate=0.1, batch_size=256, steps=600000, plateau=True,
    crop_size=224, scale_range=(256, 480), pca_lighting_std=0.1)
"""He et al. 2015's ImageNet recipe."""
