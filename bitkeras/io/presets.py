"""Presets: one table from a name to a network of the ResNet family and where its weights live.

Pure data. BiT's architecture names ("R50x1", ...) have no weights; the
released models ("BiT-S-R50x1", "BiT-M-R50x1", "BiT-M-R50x1-ILSVRC2012", the
distilled R50x1 students and their R152x2 teachers) name their file in the public bucket; the family's
networks ("ResNet50", "ResNet50V2", "ResNet20-CIFAR", "Plain56-CIFAR", ...)
name their keras.applications twin where they have one. A file's head size is
always read from the file itself.
"""

import dataclasses
import difflib
import importlib.resources
import json
import pathlib

from bitkeras.data import glyphs
from bitkeras.models import resnet_family
from bitkeras.models.architecture import ARCHITECTURES, Architecture, architecture_of
from bitkeras.models.resnet_family import ResNetConfig

BUCKET_URL = "https://storage.googleapis.com/bit_models/"
"""Where the released `.npz` files live; a preset's file is relative to it."""

SAVED_MODELS = pathlib.Path(str(importlib.resources.files("bitkeras.saved_models")))
"""The models bitkeras itself trained and ships: the repository's saved_models/, installed
as the package data `bitkeras.saved_models` (in a clone, an editable install or a wheel)."""


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named network of the ResNet family and where its weights are.

    `config`: the network (`ResNetConfig`; BiT's are `Architecture(...).config`).
    `weights_file`: BiT weights, relative to `BUCKET_URL` (released BiT
    models, downloaded on request), or, with `shipped=True`, to
    `SAVED_MODELS` (no network).
    `resolution`: the image side the weights were trained (or fine-tuned) at.
    `sha256`: the file's published SHA-256, checked after a download (None
    where none is published: the bucket publishes none).
    `class_names`: the names of the checkpoint head's classes, where known.
    `hf_handle`, `kaggle_handle`: where else the same weights are published:
    timm's copy on the Hugging Face Hub (`from_preset` takes the handle) and
    the TF2 SavedModel on Kaggle Models, formerly tfhub.dev (`from_hub` takes it).
    `keras_application`: the `keras.applications` model with the same network
    ("ResNet50"), whose weight files load into this preset.
    """

    name: str
    config: ResNetConfig
    weights_file: str | None
    description: str
    resolution: int | None = None
    sha256: str | None = None
    shipped: bool = False
    class_names: tuple | None = None
    hf_handle: str | None = None
    kaggle_handle: str | None = None
    keras_application: str | None = None

    @property
    def architecture(self):
        """BiT's `Architecture` of this network, or None for a network that is not BiT's."""
        return architecture_of(self.config)

    @property
    def has_weights(self):
        """Whether the preset has weights of its own: a BiT file, or Keras's for a twin."""
        return self.weights_file is not None or self.keras_application is not None

    @property
    def url(self):
        if self.weights_file is None or self.shipped:
            return None
        return BUCKET_URL + self.weights_file

    @property
    def sources(self):
        """Where the weights can come from: {"file": URL or shipped path, "hf": ..., "kaggle": ...}.

        Only the sources this preset has are keys; an architecture has none; a
        keras.applications twin has "keras" (Keras's released ImageNet file).
        """
        keras_file = (f"keras.applications.{self.keras_application}(weights='imagenet')"
                      if self.keras_application else None)
        found = {"file": str(self.shipped_path) if self.shipped else self.url,
                 "hf": self.hf_handle, "kaggle": self.kaggle_handle, "keras": keras_file}
        return {kind: where for kind, where in found.items() if where is not None}

    @property
    def shipped_path(self):
        """Where a shipped preset's weights are on this machine (None for the others)."""
        return SAVED_MODELS / self.weights_file if self.shipped else None


HF_TIMM = "hf://timm/resnetv2_{}_bit.{}"
"""timm's copy of a released model on the Hugging Face Hub: architecture ("50x1"), timm's tag."""

