import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import shutil
import tempfile
import warnings

import numpy as np
import pytest

from bitkeras.files import CACHE_ENV
from bitkeras.finetuning import xla
from bitkeras.models import native
from tests.helpers import TINY, make_image_folder, reference

def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="also run the tests marked slow (whole jobs, examples, wheels, "
                     "processes killed and resumed): the full suite, as CI runs it")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


def pytest_configure(config):
    """One cache folder of bitkeras's own per test session, never the user's.

    Set in the main process before pytest-xdist starts its workers, which inherit
    it, as do the processes tests start: the C++ ops are built once per session,
    and no weights, XLA choices or builds of a user's cache are read or written.

    XLA stays off in fits that would measure it (`$BITKERAS_JIT_COMPILE` 0, unless
    set already): a 500-step fit's measurement compiles its step with XLA, about
    a third of the small-folder job's time on a 2-core Xeon (55 s against 37 s).
    `tests/test_xla.py` tests the measurement, with real passes, and the
    Ctrl-C test of the finetune command interrupts one in a command's process.
    """
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: its controller set it
        return
    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="bitkeras-test-cache-")
    os.environ.setdefault(xla.OVERRIDE_ENV, "0")
    config.add_cleanup(lambda: shutil.rmtree(os.environ.pop(CACHE_ENV), ignore_errors=True))


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


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"), per_class=12, seed=0)
