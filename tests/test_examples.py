import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_transfer_digits_example_runs_and_saves_its_models(tmp_path):
    pytest.importorskip("sklearn")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "transfer_digits.py"), "--out", str(tmp_path),
         "--upstream-epochs", "1", "--downstream-steps", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Held-out accuracy on digits 5-9" in result.stdout
    with np.load(tmp_path / "upstream.npz", allow_pickle=False) as upstream:
        assert all(key.startswith("resnet/") for key in upstream.files)
        assert upstream["resnet/head/conv2d/bias"].shape == (5,)
    finetuned = keras.models.load_model(tmp_path / "finetuned.keras")
    assert finetuned.num_classes == 5


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
