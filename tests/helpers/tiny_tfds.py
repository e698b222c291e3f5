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


class BitkerasTinyBoxes(tfds.core.GeneratorBasedBuilder):
    """Grey images with one or two white rectangles, laid out as tfds voc/coco: image and
    objects {bbox (relative ymin, xmin, ymax, xmax), label}; splits train (3), validation (2)."""

    VERSION = tfds.core.Version("1.0.0")
    BOXES = [[(4, 6, 20, 30)], [(0, 0, 10, 10), (12, 20, 30, 40)], [(8, 8, 16, 24)]]
    """Each image's rectangles as pixel (top, left, bottom, right); images are 32 x 48."""

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "objects": tfds.features.Sequence({
                "bbox": tfds.features.BBoxFeature(),
                "label": tfds.features.ClassLabel(names=["box", "bar"]),
            }),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(3), "validation": self._generate_examples(2)}

    def _generate_examples(self, count):
        for index in range(count):
            image = np.full((32, 48, 3), 90, np.uint8)
            boxes = []
            for top, left, bottom, right in self.BOXES[index]:
                image[top:bottom, left:right] = 255
                boxes.append(tfds.features.BBox(top / 32, left / 48, bottom / 32, right / 48))
            yield index, {"image": image, "objects": {
                "bbox": boxes, "label": [k % 2 for k in range(len(boxes))]}}


def prepare(builder_class, data_dir, monkeypatch):
    """Builds `builder_class`'s dataset in `data_dir` and points TFDS_DATA_DIR there."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))
    builder_class(data_dir=str(data_dir)).download_and_prepare(
        download_dir=str(data_dir / "downloads"))
