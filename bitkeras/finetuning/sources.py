"""Where training images come from: folders, TFDS, NumPy arrays, tf.data datasets.

`open_source(data)` turns any of these into an `ImageSource`: the integer
labels and class names (read up front, so the HyperRule and few-shot sampling
can use them), a typical image size (from file headers or a sample), and a
tf.data dataset of `(record, label)` whose records `decode_record` turns into
one RGB image. Records stay light (file paths, encoded bytes) where they can, so
shuffling happens before decoding.

Nothing here writes to the user's files.
"""

import concurrent.futures
import dataclasses
import hashlib
import os
import pathlib
import re
import shutil
import socket
import warnings

import numpy as np
import tensorflow as tf

from bitkeras.checks import check_positive_integer
from bitkeras.finetuning.pipeline import dataset_options
from bitkeras.models.images import check_value_range, range_fault

NATIVE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
"""Formats tf.io.decode_image reads; other Pillow formats are decoded by Pillow."""

NATIVE_BMP_MODES = ("RGB", "RGBA", "L")
"""BMP modes TensorFlow decodes correctly (it misreads palette and 1-bit BMPs)."""

EXIF_ORIENTATION = 0x0112
"""The EXIF tag saying how a camera's image is turned for display."""

WARN_NAMES = 20
"""How many skipped files a warning names before it only counts the rest."""

SAMPLE_SIZE = 64
"""How many images of a dataset without headers are decoded to measure their size."""


class BadImageError(ValueError):
    """Image files that cannot be read, with `on_bad_image="raise"`."""


class DataUnavailableError(OSError):
    """A named dataset that is neither on this machine nor downloadable."""


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """Labelled images, measured, before any pipeline.

    `records`: a tf.data dataset of `(record, label)` in a fixed order;
    `decode_record(record)` gives an image (height, width, 3), uint8 or float32
    in [0, 1]. `labels` (int64, one per record, same order), `class_names`,
    `image_size` (typical (height, width), the median), `skipped` (paths and
    reasons of the files left out). `table`: the records again as NumPy
    arrays (one per part of a record, aligned with `labels`) where they are
    in memory (files, arrays), so a pipeline can read any record by its
    index; None for streamed sources (tf.data datasets, TFDS).
    """

    description: str
    records: tf.data.Dataset
    labels: np.ndarray
    class_names: tuple
    image_size: tuple
    record_kind: str  # "file", "encoded" or "pixels"
    skipped: tuple = ()
    named: bool = False  # class names of its own (folders, TFDS), not numbers
    table: tuple | None = None

    @property
    def num_examples(self):
        return len(self.labels)

    @property
    def num_classes(self):
        return len(self.class_names)

    def fingerprint(self):
        """A short hash of the data: what identifies it in a run's checkpoints.

        It covers the labels and, for sources held in memory, the records
        (file paths or pixels).
        """
        digest = hashlib.sha1(np.ascontiguousarray(self.labels).tobytes())
        for part in self.table or ():
            part = np.ascontiguousarray(part)
            if part.dtype.kind == "S":  # file paths, as the file system's bytes
                digest.update(b"\n".join(part.tolist()))
            else:
                digest.update(part.tobytes())
        return digest.hexdigest()[:16]

    def decode_record(self, record):
        """One record -> an RGB image tensor (height, width, 3), uint8 or float32."""
        if self.record_kind == "file":
            return _decode_file(*record)
        if self.record_kind == "encoded":
            image = tf.io.decode_image(record, channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
            return image
        return record

    def select(self, indices):
        """The source restricted to the records at `indices` (in that order)."""
        indices = np.asarray(indices, dtype=np.int64)
        keep = np.zeros(self.num_examples, dtype=bool)
        keep[indices] = True
        keep_table = tf.constant(keep)
        records = self.records.enumerate().filter(lambda i, element: keep_table[i])
        records = records.map(lambda i, element: element)
        # Filtering keeps the original order; the labels and the table follow it.
        order = np.sort(indices)
        table = None if self.table is None else tuple(part[order] for part in self.table)
        return dataclasses.replace(self, records=records, labels=self.labels[order],
                                   table=table)

    def relabel(self, class_names):
        """The source with labels that index `class_names` (a model's classes).

        Sources with class names of their own (folders, TFDS) are matched by
        name, so a validation folder that lacks a class still lines up; numbered
        sources (arrays, datasets) take the names as they are.
        """
        if not self.named:
            if len(class_names) < self.num_classes:
                raise ValueError(
                    f"{self.description} has {self.num_classes} classes (labels up to "
                    f"{self.num_classes - 1}, or one-hot rows that wide) but only "
                    f"{len(class_names)} class names were given"
                )
            return dataclasses.replace(self, class_names=class_names)
        unknown = sorted(set(self.class_names) - set(class_names))
        if unknown:
            raise ValueError(
                f"{self.description} has classes {unknown} that the model does not know; its "
                f"classes are {list(class_names)}"
            )
        mapping = np.array([class_names.index(name) for name in self.class_names], np.int64)
        table = tf.constant(mapping)
        records = self.records.map(lambda record, label: (record, tf.gather(table, label)))
        return dataclasses.replace(self, records=records, labels=mapping[self.labels],
                                   class_names=class_names)

    def few_shot(self, examples_per_class, seed):
        """K examples of every class, drawn reproducibly from `seed`."""
        check_positive_integer(examples_per_class, "examples_per_class")
        rng = np.random.default_rng(seed)
        chosen = []
        for class_id, name in enumerate(self.class_names):
            members = np.flatnonzero(self.labels == class_id)
            if len(members) < examples_per_class:
                raise ValueError(
                    f"examples_per_class={examples_per_class}, but class {name!r} has only "
                    f"{len(members)} examples in {self.description}"
                )
            chosen.append(rng.choice(members, examples_per_class, replace=False))
        return self.select(np.concatenate(chosen))

    def check_labels(self, num_classes):
        """Raises unless every label is in [0, num_classes)."""
        bad = (self.labels < 0) | (self.labels >= num_classes)
        if bad.any():
            index = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"label {int(self.labels[index])} (example {index} of {self.description}) "
                f"is outside [0, {num_classes}); labels must be class ids 0..{num_classes - 1}"
            )


