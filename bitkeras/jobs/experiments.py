"""Experiments of the ResNet and BiT papers anyone can rerun offline (`bitkeras experiment`).

- `degradation`: plain-20/56 vs ResNet-20/56 (He et al. 2015, Figure 6) on the
  generated glyphs with the CIFAR recipe scaled to a CPU budget: training
  error curves, test error, and each network's layer responses (Figure 7).
- `normalization`: BiT's normalization ablation: the same small ResNet-v2
  pre-trained upstream on the glyphs with BatchNorm, GroupNorm and
  GroupNorm + WS at a small per-device batch, then each fine-tuned on the
  bundled digits.

Each writes `report.json` and `report.png` (and `responses.png`) to its
folder and returns the report. The defaults run in minutes on 2 CPU cores;
the papers' settings are larger (see docs/guide/resnet-family.md).
"""

import json
import math
import pathlib
import time

import keras

from bitkeras import files
from bitkeras.data import datasets, glyphs
from bitkeras.finetuning import training
from bitkeras.finetuning.resnet_classifier import ResNetClassifier
from bitkeras.finetuning.resnet_recipes import CIFAR_RECIPE
from bitkeras.finetuning.upstream import UpstreamRecipe
from bitkeras.io.pretrained import ResNetBackbone
from bitkeras.models import resnet_family
from bitkeras.models.responses import layer_responses

CURVE_POINTS = 20
"""Points on each training-error curve (each the mean error over its window of steps)."""

NORMALIZATIONS = {
    "BN": dict(normalization="batch"),
    "GN": dict(normalization="group"),
    "GN+WS": dict(normalization="group", weight_standardization=True),
}
"""The variants of BiT's normalization ablation, as ResNetConfig changes."""

ABLATION_NETWORK = dict(preactivation=True, shortcut="B", input_scaling="tf")
"""The ablation's network: ResNet-20 for CIFAR made BiT-like (pre-activation, projections)."""


def degradation(out, steps=400, batch_size=64, examples=2560, test_examples=512,
                depths=(20, 56), width_factor=0.5, classes="forms", seed=0, verbose=1):
    """Trains plain and residual CIFAR networks of two depths; writes and returns the report.

    `steps`, `batch_size`: the CIFAR recipe scaled to them (decays at 1/2 and
    3/4 of the steps). `examples`: generated glyph images (32x32) to train
    on, `test_examples` more to test on; `classes`: "forms" (the 24 shapes
    and textures, which these small networks learn within minutes) or "all"
    (132). `depths`: (shallow, deep), each 6n + 2. `width_factor`: scales the
    16/32/64 channels.
    """
    out = _folder(out)
    shallow, deep = depths
    if not shallow < deep:
        raise ValueError(f"depths must be (shallow, deep) with shallow < deep; got {depths!r}")
    recipe = CIFAR_RECIPE.scaled(steps, batch_size)
    train, test, num_classes = _glyphs(examples, test_examples, classes, seed)
    models, responses = {}, {}
    start = time.perf_counter()
    for family in ("Plain", "ResNet"):
        for depth in depths:
            name = f"{family}{depth}-CIFAR"
            config = resnet_family.cifar(depth, shortcut="none" if family == "Plain" else "A")
            backbone = ResNetBackbone(**config.replace(width_factor=width_factor).get_config(),
                                      name=_slug(name))
            backbone.adapt(train[0])
            model = _classifier(backbone, num_classes)
            result = _train(model, recipe.for_depth(depth), train, test, seed, verbose, name)
            result.update(depth=depth, plain=family == "Plain",
                          parameters=backbone.resnet_config.parameter_count(
                              num_classes, statistics=False))
            models[name] = result
            responses[name] = layer_responses(backbone, test[0][:256])
    final = {name: model["final_train_error"] for name, model in models.items()}
    report = {
        "experiment": "degradation",
        "data": f"bitkeras glyphs ({classes}), {examples} training and {test_examples} test "
                f"images, 32x32, {num_classes} classes",
        "recipe": _fields(recipe),
        "width_factor": width_factor,
        "models": models,
        "deeper_plain_trains_worse": final[f"Plain{deep}-CIFAR"] > final[f"Plain{shallow}-CIFAR"],
        "deeper_resnet_trains_worse":
            final[f"ResNet{deep}-CIFAR"] > final[f"ResNet{shallow}-CIFAR"],
        "shortcut_gain_at_depth": {
            str(depth): final[f"Plain{depth}-CIFAR"] - final[f"ResNet{depth}-CIFAR"]
            for depth in depths},
        "layer_responses": responses,
        "seconds": round(time.perf_counter() - start, 1),
    }
    _write_report(out, report)
    _plot_curves(report, out / "report.png")
    plot_layer_responses(responses, out / "responses.png")
    return report


