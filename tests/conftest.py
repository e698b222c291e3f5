import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

from tests import reference

TINY = dict(block_units=(1, 1, 1, 1), width_factor=0.5)
"""The smallest BiT: 1 unit per block, 32 root channels."""


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A released-format checkpoint of the tiny architecture with a 5-class head."""
    arrays = reference.checkpoint_arrays(TINY["block_units"], TINY["width_factor"], num_classes=5)
    return reference.write_checkpoint(tmp_path / "tiny.npz", arrays), arrays


@pytest.fixture
def images():
    return np.random.default_rng(1).uniform(0, 1, (2, 35, 35, 3)).astype(np.float32)
