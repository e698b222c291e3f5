"""Detection data: images with boxes and class labels, from TFDS, COCO JSON or bitkeras's scenes.

Every source becomes a `DetectionData`: a tf.data stream of examples
`(image uint8 (H, W, 3), boxes float32 (k, 4), labels int32 (k,))`, boxes in
pixels as "xyxy" (left, top, right, bottom), with the class names. Boxes are
converted from each source's format (COCO's "xywh" pixels, TFDS's relative
"yxyx") with Keras's bounding-box utilities.

`batches` turns a stream into what `RetinaNetObjectDetector.fit` takes: each
image letterboxed (scaled so its longer side is `image_size`, padded at the
bottom and right, boxes scaled with it), optionally flipped, and batched with
boxes padded to the batch's largest count (padding labels are -1, which
keras-hub's RetinaNet label encoder never matches).
"""

import dataclasses
import json
import pathlib
import warnings

import keras
import numpy as np
import tensorflow as tf

from bitkeras.finetuning import sources

ANNOTATION_FILES = ("annotations.json", "instances.json")
"""The COCO JSON a folder is read from, when it holds more than one `.json`."""

WARN_NAMES = 10
PAD_LABEL = -1


class BadAnnotationError(ValueError):
    """A box outside its image, of zero area or of an unknown class, or an image that is missing."""


@dataclasses.dataclass(frozen=True)
class DetectionData:
    """A detection dataset: a tf.data stream of (image, boxes "xyxy" pixels, labels) and its classes.

    `records` yields uint8 (H, W, 3), float32 (k, 4), int32 (k,), in a fixed order.
    """

    records: tf.data.Dataset
    num_images: int
    class_names: tuple
    description: str

    @classmethod
    def from_arrays(cls, images, boxes, labels, class_names, description="arrays"):
        """From lists (one entry per image) of uint8 (H, W, 3) images, (k, 4) "xyxy" boxes, (k,) labels."""
        if not len(images) == len(boxes) == len(labels):
            raise ValueError(f"images, boxes and labels must have one entry per image; got "
                             f"{len(images)}, {len(boxes)} and {len(labels)}")
        images = [np.asarray(image) for image in images]
        boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes]
        labels = [np.asarray(lab).reshape(-1) for lab in labels]
        problems = []
        for index, image in enumerate(images):
            check_image(image, f"images[{index}]")
            if len(boxes[index]) != len(labels[index]):
                raise ValueError(f"image {index} has {len(boxes[index])} boxes and "
                                 f"{len(labels[index])} labels: give one label per box")
            height, width = image.shape[:2]
            for number, (box, label) in enumerate(zip(boxes[index], labels[index])):
                problem = box_problem(box, label, len(class_names), width, height)
                if problem:
                    problems.append(f"image {index}, box {number}: {problem}")
        if problems:
            raise BadAnnotationError(
                f"{_listed(problems, description)}\nBoxes are (left, top, right, bottom) "
                f"pixels inside their image, labels class ids in [0, {len(class_names)})")
        labels = [label.astype(np.int32) for label in labels]

        def examples():
            yield from zip(images, boxes, labels)

        records = tf.data.Dataset.from_generator(examples, output_signature=SIGNATURE)
        return cls(records.apply(tf.data.experimental.assert_cardinality(len(images))),
                   len(images), tuple(class_names), description)

    def numpy(self):
        """Every example as NumPy: a list of (image, boxes, labels)."""
        return list(self.records.as_numpy_iterator())

    def take(self, count, skip=0):
        """The examples skip .. skip + count - 1, as a DetectionData."""
        count = min(count, self.num_images - skip)
        return dataclasses.replace(
            self, records=self.records.skip(skip).take(count), num_images=count,
            description=f"{self.description} [{skip}:{skip + count}]")


