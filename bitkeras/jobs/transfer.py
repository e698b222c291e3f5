"""`bitkeras finetune`: transfer learning, measured against training from scratch.

On the same data, split, rule, steps and seed, a pretrained backbone and the
same architecture freshly initialised are each fine-tuned with the
BiT-HyperRule. The job records their test accuracy along training (the three
benefits of transfer: a higher start, faster improvement, a higher asymptote), a
few-shot table (K examples per class, several draws), and writes into the
output folder `finetuned.keras` (the fine-tuned pretrained model),
`report.json` and `report.png`.

With no `--data`, it fine-tunes on the UCI digits bundled with scikit-learn
(`bitkeras.data.datasets.digits`) under a CPU budget that keeps the whole job
at about three minutes on two cores: see `fit_rule`, and `transfer_criteria` for
what it must show.
"""

import dataclasses
import json
import os
import pathlib
import shutil
import time

import keras
import numpy as np

from bitkeras import files
from bitkeras.checks import check_positive_integer
from bitkeras.data import datasets
from bitkeras.finetuning import distribute, pipeline, sources, training
from bitkeras.finetuning.classifier import BiTClassifier, load_model
from bitkeras.io import checkpoint, hub, presets
from bitkeras.io.pretrained import BiTBackbone
from bitkeras.models.backbone import ResNetV2Backbone
from bitkeras.models.preprocessing import BiTImageConverter

BUDGET_RESOLUTION = (40, 32)
"""(resize, crop) of the CPU budget: the small-image rule's 160 / 128, at a quarter of the side."""

BUDGET_BATCH_SIZE = 64
BUDGET_LEARNING_RATE = 0.01
BUDGET_STEPS = 300
BUDGET_FEW_SHOT_STEPS = 100
SIDES = ("pretrained", "scratch")


@dataclasses.dataclass
class Data:
    train: sources.ImageSource
    test: sources.ImageSource
    description: str
    flip: bool | None = None  # None: the rule's default


OUTPUTS = ("finetuned.keras", "report.json", "report.png")
"""What a run writes to --out, published together at its end."""


def run(args):
    """The finetune job; its outputs appear in --out together, when it has finished."""
    out = pathlib.Path(args.out) if args.out else pathlib.Path("saved_models") / (
        "finetuned-" + slug(args.data or "digits"))
    if any((out / name).exists() for name in OUTPUTS):
        # The job has no checkpoints: a rerun starts over, and says so.
        print(f"Starting over: the results of an earlier run in {out} stay until this run "
              f"ends, then are replaced")
    return staged_run(out, OUTPUTS, lambda staging: _run(args, staging),
                      publish_here=distribute.is_chief())


def staged_run(out, names, produce, publish_here=True):
    """`produce(staging)` writes `names` into a staging folder beside `out`; then they are
    published into `out` together (`publish`) and the report `produce` returned is returned.

    The staging folder is removed in every case; `publish_here=False` (a worker that is not
    the chief) publishes nothing.
    """
    files.check_output_folder(out)
    files.sweep_partials(out.parent)  # what an interrupted run left beside `out`
    staging = out.parent / f".{out.name}{files.PARTIAL_MARK}{os.getpid()}"
    try:
        report = produce(staging)
        if publish_here:
            publish(staging, out, names)
            print(f"Wrote {', '.join(str(out / name) for name in names)} "
                  f"in {report['seconds']:.0f} s")
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging, out, names):
    """Moves `names` from `staging` into `out`, replacing a previous run's files all at once.

    The old files are moved aside first and deleted after the new ones are in,
    so `out` never holds files of two runs (short of a kill between two renames).
    """
    out.mkdir(parents=True, exist_ok=True)
    aside = out / f".previous{files.PARTIAL_MARK}{os.getpid()}"
    aside.mkdir()
    for name in names:
        if (out / name).exists():
            os.replace(out / name, aside / name)
    for name in names:
        os.replace(staging / name, out / name)
    shutil.rmtree(aside, ignore_errors=True)


