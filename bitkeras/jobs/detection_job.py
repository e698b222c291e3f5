"""`bitkeras detect`: RetinaNet on a pretrained BiT backbone against the same from scratch.

Both detectors (keras-hub's RetinaNet, `bitkeras.detection.BiTDetector`) train
with the same detection rule, data, steps and seed; only the backbone's
starting weights differ. COCO mean average precision (pycocotools) on the
held-out images is measured `--evaluations` times along the way. The run
writes, together at its end:

- report.json: the rule, the AP curves of both, their final COCO figures and
  the gains;
- report.png: the AP curves, and the pretrained detector's boxes on test images;
- detector.keras: the pretrained-backbone detector, with its optimizer (`keras.saving.load_model`);
- serving/: that detector as a SavedModel serving encoded image bytes
  (`BiTDetector.export_serving`).

With no --data the images are bitkeras's rendered scenes (glyphs and shapes on
textured backgrounds; `bitkeras.detection.scenes`) and the budget fits a
2-core CPU in minutes.
"""

import dataclasses
import json
import pathlib
import time

import keras
import numpy as np

from bitkeras import files
from bitkeras.checks import check_positive_integer
from bitkeras.detection import data as detection_data
from bitkeras.detection import scenes
from bitkeras.detection.detector import BiTDetector, COCOEvaluation, DetectionRule
from bitkeras.finetuning import sources, training
from bitkeras.jobs.transfer import staged_run

OUTPUTS = ("report.json", "report.png", "detector.keras", "serving")
SIDES = ("pretrained", "scratch")
SCENE_BUDGET = {"train_images": 320, "test_images": 64, "steps": 240, "batch_size": 8,
                "object_sizes": (32, 72), "objects": (1, 3)}
"""The default run on rendered scenes: sized for a 2-core CPU (a few minutes per detector)."""


def run(args):
    """The detect job; its outputs appear in --out together, when it has finished."""
    out = pathlib.Path(args.out) if args.out else pathlib.Path("saved_models") / "detection"
    return staged_run(out, OUTPUTS, lambda staging: _run(args, staging))


def load_data(args):
    """(train, test) DetectionData: rendered scenes, or the user's data split as asked."""
    if args.data is None:
        shape = dict(objects=SCENE_BUDGET["objects"], object_sizes=SCENE_BUDGET["object_sizes"],
                     image_size=args.image_size or 128)
        return (scenes.render_scenes(args.train_images or SCENE_BUDGET["train_images"],
                                     seed=args.seed, **shape),
                scenes.render_scenes(args.test_images or SCENE_BUDGET["test_images"],
                                     seed=args.seed + 1, **shape))
    if args.data.startswith("tfds:"):
        name, split = sources.parse_tfds_name(args.data[len("tfds:"):])
        train = detection_data.from_tfds(name, split or "train")
        test = detection_data.from_tfds(name, args.test_split)
    else:
        everything = detection_data.open_detection_data(args.data)
        held_out = max(1, round(everything.num_images * args.test_fraction))
        if held_out >= everything.num_images:
            raise ValueError(f"{everything.description} has {everything.num_images} images: "
                             f"too few to hold {held_out} out for testing")
        test = everything.take(held_out)
        train = everything.take(everything.num_images - held_out, skip=held_out)
    if args.train_images:
        train = train.take(args.train_images)
    if args.test_images:
        test = test.take(args.test_images)
    return train, test


