"""Presets: a table from a name to an architecture and where its weights live.

Pure data. Architecture names ("R50x1", ...) have no weights; the released
models ("BiT-S-R50x1", "BiT-M-R50x1", "BiT-M-R50x1-ILSVRC2012", the distilled
R50x1 students) name their file in the public bucket. A file's head size is
always read from the file itself.
"""

import dataclasses
import difflib
import importlib.resources
import json
import pathlib

from bitkeras.data import glyphs
from bitkeras.models.architecture import ARCHITECTURES, Architecture

BUCKET_URL = "https://storage.googleapis.com/bit_models/"
"""Where the released `.npz` files live; a preset's file is relative to it."""

SAVED_MODELS = pathlib.Path(str(importlib.resources.files("bitkeras.saved_models")))
"""The models bitkeras itself trained and ships: the repository's saved_models/, installed
as the package data `bitkeras.saved_models` (in a clone, an editable install or a wheel)."""


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named architecture and where its weights are.

    `weights_file`: relative to `BUCKET_URL` (released BiT models, downloaded
    on request), or, with `shipped=True`, to `SAVED_MODELS` (no network).
    `resolution`: the image side the weights were trained (or fine-tuned) at.
    `sha256`: the file's published SHA-256, checked after a download (None
    where none is published: the bucket publishes none).
    `class_names`: the names of the checkpoint head's classes, where known.
    `hf_handle`, `kaggle_handle`: where else the same weights are published:
    timm's copy on the Hugging Face Hub (`from_preset` takes the handle) and
    the TF2 SavedModel on Kaggle Models, formerly tfhub.dev (`from_hub` takes it).
    """

    name: str
    architecture: Architecture
    weights_file: str | None
    description: str
    resolution: int | None = None
    sha256: str | None = None
    shipped: bool = False
    class_names: tuple | None = None
    hf_handle: str | None = None
    kaggle_handle: str | None = None

    @property
    def url(self):
        if self.weights_file is None or self.shipped:
            return None
        return BUCKET_URL + self.weights_file

    @property
    def sources(self):
        """Where the weights can come from: {"file": URL or shipped path, "hf": ..., "kaggle": ...}.

        Only the sources this preset has are keys; an architecture has none.
        """
        found = {"file": str(self.shipped_path) if self.shipped else self.url,
                 "hf": self.hf_handle, "kaggle": self.kaggle_handle}
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
        family.format(name), architecture, file.format(name), f"{name} {what}", resolution,
        hf_handle=HF_TIMM.format(size, timm_tag) if timm_tag else None,
        kaggle_handle=KAGGLE_BIT.format(kaggle.format(name.lower())))


PRESETS = {
    **{name: Preset(name, architecture, None, f"{name}, random initialisation")
       for name, architecture in ARCHITECTURES.items()},
    **{family.format(name): _released(family, name, architecture)
       for family in RELEASED_FAMILIES for name, architecture in ARCHITECTURES.items()},
    **{f"BiT-M-R50x1-distilled-{side}": Preset(
        f"BiT-M-R50x1-distilled-{side}", ARCHITECTURES["R50x1"], f"distill/R50x1_{side}.npz",
        f"R50x1 student distilled from BiT-M-R152x2 on ILSVRC-2012 at {side}px", side,
        hf_handle=HF_TIMM.format("50x1", "goog_distilled_in1k") if side == 224 else None)
       for side in (224, 160)},
    "BiT-Glyphs-R14x0.5": Preset(
        "BiT-Glyphs-R14x0.5", Architecture((1, 1, 1, 1), 0.5), "BiT-Glyphs-R14x0.5/model.npz",
        "a small BiT pre-trained by bitkeras on its generated glyphs (ships with bitkeras; "
        "see saved_models/BiT-Glyphs-R14x0.5/MODEL_CARD.md)",
        resolution=32, shipped=True, class_names=glyphs.CLASS_NAMES),
}
"""Every preset by name: architectures, released models, and the models bitkeras ships."""


def list_presets(sources=False):
    """Names of every preset, architectures first.

    `sources=True`: a dict instead, each name -> where its weights can come from
    (`Preset.sources`: the released or shipped file, timm's Hugging Face handle,
    the Kaggle Models handle).

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
        f"unknown BiT preset {name!r}.{hint} Known presets: bitkeras.list_presets() "
        f"(architectures {', '.join(ARCHITECTURES)}; released models like 'BiT-M-R50x1')."
    )