def open_source(data, split=None, class_names=None, on_bad_image="warn", default_split="train"):
    """Any supported data -> ImageSource.

    `data`: a folder (str or path) with one sub-folder per class; "tfds:NAME"
    (optionally "tfds:NAME:SPLIT", else `split` or `default_split`); `(images, labels)`
    NumPy arrays; a finite tf.data.Dataset (it is read once, to count its
    examples) of `(image, label)` pairs, batched or not (images uint8, float
    in [0, 1], or encoded image bytes); or an
    ImageSource already opened (returned as it is).
    `on_bad_image`: "warn" skips unreadable files with one warning naming them;
    "raise" raises BadImageError instead.
    """
    if on_bad_image not in ("warn", "raise"):
        raise ValueError(f'on_bad_image must be "warn" or "raise"; got {on_bad_image!r}')
    form = data_form(data)
    if form == "source":
        source = data
    elif form == "dataset":
        source = _from_dataset(data)
    elif form == "arrays":
        source = _from_arrays(data)
    elif form == "tfds":
        source = _from_tfds(data[len("tfds:"):], split, default_split)
    else:
        source = _from_folder(pathlib.Path(data), on_bad_image)
    if class_names is not None:
        source = source.relabel(tuple(str(name) for name in class_names))
    return source


def keras_data(x, y=None, name="x"):
    """Keras's `(x, y)` as one data argument: `(x, y)` arrays when `y` is given, else `x`.

    Arrays without labels are refused where labels are needed; every other form
    carries its own labels, so a `y` beside it is refused rather than ignored.
    """
    if y is None:
        if isinstance(x, np.ndarray):
            raise ValueError(
                f"{name} is an array of images but y (the labels) is missing: "
                f"pass fit(images, labels) or fit((images, labels))"
            )
        return x
    if isinstance(x, (str, os.PathLike, tf.data.Dataset, tuple)):
        raise ValueError(
            f"y is given, but {name} is a {type(x).__name__} that carries its own labels; "
            f"pass y only with an array of images"
        )
    return (x, y)