def normalization_ablation(out, upstream_steps=300, batch_size=32, device_batch_size=4,
                           examples=2560, transfer_steps=300, transfer_batch_size=64,
                           transfer_learning_rate=0.01, width_factor=2, classes="forms", seed=0,
                           verbose=1):
    """BN vs GN vs GN+WS upstream at a small per-device batch, then transfer; returns the report.

    Upstream: `upstream_steps` of `batch_size` on `examples` glyph images
    (`classes` as in `degradation`), each step's batch cut into micro-batches
    of `device_batch_size` as data-parallel devices would hold it: BatchNorm
    normalizes over those few images, the gradient is the whole batch's
    (`compile(batch_split=...)`). The schedule is the CIFAR recipe scaled to
    the steps and batch, run by bitkeras's training loop with its crop and
    flip. The upstream test error uses 512 more glyphs. Downstream: the
    digits' train split, fine-tuned (all layers, a new head) with the
    HyperRule's schedule shape for `transfer_steps` of `transfer_batch_size`
    at `transfer_learning_rate` (the rule's own 0.003 at batch 512 would take
    thousands of steps at this batch) and 32 pixels, scored on its test split.
    """
    out = _folder(out)
    if batch_size % device_batch_size:
        raise ValueError(f"batch_size {batch_size} must be a multiple of device_batch_size "
                         f"{device_batch_size}")
    recipe = CIFAR_RECIPE.scaled(upstream_steps, batch_size)
    upstream_rule = UpstreamRecipe(
        resize_size=36, crop_size=32, steps=recipe.steps, warmup_steps=0,
        decay_boundaries=recipe.decay_steps, base_learning_rate=recipe.learning_rate,
        batch_size=batch_size, mixup_alpha=0.0, weight_decay=recipe.weight_decay)
    train, test, _ = _glyphs(examples, 512, classes, seed)
    digits_train, digits_test = datasets.digits("train"), datasets.digits("test")
    variants = {}
    start = time.perf_counter()
    for name, changes in NORMALIZATIONS.items():
        config = resnet_family.cifar(20).replace(width_factor=width_factor, **ABLATION_NETWORK,
                                                 **changes)
        backbone = ResNetBackbone(**config.get_config(), name=f"resnet20_{_slug(name)}")
        upstream = ResNetClassifier(backbone)
        upstream.compile(batch_split=batch_size // device_batch_size)
        history = upstream.fit(*train, hyperrule=upstream_rule, seed=seed, verbose=0)
        upstream_scores = upstream.evaluate(*test, return_dict=True, verbose=0)
        downstream = ResNetClassifier(backbone)
        downstream.fit(*digits_train, batch_size=transfer_batch_size, seed=seed, verbose=0,
                       hyperrule=dict(steps=transfer_steps, crop_size=32, resize_size=36,
                                      base_learning_rate=transfer_learning_rate,
                                      mixup_alpha=0.0))
        scores = downstream.evaluate(*digits_test, return_dict=True, verbose=0)
        variants[name] = {
            "upstream": {"train_error_by_epoch": [1.0 - a for a in history.history["accuracy"]],
                         "test_error": 1.0 - upstream_scores["accuracy"]},
            "transfer_accuracy": scores["accuracy"]}
        if verbose:
            print(f"{name}: upstream test error {variants[name]['upstream']['test_error']:.3f}, "
                  f"digits accuracy {scores['accuracy']:.3f}")
    report = {
        "experiment": "normalization",
        "upstream_data": f"bitkeras glyphs ({classes}), {examples} training and 512 test "
                         f"images, {len(set(train[1].tolist()))} classes",
        "downstream_data": f"digits: {len(digits_train[1])} train, {len(digits_test[1])} test",
        "network": {**ABLATION_NETWORK, "depth": 20, "width_factor": width_factor},
        "upstream_rule": upstream_rule.get_config(),
        "per_device_batch": device_batch_size,
        "transfer": {"steps": transfer_steps, "batch_size": transfer_batch_size,
                     "learning_rate": transfer_learning_rate, "crop_size": 32},
        "variants": variants,
        "seconds": round(time.perf_counter() - start, 1),
    }
    _write_report(out, report)
    _plot_ablation(report, out / "report.png")
    return report


def _glyphs(examples, test_examples, classes, seed):
    """(train, test, number of classes): generated glyphs, all classes or the forms."""
    if classes not in ("forms", "all"):
        raise ValueError(f"classes must be 'forms' or 'all'; got {classes!r}")
    subset = glyphs.FORM_CLASSES if classes == "forms" else None
    images, labels = glyphs.make_glyphs(examples + test_examples, seed=seed, classes=subset)
    train = images[:examples], labels[:examples]
    test = images[examples:], labels[examples:]
    return train, test, glyphs.NUM_CLASSES if subset is None else len(subset)


def _classifier(backbone, num_classes):
    """backbone + a dense head as a plain Keras model (logits)."""
    images = keras.Input((None, None, 3), name="images")
    logits = keras.layers.Dense(num_classes, name="head")(backbone(images))
    return keras.Model(images, logits, name=f"{backbone.name}_classifier")


def _train(model, recipe, train, test, seed, verbose, name):
    """Trains `model` with `recipe`; returns its curve, final training and test errors."""
    recipe.compile(model)
    window = max(1, recipe.steps // CURVE_POINTS)
    # The one training loop (its NaN stop; resumable as every rule is). Each Keras epoch is
    # one window of the curve: its running accuracy, reset per epoch.
    schedule = training.KerasSchedule(recipe, window, math.ceil(recipe.steps / window), window)
    history, _ = training.train(
        model, recipe, lambda start_step: recipe.dataset(*train, seed=seed).skip(start_step),
        schedule, {"recipe": _fields(recipe), "seed": seed}, callbacks=recipe.callbacks(),
        verbose=0)
    errors = [1.0 - accuracy for accuracy in history.history["accuracy"]]
    test_images = test[0].astype("float32") / 255.0
    _, test_accuracy = model.evaluate(test_images, test[1], batch_size=256, verbose=0)
    result = {"curve": {"steps": [min(recipe.steps, window * (epoch + 1))
                                  for epoch in history.epoch],
                        "train_error": errors},
              "final_train_error": errors[-1], "test_error": 1.0 - float(test_accuracy)}
    if verbose:
        print(f"{name}: training error {result['final_train_error']:.3f}, test error "
              f"{result['test_error']:.3f}")
    return result


def _fields(recipe):
    return {key: value for key, value in vars(recipe).items() if value not in (None, ())}


def _folder(out):
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_report(out, report):
    files.write_text(out / "report.json", json.dumps(report, indent=2) + "\n")


def _slug(text):
    return "".join(c if c.isalnum() else "_" for c in text).lower()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _plot_curves(report, path):
    """Figure 6: training error of plain (left) and residual (right) networks."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, plain in zip(axes, (True, False)):
        for name, model in report["models"].items():
            if model["plain"] == plain:
                axis.plot(model["curve"]["steps"], model["curve"]["train_error"],
                          label=f"{name} (test {model['test_error']:.2f})")
        axis.set(title="plain" if plain else "ResNet", xlabel="step", ylabel="training error")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    _save(pyplot, figure, path)


def plot_layer_responses(responses_by_model, path):
    """Writes Figure 7 to `path`: {model name: `layer_responses`}, in layer order and sorted."""
    pyplot = _pyplot()
    figure, (ordered, ranked) = pyplot.subplots(2, 1, figsize=(7, 6))
    for name, responses in responses_by_model.items():
        values = list(responses.values())
        positions = range(1, len(values) + 1)
        ordered.plot(positions, values, label=name)
        ranked.plot(positions, sorted(values, reverse=True), label=name)
    ordered.set(xlabel="layer index (original order)", ylabel="std of response")
    ranked.set(xlabel="layer index (sorted by magnitude)", ylabel="std of response")
    ordered.legend(fontsize="small")
    _save(pyplot, figure, path)


def _plot_ablation(report, path):
    """Upstream test error and downstream accuracy of each normalization."""
    pyplot = _pyplot()
    names = list(report["variants"])
    figure, (upstream, downstream) = pyplot.subplots(1, 2, figsize=(9, 3.8))
    upstream.bar(names, [report["variants"][n]["upstream"]["test_error"] for n in names])
    upstream.set(title=f"upstream test error (per-device batch {report['per_device_batch']})",
                 ylim=(0, 1))
    downstream.bar(names, [report["variants"][n]["transfer_accuracy"] for n in names],
                   color="tab:green")
    downstream.set(title="digits accuracy after transfer", ylim=(0, 1))
    _save(pyplot, figure, path)


def _save(pyplot, figure, path):
    figure.tight_layout()
    files.save_figure(figure, path, dpi=100)
    pyplot.close(figure)


def run(args):
    """`bitkeras experiment NAME --out DIR ...` (see cli.py); options left out keep the defaults."""
    given = {name: value for name, value in (
        ("steps", args.steps), ("batch_size", args.batch_size), ("examples", args.examples),
        ("width_factor", args.width_factor)) if value is not None}
    common = dict(classes=args.classes, seed=args.seed)
    if args.experiment == "degradation":
        return degradation(args.out, depths=tuple(args.depths), **given, **common)
    if "steps" in given:
        given["upstream_steps"] = given.pop("steps")
    return normalization_ablation(args.out, device_batch_size=args.device_batch_size,
                                  transfer_steps=args.transfer_steps, **given, **common)
