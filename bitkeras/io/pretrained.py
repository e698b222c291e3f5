"""BiT's weights on the networks: `BiTBackbone`, and the classifier's loading and export.

`BiTBackbone` is `ResNetV2Backbone` with the ways in of BiT's weights
(presets by name, released `.npz` checkpoints, TF-Hub modules) and the
TF-Hub style export. `PretrainedClassifier` gives a classifier class the
same (`bitkeras.BiTClassifier` is one), plus keras-hub presets with a model
card.
"""

import contextlib
import pathlib
import warnings

import keras

from bitkeras import files
from bitkeras.io import checkpoint, export, hub, presets, torch_layouts
from bitkeras.io.weights import resolve_weights
from bitkeras.models.backbone import ResNetV2Backbone


@keras.saving.register_keras_serializable(package="bitkeras")
class BiTBackbone(ResNetV2Backbone):
    """The BiT ResNet-v2 feature extractor (GroupNorm + Weight Standardization).

    `ResNetV2Backbone` (see there for the input contract, `pyramid_outputs`
    and `dtype`) with BiT's weights: `from_preset` by name or keras-hub
    preset folder, `from_hub` for TF-Hub modules, and `export` to a TF-Hub
    style feature-vector SavedModel.

    >>> backbone = BiTBackbone.from_preset("R50x1")  # an architecture: random weights
    >>> backbone.feature_channels
    2048
    """

    @classmethod
    def from_preset(cls, name, weights="default", **kwargs):
        """A backbone of a named architecture or released model.

        `name`: an architecture ("R50x1", ...) or a released model
        ("BiT-M-R50x1", "BiT-S-R101x3", "BiT-M-R50x1-ILSVRC2012",
        "BiT-M-R50x1-distilled-224", ...; see `bitkeras.list_presets()`),
        or a keras-hub preset folder written by `save_to_preset` (its weights
        loaded unless `weights=None`).
        `name` may also be BiT weights as the PyTorch libraries publish them
        (`bitkeras.io.torch_layouts`): a Hugging Face handle
        ("hf://timm/resnetv2_50x1_bit.goog_in21k", "hf://google/bit-50"), or a
        local timm or transformers folder or `.safetensors` file, or a
        released-format `.npz` file; the architecture is read from the tensors.
        `weights`: None (random initialisation), a path to weights in the
        released `.npz` format or a timm or transformers `.safetensors` file
        (checked against the named architecture), "auto" (the preset's own
        file: shipped with bitkeras, or released, from the cache or
        downloaded), or "default" ("auto" for the presets bitkeras ships, such
        as "BiT-Glyphs-R14x0.5", and for handles and paths, None for the rest,
        so nothing is downloaded unasked). The file's head, if any, is not part
        of a backbone.
        """
        name = _local(name)
        if presets.is_keras_hub_preset(name):
            with _preset_errors(name):
                return super().from_preset(str(name), load_weights=weights is not None,
                                           **kwargs)
        if _is_weights_path(name):
            arrays, source, _ = _read_path_preset(name, weights)
            architecture, _ = _described(arrays, source)
            backbone = cls(architecture.block_units, architecture.width_factor, **kwargs)
            if weights is not None:
                checkpoint.load_arrays(backbone, arrays, source)
            return backbone
        preset = presets.get_preset(name)
        backbone = cls(
            block_units=preset.architecture.block_units,
            width_factor=preset.architecture.width_factor,
            **kwargs,
        )
        path = resolve_weights(preset, weights)
        if path is not None:
            arrays, source, _ = torch_layouts.read_weights(path)
            checkpoint.load_arrays(backbone, arrays, source)
        return backbone

    @classmethod
    def from_hub(cls, handle, trainable=True, convert=False):
        """A backbone from a TF-Hub module: a URL (cached as TF-Hub caches it) or a folder.

        `convert=False`: a `bitkeras.io.hub.HubBackbone`, the module itself as a
        Keras 3 layer (its variables trained by `fit`). `convert=True`: a
        native BiTBackbone with the module's weights, architecture read from
        its variables (BiT modules only; a classification module's head is
        dropped), so presets' tooling, freezing by block and export all apply.
        """
        if convert:
            return cls.from_module_checkpoint(handle, trainable)[0]
        return hub.HubBackbone(handle, trainable=trainable)

    @classmethod
    def from_module_checkpoint(cls, handle, trainable=True):
        """(native backbone, the module's arrays, its label names) of a BiT TF-Hub module."""
        architecture, arrays, labels = hub.module_checkpoint(handle)
        backbone = cls(architecture.block_units, architecture.width_factor, trainable=trainable)
        checkpoint.load_arrays(backbone, arrays, handle)
        return backbone, arrays, labels

    def export(self, filepath, format="saved_model", **kwargs):
        """Writes a TF-Hub style feature-vector SavedModel (see `bitkeras.io.export`).

        Keras's own formats ("tf_saved_model", "onnx", ...) go to `keras.Model.export`.
        """
        return export.export_or_delegate(self, filepath, format, super().export, **kwargs)


