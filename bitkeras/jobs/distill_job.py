"""`bitkeras distill`: a BiT teacher distilled into a small student, the paper's way.

Offline by default: the teacher is the shipped BiT-Glyphs-R14x0.5 fine-tuned on
the bundled digits (`bitkeras finetune`'s CPU budget), the student a
ResNet20-CIFAR from scratch. On the same budget of steps the job trains the
student on the labels alone and distils it in each of the paper's four modes,
then distils it by function matching for longer and shorter schedules
(patience). It measures every model's test accuracy, agreement with the
teacher, parameters, multiply-adds and images/s on this machine, and writes
`distilled.keras` (the function-matching student of the budget; without that
mode in --modes, the last mode's), `report.json` and `report.png` into the output
folder.

`--recipe NAME` runs one of the paper's recipes (`bitkeras.PAPER_RECIPES`) on
its data, teacher and student instead, where they can be had.
"""

import json
import os
import pathlib
import platform
import re
import time

import keras
import numpy as np

from bitkeras import files
from bitkeras.finetuning import distill_recipes, distillation, sources
from bitkeras.finetuning.classifier import BiTClassifier, load_model
from bitkeras.finetuning.distill_recipes import MODES, DistillationRule
from bitkeras.finetuning.hyperrule import TrainingRule
from bitkeras.finetuning.resnet_classifier import ResNetClassifier
from bitkeras.io import hub, presets, weights
from bitkeras.io.pretrained import ResNetBackbone
from bitkeras.models import resnet_family
from bitkeras.jobs import transfer

DEFAULT_TEACHER_MODEL = "BiT-Glyphs-R14x0.5"
DEFAULT_STUDENT = "ResNet20-CIFAR"
DEFAULT_PATIENCE = (100, 300, 900)
"""Function-matching schedules (steps) of the patience curve; the budget's own is added."""

OUTPUTS = ("distilled.keras", "report.json", "report.png")
LABELS = "labels alone"


def run(args):
    """The distill job; its outputs appear in --out together, when it has finished."""
    out = pathlib.Path(args.out) if args.out else pathlib.Path("saved_models") / (
        "distilled-" + transfer.slug(args.recipe or args.data or "digits"))
    return transfer.staged_run(out, OUTPUTS, lambda staging: _run(args, staging, out))