def _run(args, out):
    started = time.perf_counter()
    for name in ("seeds", "evaluations"):
        check_positive_integer(getattr(args, name), f"--{name}")
    for shots in args.few_shot:
        check_positive_integer(shots, "--few-shot")
    # A multi-worker or TPU strategy must exist before TensorFlow runs anything.
    strategy = distribute.strategy_for(args.strategy)
    fit_options = {"strategy": strategy, "precision": args.precision}
    data = load_data(args.data, args.test_fraction, args.seed)
    smallest = int(np.bincount(data.train.labels, minlength=data.train.num_classes).min())
    if args.few_shot and max(args.few_shot) > smallest:
        raise ValueError(
            f"--few-shot {max(args.few_shot)} asks for more examples per class than the "
            f"smallest class of {data.description} has ({smallest}): use smaller K"
        )
    # saved_models/ of the working folder (in a clone, beside the shipped model), never
    # the installed package; `out` is the run's staging folder beside it.
    out.mkdir(parents=True, exist_ok=True)
    models = ModelPair(args.model, args.seed)
    budget = args.data is None
    overrides = {name: value for name, value in (
        ("steps", args.steps), ("batch_size", args.batch_size),
        ("base_learning_rate", args.learning_rate), ("resize_size", args.resize_size),
        ("crop_size", args.crop_size), ("flip", args.flip if args.flip is not None else data.flip),
    ) if value is not None}
    rule = fit_rule(data.train.num_examples, data.train.image_size, budget, overrides,
                    resolution=models.resolution)
    print(f"Data: {data.description}: {data.train.num_examples} training and "
          f"{data.test.num_examples} test images, {data.train.num_classes} classes")
    print(f"Models: {models.description} vs the same architecture from scratch")
    if budget:
        print(f"CPU budget (bundled digits): {cpu_budget_note()}")
    if not args.verbose:  # fit prints it otherwise
        print(rule.describe(data.train.num_examples))

    report = {"data": data.description, "model": models.description,
              "train_examples": data.train.num_examples, "test_examples": data.test.num_examples,
              "num_classes": data.train.num_classes, "seed": args.seed,
              "rule": rule.get_config(), "cpu_budget": budget}
    test_set = TestSet(data.test, rule.crop_size)
    curves = {}
    for side in SIDES:
        print(f"Fine-tuning the {side} model on all {data.train.num_examples} training images",
              flush=True)
        classifier = models.build(side, data.train.class_names)
        curve = AccuracyCurve(test_set, rule.steps, args.evaluations)
        classifier.fit(data.train, hyperrule=rule, seed=args.seed, callbacks=[curve],
                       verbose=args.verbose, **fit_options)
        curves[side] = curve.points
        report[f"{side}_accuracy"] = curve.points[-1][1]
        print(f"  {side}: test accuracy {report[f'{side}_accuracy']:.4f}")
        if side == "pretrained" and distribute.is_chief():
            classifier.save(out / "finetuned.keras")
    report["curves"] = {"steps": [step for step, _ in curves["pretrained"]],
                        **{side: [value for _, value in curves[side]] for side in SIDES}}
    report["benefits"] = transfer_benefits(report["curves"])
    few_shot_steps = args.few_shot_steps or (BUDGET_FEW_SHOT_STEPS if budget else None)
    report["few_shot"] = few_shot_table(models, data, test_set, args.few_shot, args.seeds,
                                        budget, overrides, few_shot_steps, args.verbose,
                                        fit_options)
    report["criteria"] = transfer_criteria(report)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["command"] = args.command_line
    report["strategy"] = type(strategy).__name__
    report["precision"] = args.precision
    if not distribute.is_chief():
        return report  # the chief writes the files
    files.write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    draw_report(report, out / "report.png")
    print_summary(report)
    return report


def load_data(data, test_fraction=0.25, seed=0):
    """Training and test ImageSources for `data` (None: the bundled digits)."""
    if data is None:
        train = sources.open_source(datasets.digits("train"))
        test = sources.open_source(datasets.digits("test"))
        names = datasets.DIGITS_CLASS_NAMES
        # Mirroring changes what a digit is.
        return Data(train.relabel(names), test.relabel(names),
                    "UCI handwritten digits (scikit-learn), fixed split", flip=False)
    if sources.data_form(data, "--data") == "tfds":
        train = sources.open_source(data, default_split="train")
        test = sources.open_source(data, default_split="test|validation",
                                   class_names=train.class_names)
        return Data(train, test, data)
    everything = sources.open_source(data)
    if not 0 < test_fraction < 1:
        raise ValueError(f"--test-fraction must be between 0 and 1; got {test_fraction}")
    test_mask = datasets.stratified_mask(everything.labels, test_fraction, seed)
    if test_mask.all() or not test_mask.any():
        raise ValueError(f"{everything.description} is too small to hold out a test split")
    return Data(everything.select(np.flatnonzero(~test_mask)),
                everything.select(np.flatnonzero(test_mask)),
                f"{everything.description} ({test_fraction:.0%} held out per class)")


