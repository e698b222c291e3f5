import os
import pathlib
import signal
import subprocess
import sys

import keras
import matplotlib
import numpy as np
import pytest

from bitkeras import BiTBackbone, BiTClassifier, files, load_model, save_npz
from tests.helpers import TINY, wait_for_line

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


def test_saves_make_missing_folders_name_the_users_path_and_clear_dead_writers_files(tmp_path):
    classifier = BiTClassifier(BiTBackbone(**TINY), 2)
    deep = tmp_path / "runs" / "one" / "model.keras"
    classifier.save(deep)  # missing folders are made, as export makes them
    assert load_model(deep).num_classes == 2
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError, match="cannot write '.*a_file/model.keras'") as caught:
        classifier.save(tmp_path / "a_file" / "model.keras")
    assert files.PARTIAL_MARK not in str(caught.value)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = deep.parent
    left = folder / f".model.keras{files.PARTIAL_MARK}{dead.pid}.keras"  # a killed save's
    staging = folder / f".report{files.PARTIAL_MARK}{dead.pid}"  # a killed job's staging
    running = folder / f".model.keras{files.PARTIAL_MARK}{os.getppid()}.keras"
    left.write_bytes(b"PK half")
    staging.mkdir()
    running.write_bytes(b"PK in progress")
    load_model(deep)  # a load in that folder clears what dead writers left ...
    assert not left.exists() and not staging.exists() and running.exists()
    left.write_bytes(b"PK half")
    classifier.save_weights(folder / "other.weights.h5")  # ... and so does a save
    assert not left.exists() and running.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_named_before_anything_is_written(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    with pytest.raises(PermissionError, match="folder .*locked' is read-only"):
        BiTClassifier(BiTBackbone(**TINY), 2).save(folder / "model.keras")


def test_a_figure_is_saved_atomically(tmp_path):
    from matplotlib import pyplot

    figure = pyplot.figure(figsize=(1, 1))
    files.save_figure(figure, tmp_path / "report.png")
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    pyplot.close(figure)


_SAVER = """
import os, sys, threading, zipfile
import numpy as np
from bitkeras import BiTBackbone, BiTClassifier

target, moment = sys.argv[1:]
classifier = BiTClassifier(BiTBackbone((1, 1, 1, 1), 0.5), 3)
classifier.head.bias.assign(np.array([1.0, 2.0, 3.0], "float32"))
classifier.save(target)
print("saved", flush=True)


def hold(*args, **kwargs):  # the test kills the process here, in the middle of a save
    print("holding", flush=True)
    threading.Event().wait()


# "writing": the archive is begun, not finished; "replacing": written, not yet swapped in.
if moment == "writing":
    zipfile.ZipFile.writestr = hold
else:
    os.replace = hold
classifier.head.bias.assign(np.array([7.0, 8.0, 9.0], "float32"))
classifier.save(target)
"""


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["writing", "replacing"])
def test_a_process_killed_while_saving_leaves_the_last_saved_model(tmp_path, moment):
    target = tmp_path / "model.keras"
    saver = subprocess.Popen([sys.executable, "-c", _SAVER, str(target), moment],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert "saved" in wait_for_line(saver, "holding").split()
    partial = [path.name for path in tmp_path.iterdir() if files.PARTIAL_MARK in path.name]
    assert len(partial) == 1, partial  # killed in the middle of its second save
    saver.send_signal(signal.SIGKILL)
    saver.wait()
    saver.stdout.close()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(load_model(target).head.bias),
                                  [1.0, 2.0, 3.0])
    assert no_partial_files(tmp_path)  # the load cleared what the killed save left


def test_weights_of_another_network_load_nothing_and_are_named_in_a_few_lines(tmp_path):
    three = BiTClassifier(BiTBackbone(**TINY), 3)
    three.save_weights(tmp_path / "three.weights.h5")
    five = BiTClassifier(BiTBackbone(**TINY), 5, name="five")
    for weight in five.weights:  # weights unlike the file's, so a partial load would show
        weight.assign(np.full(weight.shape, 0.5, weight.dtype))
    before = [weight.copy() for weight in five.get_weights()]
    with pytest.raises(ValueError, match="another network") as caught:
        five.load_weights(tmp_path / "three.weights.h5")
    message = str(caught.value)
    assert "Shapes only in the file: (1024, 3), (3,); only in five: (1024, 5), (5,)." in message
    assert message.endswith("five is unchanged."), message
    assert "is unchanged" in message and len(message) < 500 and "0.5" not in message
    for ours, theirs in zip(five.get_weights(), before):
        np.testing.assert_array_equal(ours, theirs)
