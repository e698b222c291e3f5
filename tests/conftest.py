import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import warnings

import numpy as np
import pytest

from bitkeras.models import native
from tests import reference

TINY = dict(block_units=(1, 1, 1, 1), width_factor=0.5)
"""The smallest BiT: 1 unit per block, 32 root channels."""


@pytest.fixture(scope="session", autouse=True)
def native_ops():
    """Builds or loads bitkeras's C++ ops once per test process, before the tests.

    Where it cannot be built (no compiler), its one warning is not any test's
    business: the tests run on TensorFlow's ops (`tests/test_native.py` checks
    the warning itself).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        native.library()


@pytest.fixture(params=["op", "tensorflow"])
def native_engine(request, monkeypatch):
    """A layer test twice: on bitkeras's C++ ops (GroupNorm, weight standardization), and
    on TensorFlow's own ops."""
    if request.param == "op" and native.library() is None:
        pytest.skip("no C++ compiler here to build bitkeras's ops")
    if request.param == "tensorflow":
        monkeypatch.setenv(native.ENABLE_ENV, "0")
    return request.param


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A released-format checkpoint of the tiny architecture with a 5-class head."""
    arrays = reference.checkpoint_arrays(TINY["block_units"], TINY["width_factor"], num_classes=5)
    return reference.write_checkpoint(tmp_path / "tiny.npz", arrays), arrays


@pytest.fixture
def images():
    return np.random.default_rng(1).uniform(0, 1, (2, 35, 35, 3)).astype(np.float32)


COLORS = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (210, 40, 40)}
"""Classes of the synthetic image folders, told apart by colour."""


def make_image_folder(root, per_class=10, seed=0, extras=True):
    """A folder of class sub-folders of noisy colour images in several file formats.

    With `extras`, the folder also holds a corrupt file (red/broken.jpg), a
    grayscale PNG, a palette PNG, an RGBA PNG, a CMYK JPEG and a palette BMP.
    Returns the folder.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    formats = ("jpg", "png", "bmp", "gif")
    for name, colour in COLORS.items():
        folder = root / name
        folder.mkdir(parents=True)
        for index in range(per_class):
            size = (int(rng.integers(30, 60)), int(rng.integers(30, 60)))
            pixels = np.clip(np.array(colour) + rng.normal(0, 30, (*size, 3)), 0, 255)
            image = Image.fromarray(pixels.astype(np.uint8))
            image.save(folder / f"{index:03d}.{formats[index % len(formats)]}")
    if extras:
        red = Image.fromarray(np.full((40, 40, 3), COLORS["red"], np.uint8))
        (root / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
        Image.fromarray(np.full((40, 40), 120, np.uint8)).save(root / "green" / "gray.png")
        red.convert("P").save(root / "red" / "palette.png")
        red.convert("RGBA").save(root / "red" / "alpha.png")
        red.convert("CMYK").save(root / "red" / "cmyk.jpg")
        red.convert("P").save(root / "red" / "palette.bmp")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"), per_class=12, seed=0)