def cpu_budget_note():
    resize, crop = BUDGET_RESOLUTION
    return (f"by default {resize}->{crop}px instead of 160->128, batch {BUDGET_BATCH_SIZE}, "
            f"{BUDGET_STEPS} steps ({BUDGET_FEW_SHOT_STEPS} few-shot) at learning rate "
            f"{BUDGET_LEARNING_RATE}; the same for the pretrained and the scratch model")


def fit_rule(num_examples, image_size, budget=False, overrides=None, steps=None,
             resolution=None):
    """The HyperRule for the data (for a model whose weights were trained at `resolution`),
    on the CPU budget if asked, with the job's `overrides` (a dict of rule fields, as
    `fit(hyperrule=...)` takes them) applied last.

    The budget keeps the rule's shape (warm-up and decays in proportion) but
    trains at a quarter of its resolution, a batch of at most
    `BUDGET_BATCH_SIZE`, `steps` (default `BUDGET_STEPS`) steps and a fixed
    learning rate (the rule's 0.003 x batch / 512 is meant for its 500
    steps x 512 images, not a few hundred small batches).
    """
    changes = {}
    if budget:
        resize, crop = BUDGET_RESOLUTION
        changes = dict(batch_size=min(BUDGET_BATCH_SIZE, num_examples), resize_size=resize,
                       crop_size=crop, base_learning_rate=BUDGET_LEARNING_RATE,
                       steps=steps or BUDGET_STEPS)
    elif steps is not None:
        changes["steps"] = steps
    return training.resolve_rule(num_examples, image_size, {**changes, **(overrides or {})},
                                 resolution=resolution)


class ModelPair:
    """Fresh copies of the pretrained backbone, and of its architecture at random."""

    def __init__(self, model, seed):
        self.seed = seed
        backbone, self.description = _pretrained_backbone(model)
        self.config = backbone.get_config()
        self.weights = backbone.get_weights()
        self.resolution = backbone.weights_resolution  # sizes the rule of both sides

    def build(self, side, class_names):
        keras.utils.set_random_seed(self.seed)
        backbone = BiTBackbone.from_config(self.config)
        if side == "pretrained":
            backbone.set_weights(self.weights)
        return BiTClassifier(backbone, class_names=class_names)


def _pretrained_backbone(model):
    """(BiTBackbone, description) from a preset, a `.npz` / `.keras` file or a TF-Hub module.

    A TF-Hub module (URL or SavedModel folder) is converted to a native
    backbone: the scratch side needs its architecture.
    """
    path = pathlib.Path(str(model)).expanduser()
    if hub.is_remote(model) or path.is_dir():
        backbone = BiTBackbone.from_hub(str(model), convert=True)
        return backbone, f"{model} (TF-Hub module, {checkpoint.describe(backbone.architecture, None)})"
    if path.suffix == ".keras" and path.is_file():
        classifier = load_model(path)
        if not isinstance(getattr(classifier, "backbone", None), ResNetV2Backbone):
            raise ValueError(
                f"--model {model!r} is a Keras model ({type(classifier).__name__}) without a "
                f"BiT backbone: pass a model saved by bitkeras, a BiT checkpoint (.npz), a "
                f"preset or a TF-Hub BiT module"
            )
        return classifier.backbone, f"{path} (a saved bitkeras model)"
    if path.suffix == ".npz" and path.is_file():
        architecture, _ = checkpoint.describe_arrays(checkpoint.read_arrays(path))
        if architecture is None:
            raise ValueError(f"--model {model!r} is not a BiT checkpoint (no 'resnet/' arrays)")
        backbone = BiTBackbone(architecture.block_units, architecture.width_factor)
        checkpoint.load_npz(backbone, path)
        return backbone, f"{path} ({checkpoint.describe(architecture, None)})"
    if path.suffix in (".keras", ".npz"):
        raise FileNotFoundError(f"--model {model!r}: no such file")
    preset = presets.get_preset(str(model))
    if preset.weights_file is None:
        raise ValueError(
            f"--model {model!r} is a bare architecture with no pretrained weights: name a "
            f"pretrained preset (e.g. 'BiT-Glyphs-R14x0.5', 'BiT-M-R50x1') or a checkpoint file"
        )
    return BiTBackbone.from_preset(preset.name, weights="auto"), f"{preset.name} (preset)"


class TestSet:
    """Test images decoded and resized once, for many quick accuracy measurements."""

    def __init__(self, source, crop_size):
        dataset = pipeline.eval_dataset(source, 256, BiTImageConverter(image_size=crop_size))
        self.batches = list(dataset.as_numpy_iterator())
        self.size = sum(len(labels) for _, labels in self.batches)

    def accuracy(self, model):
        # A direct call: each fit compiles anew, and predict_on_batch would trace again.
        correct = sum(int(np.sum(np.argmax(keras.ops.convert_to_numpy(
            model(images, training=False)), -1) == labels)) for images, labels in self.batches)
        return correct / self.size


