import pathlib
import signal
import subprocess
import sys
import time

import keras
import matplotlib
import numpy as np
import pytest

from bitkeras import BiTBackbone, BiTClassifier, files, load_model, save_npz
from tests.conftest import TINY

matplotlib.use("Agg")


class Crash(Exception):
    pass


def no_partial_files(folder):
    return not [path for path in pathlib.Path(folder).iterdir()
                if files.PARTIAL_MARK in path.name]


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path):
    target = tmp_path / "report.json"
    files.write_text(target, "old")
    with pytest.raises(Crash):
        with files.atomic_path(target) as temporary:
            temporary.write_text("half of the n")
            raise Crash
    assert target.read_text() == "old" and no_partial_files(tmp_path)
    files.write_text(target, "new")
    assert target.read_text() == "new" and no_partial_files(tmp_path)


def test_model_saves_and_npz_files_are_atomic(tmp_path, monkeypatch):
    classifier = BiTClassifier(BiTBackbone(**TINY), 3)
    path, weights_path, npz = (tmp_path / "m.keras", tmp_path / "m.weights.h5",
                               tmp_path / "m.npz")
    classifier.save(path)
    classifier.save_weights(weights_path)
    save_npz(classifier, npz)
    before = {p: p.read_bytes() for p in (path, weights_path, npz)}

    def crashing(self, filepath, *args, **kwargs):
        pathlib.Path(filepath).write_bytes(b"PK\x03\x04 half a file")
        raise Crash

    monkeypatch.setattr(keras.Model, "save", crashing)
    monkeypatch.setattr(keras.Model, "save_weights", crashing)
    def crashing_savez(out, **arrays):
        out.write(b"PK\x03\x04 half an archive")
        raise Crash

    monkeypatch.setattr(np, "savez", crashing_savez)
    for write in (lambda: classifier.save(path), lambda: classifier.save_weights(weights_path),
                  lambda: save_npz(classifier, npz), lambda: classifier.backbone.save(path)):
        with pytest.raises(Crash):
            write()
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in before} == before and no_partial_files(tmp_path)
    assert load_model(path).num_classes == 3


def test_a_figure_is_saved_atomically(tmp_path):
    from matplotlib import pyplot

    figure = pyplot.figure(figsize=(1, 1))
    files.save_figure(figure, tmp_path / "report.png")
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    pyplot.close(figure)


_SAVER = """
import sys
import numpy as np
from bitkeras import BiTBackbone, BiTClassifier
classifier = BiTClassifier(BiTBackbone((1, 1, 1, 1), 0.5), 3)
print("ready", flush=True)
while True:
    classifier.head.bias.assign(np.random.default_rng().normal(size=3).astype("float32"))
    classifier.save(sys.argv[1])
"""


def test_a_process_killed_while_saving_leaves_a_loadable_model(tmp_path):
    target = tmp_path / "model.keras"
    BiTClassifier(BiTBackbone(**TINY), 3).save(target)
    saver = subprocess.Popen([sys.executable, "-c", _SAVER, str(target)],
                             stdout=subprocess.PIPE, text=True)
    assert saver.stdout.readline().strip() == "ready"
    time.sleep(2.0)  # several saves in, killed at an arbitrary moment of one
    saver.send_signal(signal.SIGKILL)
    saver.wait()
    saver.stdout.close()
    assert load_model(target).num_classes == 3