class ExportableClassifier:
    """TF-Hub style export for a `HeadClassifier` class."""

    def export(self, filepath, format="saved_model", output="logits", **kwargs):
        """Writes a TF-Hub style SavedModel: the released BiT modules' interface.

        `format`: "saved_model" or "tf_hub" (the same reusable TF2 SavedModel);
        `output`: "logits" (a classification module, with a serving signature
        for encoded image bytes and the class names as an asset) or "features"
        (a feature-vector module). See `bitkeras.io.export`. Keras's own formats
        ("tf_saved_model", "onnx", ...) go to `keras.Model.export`.
        """
        if format in export.FORMATS:
            kwargs["output"] = output
        return export.export_or_delegate(self, filepath, format, super().export, **kwargs)


class PretrainedClassifier(ExportableClassifier):
    """Loading and export for a `HeadClassifier` class: presets, TF-Hub modules, SavedModels."""

    def save_to_preset(self, preset_dir, max_shard_size=10):
        """Writes a keras-hub preset folder, and `MODEL_CARD.md` in it.

        `BiTClassifier.from_preset(preset_dir)` and
        `keras_hub.models.ImageClassifier.from_preset(preset_dir)` load it
        back with the same weights, class names, preprocessing and rule.
        """
        self.require_head()
        if not isinstance(self.backbone, ResNetV2Backbone):
            raise ValueError(
                f"save_to_preset needs a native BiTBackbone; this one is a "
                f"{type(self.backbone).__name__}: convert it (from_hub(..., convert=True))"
            )
        super().save_to_preset(str(preset_dir), max_shard_size=max_shard_size)
        files.write_text(pathlib.Path(preset_dir) / "MODEL_CARD.md", model_card(self))

    @classmethod
    def from_preset(cls, name, weights="default", num_classes=None, **kwargs):
        """A classifier of a named architecture or released model.

        `weights` as in `BiTBackbone.from_preset`. With `num_classes=None` the
        checkpoint's own head is kept (its size read from the file: 21843 for
        BiT-M, 1000 for BiT-S and the ILSVRC-2012 models), with the preset's
        class names where known; with a number, the backbone is loaded and a
        new zero-initialised head of that size added. A kept head comes with
        the preset's resolution as the preprocessor's image size.

        >>> from bitkeras import BiTClassifier
        >>> glyphs = BiTClassifier.from_preset("BiT-Glyphs-R14x0.5")  # shipped, offline
        >>> glyphs.num_classes, glyphs.class_names[:3], glyphs.image_size
        (132, ('char_0', 'char_1', 'char_2'), 32)
        >>> BiTClassifier.from_preset("BiT-M-R50x1", weights="auto")  # doctest: +SKIP
        """
        name = _local(name)
        if presets.is_keras_hub_preset(name):
            if num_classes is not None:  # a new head: keras-hub then skips the saved one
                kwargs.update(num_classes=num_classes, class_names=None)
            with _preset_errors(name):
                return super().from_preset(str(name), load_weights=weights is not None,
                                           **kwargs)
        if _is_weights_path(name):
            arrays, source, config = _read_path_preset(name, weights)
            architecture, head_classes = _described(arrays, source)
            class_names = resolution = None
            if head_classes is not None:
                class_names = torch_layouts.class_names(config, head_classes)
                resolution = torch_layouts.image_size(config)
            if weights is None:  # the file's shapes, randomly initialised
                if num_classes is None:
                    num_classes = head_classes
                arrays = None
        else:
            preset = presets.get_preset(name)
            path = resolve_weights(preset, weights)
            arrays, source, _ = (None, None, None) if path is None else (
                torch_layouts.read_weights(path))
            head_classes = None if arrays is None else checkpoint.describe_arrays(arrays)[1]
            architecture, class_names, resolution = (
                preset.architecture, preset.class_names, preset.resolution)
        keep_head = num_classes is None
        if keep_head:
            if arrays is None:
                raise ValueError(
                    f"{cls.__name__}.from_preset({str(name)!r}) without weights needs "
                    f"num_classes")
            num_classes = head_classes
            if num_classes is None:
                raise ValueError(
                    f"checkpoint {source!r} has no head: pass num_classes to add a new one")
            if class_names is not None and len(class_names) == num_classes:
                kwargs.setdefault("class_names", class_names)
        backbone = BiTBackbone(architecture.block_units, architecture.width_factor)
        classifier = cls(backbone, num_classes, **kwargs)
        if keep_head and resolution is not None and "preprocessor" not in kwargs:
            # The head as trained: at its resolution.
            classifier.preprocessor.image_converter.image_size = (resolution,) * 2
        if arrays is not None:
            checkpoint.load_arrays(classifier if keep_head else backbone, arrays, source)
        return classifier

    @classmethod
    def from_hub(cls, handle, num_classes=None, class_names=None, trainable=True,
                 convert=False, **kwargs):
        """A classifier on a TF-Hub module: a URL (cached as TF-Hub caches it) or a folder.

        A feature-vector module gets a new zero-initialised head (`num_classes`
        or `class_names`; or none yet, sized by `fit`). `convert=True` makes
        the backbone native (see `BiTBackbone.from_hub`). A BiT
        classification module outputs logits, not features, so it is always
        converted (with a warning saying so, unless `convert=True` asked for
        it): with `num_classes=None` and no class names it keeps its head (and
        the class names of its labels file), otherwise a new head goes on its
        backbone.
        """
        if not convert:
            module = hub.HubModule(handle, trainable=trainable, name="hub_module")
            if not module.has_bit_head:
                return cls(hub.HubBackbone(module=module, trainable=trainable), num_classes,
                           class_names, **kwargs)
            warnings.warn(
                f"{str(handle)!r} is a BiT classification module: it outputs logits, not "
                f"features, so it was converted to a native BiTBackbone "
                f"(from_hub(..., convert=True)) to "
                + ("keep its head" if num_classes is None and class_names is None else
                   "put a new head on its features"), stacklevel=2)
        backbone, arrays, labels = BiTBackbone.from_module_checkpoint(handle, trainable)
        has_head = checkpoint.HEAD_PREFIX + "conv2d/bias" in arrays
        if num_classes is None and class_names is None and has_head:
            head_classes = arrays[checkpoint.HEAD_PREFIX + "conv2d/bias"].shape[0]
            names = labels if labels and len(labels) == head_classes else None
            classifier = cls(backbone, head_classes, names, **kwargs)
            checkpoint.load_arrays(classifier, arrays, handle)
            return classifier
        return cls(backbone, num_classes, class_names, **kwargs)


