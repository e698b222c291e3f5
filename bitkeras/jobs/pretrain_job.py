"""`bitkeras pretrain`: generate the glyphs, pre-train, measure, write a model card.

Writes into `--out`: `model.npz` (the released BiT format, head included),
`upstream.json` (everything below, machine-readable) and `MODEL_CARD.md`.
Checkpoints go to `--out/checkpoints/` while training and are removed at the
end; rerunning the same command after an interruption resumes from them.
"""

import json
import os
import pathlib
import platform
import shutil
import time

import keras

from bitkeras import files
from bitkeras.data import glyphs
from bitkeras.finetuning import distribute, run_state
from bitkeras.finetuning.classifier import BiTClassifier
from bitkeras.finetuning.pretraining import pretrain
from bitkeras.finetuning.upstream import UpstreamRecipe
from bitkeras.io.checkpoint import save_npz
from bitkeras.io.pretrained import BiTBackbone

EVAL_SEED_OFFSET = 1_000_003
"""The upstream accuracy is measured on glyphs drawn with `seed + EVAL_SEED_OFFSET`."""


def run(args):
    # A multi-worker or TPU strategy must exist before TensorFlow runs anything.
    strategy = distribute.strategy_for(args.strategy)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "checkpoints" / run_state.CHECKPOINT_FILE).exists():
        print(f"Starting a new run (no checkpoint in {out / 'checkpoints'} to resume from)")
    started = time.perf_counter()
    print(f"Rendering {args.examples} glyph images ({glyphs.NUM_CLASSES} classes, "
          f"{args.image_size}px, seed {args.seed})", flush=True)
    images, labels = glyphs.make_glyphs(args.examples, args.seed, args.image_size)
    render_seconds = time.perf_counter() - started

    keras.utils.set_random_seed(args.seed)
    backbone = BiTBackbone(tuple(args.block_units), _width(args.width_factor))
    classifier = BiTClassifier(backbone, class_names=glyphs.CLASS_NAMES)
    recipe = UpstreamRecipe.for_dataset(args.examples, args.image_size, args.batch_size,
                                        args.epochs, flip=args.flip)
    print(recipe.describe(args.examples), flush=True)
    started = time.perf_counter()
    history = pretrain(classifier, images, labels, recipe, seed=args.seed,
                       checkpoint_dir=out / "checkpoints",
                       checkpoint_every=args.checkpoint_every, verbose=args.verbose,
                       strategy=strategy, precision=args.precision,
                       jit_compile=True if args.jit_compile else "auto")
    train_seconds = time.perf_counter() - started

    evaluation = upstream_accuracy(classifier, args.eval_examples,
                                   args.seed + EVAL_SEED_OFFSET, args.image_size)
    print(f"Upstream accuracy on {args.eval_examples} fresh glyphs: "
          f"{evaluation['accuracy']:.4f} (top-5 {evaluation['top5_accuracy']:.4f})")
    if not distribute.is_chief():
        return None  # the chief writes the files
    save_npz(classifier, out / "model.npz")
    record = {
        "name": out.name,
        "command": args.command_line,
        "architecture": {"block_units": list(backbone.block_units),
                         "width_factor": backbone.width_factor},
        "parameters": classifier.count_params(),
        "data": {"name": "glyphs", "examples": args.examples, "image_size": args.image_size,
                 "seed": args.seed, "num_classes": glyphs.NUM_CLASSES},
        "recipe": recipe.get_config(),
        "evaluation": evaluation,
        "final_training_loss": (history.history.get("loss") or [None])[-1],
        "resumed_from_step": history.start_step,
        "steps_completed": history.steps_completed,
        "strategy": f"{type(strategy).__name__}, {strategy.num_replicas_in_sync} replica(s)",
        "precision": args.precision,
        "render_seconds": round(render_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no accelerator"
                   if not _has_accelerator() else f"{platform.machine()} with an accelerator",
        "versions": {"tensorflow": _version("tensorflow"), "keras": keras.__version__,
                     "pillow": _version("PIL"), "matplotlib": _version("matplotlib")},
    }
    files.write_text(out / "upstream.json", json.dumps(record, indent=2) + "\n")
    files.write_text(out / "MODEL_CARD.md", model_card(record))
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    print(f"Wrote {out / 'model.npz'}, {out / 'upstream.json'}, {out / 'MODEL_CARD.md'}")
    return record


def upstream_accuracy(classifier, num_examples, seed, image_size):
    """Top-1 / top-5 accuracy on `num_examples` glyphs rendered with `seed`."""
    images, labels = glyphs.make_glyphs(num_examples, seed, image_size)
    classifier.compile(metrics=[
        keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5_accuracy")])
    results = classifier.evaluate(images, labels, image_size=image_size, batch_size=256,
                                  verbose=0, return_dict=True)
    return {"examples": num_examples, "seed": seed, "accuracy": results["accuracy"],
            "top5_accuracy": results["top5_accuracy"]}


def model_card(record):
    data, recipe, evaluation = record["data"], record["recipe"], record["evaluation"]
    architecture = record["architecture"]
    return f"""# {record["name"]}

A small BiT ResNet-v2 (GroupNorm + Weight Standardization) pre-trained by bitkeras
on its generated glyphs dataset, so that transfer learning can be shown offline.
Not a released BiT model: the released ones are far larger and learned from
ImageNet-21k. Load it, offline, with `BiTClassifier.from_preset("{record["name"]}")`
(its {data['num_classes']}-class glyph head and class names) or
`BiTBackbone.from_preset("{record["name"]}")`.

## Model
- Architecture: block units {tuple(architecture['block_units'])}, width factor
  {architecture['width_factor']}: {record['parameters']:,} parameters, features of
  {int(2048 * architecture['width_factor'])} channels.
- File: `model.npz`, in the released BiT `.npz` format (head included).

## Data
- `bitkeras.data.glyphs.make_glyphs({data['examples']}, seed={data['seed']},
  image_size={data['image_size']})`: {data['num_classes']} classes (printed digits,
  Latin and Greek letters and symbols from the DejaVu and STIX fonts matplotlib
  ships; shapes; textures), each example with its own font, size, stroke weight,
  affine transform, elastic warp (half of them), colours of either polarity,
  gradient, blur or resolution loss, and noise. See `bitkeras/glyphs.py`.

## Training
- Command: `{record['command']}`
- BiT's upstream recipe: SGD momentum 0.9, learning rate
  {recipe['base_learning_rate']:g} (0.03 x {recipe['batch_size']}/256) after
  {recipe['warmup_steps']} warm-up steps, divided by 10 at steps
  {', '.join(map(str, recipe['decay_boundaries']))} (30/60/80 of 90 epochs scaled to the
  run), {recipe['steps']} steps at batch {recipe['batch_size']}, weight decay
  {recipe['weight_decay']:g}, random {recipe['crop_size']}px crops from
  {recipe['resize_size']}px, flips {'on' if recipe['flip'] else 'off'}, softmax
  cross-entropy.
- Time: {record['train_seconds'] / 60:.1f} minutes of training (plus
  {record['render_seconds']:.0f} s rendering the data), wall clock, on {record['machine']}.
- Versions: {', '.join(f'{k} {v}' for k, v in record['versions'].items())}.

## Upstream accuracy
- {evaluation['accuracy']:.4f} top-1, {evaluation['top5_accuracy']:.4f} top-5 on
  {evaluation['examples']} fresh glyphs (seed {evaluation['seed']}, never trained on),
  at {data['image_size']}px.
"""


def _width(value):
    return int(value) if float(value).is_integer() else value


def _has_accelerator():
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _version(module_name):
    import importlib

    return getattr(importlib.import_module(module_name), "__version__", "unknown")