def check_image(image, name):
    """Raises ValueError naming `name` unless `image` is a uint8 (height, width, 3) array."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{name} must be uint8 (height, width, 3); got {image.dtype} "
                         f"{image.shape}")


SIGNATURE = (tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([None, 4], tf.float32),
             tf.TensorSpec([None], tf.int32))


def open_detection_data(data, split=None, on_bad="warn"):
    """`data`: a DetectionData, "tfds:NAME[:SPLIT]" (coco/2017, voc/2007, ...), or COCO JSON.

    COCO JSON: the `.json` file itself, or a folder holding it (`annotations.json`
    or its only `.json`); image `file_name`s are relative to that folder or its
    `images/` sub-folder. `on_bad`: "warn" (skip bad boxes and images, listing
    them) or "raise" (`BadAnnotationError`).
    """
    if isinstance(data, DetectionData):
        return data
    if on_bad not in ("warn", "raise"):
        raise ValueError(f"on_bad must be 'warn' or 'raise'; got {on_bad!r}")
    if isinstance(data, str) and data.startswith("tfds:"):
        return from_tfds(data[len("tfds:"):], split)
    if isinstance(data, (str, pathlib.PurePath)):
        return from_coco_json(data, on_bad)
    raise TypeError(f"detection data must be a DetectionData, 'tfds:NAME' or a COCO JSON "
                    f"file or folder; got {type(data).__name__}")


def from_coco_json(path, on_bad="warn"):
    """A COCO-format detection set: {"images", "annotations", "categories"} (see `open_detection_data`)."""
    path = pathlib.Path(path).expanduser()
    if path.is_dir():
        candidates = [path / name for name in ANNOTATION_FILES if (path / name).is_file()]
        candidates = candidates or sorted(path.glob("*.json"))
        if len(candidates) != 1:
            raise FileNotFoundError(
                f"{path} must hold one COCO JSON file (or one named "
                f"{' or '.join(ANNOTATION_FILES)}); found {[c.name for c in candidates]}")
        path = candidates[0]
    try:
        coco = json.loads(path.read_text())
        images, annotations, categories = (coco["images"], coco.get("annotations", []),
                                           coco["categories"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not COCO JSON with 'images', 'annotations' and "
                         f"'categories': {type(error).__name__}: {error}") from error
    categories = sorted(categories, key=lambda category: category["id"])
    class_of = {category["id"]: index for index, category in enumerate(categories)}
    class_names = tuple(str(category["name"]) for category in categories)
    folder = path.parent
    problems = []
    files, sizes, boxes, labels = {}, {}, {}, {}
    for image in images:
        found = [folder / image["file_name"], folder / "images" / image["file_name"]]
        found = next((candidate for candidate in found if candidate.is_file()), None)
        if found is None:
            problems.append(f"image {image['id']} ({image['file_name']}): no such file")
            continue
        files[image["id"]] = found
        sizes[image["id"]] = (image.get("height"), image.get("width"))
        boxes[image["id"]], labels[image["id"]] = [], []
    # Headers first: a file that is no image, or a decompression bomb, is refused before
    # anything is decoded.
    for image_id, file in list(files.items()):
        header = sources.read_header(file)
        if isinstance(header, str):
            problems.append(f"image {image_id} ({file}): {header}")
            del files[image_id]
    # Decoded as stored (no EXIF turn): COCO boxes are in the file's own pixels.
    readable = sources.decodable([str(file) for file in files.values()],
                                np.zeros(len(files), bool))
    for (image_id, file), ok in zip(list(files.items()), readable):
        if not ok:
            problems.append(f"image {image_id} ({file}): not a readable image")
            del files[image_id]
    known = {image["id"] for image in images}
    for annotation in annotations:
        image_id = annotation.get("image_id")
        if image_id not in known:
            problems.append(f"annotation {annotation.get('id')}: no image has id {image_id!r}")
        if image_id not in files:  # an image reported above
            continue
        problem = _box_problem(annotation, sizes[image_id], class_of)
        if problem:
            problems.append(f"annotation {annotation.get('id')} of image {image_id}: {problem}")
            continue
        boxes[image_id].append(annotation["bbox"])
        labels[image_id].append(class_of[annotation["category_id"]])
    description = f"COCO JSON {path}"
    _report(problems, description, on_bad)
    ids = list(files)
    xyxy = [_coco_to_xyxy(boxes[image_id]) for image_id in ids]

    def examples():
        for image_id, box in zip(ids, xyxy):
            image = tf.io.decode_image(tf.io.read_file(str(files[image_id])), channels=3,
                                       expand_animations=False)
            yield image, box, np.asarray(labels[image_id], np.int32)

    records = tf.data.Dataset.from_generator(examples, output_signature=SIGNATURE)
    return DetectionData(records.apply(tf.data.experimental.assert_cardinality(len(ids))),
                         len(ids), class_names, description)


def _box_problem(annotation, size, class_of):
    """Why a COCO annotation cannot be trained on, or None."""
    if annotation.get("category_id") not in class_of:
        return f"unknown class (category_id {annotation.get('category_id')!r})"
    try:
        x, y, width, height = (float(v) for v in annotation["bbox"])
    except (KeyError, TypeError, ValueError):
        return f"bbox must be [x, y, width, height]; got {annotation.get('bbox')!r}"
    image_height, image_width = size
    problem = box_problem((x, y, x + width, y + height), class_of[annotation["category_id"]],
                          len(class_of), image_width, image_height)
    return problem and f"{problem} (bbox {annotation['bbox']})"


def box_problem(box, label, num_classes, image_width=None, image_height=None):
    """Why an "xyxy" pixel box and its class id cannot be trained on, or None: a label
    outside the classes, coordinates that are not finite, no area (right <= left or
    bottom <= top), or a box reaching outside its image (by more than a pixel, where the
    image's size is known)."""
    if isinstance(label, np.generic):
        label = label.item()
    whole = isinstance(label, (int, np.integer)) or (
        isinstance(label, (float, np.floating)) and float(label).is_integer())
    if not (whole and 0 <= label < num_classes):
        return f"label {label!r} is not a class id in [0, {num_classes})"
    left, top, right, bottom = (float(value) for value in box)
    if not all(np.isfinite((left, top, right, bottom))):
        return f"coordinates that are not finite ({left}, {top}, {right}, {bottom})"
    if not (right > left and bottom > top):
        return f"zero area: (left, top, right, bottom) = ({left}, {top}, {right}, {bottom})"
    if image_width and image_height and (
            left < 0 or top < 0 or right > image_width + 1 or bottom > image_height + 1):
        return (f"outside the {image_width}x{image_height} image: (left, top, right, bottom) "
                f"= ({left}, {top}, {right}, {bottom})")
    return None


def _coco_to_xyxy(boxes):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.asarray(keras.utils.bounding_boxes.convert_format(
        boxes, source="xywh", target="xyxy"), np.float32).reshape(-1, 4)


def _listed(problems, description):
    """The count of `problems` in `description` and the first `WARN_NAMES` of them, a line each."""
    listed = "\n".join(f"  {problem}" for problem in problems[:WARN_NAMES])
    more = f"\n  ... and {len(problems) - WARN_NAMES} more" if len(problems) > WARN_NAMES else ""
    return f"{len(problems)} bad annotation(s) or image(s) in {description}:\n{listed}{more}"


def _report(problems, description, on_bad):
    if not problems:
        return
    message = _listed(problems, description)
    if on_bad == "raise":
        raise BadAnnotationError(message + "\nFix or remove them, or pass on_bad='warn' to "
                                           "skip them.")
    warnings.warn(message + "\nThey are skipped (pass on_bad='raise' to stop instead).",
                  stacklevel=4)


def from_tfds(name, split=None):
    """A TFDS detection dataset with an 'image' and 'objects' {'bbox' (relative yxyx), 'label'}."""
    name, split = sources.parse_tfds_name(name, split)
    builder = sources.tfds_builder(name)
    split = split or "train"
    if split not in builder.info.splits:
        raise ValueError(f"TFDS dataset {name!r} has no split {split!r}; it has "
                         f"{sorted(builder.info.splits)}")
    features = builder.info.features
    objects = features["objects"] if "objects" in features else {}
    if "image" not in features or "bbox" not in objects or "label" not in objects:
        raise ValueError(f"TFDS dataset {name!r} has features {sorted(features)}; detection "
                         f"needs 'image' and 'objects' with 'bbox' and 'label'")
    records = builder.as_dataset(split=split, shuffle_files=False).map(tfds_example)
    return DetectionData(records, builder.info.splits[split].num_examples,
                         tuple(objects["label"].names), f"TFDS {name!r} split {split!r}")


def tfds_example(record):
    """A TFDS detection record -> (image, "xyxy" pixel boxes, labels): TFDS's boxes are relative yxyx."""
    image = record["image"]
    shape = tf.shape(image)
    boxes = keras.utils.bounding_boxes.convert_format(
        record["objects"]["bbox"], source="rel_yxyx", target="xyxy",
        height=shape[0], width=shape[1])
    return image, tf.cast(boxes, tf.float32), tf.cast(record["objects"]["label"], tf.int32)


def letterbox(image, image_size):
    """(image scaled so its longer side is `image_size` and padded to a square, the scale)."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = image_size / tf.reduce_max(shape)
    size = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)
    resized = tf.image.resize(image, size, antialias=True)
    padded = tf.image.pad_to_bounding_box(resized, 0, 0, image_size, image_size)
    return tf.cast(tf.clip_by_value(tf.round(padded), 0, 255), tf.uint8), scale


def batches(data, image_size, batch_size, training=False, seed=0):
    """`data` (DetectionData) as batches for `fit`/`evaluate`: (images, {"boxes", "labels"}).

    Training repeats, shuffles and flips at random (`seed`, with Keras's global seed
    as `keras.utils.set_random_seed` sets it); otherwise one pass in order.
    """
    def fitted(image, boxes, labels):
        image, scale = letterbox(image, image_size)
        return image, boxes * scale, labels

    def flip(image, boxes, labels):
        flipped = tf.random.uniform([], seed=seed) < 0.5
        mirrored = tf.stack([image_size - boxes[:, 2], boxes[:, 1],
                             image_size - boxes[:, 0], boxes[:, 3]], axis=-1)
        return (tf.where(flipped, tf.reverse(image, [1]), image),
                tf.where(flipped, mirrored, boxes), labels)

    records = data.records
    if training:
        records = records.cache().shuffle(min(data.num_images, 4096), seed=seed).repeat()
    records = records.map(fitted, num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        records = records.map(flip, num_parallel_calls=tf.data.AUTOTUNE)
    records = records.padded_batch(
        batch_size, padded_shapes=([image_size, image_size, 3], [None, 4], [None]),
        padding_values=(np.uint8(0), np.float32(0), np.int32(PAD_LABEL)))
    return records.map(lambda images, boxes, labels: (
        images, {"boxes": boxes, "labels": labels})).prefetch(tf.data.AUTOTUNE)
