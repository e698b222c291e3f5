"""A tiny TFDS dataset in the official format (TFRecord shards + dataset_info), for tests."""

import numpy as np
import tensorflow_datasets as tfds

COLOURS = {"blue": (30, 30, 200), "red": (200, 30, 30)}


class BitkerasTinyColours(tfds.core.GeneratorBasedBuilder):
    """Solid blue and red images of varying heights; splits train (6) and test (4)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=list(COLOURS)),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 6), "test": self._generate_examples(1, 4)}

    def _generate_examples(self, seed, count):
        rng = np.random.default_rng(seed)
        for index in range(count):
            label = index % 2
            colour = np.array(list(COLOURS.values())[label])
            pixels = np.clip(colour + rng.normal(0, 10, (20 + index, 24, 3)), 0, 255)
            yield index, {"image": pixels.astype(np.uint8), "label": label}