def split_validation(data, fraction):
    """Keras's `validation_split` on `(images, labels)` arrays: the last `fraction` held out.

    As Keras does, the examples are taken from the end, before any shuffling.
    Returns (training arrays, validation arrays).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation_split must be in (0, 1); got {fraction!r}")
    if data_form(data) != "arrays":
        raise ValueError(
            f"validation_split only applies to arrays (as in Keras); for a "
            f"{type(data).__name__} pass validation_data instead"
        )
    images, labels = data
    count = len(labels)
    held_out = int(count * fraction)
    if held_out == 0 or held_out == count:
        raise ValueError(
            f"validation_split={fraction} of {count} examples leaves "
            f"{count - held_out} for training and {held_out} for validation; both need some"
        )
    cut = count - held_out
    return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])


def data_form(data, name="data"):
    """Which form `data` takes: "source", "dataset", "arrays", "tfds" or "folder"; else TypeError."""
    if isinstance(data, ImageSource):
        return "source"
    if isinstance(data, tf.data.Dataset):
        return "dataset"
    if isinstance(data, tuple):
        return "arrays"
    if isinstance(data, str) and data.startswith("tfds:"):
        return "tfds"
    if isinstance(data, (str, os.PathLike)):
        return "folder"
    hint = (" Arrays? pass them as one tuple: fit((images, labels))."
            if isinstance(data, np.ndarray) else "")
    raise TypeError(
        f"{name} cannot be a {type(data).__name__}: pass a folder of class sub-folders, "
        f'"tfds:NAME", a tuple (images, labels) of NumPy arrays, or a tf.data.Dataset '
        f"of (image, label).{hint}"
    )


def open_images(images):
    """Unlabelled images for prediction -> ImageSource (labels all 0), in the given order.

    `images`: an array (N, height, width, 3), a list of image file paths (or
    one path), or a tf.data.Dataset of images or of (image, label).
    Unreadable files raise BadImageError: predictions must line up with inputs.
    """
    if isinstance(images, tf.data.Dataset):
        if not isinstance(images.element_spec, tuple):
            if images.element_spec.shape.rank == 4:
                images = images.unbatch()
            images = images.map(lambda image: (image, tf.zeros([], tf.int64)))
        return _from_dataset(images)
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if isinstance(images, (list, tuple)) and images and all(
            isinstance(item, (str, os.PathLike)) for item in images):
        return _from_files([pathlib.Path(item) for item in images])
    if not isinstance(images, (list, tuple)) and np.ndim(images) == 3 and (
            np.shape(images)[-1] == 3):
        raise ValueError(
            f"predict takes a batch of images shaped (N, height, width, 3); got one image "
            f"{np.shape(images)}: pass images[None]"
        )
    array = image_array(images)
    return _from_arrays((array, np.zeros(len(array), np.int64)))


# ---------------------------------------------------------------- folders


def _from_folder(root, on_bad_image):
    if not root.is_dir():
        raise FileNotFoundError(
            f"{str(root)!r} is not a folder; pass a folder with one sub-folder of images per "
            f"class, or 'tfds:NAME' for a TFDS dataset"
        )
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not _is_system(d.name))
    if len(class_dirs) < 2:
        raise ValueError(
            f"folder {str(root)!r} has {len(class_dirs)} class sub-folder(s); a classifier "
            f"needs at least 2 (one sub-folder of images per class)"
        )
    files, labels, broken = [], [], []
    for class_id, class_dir in enumerate(class_dirs):
        entries = [p for p in class_dir.rglob("*")
                   if not any(_is_system(part) for part in p.relative_to(class_dir).parts)]
        broken += [(str(p), "a link to nothing") for p in entries
                   if p.is_symlink() and not p.exists()]
        members = sorted(p for p in entries if p.is_file())
        if not members:
            raise ValueError(
                f"class folder {str(class_dir)!r} is empty: add its images or remove the folder"
            )
        files += members
        labels += [class_id] * len(members)
    source = _from_files(files, labels, f"folder {str(root)!r}", on_bad_image, broken)
    for class_id, class_dir in enumerate(class_dirs):
        if not np.any(source.labels == class_id):
            raise ValueError(
                f"class folder {str(class_dir)!r} has no readable images (all were skipped)"
            )
    return dataclasses.replace(source, class_names=tuple(d.name for d in class_dirs), named=True)


SYSTEM_NAMES = frozenset({"__MACOSX", "@eaDir", "Thumbs.db", "desktop.ini", "$RECYCLE.BIN",
                          "System Volume Information", "lost+found"})
"""What operating systems and NAS boxes leave in photo folders (besides hidden `.` files)."""


def _is_system(name):
    return name.startswith(".") or name in SYSTEM_NAMES


def _from_files(files, labels=None, description=None, on_bad_image="raise", skipped=()):
    """Image files (and labels) -> ImageSource, their headers read in parallel.

    `skipped`: (path, reason) of entries already left out, reported with the rest.
    """
    labels = np.zeros(len(files), np.int64) if labels is None else np.asarray(labels, np.int64)
    description = description or f"{len(files)} image files"
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"no image file {str(path)!r}")
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        headers = list(pool.map(read_header, files))
    skipped = [*skipped, *((str(f), h) for f, h in zip(files, headers) if isinstance(h, str))]
    readable = np.array([i for i, h in enumerate(headers) if not isinstance(h, str)], np.int64)
    # The file system's bytes (os.fsencode): names that are not UTF-8 are read too.
    paths = np.array([os.fsencode(files[i]) for i in readable], dtype=bytes)
    use_pillow = np.array([headers[i][2] for i in readable], dtype=bool)
    # Every file decoded once, by the path training takes: a header can be fine
    # and the data truncated, and nothing that fails here reaches a pipeline.
    decodes = decodable(paths, use_pillow)
    skipped += [(os.fsdecode(path), "cannot be decoded (damaged or truncated image data)")
                for path in paths[~decodes]]
    kept, paths, use_pillow = readable[decodes], paths[decodes], use_pillow[decodes]
    if skipped:
        _report_bad_files(skipped, description, on_bad_image)
    if not len(kept):
        raise ValueError(f"{description} has no readable images (all were skipped)")
    labels = labels[kept]
    return ImageSource(
        description=description,
        records=tf.data.Dataset.from_tensor_slices(((paths, use_pillow), labels)),
        labels=labels,
        class_names=_numbered_classes(labels),
        image_size=_median_size(np.array([headers[i][:2] for i in kept])),
        record_kind="file",
        skipped=tuple(skipped),
        table=(paths, use_pillow),
    )


def read_header(path):
    """(height, width, needs Pillow to decode) from the file's header, or why it can't be read
    (a damaged file, an empty image, or a decompression bomb: Pillow refuses a header that
    declares more than twice its `MAX_IMAGE_PIXELS` before any pixel is decoded)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            image_format, mode = image.format, image.mode
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception as error:  # Pillow raises many types for unreadable files.
        return f"not a readable image ({type(error).__name__}: {error})"
    if width < 1 or height < 1:
        return f"empty image ({width}x{height})"
    native = image_format in NATIVE_FORMATS and (
        image_format != "BMP" or mode in NATIVE_BMP_MODES
    )
    if orientation in (5, 6, 7, 8):  # shown turned by 90 degrees
        width, height = height, width
    # TensorFlow's decoders ignore the EXIF orientation a camera writes; Pillow applies it.
    return height, width, not native or orientation not in (1, None)


