"""`bitkeras pretrain`: generate the glyphs (or read `--data`), pre-train, measure, write a card.

`--model` continues from a released or shipped model (its backbone; a new head
for the data's classes), on the glyphs or on the user's images
(`bitkeras.jobs.upstream_data`: a folder, TFDS, or a multi-label CSV).

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
from bitkeras.jobs import upstream_data

EVAL_SEED_OFFSET = 1_000_003
"""The upstream accuracy is measured on glyphs drawn with `seed + EVAL_SEED_OFFSET`."""


def run(args):
    # A multi-worker or TPU strategy must exist before TensorFlow runs anything.
    strategy = distribute.strategy_for(args.strategy)
    _check_arguments(args)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "checkpoints" / run_state.CHECKPOINT_FILE).exists():
        print(f"Starting a new run (no checkpoint in {out / 'checkpoints'} to resume from)")
    started = time.perf_counter()
    images, labels, class_names, data = _load_data(args)
    render_seconds = time.perf_counter() - started

    keras.utils.set_random_seed(args.seed)
    if args.model is None:
        block_units = (1, 1, 1, 1) if args.block_units is None else tuple(args.block_units)
        width_factor = 0.5 if args.width_factor is None else args.width_factor
        backbone = BiTBackbone(block_units, _width(width_factor))
    else:
        print(f"Continuing from {args.model}, with a new {len(class_names)}-class head",
              flush=True)
        backbone = BiTBackbone.from_preset(args.model, weights="auto")
    classifier = BiTClassifier(backbone, class_names=class_names)
    recipe = UpstreamRecipe.for_dataset(len(images), args.image_size, args.batch_size,
                                        args.epochs, flip=args.flip)
    print(recipe.describe(len(images)), flush=True)
    started = time.perf_counter()
    history = pretrain(classifier, images, labels, recipe, seed=args.seed,
                       checkpoint_dir=out / "checkpoints",
                       checkpoint_every=args.checkpoint_every, verbose=args.verbose,
                       strategy=strategy, precision=args.precision,
                       jit_compile=True if args.jit_compile else "auto")
    train_seconds = time.perf_counter() - started

    evaluation = None
    if args.data is None:
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
        "started_from": args.model,
        "data": data,
        "class_names": list(class_names),
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


def _load_data(args):
    """(images, labels, class names, a description for upstream.json) of the run's data."""
    if args.data is None:
        examples = glyphs.DEFAULT_EXAMPLES if args.examples is None else args.examples
        print(f"Rendering {examples} glyph images ({glyphs.NUM_CLASSES} classes, "
              f"{args.image_size}px, seed {args.seed})", flush=True)
        images, labels = glyphs.make_glyphs(examples, args.seed, args.image_size)
        data = {"name": "glyphs", "examples": examples, "image_size": args.image_size,
                "seed": args.seed, "num_classes": glyphs.NUM_CLASSES}
        return images, labels, glyphs.CLASS_NAMES, data
    print(f"Reading {args.data} at {args.image_size}px", flush=True)
    images, labels, class_names, description = upstream_data.load(
        args.data, args.image_size, args.multi_label)
    data = {"name": args.data, "description": description, "examples": len(images),
            "image_size": args.image_size, "num_classes": len(class_names),
            "multi_label": args.multi_label}
    return images, labels, class_names, data


def _check_arguments(args):
    """Refuses options that the run would not use, naming them."""
    if args.data is not None and args.examples is not None:
        raise ValueError("--examples sets how many glyphs are generated; with --data the data "
                         "decides: drop one of them")
    if args.model is not None and (args.block_units, args.width_factor) != (None, None):
        raise ValueError("--block-units and --width-factor shape a new model; --model brings "
                         "its own architecture: drop one of them")
    if args.multi_label and args.data is None:
        raise ValueError("--multi-label needs --data (a CSV of path,labels rows); the glyphs "
                         "have one label each")


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
    if record["data"]["name"] != "glyphs" or record.get("started_from"):
        return _continued_model_card(record)
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


def _continued_model_card(record):
    """The card of a run on the user's data or from a given model: what was done, as data."""
    data, recipe, architecture = record["data"], record["recipe"], record["architecture"]
    start = record.get("started_from") or "a random initialisation"
    evaluation = record["evaluation"]
    measured = (f"{evaluation['accuracy']:.4f} top-1 on {evaluation['examples']} fresh glyphs"
                if evaluation else "not measured here: fine-tune it (`bitkeras finetune "
                "--model model.npz --data ...`) and compare with the model it started from")
    return f"""# {record["name"]}

A BiT ResNet-v2 (GroupNorm + Weight Standardization), block units
{tuple(architecture['block_units'])}, width factor {architecture['width_factor']}
({record['parameters']:,} parameters), pre-trained by bitkeras from {start} on
{data.get('description', data['name'])}: {data['examples']} images at
{data['image_size']}px, {data['num_classes']} classes
({'multi-label, sigmoid cross-entropy' if data.get('multi_label') else 'softmax cross-entropy'}).
`model.npz` is in the released BiT format, head included: load it with
`BiTBackbone.from_preset("model.npz")` or `BiTClassifier.from_preset("model.npz")`.

- Command: `{record['command']}`
- BiT's upstream recipe: {recipe['steps']} steps at batch {recipe['batch_size']}, learning
  rate {recipe['base_learning_rate']:g} after {recipe['warmup_steps']} warm-up steps,
  weight decay {recipe['weight_decay']:g}, {recipe['crop_size']}px crops from
  {recipe['resize_size']}px.
- Time: {record['train_seconds'] / 60:.1f} minutes of training on {record['machine']}.
- Upstream accuracy: {measured}.
"""


def _width(value):
    return int(value) if float(value).is_integer() else value


def _has_accelerator():
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _version(module_name):
    import importlib

    return getattr(importlib.import_module(module_name), "__version__", "unknown")
