"""Weights on the ResNet family's networks: presets, released checkpoints, hubs, export.

`BiTBackbone` and `ResNetBackbone` load any preset of the one table
(`bitkeras.io.presets`) with one meaning of `weights=` (`PresetBackbone`);
`BiTBackbone` adds TF-Hub modules and the TF-Hub style export.
`PretrainedClassifier` gives a classifier class the same (`bitkeras.BiTClassifier`
and `bitkeras.ResNetClassifier` are two), plus keras-hub presets with a model card.
"""

import contextlib
import dataclasses
import pathlib
import warnings

import keras

from bitkeras import files
from bitkeras.io import checkpoint, export, hub, presets, resnet_weights, torch_layouts
from bitkeras.io.weights import resolve_weights
from bitkeras.models.backbone import ResNetV2Backbone
from bitkeras.models.resnet_backbone import CONFIG_FIELDS, ResNetFamilyBackbone

KERAS_ARGUMENTS = {"name", "trainable", "dtype"}
"""What a backbone's `from_preset` takes besides `ResNetConfig` fields."""


@dataclasses.dataclass(frozen=True)
class PresetWeights:
    """What a preset's weights say besides the backbone's arrays.

    `head`: the file's head as [kernel (features, classes), bias], None where
    the file has none or no weights were loaded. `head_classes`: the size of
    the file's head, where a file was read (also without loading it).
    `class_names`, `resolution`: of that head, where known.
    """

    head: list | None = None
    head_classes: int | None = None
    class_names: tuple | None = None
    resolution: int | None = None


class PresetBackbone:
    """`from_preset` for a backbone class of the ResNet family: one table, one `weights=`."""

    @classmethod
    def from_preset(cls, name, weights="default", load_weights=True, **kwargs):
        """A backbone of a named network, released model, weights file or preset folder.

        `name`: a preset of `bitkeras.list_presets()`: BiT's architectures
        ("R50x1", ...) and released models ("BiT-M-R50x1", "BiT-S-R101x3",
        "BiT-M-R50x1-ILSVRC2012", "BiT-M-R50x1-distilled-224", ...), the model
        bitkeras ships ("BiT-Glyphs-R14x0.5"), the ResNet family ("ResNet50",
        "ResNet50V2", "ResNet18", "ResNet20-CIFAR", "Plain56-CIFAR", ...); or
        BiT weights as the PyTorch libraries publish them
        (`bitkeras.io.torch_layouts`): a Hugging Face handle
        ("hf://timm/resnetv2_50x1_bit.goog_in21k", "hf://google/bit-50"), a
        local timm or transformers folder or `.safetensors` file, or a
        released-format `.npz` file (the architecture read from the tensors);
        or a keras-hub preset folder written by `save_to_preset`.

        `weights`, the same for every preset:
        - None: random initialisation;
        - "auto": the preset's own weights: its released BiT file (from the
          cache, else downloaded and verified) or shipped file, or for a
          keras.applications twin Keras's released ImageNet file (from Keras's
          cache, else downloaded; `"imagenet"`, Keras's name, is the same);
        - a path: weights in the preset's format: BiT's `.npz` or a timm or
          transformers `.safetensors` file for BiT's networks, a file
          `keras.applications.<twin>(weights=PATH)` takes for a twin;
        - "default": "auto" for every preset with weights of its own, as
          keras-hub's `from_preset` loads them (downloading into the cache the
          first time; offline, an error says what to download and where), None
          for a bare architecture ("R50x1", "ResNet20-CIFAR", ...).
        keras-hub's `load_weights=False` is `weights=None`. A file's head, if
        any, is not part of a backbone.

        `kwargs`: `ResNetConfig` fields that change the network
        (`shortcut="B"`, `normalization="group"`, `width_factor=2`; with no
        weights, which would not fit it) and Keras's `name`, `trainable`, `dtype`.
        """
        name = _local(name)
        weights = _weights_to_load(weights, load_weights)
        if presets.is_keras_hub_preset(name):
            with _preset_errors(name):
                return super().from_preset(str(name), load_weights=weights is not None,
                                           **kwargs)
        return cls.preset_parts(name, weights, **kwargs)[0]

    @classmethod
    def preset_parts(cls, name, weights="default", **kwargs):
        """(backbone, `PresetWeights`) of a named preset or a weights file (see `from_preset`)."""
        changes = {field: kwargs.pop(field) for field in CONFIG_FIELDS if field in kwargs}
        unknown = sorted(set(kwargs) - KERAS_ARGUMENTS)
        if unknown:
            raise TypeError(
                f"unknown argument(s) {unknown} for preset {str(name)!r}: from_preset takes "
                f"the ResNetConfig fields {sorted(CONFIG_FIELDS)} and Keras's "
                f"{sorted(KERAS_ARGUMENTS)}")
        if _is_weights_path(name):
            arrays, source, config = _read_path_preset(name, weights)
            architecture, head_classes = _described(arrays, source)
            loads = weights is not None
            backbone = cls.from_resnet_config(
                _configured(architecture.config, changes, loads, str(name)), **kwargs)
            known = head_classes is not None
            resolution = torch_layouts.image_size(config) if config else None
            if loads:
                checkpoint.load_arrays(backbone, arrays, source)
                backbone.weights_resolution = resolution
            return backbone, PresetWeights(
                checkpoint.head_arrays(arrays) if loads else None, head_classes,
                torch_layouts.class_names(config, head_classes) if known else None,
                resolution if known else None)
        preset = presets.get_preset(name)
        if weights == "default":
            weights = "auto" if preset.has_weights else None
        config = _configured(preset.config, changes, weights is not None, preset.name)
        backbone = cls.from_resnet_config(config, **kwargs)
        head = _load_weights(backbone, preset, weights)
        if weights is not None:
            backbone.weights_resolution = preset.resolution
        return backbone, PresetWeights(head, None if head is None else len(head[1]),
                                       preset.class_names, preset.resolution)