def _run(args, out, published):
    """The job, writing into `out` (a staging folder that becomes `published`)."""
    started = time.perf_counter()
    if args.recipe:
        checkpoints = published.parent / f"{published.name}-checkpoints"
        return _recipe_run(args, out, started, checkpoints)
    data = transfer.load_data(args.data, args.test_fraction, args.seed)
    budget = args.data is None
    overrides = {name: value for name, value in (
        ("steps", args.steps), ("batch_size", args.batch_size),
        ("base_learning_rate", args.learning_rate), ("crop_size", args.crop_size),
        ("resize_size", args.resize_size), ("flip", data.flip)) if value is not None}
    rule = transfer.fit_rule(data.train.num_examples, data.train.image_size, budget, overrides,
                             resolution=32 if budget else None)
    patience = sorted({*(DEFAULT_PATIENCE if args.patience is None else args.patience),
                       rule.steps})
    print(f"Data: {data.description}: {data.train.num_examples} training and "
          f"{data.test.num_examples} test images, {data.train.num_classes} classes")
    print(rule.describe(data.train.num_examples))
    out.mkdir(parents=True, exist_ok=True)
    test_set = transfer.TestSet(data.test, rule.crop_size)
    teacher, teacher_description = _teacher(args, data, rule)
    teacher_logits = _logits(teacher, test_set)
    report = {"data": data.description, "teacher": teacher_description,
              "student": args.student, "seed": args.seed, "budget_steps": rule.steps,
              "rule": rule.get_config(), "temperature": args.temperature,
              "models": {"teacher": _measure(teacher, test_set, teacher_logits, rule.crop_size)}}
    print(f"Teacher: {teacher_description}: test accuracy "
          f"{report['models']['teacher']['test_accuracy']:.4f}", flush=True)
    curves = {}
    curve = transfer.AccuracyCurve(test_set, rule.steps, args.evaluations)
    _, report["models"][LABELS] = _labels_alone(args, data, rule, rule.steps, test_set,
                                                teacher_logits, [curve])
    curves[LABELS] = curve.points
    runs = {}
    for mode in args.modes:
        curve = transfer.AccuracyCurve(test_set, rule.steps, args.evaluations)
        student, runs[mode] = _distilled(args, data, teacher, rule, mode, rule.steps, test_set,
                                         teacher_logits, [curve])
        curves[mode] = curve.points
        if mode == "function_matching":
            student.save(out / "distilled.keras")
    report["models"].update(runs)
    report["curves"] = {name: {"steps": [s for s, _ in points], "test_accuracy": [
        a for _, a in points]} for name, points in curves.items()}
    report["patience"] = {"steps": patience, "function_matching": [], LABELS: []}
    for steps in patience:
        if steps == rule.steps:
            distilled = runs.get("function_matching") or _distilled(
                args, data, teacher, rule, "function_matching", steps, test_set,
                teacher_logits)[1]
            labelled = report["models"][LABELS]
        else:
            distilled = _distilled(args, data, teacher, rule, "function_matching", steps,
                                   test_set, teacher_logits)[1]
            labelled = _labels_alone(args, data, rule, steps, test_set, teacher_logits)[1]
        report["patience"]["function_matching"].append(distilled["test_accuracy"])
        report["patience"][LABELS].append(labelled["test_accuracy"])
    if "function_matching" not in args.modes:
        student.save(out / "distilled.keras")
    report["findings"] = findings(report)
    report["machine"] = machine()
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["command"] = args.command_line
    files.write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    draw_report(report, out / "report.png")
    print_summary(report)
    return report


def _teacher(args, data, rule):
    """(the teacher, its description): loaded from --teacher, or the shipped model fine-tuned
    on the data with the job's rule."""
    if args.teacher is not None:
        teacher = load_teacher(args.teacher)
        if int(teacher.output_shape[-1]) != data.train.num_classes:
            raise ValueError(f"--teacher {args.teacher!r} predicts {teacher.output_shape[-1]} "
                             f"classes; {data.description} has {data.train.num_classes}")
        return teacher, f"{args.teacher}"
    print(f"Teacher: {DEFAULT_TEACHER_MODEL} fine-tuned on the training images, "
          f"{rule.steps} steps", flush=True)
    keras.utils.set_random_seed(args.seed)
    teacher = BiTClassifier.from_preset(DEFAULT_TEACHER_MODEL,
                                        num_classes=data.train.num_classes,
                                        class_names=data.train.class_names)
    teacher.fit(data.train, hyperrule=rule, seed=args.seed, verbose=0)
    return teacher, f"{DEFAULT_TEACHER_MODEL} fine-tuned with the HyperRule ({rule.steps} steps)"


def load_teacher(spec):
    """A classifier from a `.keras` file, a TF-Hub module (URL or folder) or a preset with a head."""
    path = pathlib.Path(str(spec)).expanduser()
    if path.suffix == ".keras":
        return load_model(path)
    if hub.is_remote(spec) or path.is_dir():
        return BiTClassifier.from_hub(str(spec))
    if spec in presets.PRESETS:
        # The file first: a missing download is said before the network is built.
        weights.resolve_weights(presets.PRESETS[spec], "default")
    return BiTClassifier.from_preset(str(spec))


def _new_student(args, data):
    """A fresh student of --student (`student_backbone`), seeded."""
    keras.utils.set_random_seed(args.seed)
    return ResNetClassifier(student_backbone(args.student), class_names=data.train.class_names)