def _local(name):
    """A Hugging Face handle as its local folder (cached or downloaded); other names as given."""
    return torch_layouts.hf_folder(name) if torch_layouts.is_hf_handle(name) else name


def _is_weights_path(name):
    """Whether `name` is a weights file or folder rather than a preset name."""
    return isinstance(name, (str, pathlib.PurePath)) and pathlib.Path(name).expanduser().exists()


def _read_path_preset(path, weights):
    """The arrays of a weights file or folder given as the preset, with `weights` checked."""
    if weights not in (None, "default", "auto"):
        raise ValueError(
            f"from_preset({str(path)!r}, weights={weights!r}): the preset is a weights file "
            f"or folder already; pass weights='default' to load it or None for an "
            f"architecture of the same shape, randomly initialised")
    return torch_layouts.read_weights(path)


def _described(arrays, source):
    """(Architecture, head classes or None) read from a file's arrays; no architecture raises."""
    architecture, head_classes = checkpoint.describe_arrays(arrays)
    if architecture is None:
        raise checkpoint.CheckpointMismatchError(
            f"{source!r}: no BiT architecture can be read from its tensors (the root "
            f"convolution is missing or not 4-D)")
    return architecture, head_classes


@contextlib.contextmanager
def _preset_errors(folder):
    """keras-hub's errors on a damaged preset folder, as one that names the folder."""
    try:
        yield
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise ValueError(
            f"keras-hub preset folder {str(folder)!r} cannot be loaded ({type(error).__name__}: "
            f"{error}); write it again with save_to_preset"
        ) from error


def model_card(classifier):
    """A short model card (Markdown) for a classifier saved as a preset."""
    backbone = classifier.backbone
    names = classifier.names()
    shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
    rule = getattr(classifier, "hyperrule", None)
    size = classifier.image_size
    lines = [
        f"# {classifier.name}",
        "",
        "A BiT image classifier (ResNet-v2 with GroupNorm and Weight Standardization) "
        "saved by bitkeras as a keras-hub preset.",
        "",
        f"- Architecture: block units {tuple(backbone.block_units)}, width factor "
        f"{backbone.width_factor}, {classifier.count_params():,} parameters.",
        f"- Classes: {classifier.num_classes} ({shown}).",
        "- Input: RGB images of any size, float in [0, 1] or uint8; the model rescales "
        "them to [-1, 1] itself. Output: logits.",
        f"- Preprocessing (predict, evaluate): resize to "
        f"{f'{size}x{size}' if size else 'no fixed size'}, ignoring the aspect ratio.",
        f"- Fine-tuning rule: {rule.get_config() if rule else 'none yet (not fine-tuned)'}.",
        "",
        "Load with `bitkeras.BiTClassifier.from_preset(PATH)` or "
        "`keras_hub.models.ImageClassifier.from_preset(PATH)` (import bitkeras first).",
        "",
    ]
    return "\n".join(lines)
