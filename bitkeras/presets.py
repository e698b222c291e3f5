"""Presets: a table from a name to an architecture and where its weights live.

Pure data. Architecture names ("R50x1", ...) have no weights; the released
models ("BiT-S-R50x1", "BiT-M-R50x1", "BiT-M-R50x1-ILSVRC2012", the distilled
R50x1 students) name their file in the public bucket. A file's head size is
always read from the file itself.
"""

import dataclasses
import difflib
import pathlib

from bitkeras import glyphs
from bitkeras.architecture import ARCHITECTURES, Architecture

BUCKET_URL = "https://storage.googleapis.com/bit_models/"
"""Where the released `.npz` files live; a preset's file is relative to it."""

SAVED_MODELS = pathlib.Path(__file__).resolve().parent.parent / "saved_models"
"""The repository folder of the models bitkeras itself trained and ships."""


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named architecture and where its weights are.

    `weights_file`: relative to `BUCKET_URL` (released BiT models, downloaded
    on request), or, with `shipped=True`, to `SAVED_MODELS` (no network).
    `class_names`: the names of the checkpoint head's classes, where known.
    """

    name: str
    architecture: Architecture
    weights_file: str | None
    description: str
    shipped: bool = False
    class_names: tuple | None = None

    @property
    def url(self):
        if self.weights_file is None or self.shipped:
            return None
        return BUCKET_URL + self.weights_file

    @property
    def shipped_path(self):
        """Where a shipped preset's weights are on this machine (None for the others)."""
        return SAVED_MODELS / self.weights_file if self.shipped else None


def _build_table():
    table = {}

    def add(name, architecture, weights_file, description, **extra):
        if isinstance(architecture, str):
            architecture = ARCHITECTURES[architecture]
        table[name] = Preset(name, architecture, weights_file, description, **extra)

    for architecture in ARCHITECTURES:
        add(architecture, architecture, None, f"{architecture}, random initialisation")
        add(f"BiT-S-{architecture}", architecture, f"BiT-S-{architecture}.npz",
            f"{architecture} pre-trained on ILSVRC-2012 (1000-class head)")
        add(f"BiT-M-{architecture}", architecture, f"BiT-M-{architecture}.npz",
            f"{architecture} pre-trained on ImageNet-21k (21843-class head)")
        add(f"BiT-M-{architecture}-ILSVRC2012", architecture,
            f"BiT-M-{architecture}-ILSVRC2012.npz",
            f"BiT-M-{architecture} fine-tuned on ILSVRC-2012 (1000-class head)")
    for resolution in (224, 160):
        add(f"BiT-M-R50x1-distilled-{resolution}", "R50x1", f"distill/R50x1_{resolution}.npz",
            f"R50x1 student distilled from BiT-M-R152x2 on ILSVRC-2012 at {resolution}px")
    add("BiT-Glyphs-R14x0.5", Architecture((1, 1, 1, 1), 0.5),
        "BiT-Glyphs-R14x0.5/model.npz",
        "a small BiT pre-trained by bitkeras on its generated glyphs (ships with bitkeras; "
        "see saved_models/BiT-Glyphs-R14x0.5/MODEL_CARD.md)",
        shipped=True, class_names=glyphs.CLASS_NAMES)
    return table


PRESETS = _build_table()


def list_presets():
    """Names of every preset, architectures first."""
    return list(PRESETS)


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