KAGGLE_BIT = "kaggle://google/bit/tensorFlow2/{}/1"
"""A TF2 BiT SavedModel on Kaggle Models (tfhub.dev/google/bit/... redirects there)."""

# The released families: name prefix -> (file name pattern, training data, resolution,
# timm's tag, Kaggle's variation). BiT-S/M were pre-trained at 224 px; the ILSVRC-2012
# fine-tunes at 480 px (the released HyperRule's 512 -> 480). timm hosts no BiT-S;
# Kaggle's BiT-M module is the feature extractor (the 21k head is only in the .npz).
RELEASED_FAMILIES = {
    "BiT-S-{}": ("BiT-S-{}.npz", "pre-trained on ILSVRC-2012 (1000-class head)", 224,
                 None, "s-{}-ilsvrc2012-classification"),
    "BiT-M-{}": ("BiT-M-{}.npz", "pre-trained on ImageNet-21k (21843-class head)", 224,
                 "goog_in21k", "m-{}"),
    "BiT-M-{}-ILSVRC2012": ("BiT-M-{}-ILSVRC2012.npz",
                            "BiT-M fine-tuned on ILSVRC-2012 (1000-class head)", 480,
                            "goog_in21k_ft_in1k", "m-{}-ilsvrc2012-classification"),
}


def _released(family, name, architecture):
    file, what, resolution, timm_tag, kaggle = RELEASED_FAMILIES[family]
    size = name.removeprefix("R")  # "R50x1" -> "50x1"
    return Preset(
        family.format(name), architecture.config, file.format(name), f"{name} {what}",
        resolution,
        hf_handle=HF_TIMM.format(size, timm_tag) if timm_tag else None,
        kaggle_handle=KAGGLE_BIT.format(kaggle.format(name.lower())))


APPLICATION_RESOLUTION = 224
"""The resolution keras.applications' ImageNet heads were trained at."""


def _family():
    """The ResNet family's named networks (He et al. 2015 and 2016), and their plain twins."""
    table = []
    for depth in (18, 34):
        table += [(f"ResNet{depth}", resnet_family.imagenet_v1(depth),
                   f"ResNet-{depth} (He et al. 2015), ImageNet", None),
                  (f"Plain{depth}", resnet_family.imagenet_v1(depth, shortcut="none"),
                   f"plain-{depth}: ResNet-{depth}'s stack without shortcuts", None)]
    for depth in (50, 101, 152):
        table += [(f"ResNet{depth}", resnet_family.keras_application_v1(depth),
                   f"ResNet-{depth} (He et al. 2015) as keras.applications.ResNet{depth}",
                   f"ResNet{depth}"),
                  (f"ResNet{depth}V2", resnet_family.keras_application_v2(depth),
                   f"ResNet-{depth} v2 (He et al. 2016) as keras.applications.ResNet{depth}V2",
                   f"ResNet{depth}V2")]
    for depth in resnet_family.CIFAR_DEPTHS:
        table += [(f"ResNet{depth}-CIFAR", resnet_family.cifar(depth),
                   f"ResNet-{depth} for CIFAR-10, option A", None),
                  (f"Plain{depth}-CIFAR", resnet_family.cifar(depth, shortcut="none"),
                   f"plain-{depth} for CIFAR-10: ResNet-{depth}'s stack without shortcuts",
                   None)]
    return {name: Preset(name, config, None, description,
                         resolution=APPLICATION_RESOLUTION if twin else None,
                         keras_application=twin)
            for name, config, description, twin in table}


DISTILLATION_TEACHERS = (
    ("224", "224", "ILSVRC-2012", 224), ("384", "384", "ILSVRC-2012", 384),
    ("flowers-128", "flowers128", "Oxford Flowers-102", 128),
    ("pet-128", "pet128", "Oxford-IIIT Pet", 128), ("food-128", "food128", "Food-101", 128),
    ("sun-128", "sun128", "SUN397", 128))
"""(preset name tail, file tail, data, side) of the released teachers, in the bucket's
distill/ folder beside the students."""