def _report_bad_files(skipped, description, on_bad_image):
    names = "\n".join(f"  {path}: {reason}" for path, reason in skipped[:WARN_NAMES])
    more = f"\n  ... and {len(skipped) - WARN_NAMES} more" if len(skipped) > WARN_NAMES else ""
    message = f"{len(skipped)} file(s) of {description} are not readable images:\n{names}{more}"
    if on_bad_image == "raise":
        raise BadImageError(
            message + "\nRemove or repair them, or pass on_bad_image='warn' to skip them.")
    warnings.warn(message + "\nThey are skipped (pass on_bad_image='raise' to stop instead).",
                  stacklevel=6)  # the caller of BiTClassifier.fit


def decodable(paths, use_pillow):
    """Whether each file decodes to a non-empty image: all decoded in parallel, once."""
    decodes = np.zeros(len(paths), dtype=bool)
    if len(paths) == 0:
        return decodes
    decoded = tf.data.Dataset.from_tensor_slices((paths, use_pillow)).enumerate().map(
        lambda index, record: (index, tf.reduce_min(tf.shape(_decode_file(*record))[:2])),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors().with_options(
        dataset_options())
    for index, side in decoded.as_numpy_iterator():
        decodes[index] = side > 0
    return decodes


def _decode_file(path, use_pillow):
    """One image file -> RGB uint8 (height, width, 3): TensorFlow's decoders, or Pillow's."""
    image = tf.cond(
        use_pillow,
        lambda: tf.numpy_function(_pillow_decode, [path], tf.uint8, stateful=False),
        lambda: tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def _pillow_decode(path):
    """The image as a photo viewer shows it: EXIF orientation applied, 8-bit RGB.

    Pillow reads the file itself (bytes handed over by TensorFlow would lose
    trailing NUL bytes). 16-bit and 32-bit grey images are scaled to 8 bits,
    not clipped.
    """
    from PIL import Image, ImageOps

    with Image.open(os.fsdecode(np.asarray(path).item())) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I;16") or image.mode == "I":
            values = np.asarray(image, dtype=np.float64)
            top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
            grey = np.round(np.clip(values, 0, top) * (255.0 / top)).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=-1)
        if image.mode == "F":
            grey = np.clip(np.asarray(image, dtype=np.float64), 0, 255).round()
            return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _median_size(sizes):
    return int(np.median(sizes[:, 0])), int(np.median(sizes[:, 1]))


# ---------------------------------------------------------------- arrays


def _from_arrays(data):
    if len(data) != 2:
        raise ValueError(f"array data must be a tuple (images, labels); got a tuple of {len(data)}")
    if _is_paths(data[0]):
        return _from_labelled_files(*data)
    images, labels = image_array(data[0]), np.asarray(data[1])
    if images.dtype != np.uint8 and images.dtype.kind != "f":
        raise TypeError(
            f"images must be uint8 (0..255) or float in [0, 1]; got dtype {images.dtype}"
        )
    check_value_range(images, "bitkeras (fit, evaluate, predict)")
    labels, width = _class_ids(labels, "the array labels")
    if len(images) != len(labels):
        raise ValueError(
            f"images and labels differ in length: {len(images)} images, {len(labels)} labels"
        )
    if len(labels) == 0:
        raise ValueError("the arrays hold no examples")
    _check_non_negative(labels, "the array labels")
    if images.dtype.kind == "f" and images.dtype != np.float32:
        images = images.astype(np.float32)
    records = tf.data.Dataset.from_tensor_slices((images, labels))
    return ImageSource(
        description=f"arrays of {len(labels)} images",
        records=records,
        labels=labels,
        class_names=_numbered_classes(labels, width),
        image_size=tuple(images.shape[1:3]),
        record_kind="pixels",
        table=(images,),
    )


def _is_paths(items):
    """Whether `items` is a non-empty list or tuple of image file paths."""
    return isinstance(items, (list, tuple)) and len(items) > 0 and all(
        isinstance(item, (str, os.PathLike)) for item in items)


def _from_labelled_files(paths, labels):
    """Image files with their labels, as Keras's `fit(x, y)` takes them: `x` a list of paths."""
    labels, width = _class_ids(labels, "the labels")
    if len(paths) != len(labels):
        raise ValueError(f"the image paths and labels differ in length: {len(paths)} paths, "
                         f"{len(labels)} labels")
    _check_non_negative(labels, "the labels")
    source = _from_files([pathlib.Path(path) for path in paths], labels,
                         f"{len(paths)} image files", on_bad_image="raise")
    return dataclasses.replace(source, class_names=_numbered_classes(labels, width))


def image_array(images, name="images"):
    """Images as an array shaped (examples, height, width, 3), from the forms users hold them in.

    Grey images, shaped (N, H, W) or (N, H, W, 1), take their one channel three
    times, as grey image files are read; a list of images of one size is stacked,
    and a list of several sizes is refused, naming the first that differs.
    """
    if isinstance(images, (list, tuple)) and images:
        shapes = [np.shape(image) for image in images]
        differing = next((i for i, shape in enumerate(shapes) if shape != shapes[0]), None)
        if differing is not None:
            raise ValueError(
                f"{name}[{differing}] is shaped {shapes[differing]} but {name}[0] "
                f"{shapes[0]}: a list of arrays must hold images of one size; resize them, "
                f"or pass image files (a list of paths or a folder), which are resized as "
                f"they are read")
    images = np.asarray(images)
    if images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 1):
        images = np.repeat(images.reshape(images.shape[:3] + (1,)), 3, axis=-1)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"{name} must be shaped (examples, height, width, 3), or (examples, height, "
            f"width) or (..., 1) for grey; got {images.shape}"
        )
    return images


