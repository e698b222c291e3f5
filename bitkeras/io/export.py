"""Export to TF2 SavedModels shaped like the released BiT TF-Hub modules.

`export_model(model, path)` writes a reusable SavedModel that TF-Hub clients
(`hub.load`, `hub.KerasLayer(path, trainable=True)` under Keras 2) and plain
`tf.saved_model.load` take:

- `__call__(images, training=False)`: float32 images (batch, height, width, 3)
  in [0, 1], any size -> logits (batch, classes) for a classifier, or the
  pre-logits features (batch, 2048 * w) for a backbone / `output="features"`;
- `variables`, `trainable_variables`, `regularization_losses` (empty: BiT
  fine-tunes without weight decay), as the reusable SavedModel API asks;
- signature `serving_default`: {"images"} -> {"logits"} or {"features"};
- signature `serving_bytes` (classifiers): {"images": encoded JPEG/PNG/GIF/BMP/WebP
  strings (batch,)} -> {"class_ids", "scores", "probabilities", "class_names"},
  each image decoded (a JPEG turned as its EXIF orientation says, as bitkeras
  reads files), resized to the model's crop size and classified;
- assets: `labels.txt` (one class name a line) and, for native backbones,
  `bit_keys.txt`, the released checkpoint key of each of
  `checkpoint_variables`, in order, so the module converts back into a
  native BiTBackbone.

The folder is written beside `path` and renamed into place at the end.
"""

import os
import pathlib
import shutil
import tempfile

import tensorflow as tf

from bitkeras.io import checkpoint
from bitkeras.models import kernels
from bitkeras.models.preprocessing import BiTImageConverter

FORMATS = ("saved_model", "tf_hub")
OUTPUTS = ("logits", "features")
LABELS_FILE = "labels.txt"
KEYS_FILE = "bit_keys.txt"
DEFAULT_CROP_SIZE = 224
"""Crop size of the bytes signature for a model never fine-tuned with a HyperRule."""


class _BiTModule(tf.__internal__.tracking.AutoTrackable):
    """The exported object: the Keras model's function and variables, TF-Hub style.

    AutoTrackable (as Keras's own ExportArchive uses) rather than tf.Module,
    whose read-only `variables` property the reusable-SavedModel API needs to set.
    """

    def __init__(self, model, output, class_names, crop_size, folder):
        is_classifier = getattr(model, "backbone", model) is not model
        self._network = model if output == "logits" else getattr(model, "backbone", model)
        backbone = getattr(model, "backbone", model)
        self.variables = list(self._network.variables)
        self.trainable_variables = list(self._network.trainable_variables)
        self.regularization_losses = []
        if getattr(backbone, "architecture", None) is not None:  # native: record the released names
            entries = checkpoint.model_variables(self._network if output == "logits" else backbone)
            self.checkpoint_variables = [variable for variable, _ in entries.values()]
            keys_path = folder / KEYS_FILE
            keys_path.write_text("".join(f"{key}\n" for key in entries))
            self.bit_keys = tf.saved_model.Asset(str(keys_path))
        image_spec = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
        self.__call__ = tf.function(self._call, input_signature=None)
        for training in (False, True):
            self.__call__.get_concrete_function(image_spec, training)
        output_name = output
        self.serving_default = tf.function(
            lambda images: {output_name: self._call(images, False)}, input_signature=[image_spec])
        self.serving_bytes = None
        if is_classifier and output == "logits":
            labels_path = folder / LABELS_FILE
            labels_path.write_text("".join(f"{name}\n" for name in class_names))
            self.labels = tf.saved_model.Asset(str(labels_path))
            self.label_table = tf.lookup.StaticHashTable(
                tf.lookup.TextFileInitializer(
                    self.labels, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                    tf.string, tf.lookup.TextFileIndex.WHOLE_LINE),
                default_value="")
            self.crop_size = crop_size
            self.serving_bytes = tf.function(
                self._classify_bytes,
                input_signature=[tf.TensorSpec([None], tf.string, name="images")])

    def _call(self, images, training=False):
        return self._network(images, training=training)

    def _classify_bytes(self, images):
        converter = BiTImageConverter(image_size=self.crop_size)  # as the model's predict

        def decode(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            # As bitkeras reads image files: turned as the camera's EXIF says.
            return converter(apply_orientation(image, exif_orientation(data)))

        pixels = tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec(
            [self.crop_size, self.crop_size, 3], tf.float32))
        probabilities = tf.nn.softmax(self._call(pixels, False), axis=-1)
        class_ids = tf.argmax(probabilities, axis=-1)
        return {"class_ids": class_ids, "scores": tf.reduce_max(probabilities, axis=-1),
                "probabilities": probabilities, "class_names": self.label_table.lookup(class_ids)}


EXIF_SCAN_BYTES = 65536
"""How far into a JPEG the in-graph EXIF reader looks (APP1 comes first, at most 64 KiB)."""

_MAX_ENTRIES = 64