PRESETS = {
    **{name: Preset(name, architecture.config, None, f"BiT {name}, random initialisation")
       for name, architecture in ARCHITECTURES.items()},
    **{family.format(name): _released(family, name, architecture)
       for family in RELEASED_FAMILIES for name, architecture in ARCHITECTURES.items()},
    **{f"BiT-M-R50x1-distilled-{side}": Preset(
        f"BiT-M-R50x1-distilled-{side}", ARCHITECTURES["R50x1"].config,
        f"distill/R50x1_{side}.npz",
        f"R50x1 student distilled from BiT-M-R152x2 on ILSVRC-2012 at {side}px", side,
        hf_handle=HF_TIMM.format("50x1", "goog_distilled_in1k") if side == 224 else None)
       for side in (224, 160)},
    **{f"BiT-M-R152x2-distill-teacher-{tail}": Preset(
        f"BiT-M-R152x2-distill-teacher-{tail}", ARCHITECTURES["R152x2"].config,
        f"distill/R152x2_T_{file}.npz",
        f"BiT-M-R152x2 fine-tuned on {data} at {side}px: a teacher of \"A good teacher is "
        f"patient and consistent\"", side)
       for tail, file, data, side in DISTILLATION_TEACHERS},
    "BiT-Glyphs-R14x0.5": Preset(
        "BiT-Glyphs-R14x0.5", Architecture((1, 1, 1, 1), 0.5).config,
        "BiT-Glyphs-R14x0.5/model.npz",
        "a small BiT pre-trained by bitkeras on its generated glyphs (ships with bitkeras; "
        "see saved_models/BiT-Glyphs-R14x0.5/MODEL_CARD.md)",
        resolution=32, shipped=True, class_names=glyphs.CLASS_NAMES),
    **_family(),
}
"""Every preset by name: BiT's architectures, its released models, the models bitkeras
ships, and the rest of the ResNet family (ResNet18..152, ResNet50V2..152V2,
ResNet20-CIFAR..ResNet1202-CIFAR, their plain twins Plain18, Plain20-CIFAR, ...)."""


def list_presets(sources=False):
    """Names of every preset: BiT's architectures first, then its released and shipped
    models, then the rest of the ResNet family.

    `sources=True`: a dict instead, each name -> where its weights can come from
    (`Preset.sources`: the released or shipped file, timm's Hugging Face handle,
    the Kaggle Models handle, Keras's file of a keras.applications twin).

    Examples:
        >>> list_presets(sources=True)["BiT-M-R50x1"]["hf"]
        'hf://timm/resnetv2_50x1_bit.goog_in21k'
    """
    if sources:
        return {name: preset.sources for name, preset in PRESETS.items()}
    return list(PRESETS)


def is_keras_hub_preset(name):
    """Whether `name` is a keras-hub preset folder (`save_to_preset` output).

    Its config.json names a Keras class; the config.json of a timm or
    transformers folder does not. One that cannot be read counts as keras-hub's,
    whose loader then says what is wrong with it.
    """
    if not isinstance(name, (str, pathlib.PurePath)):
        return False
    config = pathlib.Path(name).expanduser() / "config.json"
    if not config.is_file():
        return False
    try:
        return "class_name" in json.loads(config.read_text())
    except (ValueError, OSError, TypeError):
        return True


def get_preset(name):
    """The preset called `name`; a released file name ("BiT-M-R50x1.npz") works too."""
    if name in PRESETS:
        return PRESETS[name]
    for preset in PRESETS.values():
        if preset.weights_file and name in (preset.weights_file,
                                            preset.weights_file.removesuffix(".npz")):
            return preset
    close = difflib.get_close_matches(str(name), PRESETS, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(
        f"unknown preset {name!r}.{hint} Known presets: bitkeras.list_presets() "
        f"(BiT's architectures {', '.join(ARCHITECTURES)}; released models like "
        f"'BiT-M-R50x1'; the ResNet family's networks like 'ResNet50' or 'ResNet20-CIFAR'); "
        f"or build any configuration: ResNetBackbone(**ResNetConfig(...).get_config())."
    )