def _configured(config, changes, loads, source):
    """`config` with `changes`; changes that make another network refuse weights."""
    changed = config.replace(**changes)
    differing = sorted(field for field in changes
                       if getattr(changed, field) != getattr(config, field))
    if loads and differing:
        raise ValueError(
            f"the weights of {source!r} are for its own network; the configuration changes "
            f"{differing} make another network: drop them, or pass weights=None")
    return changed


def _load_weights(backbone, preset, weights):
    """Loads what `weights` names for `preset` into `backbone`; returns the file's head or None."""
    if weights is None:
        return None
    if preset.keras_application or not preset.config.bit_layout:
        # keras.applications' files (a network without a twin has no weight files at all)
        return resnet_weights.load_application_weights(
            backbone, preset, "imagenet" if weights == "auto" else weights)
    if weights == "imagenet":
        raise ValueError(
            f"weights='imagenet' names Keras's released files of keras.applications' "
            f"models; {preset.name!r} is BiT's: pass weights='auto' for its own weights")
    arrays, source, _ = torch_layouts.read_weights(resolve_weights(preset, weights))
    checkpoint.load_arrays(backbone, arrays, source)
    return checkpoint.head_arrays(arrays)


@keras.saving.register_keras_serializable(package="bitkeras")
class ResNetBackbone(PresetBackbone, ResNetFamilyBackbone):
    """A network of the ResNet family with presets: ResNet18..152, V2, CIFAR, plain, BiT.

    `ResNetFamilyBackbone` (the network; see there for the input contract
    and `pyramid_outputs`) with `from_preset` (`PresetBackbone`). Any
    configuration can also be built directly from `ResNetConfig` fields:
    `ResNetBackbone(**bitkeras.models.resnet_family.cifar(20).get_config())`.

    >>> backbone = ResNetBackbone.from_preset("ResNet20-CIFAR")
    >>> backbone.feature_channels, backbone.resnet_config.parameter_count(10, statistics=False)
    (64, 269722)
    >>> ResNetBackbone.from_preset("ResNet20-CIFAR", shortcut="B").resnet_config.shortcut
    'B'
    """