def exif_orientation(data):
    """The EXIF orientation (1..8) of encoded JPEG bytes, 1 where there is none; graph ops only.

    What Pillow's `ImageOps.exif_transpose` reads, found without Pillow so that a
    SavedModel can apply it: the APP1 "Exif" segment's first IFD, tag 0x0112.
    """
    head = tf.cast(tf.io.decode_raw(tf.strings.substr(data, 0, EXIF_SCAN_BYTES), tf.uint8),
                   tf.int32)
    size = EXIF_SCAN_BYTES + 16
    head = tf.pad(head, [[0, size - tf.shape(head)[0]]])
    hits = tf.reduce_all(tf.signal.frame(head, 6, 1) == tf.constant(list(b"Exif\0\0")), axis=1)
    tiff = tf.cast(tf.argmax(tf.cast(hits, tf.int32)), tf.int32) + 6

    def byte(index):
        return tf.gather(head, tf.clip_by_value(index, 0, size - 1))

    little = tf.equal(byte(tiff), 0x49)  # "II": little-endian; "MM": big-endian

    def number(index, length):
        values = [byte(index + k) for k in range(length)]
        order = range(length)
        little_value = sum(values[k] * 256 ** k for k in order)
        big_value = sum(values[k] * 256 ** (length - 1 - k) for k in order)
        return tf.where(little, little_value, big_value)

    ifd = tiff + number(tiff + 4, 4)
    entries = ifd + 2 + 12 * tf.range(_MAX_ENTRIES)
    valid = tf.range(_MAX_ENTRIES) < number(ifd, 2)
    tagged = valid & tf.equal(number(entries, 2), 0x0112)
    orientation = tf.reduce_max(tf.where(tagged, number(entries + 8, 2), 0))
    usable = tf.reduce_any(hits) & (orientation >= 1) & (orientation <= 8)
    return tf.where(usable, orientation, 1)


def apply_orientation(image, orientation):
    """`image` (height, width, channels) turned for display, as `ImageOps.exif_transpose` does."""

    def transpose(x):
        return tf.transpose(x, [1, 0, 2])

    branches = [
        lambda: image,
        lambda: tf.image.flip_left_right(image),
        lambda: tf.image.rot90(image, 2),
        lambda: tf.image.flip_up_down(image),
        lambda: transpose(image),
        lambda: tf.image.rot90(image, 3),
        lambda: tf.image.rot90(transpose(image), 2),
        lambda: tf.image.rot90(image, 1),
    ]
    return tf.switch_case(orientation - 1, branches)


def export_model(model, path, format="saved_model", output=None):
    """Writes `model` (a BiTClassifier or BiTBackbone) as a TF-Hub style SavedModel at `path`.

    `format`: "saved_model" or "tf_hub" (the same reusable TF2 SavedModel: a
    TF-Hub module is one). `output`: "logits" (default for a classifier) or
    "features" (the only choice for a backbone; a classifier exports its
    backbone's features, like the released feature-vector modules).
    Returns the path.
    """
    if format not in FORMATS:
        raise ValueError(
            f"format must be one of {list(FORMATS)} (for Keras's own export formats call "
            f"keras.Model.export(model, path, format=...)); got {format!r}"
        )
    is_classifier = getattr(model, "backbone", model) is not model
    output = output or ("logits" if is_classifier else "features")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {list(OUTPUTS)}; got {output!r}")
    if output == "logits" and not is_classifier:
        raise ValueError("a backbone has no logits: export it with output='features'")
    class_names = model.names() if is_classifier else ()
    crop_size = (model.image_size if is_classifier else None) or DEFAULT_CROP_SIZE

    def signatures(module):
        found = {"serving_default": module.serving_default}
        if module.serving_bytes is not None:
            found["serving_bytes"] = module.serving_bytes
        return found

    return write_saved_model(
        path, lambda assets: _BiTModule(model, output, class_names, crop_size, assets),
        signatures)


def write_saved_model(path, make_module, signatures):
    """Saves `make_module(assets_folder)` with `signatures(module)` at `path`, all or nothing.

    The module is built and traced without XLA clusters (`kernels.portable()`),
    so any TensorFlow runtime can serve it; the folder is written beside `path`
    and renamed into place at the end. Returns the path.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
    try:
        assets = staging / "source_assets"
        assets.mkdir()
        saved = staging / "saved_model"
        with kernels.portable():
            module = make_module(assets)
            tf.saved_model.save(module, str(saved), signatures=signatures(module))
        _replace_folder(saved, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def export_or_delegate(model, filepath, format, keras_export, **kwargs):
    """`export_model` for bitkeras's formats; Keras's own `export` for the rest."""
    if format in FORMATS:
        return export_model(model, filepath, format, **kwargs)
    try:
        with kernels.portable():
            return keras_export(filepath, format=format, **kwargs)
    except ValueError as error:
        if "format" not in str(error):
            raise
        raise ValueError(f"{error} bitkeras adds format='saved_model' and format='tf_hub' "
                         f"(TF-Hub style modules).") from error


def _replace_folder(new, path):
    """Moves folder `new` to `path`; an existing `path` is swapped out, then deleted."""
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a folder: choose another path")
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(new, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, path)