def _check_non_negative(labels, description):
    if labels.min() < 0:
        index = int(np.argmin(labels))
        raise ValueError(
            f"label {int(labels[index])} (example {index} of {description}) is negative; "
            f"labels must be class ids 0..num_classes-1"
        )


def _numbered_classes(labels, width=None):
    """Class names "0", "1", ...: as many as the labels' largest id, or their one-hot width."""
    return tuple(str(i) for i in range(max(int(labels.max()) + 1, width or 0)))


def _class_ids(labels, description):
    """(int64 class ids, one-hot width or None) from labels in a form Keras's losses take.

    Class ids shaped (N,) or (N, 1), integer or whole floats, or one-hot rows
    (N, C) as `keras.utils.to_categorical` makes them: each gives its ids
    exactly, and one-hot rows also their width (the class count, whether or
    not every class occurs). Soft labels and ids that are not whole numbers
    are refused: turning them into ids would change them.
    """
    labels = np.asarray(labels)
    width = None
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    elif labels.ndim == 2 and labels.dtype.kind in "iufb":
        width = labels.shape[1]
        hot = labels == 1
        one_hot = np.all(hot | (labels == 0), axis=1) & (np.sum(hot, axis=1) == 1)
        if not one_hot.all():
            row = int(np.argmin(one_hot))
            values = np.array2string(labels[row][:12], precision=4, separator=", ")
            raise ValueError(
                f"{description} shaped {labels.shape} are read as one-hot rows (a single 1, "
                f"the rest 0, as keras.utils.to_categorical makes them), but row {row} is "
                f"{values}: pass class ids (soft labels are not taken; fit mixes labels "
                f"itself with MixUp, mixup_alpha=)"
            )
        labels = np.argmax(labels, axis=1)
    if labels.ndim != 1 or labels.dtype.kind not in "iuf":
        raise ValueError(
            f"{description} must be class ids shaped (N,) or (N, 1), or one-hot rows (N, "
            f"classes); got shape {labels.shape}, dtype {labels.dtype}"
        )
    if labels.dtype.kind == "f":
        whole = np.isfinite(labels) & (labels == np.round(labels))
        if not whole.all():
            index = int(np.argmin(whole))
            raise ValueError(
                f"label {labels[index]} (example {index} of {description}) is not a whole "
                f"number; labels must be class ids 0..num_classes-1"
            )
    return labels.astype(np.int64), width


