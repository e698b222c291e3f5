import pathlib
import subprocess
import sys

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Each runs a whole program or builds and installs a wheel in a process of its own.
pytestmark = pytest.mark.slow


def test_transfer_digits_example_fine_tunes_the_shipped_model(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "transfer_digits.py"), "--examples-per-class",
         "1", "--steps", "2", "--out", str(tmp_path / "digits.keras")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pretrained: test accuracy" in result.stdout and "Transfer gain" in result.stdout
    finetuned = keras.models.load_model(tmp_path / "digits.keras")
    assert finetuned.class_names == tuple(str(d) for d in range(10))


def test_finetune_folder_example_trains_on_its_demo_folder(tmp_path):
    pytest.importorskip("sklearn")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "finetune_folder.py"), "--tiny", "--steps", "2",
         "--batch-size", "16", "--crop-size", "32", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BiT-HyperRule:" in result.stdout and "Test: accuracy" in result.stdout
    assert (tmp_path / "data" / "train" / "digit_0").is_dir()
    import bitkeras

    model = bitkeras.load_model(tmp_path / "model.keras")
    assert model.class_names == tuple(f"digit_{d}" for d in range(5))
    assert model.hyperrule.steps == 2 and model.hyperrule.crop_size == 32


def test_hub_example_fine_tunes_a_module_and_serves_an_upload(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "hub_finetune_export.py"), "--steps", "2",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Backbone: HubBackbone" in result.stdout
    assert "serving_bytes on" in result.stdout
    assert (tmp_path / "serving" / "saved_model.pb").is_file()
    assert (tmp_path / "serving" / "assets" / "labels.txt").read_text().split() == [
        str(d) for d in range(10)]