def _run(args, out):
    started = time.perf_counter()
    for name in ("evaluations", "steps", "batch_size", "train_images", "test_images"):
        value = getattr(args, name)
        if value is not None:
            check_positive_integer(value, f"--{name.replace('_', '-')}")
    keras.utils.set_random_seed(args.seed)
    train, test = load_data(args)
    out.mkdir(parents=True, exist_ok=True)
    side = args.image_size or _longest_side(train)
    rendered = args.data is None
    rule = DetectionRule.for_data(
        train.num_images, side, batch_size=args.batch_size or (
            SCENE_BUDGET["batch_size"] if rendered else 256),
        steps=args.steps or (SCENE_BUDGET["steps"] if rendered else None))
    if args.learning_rate is not None:
        rule = dataclasses.replace(rule, base_learning_rate=args.learning_rate)
    evaluations = min(args.evaluations, rule.steps)
    at_steps = [round(rule.steps * (i + 1) / evaluations) for i in range(evaluations)]
    print(f"Detection: {train.num_images} training and {test.num_images} test images of "
          f"{train.description}; {rule.steps} steps of batch {rule.batch_size} at "
          f"{rule.image_size} px, learning rate {rule.learning_rate:.4g}")
    curves = {"steps": at_steps}
    final, detectors = {}, {}
    for side_name in SIDES:
        keras.utils.set_random_seed(args.seed)
        detector = BiTDetector.from_preset(
            args.model, class_names=train.class_names, image_size=rule.image_size,
            weights="default" if side_name == "pretrained" else None)
        detector.compile(optimizer=rule.optimizer())
        scores = COCOEvaluation(test, batch_size=rule.batch_size, at_steps=at_steps)
        # The one training loop, as every rule trains (its NaN stop; resumable).
        training.train(
            detector, rule,
            lambda start_step: detector.batches(train, rule.batch_size, training=True).skip(
                start_step),
            training.KerasSchedule(rule, rule.steps, 1, rule.steps),
            {"rule": dataclasses.asdict(rule), "side": side_name, "seed": args.seed},
            callbacks=[scores], verbose=args.verbose)
        curves[side_name] = {name: [figures[name] for _, figures in scores.results]
                             for name in ("AP", "AP50")}
        final[side_name] = scores.results[-1][1]
        print(f"  {side_name}: AP {final[side_name]['AP']:.3f}, "
              f"AP50 {final[side_name]['AP50']:.3f}")
        detectors[side_name] = detector
    report = {
        "model": str(args.model), "data": train.description, "test": test.description,
        "class_names": list(train.class_names), "rule": dataclasses.asdict(rule),
        "learning_rate": rule.learning_rate, "curves": curves, "final": final,
        "gain": {name: final["pretrained"][name] - final["scratch"][name]
                 for name in ("AP", "AP50")},
        "command": args.command_line}
    pretrained = detectors["pretrained"]
    pretrained.save(out / "detector.keras")
    pretrained.export_serving(out / "serving")
    examples = test.take(4).numpy()
    draw_report(report, [image for image, _, _ in examples],
                pretrained.detect([image for image, _, _ in examples]), out / "report.png")
    report["seconds"] = time.perf_counter() - started
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"Pretrained minus scratch: AP {report['gain']['AP']:+.3f}, "
          f"AP50 {report['gain']['AP50']:+.3f}")
    return report


def _longest_side(data, sample=64):
    sides = [max(image.shape[:2]) for image, _, _ in data.take(sample).numpy()]
    return int(np.median(sides)) if sides else 128


def draw_report(report, images, detections, path, min_score=0.3):
    """report.png: AP curves of both detectors, and the pretrained one's boxes on test images."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import patches, pyplot

    figure = pyplot.figure(figsize=(12, 4.4))
    grid = figure.add_gridspec(2, 4, width_ratios=(2.2, 1, 1, 0.01))
    axis = figure.add_subplot(grid[:, 0])
    colours = {"pretrained": "tab:blue", "scratch": "tab:orange"}
    for side in SIDES:
        for name, style in (("AP50", "-"), ("AP", "--")):
            axis.plot(report["curves"]["steps"], report["curves"][side][name], style,
                      marker="o", color=colours[side], label=f"{side} {name}")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("COCO average precision (held-out images)")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(f"AP50 gain {report['gain']['AP50']:+.3f}, AP gain "
                   f"{report['gain']['AP']:+.3f}", fontsize=10)
    for index, (image, found) in enumerate(zip(images, detections)):
        panel = figure.add_subplot(grid[index // 2, 1 + index % 2])
        panel.imshow(image)
        panel.axis("off")
        for box, score, name in zip(found["boxes"], found["scores"], found["class_names"]):
            if score < min_score:
                continue
            panel.add_patch(patches.Rectangle(box[:2], box[2] - box[0], box[3] - box[1],
                                              fill=False, color="red", linewidth=1))
            panel.text(box[0], box[1], f"{name} {score:.2f}", color="white", fontsize=6,
                       backgroundcolor="red")
    figure.suptitle(f"RetinaNet on {report['model']} vs from scratch: {report['data']}\n"
                    f"(right: the pretrained detector's boxes scoring at least {min_score})",
                    fontsize=10)
    figure.tight_layout()
    files.save_figure(figure, path, dpi=100)
    pyplot.close(figure)