def student_backbone(name):
    """The backbone of a preset (with its weights, if any), or a BiT layout "RDEPTHxWIDTH" of
    any depth 12n + 2 or 50, 101, 152 and any width (GroupNorm takes fewer groups where a
    layer has fewer than 32 channels), at random."""
    match = re.fullmatch(r"R(\d+)x(\d+(?:\.\d+)?)", str(name))
    if match is None or name in presets.PRESETS:
        return ResNetBackbone.from_preset(name)
    depth, width = int(match[1]), float(match[2])
    if depth in resnet_family.IMAGENET_UNITS and depth >= 50:
        units = resnet_family.IMAGENET_UNITS[depth]
    elif depth > 2 and (depth - 2) % 12 == 0:
        units = ((depth - 2) // 12,) * 4
    else:
        raise ValueError(f"--student {name!r}: a BiT layout has depth 12n + 2 (14, 26, 38, "
                         f"...) or 50, 101, 152")
    return ResNetBackbone.from_resnet_config(resnet_family.bit_config(units, width))


def _labels_alone(args, data, rule, steps, test_set, teacher_logits, callbacks=()):
    """(the student, its measures) after `steps` steps of `fit` on the labels."""
    print(f"Student on the labels alone, {steps} steps", flush=True)
    student = _new_student(args, data)
    student.fit(data.train, hyperrule=rule.with_steps(steps), seed=args.seed, verbose=0,
                callbacks=list(callbacks))
    measures = _measure(student, test_set, teacher_logits, rule.crop_size)
    print(f"  test accuracy {measures['test_accuracy']:.4f}", flush=True)
    return student, measures


def distillation_rule(rule, mode, steps, temperature):
    """The job's `DistillationRule`: the budget's sizes, batch and learning rate, `steps` long,
    in `mode` (MixUp alpha 1 for function matching), cosine decay."""
    fields = {name: getattr(rule, name) for name in TrainingRule.__dataclass_fields__}
    fields.update(decay_boundaries=(), mixup_alpha=distill_recipes.FUNCTION_MATCHING_MIXUP if (
        mode == "function_matching") else 0.0)
    scaled = DistillationRule(**fields, mode=mode, temperature=temperature).with_steps(steps)
    return scaled


def _distilled(args, data, teacher, rule, mode, steps, test_set, teacher_logits, callbacks=()):
    """(the student, its measures) after distilling in `mode` for `steps` steps."""
    print(f"Student distilled by {mode.replace('_', ' ')}, {steps} steps", flush=True)
    student = _new_student(args, data)
    history = distillation.distill(
        teacher, student, data.train, hyperrule=distillation_rule(
            rule, mode, steps, args.temperature), seed=args.seed, verbose=0,
        callbacks=list(callbacks))
    measures = _measure(student, test_set, teacher_logits, rule.crop_size)
    measures["final_train_loss"] = float(history.history["loss"][-1])
    print(f"  test accuracy {measures['test_accuracy']:.4f}, agreement with the teacher "
          f"{measures['test_agreement']:.4f}", flush=True)
    return student, measures


def _logits(model, test_set):
    return np.concatenate([keras.ops.convert_to_numpy(model(images, training=False))
                           for images, _ in test_set.batches])


def _measure(model, test_set, teacher_logits, side):
    """Test accuracy, agreement with the teacher, size, multiply-adds and images/s."""
    logits = _logits(model, test_set)
    labels = np.concatenate([labels for _, labels in test_set.batches])
    predictions = logits.argmax(-1)
    config = getattr(model.backbone, "resnet_config", None)
    return {
        "test_accuracy": float(np.mean(predictions == labels)),
        "test_agreement": float(np.mean(predictions == teacher_logits.argmax(-1))),
        "parameters": int(model.count_params()),
        "multiply_adds": None if config is None else int(config.multiply_adds(
            side, int(logits.shape[-1]))),
        "images_per_second": images_per_second(model, test_set.batches[0][0]),
    }


def images_per_second(model, images, repeats=5):
    """Inference speed on this machine: the best of `repeats` timed calls on one batch,
    traced once before (a compiled function, as `predict` runs)."""
    import tensorflow as tf

    forward = tf.function(lambda batch: model(batch, training=False))
    forward(images)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(forward(images))
        best = min(best, time.perf_counter() - start)
    return round(len(images) / best, 1)


def machine():
    """The CPU this run measured speed on (its model name, family and model numbers)."""
    fields = {}
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model") and key not in fields:
                fields[key] = value.strip()
    except OSError:
        pass
    return {"cpu": fields.get("model name", platform.processor() or platform.machine()),
            "cpu_family": fields.get("cpu family"), "cpu_model": fields.get("model"),
            "cores": os.cpu_count()}


def findings(report):
    """What the run shows, stated from its own figures (the paper's claims checked, not assumed)."""
    models = report["models"]
    modes = [mode for mode in MODES if mode in models]
    order = sorted(modes, key=lambda mode: models[mode]["test_accuracy"])
    patience = report["patience"]["function_matching"]
    best_mode = order[-1] if order else None
    teacher, labels = models["teacher"], models[LABELS]
    result = {
        "modes_worst_to_best": order,
        "paper_order": list(MODES),
        "agrees_with_paper_order": order == list(MODES),
        "best_mode": best_mode,
        "function_matching_minus_labels": (models["function_matching"]["test_accuracy"] -
                                           labels["test_accuracy"])
        if "function_matching" in models else None,
        "teacher_minus_labels": teacher["test_accuracy"] - labels["test_accuracy"],
        "patience_keeps_improving": all(b >= a for a, b in zip(patience, patience[1:])),
        "longest_function_matching_minus_labels": (
            patience[-1] - report["patience"][LABELS][-1]),
        "student_speedup": (models[LABELS]["images_per_second"] /
                            teacher["images_per_second"]),
        "student_parameter_ratio": teacher["parameters"] / labels["parameters"],
    }
    return result


def print_summary(report):
    models = report["models"]
    print(f"{'model':<20}{'test acc':>9}{'agree':>8}{'params':>11}{'MMACs':>9}{'img/s':>9}")
    for name, row in models.items():
        macs = "" if row["multiply_adds"] is None else f"{row['multiply_adds'] / 1e6:.1f}"
        print(f"{name:<20}{row['test_accuracy']:>9.4f}{row['test_agreement']:>8.3f}"
              f"{row['parameters']:>11,}{macs:>9}{row['images_per_second']:>9.0f}")
    if "patience" not in report:
        return
    patience = report["patience"]
    for name in ("function_matching", LABELS):
        print(f"Patience, {name.replace('_', ' ')}: " + ", ".join(
            f"{steps} steps {accuracy:.4f}" for steps, accuracy in zip(patience["steps"],
                                                                        patience[name])))
    found = report["findings"]
    print(f"Modes, worst to best: {', '.join(found['modes_worst_to_best'])} "
          f"({'the paper' if found['agrees_with_paper_order'] else 'not the paper'}'s order)")


def draw_report(report, path):
    """report.png: test accuracy along training, patience, and the models' table."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    if "curves" not in report:  # a recipe's run: its table alone
        figure, table_axis = pyplot.subplots(figsize=(7, 2.5))
        _draw_table(table_axis, report)
        figure.suptitle(f"{report['recipe']}: {report['teacher']} into {report['student']}",
                        fontsize=10)
        files.save_figure(figure, path, dpi=100)
        pyplot.close(figure)
        return
    figure, (curves_axis, patience_axis, table_axis) = pyplot.subplots(
        1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1, 1, 1.25]})
    teacher = report["models"]["teacher"]["test_accuracy"]
    for name, curve in report["curves"].items():
        curves_axis.plot(curve["steps"], curve["test_accuracy"], marker="o", markersize=3,
                         label=name.replace("_", " "),
                         linestyle="--" if name == LABELS else "-")
    for axis in (curves_axis, patience_axis):
        axis.axhline(teacher, color="black", linestyle=":", linewidth=1, label="teacher")
        axis.set_ylabel("test accuracy")
        axis.grid(alpha=0.3)
    curves_axis.set_title(f"Student test accuracy at {report['budget_steps']} steps",
                          fontsize=10)
    curves_axis.set_xlabel("optimizer step")
    curves_axis.legend(fontsize=8)
    patience = report["patience"]
    patience_axis.plot(patience["steps"], patience["function_matching"], marker="o",
                       color="tab:purple", label="function matching")
    patience_axis.plot(patience["steps"], patience[LABELS], marker="o", linestyle="--",
                       color="tab:blue", label=LABELS)
    patience_axis.set_xscale("log")
    patience_axis.set_xlabel("schedule length (steps)")
    patience_axis.set_title("Patience: test accuracy by schedule length", fontsize=10)
    patience_axis.legend(fontsize=8)
    _draw_table(table_axis, report)
    figure.suptitle(f"{report['teacher']} distilled into {report['student']} on "
                    f"{report['data']}", fontsize=10)
    figure.tight_layout()
    files.save_figure(figure, path, dpi=100)
    pyplot.close(figure)


def _draw_table(table_axis, report):
    rows = [[name.replace("_", " "), f"{row['test_accuracy']:.3f}", f"{row['test_agreement']:.3f}",
             f"{row['parameters'] / 1e6:.2f}M",
             "" if row["multiply_adds"] is None else f"{row['multiply_adds'] / 1e6:.1f}M",
             f"{row['images_per_second']:.0f}"] for name, row in report["models"].items()]
    table_axis.axis("off")
    table = table_axis.table(cellText=rows, colLabels=["model", "test acc", "agrees", "params",
                                                       "MACs", "img/s"], loc="center",
                             colWidths=[0.3, 0.14, 0.14, 0.14, 0.14, 0.14])
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.4)
    cpu = report["machine"]
    table_axis.set_title(f"images/s measured on {cpu['cpu']} ({cpu['cores']} cores)",
                         fontsize=9)


def _recipe_run(args, out, started, checkpoints):
    """One of the paper's recipes: its teacher into its student on its data, by function
    matching, on the recipe's schedule, checkpointed in `checkpoints` (beside --out: the
    same command resumes there)."""
    recipe = distill_recipes.paper_recipe(args.recipe)
    teacher = load_teacher(args.teacher or recipe.teacher)  # a missing download says so first
    train = sources.open_source(recipe.data)
    name, _ = sources.parse_tfds_name(recipe.data.removeprefix("tfds:"))
    test = sources.open_source(f"tfds:{name}", default_split="test|validation",
                               class_names=train.class_names)
    rule = recipe.rule(train.num_examples)
    student = ResNetClassifier(student_backbone(recipe.student), class_names=train.class_names)
    distillation.distill(teacher, student, train, hyperrule=rule, seed=args.seed,
                         checkpoint_dir=checkpoints)
    student.save(out / "distilled.keras")
    test_set = transfer.TestSet(test, rule.crop_size)
    teacher_logits = _logits(teacher, test_set)
    report = {"recipe": args.recipe, "data": recipe.data, "teacher": recipe.teacher,
              "student": recipe.student, "rule": rule.get_config(),
              "models": {"teacher": _measure(teacher, test_set, teacher_logits, rule.crop_size),
                         "function_matching": _measure(student, test_set, teacher_logits,
                                                       rule.crop_size)},
              "machine": machine(), "seconds": round(time.perf_counter() - started, 1),
              "command": args.command_line}
    files.write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    draw_report(report, out / "report.png")
    print_summary(report)
    return report
