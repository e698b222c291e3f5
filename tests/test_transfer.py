import json

import numpy as np
import pytest
from PIL import Image

import bitkeras
from bitkeras.data import datasets
from bitkeras.jobs import cli, transfer
from tests.helpers import COLORS, TINY


def test_cpu_budget_rule_keeps_the_rule_shape_at_a_quarter_of_the_resolution():
    rule = transfer.fit_rule(1347, (8, 8), budget=True)
    assert (rule.resize_size, rule.crop_size) == (40, 32)
    assert rule.batch_size == 64 and rule.steps == 300 and rule.base_learning_rate == 0.01
    assert rule.warmup_steps == 60 and rule.decay_boundaries == (120, 180, 240)
    few = transfer.fit_rule(10, (8, 8), budget=True, steps=100)
    assert few.batch_size == 10 and few.steps == 100
    plain = transfer.fit_rule(1347, (8, 8), overrides={"flip": False, "steps": 50})
    assert (plain.resize_size, plain.crop_size, plain.batch_size) == (160, 128, 512)
    assert plain.steps == 50 and not plain.flip


@pytest.mark.slow
def test_default_finetune_job_shows_transfer_and_writes_a_valid_report(tmp_path, capsys):
    # The default job shortened (60 steps, one K, 40 steps a few-shot fit): the
    # transfer it shows must still clear the job's own bars. The full default
    # job measured +14 points of mean few-shot gain against a bar of 5, and +65
    # at the first evaluation against 20 (docs/guide/jobs.md).
    pytest.importorskip("sklearn")
    report = cli.run(["finetune", "--out", str(tmp_path), "--steps", "60", "--few-shot", "1",
                       "--few-shot-steps", "40", "--seeds", "2", "--evaluations", "2",
                       "--verbose", "0"])
    printed = capsys.readouterr().out
    assert "CPU budget" in printed and "BiT-HyperRule:" in printed
    criteria = report["criteria"]
    assert set(criteria) == set(transfer.TRANSFER_BARS)
    for name, criterion in criteria.items():
        assert criterion["met"] and criterion["value"] >= transfer.TRANSFER_BARS[name], name
        assert f"{100 * criterion['value']:+.1f} points" in printed
    assert criteria["mean_few_shot_gain"]["value"] == pytest.approx(report["few_shot"]["1"]["gain"])
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    for key in ("pretrained_accuracy", "scratch_accuracy", "few_shot", "rule", "curves",
                "benefits"):
        assert key in saved
    assert 0 <= saved["pretrained_accuracy"] <= 1 and 0 <= saved["scratch_accuracy"] <= 1
    assert saved["rule"]["steps"] == 60 and saved["curves"]["steps"] == [30, 60]
    assert saved["model"].startswith("BiT-Glyphs-R14x0.5")
    row = saved["few_shot"]["1"]
    assert row["steps"] == 40
    assert len(row["pretrained"]["accuracies"]) == 2 == len(row["scratch"]["accuracies"])
    assert all(0 <= value <= 1 for side in ("pretrained", "scratch")
               for value in row[side]["accuracies"])
    assert row["gain"] == pytest.approx(row["pretrained"]["mean"] - row["scratch"]["mean"])
    with Image.open(tmp_path / "report.png") as png:
        png.load()
        assert png.format == "PNG" and png.size[0] > 500
    model = bitkeras.load_model(tmp_path / "finetuned.keras")
    assert model.class_names == tuple(str(d) for d in range(10))


@pytest.mark.slow
def test_finetune_on_a_small_folder_with_the_rules_defaults_trains_in_minutes(tmp_path, capsys):
    """The HyperRule as it is on 3 classes x 8 PNGs of digits (the few-shot table left
    out): one batch of the 18 training images, the rule's 500 steps, at the shipped
    model's 32 pixels; the plan and its duration are printed before it runs."""
    images, labels = datasets.digits("all")
    for digit in range(3):
        folder = tmp_path / "data" / f"digit{digit}"
        folder.mkdir(parents=True)
        for index, image in enumerate(images[labels == digit][:8]):
            Image.fromarray(image).save(folder / f"{index}.png")
    report = cli.run(["finetune", "--data", str(tmp_path / "data"), "--out",
                      str(tmp_path / "out"), "--few-shot"])
    printed = capsys.readouterr().out
    assert "BiT-HyperRule:" in printed and "Estimated: " in printed
    assert report["rule"]["steps"] == 500 and report["rule"]["batch_size"] == 18
    assert report["rule"]["crop_size"] == 32
    assert report["pretrained_accuracy"] > 0.6 and report["scratch_accuracy"] > 0.6  # of 1/3