# ---------------------------------------------------------------- tf.data


def _from_dataset(dataset):
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        # Reading it to count its examples (below) would never end.
        raise ValueError(
            "the tf.data.Dataset repeats forever (its cardinality is infinite, as after "
            ".repeat()): bitkeras reads a dataset once to count its examples and classes, "
            "and repeats it itself for as many steps as training needs; pass the dataset "
            "without .repeat(), or a finite part of it (.take(n))"
        )
    spec = dataset.element_spec
    if isinstance(spec, tuple) and len(spec) == 3:
        raise ValueError(
            f"a tf.data.Dataset yields (image, label, sample_weight) triples ({spec}): "
            f"bitkeras takes no per-example weights (its pipeline crops, flips and mixes "
            f"examples); drop them with .map(lambda image, label, weight: (image, label)), "
            f"and weigh classes with class_weight= if that is what they do"
        )
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ValueError(
            f"a tf.data.Dataset must yield (image, label) pairs; got elements {spec}. "
            f"Map dict elements with .map(lambda e: (e['image'], e['label']))"
        )
    image_spec, label_spec = spec
    if image_spec.shape.rank == 4 or (image_spec.dtype == tf.string and image_spec.shape.rank == 1):
        # Keras users pass batched datasets; bitkeras batches by the HyperRule itself.
        dataset = dataset.unbatch()
        image_spec, label_spec = dataset.element_spec
    if image_spec.dtype == tf.string and image_spec.shape.rank == 0:
        kind = "encoded"
    elif image_spec.shape.rank == 3 and image_spec.shape[-1] in (3, None) \
            and (image_spec.dtype == tf.uint8 or image_spec.dtype.is_floating):
        kind = "pixels"
    else:
        raise ValueError(
            f"a tf.data.Dataset must yield images shaped (height, width, 3) (or batches of "
            f"them), uint8 or float in [0, 1], or encoded image bytes; got {image_spec}"
        )
    if not (label_spec.dtype.is_integer or label_spec.dtype.is_floating) \
            or label_spec.shape.rank not in (0, 1):
        raise ValueError(
            f"labels must be class ids (scalars) or one-hot rows, integer or float; got "
            f"{label_spec}"
        )
    rows = list(dataset.map(lambda image, label: label).as_numpy_iterator())
    if len(rows) == 0:
        raise ValueError("the tf.data.Dataset is empty")
    labels, width = _class_ids(np.stack(rows), "the dataset's labels")
    _check_non_negative(labels, "the dataset")

    def class_id(label):
        if label.shape.rank == 0:
            return tf.cast(label, tf.int64)
        return tf.cast(label[0], tf.int64) if width is None else tf.argmax(
            label, output_type=tf.int64)

    source = ImageSource(
        description=f"a tf.data.Dataset of {len(labels)} images",
        records=dataset.map(lambda image, label: (
            _float_or_uint8(image) if kind == "pixels" else image, class_id(label))),
        labels=labels,
        class_names=_numbered_classes(labels, width),
        image_size=(0, 0),
        record_kind=kind,
    )
    floats = kind == "pixels" and image_spec.dtype != tf.uint8
    return dataclasses.replace(source, image_size=_sampled_size(source, check_range=floats))