class AccuracyCurve(keras.callbacks.Callback):
    """Test accuracy at `evaluations` evenly spaced steps of a fit, last step included."""

    def __init__(self, test_set, steps, evaluations):
        super().__init__()
        self.test_set = test_set
        count = max(1, min(evaluations, steps))
        self.at = {round(steps * (k + 1) / count) for k in range(count)}
        self.step = 0
        self.points = []

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step in self.at:
            self.points.append((self.step, self.test_set.accuracy(self.model)))


TRANSFER_BARS = {"mean_few_shot_gain": 0.05, "first_evaluation_gain": 0.20}
"""What a run must show for transfer to count as clear, in accuracy (0.05 = 5 points).

The two effects of pre-training that stay large whatever the order of the
examples or the float summation: the few-shot gain (pretrained minus scratch
test accuracy) averaged over every K of the table, and the gain at the first
evaluation of the full fine-tuning. The default job measured about +14 and
+65 points; the bars sit far below, so the margins are stated with them.
"""

CRITERION_LABELS = {"mean_few_shot_gain": "Mean few-shot gain",
                    "first_evaluation_gain": "First-evaluation gain"}

TARGET_SHARE = 0.9
"""Speed of improvement: steps until a model reaches this share of the best final accuracy."""


def transfer_benefits(curves):
    """The three benefits of transfer, read off the test-accuracy curves.

    start: accuracy at the first evaluation; speed: the first evaluated step
    at which a model reaches `TARGET_SHARE` of the better final accuracy of
    the two (None if it never does); asymptote: final accuracy. Each for both
    models, then the differences (pretrained - scratch) and the speed-up
    (scratch's steps / pretrained's).
    """
    steps = curves["steps"]
    target = TARGET_SHARE * max(curves[side][-1] for side in SIDES)
    benefits = {"target_accuracy": target}
    for side in SIDES:
        values = curves[side]
        reached = next((step for step, value in zip(steps, values) if value >= target), None)
        benefits[side] = {"start": values[0], "steps_to_target": reached,
                          "asymptote": values[-1]}
    pretrained, scratch = benefits["pretrained"], benefits["scratch"]
    benefits["gain"] = {
        "start": pretrained["start"] - scratch["start"],
        "asymptote": pretrained["asymptote"] - scratch["asymptote"],
        "speedup": (scratch["steps_to_target"] / pretrained["steps_to_target"]
                    if scratch["steps_to_target"] and pretrained["steps_to_target"] else None),
    }
    return benefits


def transfer_criteria(report, bars=None):
    """{name: {"value", "bar", "margin", "met"}} for each of `TRANSFER_BARS` (or `bars`).

    "mean_few_shot_gain" is left out when the run had no few-shot table.
    """
    bars = TRANSFER_BARS if bars is None else bars
    values = {"first_evaluation_gain": report["benefits"]["gain"]["start"]}
    if report["few_shot"]:
        values["mean_few_shot_gain"] = float(np.mean(
            [row["gain"] for row in report["few_shot"].values()]))
    return {name: {"value": values[name], "bar": bar, "margin": values[name] - bar,
                   "met": bool(values[name] >= bar)}
            for name, bar in bars.items() if name in values}


def few_shot_table(models, data, test_set, shots, seeds, budget, overrides, steps, verbose,
                   fit_options=None):
    """{K: {side: {"accuracies": [one per seed], "mean", "std"}, "gain", "steps"}} on the test split.

    Each fit has its own rule, for K * classes examples (`steps` if given).
    """
    table = {}
    overrides = {name: value for name, value in overrides.items() if name != "steps"}
    for shots_per_class in shots:
        examples = shots_per_class * data.train.num_classes
        shot_overrides = dict(overrides)
        if "batch_size" in shot_overrides:
            shot_overrides["batch_size"] = min(shot_overrides["batch_size"], examples)
        few_rule = fit_rule(examples, data.train.image_size, budget, shot_overrides, steps=steps,
                            resolution=models.resolution)
        row = {}
        for side in SIDES:
            accuracies = []
            # One classifier per side and K, reset before each draw: a repeated
            # fit setup reuses Keras's traced train step (see BiTClassifier.fit).
            classifier = models.build(side, data.train.class_names)
            initial = classifier.get_weights()
            for seed in range(seeds):
                classifier.set_weights(initial)
                classifier.fit(data.train, hyperrule=few_rule, examples_per_class=shots_per_class,
                               seed=seed, verbose=0, **(fit_options or {}))
                accuracies.append(test_set.accuracy(classifier))
            row[side] = {"accuracies": accuracies, "mean": float(np.mean(accuracies)),
                         "std": float(np.std(accuracies))}
        row["gain"] = row["pretrained"]["mean"] - row["scratch"]["mean"]
        row["steps"] = few_rule.steps
        row["rule"] = few_rule.get_config()
        table[str(shots_per_class)] = row
        if verbose:
            print(f"  {shots_per_class}-shot: pretrained {row['pretrained']['mean']:.4f}, "
                  f"scratch {row['scratch']['mean']:.4f} (mean of {seeds} draws)", flush=True)
    return table


