"""bitkeras as a user installs it: a wheel, outside the source tree, offline."""

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Each runs a whole program or builds and installs a wheel in a process of its own.
pytestmark = pytest.mark.slow

CHECK_INSTALLED = """
import pathlib, sys
import numpy as np
import bitkeras
from bitkeras.io import presets
site = pathlib.Path(sys.argv[1])
assert pathlib.Path(bitkeras.__file__).is_relative_to(site), bitkeras.__file__
assert presets.SAVED_MODELS.is_relative_to(site), presets.SAVED_MODELS
classifier = bitkeras.BiTClassifier.from_preset("BiT-Glyphs-R14x0.5")
logits = classifier.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0)
print(classifier.num_classes, logits.shape, np.isfinite(logits).all())
"""


def test_a_wheel_carries_the_shipped_model_and_loads_it_outside_the_clone(tmp_path):
    # Built from a copy: setuptools leaves build/ in the folder it builds in.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".venv", "runs", "finetuned-*"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(tmp_path / "dist"), str(source)],
                   check=True, cwd=tmp_path)
    wheel, = (tmp_path / "dist").glob("bitkeras-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("model.npz", "MODEL_CARD.md", "upstream.json"):
        assert f"bitkeras/saved_models/BiT-Glyphs-R14x0.5/{name}" in names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-index", "--target", str(site), str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = dict(os.environ, PYTHONPATH=str(site), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", CHECK_INSTALLED, str(site)],
                            cwd=elsewhere, env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("132 (2, 132) True"), result.stdout