def _float_or_uint8(image):
    return image if image.dtype == tf.uint8 else tf.cast(image, tf.float32)


def _sampled_size(source, check_range=False):
    """The median (height, width) of the source's first SAMPLE_SIZE images.

    With `check_range` (float pixels), the same read also refuses values
    outside [0, 1] or not finite among them (`_check_range`).
    """
    def measure(record, label):
        image = source.decode_record(record)
        if not check_range:
            return tf.shape(image)[:2], tf.zeros([3])
        return tf.shape(image)[:2], tf.stack([
            tf.reduce_min(image), tf.reduce_max(image),
            tf.cast(tf.reduce_all(tf.math.is_finite(image)), tf.float32)])

    try:
        measured = list(source.records.take(SAMPLE_SIZE).map(measure).as_numpy_iterator())
    except tf.errors.OpError as error:
        raise BadImageError(
            f"an image of {source.description} cannot be decoded "
            f"({type(error).__name__}: {error.message.splitlines()[0]}): the dataset should "
            f"yield decodable image bytes or pixels"
        ) from None
    if check_range:
        _check_range(source, np.array([extremes for _, extremes in measured]))
    return _median_size(np.array([size for size, _ in measured]))


def _check_range(source, extremes):
    """Refuses float pixels outside [0, 1], or not finite, among a dataset's first images.

    `extremes`: (min, max, all finite) per image read. `keras.utils.image_dataset_from_directory`
    yields floats in 0..255: taken as they are, they would train without an error and
    learn nothing useful.
    """
    if not extremes[:, 2].all():
        raise ValueError(
            f"image {int(np.argmin(extremes[:, 2]))} of {source.description} holds NaN or "
            f"Inf pixel values: repair or drop it"
        )
    low, high = float(extremes[:, 0].min()), float(extremes[:, 1].max())
    fault = range_fault(low, high)
    if fault:
        fix = "(image / 255, label)" if fault == "0..255" else "((image + 1) / 2, label)"
        raise ValueError(
            f"{source.description} yields float images with values in [{low:g}, {high:g}] "
            f"(its first {len(extremes)} images read); bitkeras takes float images in [0, 1] "
            f"(keras.utils.image_dataset_from_directory yields 0..255): map them with "
            f".map(lambda image, label: {fix}), or yield uint8"
        )