@keras.saving.register_keras_serializable(package="bitkeras")
class BiTBackbone(PresetBackbone, ResNetV2Backbone):
    """The BiT ResNet-v2 feature extractor (GroupNorm + Weight Standardization).

    `ResNetV2Backbone` (see there for the input contract, `pyramid_outputs`
    and `dtype`) with BiT's weights: `from_preset` (`PresetBackbone`: BiT's
    presets, released checkpoints and the PyTorch libraries' files, keras-hub
    preset folders), `from_hub` for TF-Hub modules, and `export` to a TF-Hub
    style feature-vector SavedModel. The family's other networks are
    `ResNetBackbone`'s.

    >>> backbone = BiTBackbone.from_preset("R50x1")  # an architecture: random weights
    >>> backbone.feature_channels
    2048
    """

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
        if not isinstance(self.backbone, ResNetFamilyBackbone):
            raise ValueError(
                f"save_to_preset needs a native backbone (BiTBackbone, ResNetBackbone); this "
                f"one is a {type(self.backbone).__name__}: convert it "
                f"(from_hub(..., convert=True))"
            )
        super().save_to_preset(str(preset_dir), max_shard_size=max_shard_size)
        files.write_text(pathlib.Path(preset_dir) / "MODEL_CARD.md", model_card(self))

    @classmethod
    def from_preset(cls, name, weights="default", num_classes=None, load_weights=True,
                    **kwargs):
        """A classifier of a named network, released model, weights file or preset folder.

        `name` and `weights` as in `PresetBackbone.from_preset` (the backbone
        class is `backbone_cls`). With `num_classes=None` the weights' own head
        is kept (its size read from the file: 21843 for BiT-M, 1000 for BiT-S,
        the ILSVRC-2012 models and keras.applications' files), with the
        preset's class names where known and its resolution as the
        preprocessor's image size; weights without a head, or none, leave the
        classifier without a head until `fit` sizes it from the data. With a
        number, a new zero-initialised head of that size. `kwargs`:
        `ResNetConfig` fields for the backbone, the rest for the classifier
        (`class_names`, `preprocessor`, `name`, ...).

        >>> from bitkeras import BiTClassifier
        >>> glyphs = BiTClassifier.from_preset("BiT-Glyphs-R14x0.5")  # shipped, offline
        >>> glyphs.num_classes, glyphs.class_names[:3], glyphs.image_size
        (132, ('char_0', 'char_1', 'char_2'), 32)
        >>> BiTClassifier.from_preset("BiT-M-R50x1")  # doctest: +SKIP
        """
        name = _local(name)
        weights = _weights_to_load(weights, load_weights)
        if presets.is_keras_hub_preset(name):
            if num_classes is not None:  # a new head: keras-hub then skips the saved one
                kwargs.update(num_classes=num_classes, class_names=None)
            with _preset_errors(name):
                return super().from_preset(str(name), load_weights=weights is not None,
                                           **kwargs)
        changes = {field: kwargs.pop(field) for field in CONFIG_FIELDS if field in kwargs}
        backbone, found = cls.backbone_cls.preset_parts(name, weights, **changes)
        keep_head = num_classes is None
        if keep_head:
            num_classes = found.head_classes
            names = found.class_names
            if names is not None and num_classes is not None and len(names) == num_classes:
                kwargs.setdefault("class_names", names)
        classifier = cls(backbone, num_classes, **kwargs)
        if keep_head and num_classes is not None:
            if found.head is not None:
                classifier.head.set_weights(found.head)
            if found.resolution is not None and "preprocessor" not in kwargs:
                # The head as trained: at its resolution.
                classifier.preprocessor.image_converter.image_size = (found.resolution,) * 2
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


def _weights_to_load(weights, load_weights):
    """`weights`, or None where keras-hub's `load_weights=False` asks for none."""
    if load_weights:
        return weights
    if weights not in ("default", None):
        raise ValueError(f"load_weights=False with weights={weights!r}: give one")
    return None


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
    architecture = backbone.architecture
    network = ("A BiT image classifier (ResNet-v2 with GroupNorm and Weight Standardization)"
               if architecture else "An image classifier of the ResNet family")
    layout = (f"block units {architecture.block_units}, width factor "
              f"{architecture.width_factor}" if architecture
              else f"ResNetConfig {backbone.resnet_config.get_config()}")
    names = classifier.names()
    shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
    rule = getattr(classifier, "hyperrule", None)
    size = classifier.image_size
    lines = [
        f"# {classifier.name}",
        "",
        f"{network} saved by bitkeras as a keras-hub preset.",
        "",
        f"- Architecture: {layout}, {classifier.count_params():,} parameters.",
        f"- Classes: {classifier.num_classes} ({shown}).",
        f"- Input: RGB images of any size, float in [0, 1] or uint8; the model scales "
        f"them itself (input_scaling {backbone.resnet_config.input_scaling!r}). "
        f"Output: logits.",
        f"- Preprocessing (predict, evaluate): resize to "
        f"{f'{size}x{size}' if size else 'no fixed size'}, ignoring the aspect ratio.",
        f"- Fine-tuning rule: {rule.get_config() if rule else 'none yet (not fine-tuned)'}.",
        "",
        f"Load with `bitkeras.{type(classifier).__name__}.from_preset(PATH)` or "
        "`keras_hub.models.ImageClassifier.from_preset(PATH)` (import bitkeras first).",
        "",
    ]
    return "\n".join(lines)