def print_summary(report):
    gain = report["benefits"]["gain"]
    print(f"Test accuracy: pretrained {report['pretrained_accuracy']:.4f}, "
          f"scratch {report['scratch_accuracy']:.4f}")
    print(f"Transfer: start {gain['start']:+.4f}, {_speed_text(report['benefits'])}, "
          f"asymptote {gain['asymptote']:+.4f}")
    for shots, row in report["few_shot"].items():
        print(f"  {shots:>3} per class: pretrained {row['pretrained']['mean']:.4f} "
              f"± {row['pretrained']['std']:.4f}, scratch {row['scratch']['mean']:.4f} "
              f"± {row['scratch']['std']:.4f}")
    for name, criterion in report["criteria"].items():
        print(f"{CRITERION_LABELS[name]}: {100 * criterion['value']:+.1f} points "
              f"(bar {100 * criterion['bar']:+.0f}, margin {100 * criterion['margin']:+.1f}): "
              f"{'met' if criterion['met'] else 'NOT met'}")


def draw_report(report, path):
    """report.png: the learning curves, and the few-shot table as a chart."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (curves_axis, shots_axis) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    curves = report["curves"]
    colours = {"pretrained": "tab:blue", "scratch": "tab:orange"}
    for side in SIDES:
        curves_axis.plot(curves["steps"], curves[side], marker="o", color=colours[side],
                         label=side)
    benefits = report["benefits"]
    curves_axis.axhline(benefits["target_accuracy"], color="grey", linestyle=":", linewidth=1)
    curves_axis.set_title(
        f"Test accuracy while fine-tuning\nstart {benefits['gain']['start']:+.2f}, "
        f"{_speed_text(benefits)}, asymptote {benefits['gain']['asymptote']:+.2f}",
        fontsize=10)
    curves_axis.set_xlabel("optimizer step")
    curves_axis.set_ylabel("test accuracy")
    curves_axis.set_ylim(0, 1)
    curves_axis.grid(alpha=0.3)
    curves_axis.legend()
    shots = list(report["few_shot"])
    if shots:
        positions = np.arange(len(shots))
        for offset, side in zip((-0.2, 0.2), SIDES):
            means = [report["few_shot"][k][side]["mean"] for k in shots]
            stds = [report["few_shot"][k][side]["std"] for k in shots]
            shots_axis.bar(positions + offset, means, 0.4, yerr=stds, capsize=3,
                           color=colours[side], label=side)
        shots_axis.set_xticks(positions, [f"{k}" for k in shots])
        shots_axis.set_xlabel("training examples per class")
        shots_axis.set_ylim(0, 1)
        shots_axis.legend()
        shots_axis.grid(alpha=0.3, axis="y")
    else:
        shots_axis.axis("off")
    title = "Few-shot test accuracy (mean ± std over draws)"
    if "mean_few_shot_gain" in report.get("criteria", {}):
        gain = report["criteria"]["mean_few_shot_gain"]["value"]
        title += f"\nmean gain {100 * gain:+.1f} points"
    shots_axis.set_title(title, fontsize=10)
    figure.suptitle(f"{report['model']} on {report['data']}", fontsize=10)
    figure.tight_layout()
    files.save_figure(figure, path, dpi=100)
    pyplot.close(figure)


def _speed_text(benefits):
    steps = {side: benefits[side]["steps_to_target"] for side in SIDES}
    shown = {side: "never" if value is None else f"{value} steps" for side, value in steps.items()}
    return (f"{benefits['target_accuracy']:.2f} reached in {shown['pretrained']} vs "
            f"{shown['scratch']}")


def slug(text):
    """`text` as a folder name: letters and digits, the rest as hyphens, lower case."""
    return "".join(c if c.isalnum() else "-" for c in str(text)).strip("-").lower() or "data"