# ---------------------------------------------------------------- TFDS

_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def parse_tfds_name(name, split=None):
    """"NAME[:VERSION][:SPLIT]" -> (name with version, split or None).

    The split may use TFDS's slicing syntax ("train[:10%]"); a version is x.y.z.
    """
    base, _, rest = name.partition(":")
    version, _, after_version = rest.partition(":")
    if _VERSION.match(version):
        base, rest = f"{base}:{version}", after_version
    if rest:
        if split is not None and split != rest:
            raise ValueError(f"split given twice: {rest!r} in the name and split={split!r}")
        split = rest
    return base, split


def _from_tfds(name, split, default_split):
    import tensorflow_datasets as tfds

    name, split = parse_tfds_name(name, split)
    builder = tfds_builder(name)
    if split is None:
        split = next((s for s in default_split.split("|") if s in builder.info.splits),
                     default_split)
    try:
        num_examples = builder.info.splits[split].num_examples
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"TFDS dataset {name!r} has no split {split!r}; it has {sorted(builder.info.splits)}"
        ) from error
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"TFDS dataset {name!r} has features {sorted(features)}; bitkeras trains on "
            f"datasets with 'image' and 'label'"
        )
    records = builder.as_dataset(
        split=split, as_supervised=False, shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()},
    ).map(lambda example: (example["image"], tf.cast(example["label"], tf.int64)))
    labels = np.fromiter(records.map(lambda image, label: label).as_numpy_iterator(),
                         dtype=np.int64, count=num_examples)
    source = ImageSource(
        description=f"TFDS {name!r} split {split!r}",
        records=records,
        labels=labels,
        class_names=tuple(features["label"].names),
        image_size=(0, 0),
        record_kind="encoded",
        named=True,
    )
    shape = features["image"].shape
    if shape[0] is not None and shape[1] is not None:
        return dataclasses.replace(source, image_size=(shape[0], shape[1]))
    return dataclasses.replace(source, image_size=_sampled_size(source))


def tfds_builder(name):
    """TFDS's builder of `name`, prepared: built here if it can be downloaded.

    Raises ValueError for a name TFDS does not know, and DataUnavailableError,
    saying how to get the data, where it is not prepared and cannot be downloaded.
    """
    import tensorflow_datasets as tfds

    # $TFDS_DATA_DIR as it is now (TFDS reads it once, when imported).
    data_dir = os.environ.get("TFDS_DATA_DIR") or None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # TFDS raises its own DatasetNotFoundError and others.
        raise ValueError(f"TFDS has no dataset {name!r}: {error}") from error
    if builder.is_prepared():
        return builder

    def unavailable(reason):
        return DataUnavailableError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r} and could not be "
            f"downloaded ({reason}). On a machine with internet run `tfds build {name}` and "
            f"copy its data folder here, under $TFDS_DATA_DIR (default ~/tensorflow_datasets)."
        )

    # Offline, TFDS retries its downloads for minutes before it gives up: ask first.
    if not _reachable(TFDS_HOST):
        raise unavailable(f"no connection to {TFDS_HOST}")
    root = pathlib.Path(data_dir or tfds.core.constants.DATA_DIR).expanduser()
    before = set(root.rglob("*")) if root.exists() else set()
    try:
        builder.download_and_prepare()
    except Exception as error:  # Network failures surface as many different types.
        # Leave the data folder as it was: no partial downloads or half-written splits.
        for created in sorted(set(root.rglob("*")) - before, reverse=True):
            if created.is_dir() and not created.is_symlink():
                shutil.rmtree(created, ignore_errors=True)
            else:
                created.unlink(missing_ok=True)
        raise unavailable(f"{type(error).__name__}: {error}") from error
    return builder


TFDS_HOST = "storage.googleapis.com"
"""Where TFDS downloads prepared datasets and most sources from."""


def _reachable(host, port=443, timeout=5.0):
    """Whether a TCP connection to `host` opens within `timeout` seconds (name lookup included)."""

    def connect():
        with socket.create_connection((host, port), timeout=timeout):
            return True

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(connect).result(timeout=timeout)
    except (OSError, concurrent.futures.TimeoutError):
        return False
    finally:
        pool.shutdown(wait=False)