def test_finetune_on_a_folder_from_a_checkpoint_file(tmp_path, image_folder, tiny_checkpoint):
    path, _ = tiny_checkpoint
    with pytest.warns(UserWarning, match="broken.jpg"):
        report = cli.run(["finetune", "--data", str(image_folder), "--model", str(path),
                           "--out", str(tmp_path / "out"), "--steps", "2", "--batch-size", "8",
                           "--crop-size", "32", "--resize-size", "36", "--few-shot",
                           "--evaluations", "1", "--verbose", "0", "--strategy", "mirrored",
                           "--precision", "mixed_bfloat16"])
    assert report["strategy"] == "MirroredStrategy" and report["precision"] == "mixed_bfloat16"
    assert report["num_classes"] == len(COLORS) and report["few_shot"] == {}
    assert report["test_examples"] >= len(COLORS)
    assert report["rule"]["batch_size"] == 8 and report["rule"]["crop_size"] == 32
    assert "25% held out" in report["data"]
    assert (tmp_path / "out" / "report.png").is_file()


def test_stratified_split_holds_out_each_class():
    labels = np.repeat(np.arange(3), [4, 8, 2])
    mask = datasets.stratified_mask(labels, 0.25, seed=0)
    assert np.bincount(labels[mask], minlength=3).tolist() == [1, 2, 1]
    np.testing.assert_array_equal(mask, datasets.stratified_mask(labels, 0.25, seed=0))


@pytest.mark.parametrize("model, error, message", [
    ("R50x1", ValueError, "bare architecture"),
    ("missing.npz", FileNotFoundError, "no such file"),
    ("BiT-M-R5x1", ValueError, "unknown preset"),
])
def test_finetune_refuses_models_it_cannot_start_from(model, error, message):
    with pytest.raises(error, match=message):
        transfer.ModelPair(model, seed=0)


def test_scratch_and_pretrained_copies_share_architecture_and_start(tmp_path, tiny_checkpoint):
    path, _ = tiny_checkpoint
    pair = transfer.ModelPair(str(path), seed=0)
    pretrained = pair.build("pretrained", ("a", "b"))
    again = pair.build("pretrained", ("a", "b"))
    scratch = pair.build("scratch", ("a", "b"))
    scratch_again = pair.build("scratch", ("a", "b"))
    reference = bitkeras.BiTBackbone(**TINY)
    bitkeras.load_npz(reference, path)
    for ours, theirs in zip(pretrained.backbone.weights, reference.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    for first, second in zip(scratch.weights, scratch_again.weights):
        np.testing.assert_array_equal(first.numpy(), second.numpy())
    assert not np.array_equal(scratch.backbone.weights[0].numpy(),
                              pretrained.backbone.weights[0].numpy())
    assert again.backbone is not pretrained.backbone


@pytest.mark.slow
def test_finetune_starts_from_a_tf_hub_module(tmp_path, tiny_checkpoint, images):
    path, _ = tiny_checkpoint
    backbone = bitkeras.BiTBackbone(**TINY)
    bitkeras.load_npz(backbone, path)
    backbone.export(tmp_path / "module")
    pair = transfer.ModelPair(str(tmp_path / "module"), seed=0)
    assert "TF-Hub module" in pair.description
    pretrained = pair.build("pretrained", ("a", "b"))
    np.testing.assert_allclose(pretrained.backbone(images).numpy(), backbone(images).numpy(),
                               atol=1e-5)


def test_finetune_checks_its_arguments_before_training(tmp_path):
    with pytest.raises(ValueError, match="--seeds"):
        cli.run(["finetune", "--out", str(tmp_path), "--seeds", "0"])
    with pytest.raises(ValueError, match="smallest class"):
        cli.run(["finetune", "--out", str(tmp_path), "--few-shot", "1", "500"])
    assert not (tmp_path / "report.json").exists()


def test_transfer_criteria_compare_the_gains_with_the_bars():
    def report(start_gain, few_shot_gains):
        return {"benefits": {"gain": {"start": start_gain}},
                "few_shot": {str(k): {"gain": gain} for k, gain in enumerate(few_shot_gains)}}

    criteria = transfer.transfer_criteria(report(0.5, [0.02, 0.04, 0.03]))
    assert criteria["mean_few_shot_gain"]["value"] == pytest.approx(0.03)
    assert criteria["mean_few_shot_gain"]["margin"] == pytest.approx(0.03 - 0.05)
    assert not criteria["mean_few_shot_gain"]["met"] and criteria["first_evaluation_gain"]["met"]
    assert set(transfer.transfer_criteria(report(0.1, []))) == {"first_evaluation_gain"}
    assert not transfer.transfer_criteria(report(0.1, []))["first_evaluation_gain"]["met"]
