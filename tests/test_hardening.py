"""Hostile but realistic input: image files, non-finite pixels, shared checkpoint folders."""

import os
import signal
import socket
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from bitkeras import BadImageError, BiTBackbone, BiTClassifier
from bitkeras.finetuning import run_state, sources, xla
from tests.helpers import TINY
from tests.helpers.fit_worker import classifier as tiny_classifier
from tests.helpers.fit_worker import data as worker_data


def _photo(seed, size=(24, 32)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (*size, 3)).astype(np.uint8)


def _decoded(source):
    return [image for image, _ in source.records.map(
        lambda record, label: (source.decode_record(record), label)).as_numpy_iterator()]


def test_files_ending_in_nul_bytes_decode_as_pillow_shows_them(tmp_path):
    (tmp_path / "webp").mkdir(), (tmp_path / "black").mkdir()
    expected = {}
    for index in range(3):
        path = tmp_path / "webp" / f"{index}.webp"
        Image.fromarray(_photo(index)).save(path, quality=80)  # lossy WebP
        expected[str(path)] = np.asarray(Image.open(path).convert("RGB"))
        black = tmp_path / "black" / f"{index}.tiff"
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(black)
        expected[str(black)] = np.zeros((20, 20, 3), np.uint8)
    assert any(path.read_bytes().endswith(b"\0") for path in tmp_path.rglob("*.*"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped
        source = sources.open_source(tmp_path)
    assert source.num_examples == 6 and source.num_classes == 2
    for path, image in zip(source.table[0], _decoded(source)):
        np.testing.assert_array_equal(image, expected[os.fsdecode(path)])


def test_exif_orientation_and_16_bit_images_are_shown_as_a_viewer_shows_them(tmp_path):
    (tmp_path / "turned").mkdir(), (tmp_path / "deep").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was held turned: display rotated by 90 degrees
    pixels = _photo(0, (20, 40))
    Image.fromarray(pixels).save(tmp_path / "turned" / "a.jpg", exif=exif, quality=95)
    grey16 = (np.arange(30 * 10).reshape(10, 30) * 200).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "deep" / "b.tiff")
    source = sources.open_source(tmp_path)
    deep, turned = _decoded(source)  # class folders in sorted order
    assert turned.shape == (40, 20, 3)
    viewer = np.asarray(Image.open(tmp_path / "turned" / "a.jpg").transpose(Image.ROTATE_270))
    np.testing.assert_array_equal(turned, viewer)
    np.testing.assert_array_equal(deep[..., 0], np.round(grey16 * 255.0 / 65535).astype(np.uint8))


def _truncated_jpeg(path, seed):
    Image.fromarray(_photo(seed, (64, 64))).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header is intact, the data cut short


def _folder_with_a_cut_file(root, per_class, cut_class):
    """Classes "a" and "b" of `per_class` PNGs each, and a truncated JPEG in `cut_class`."""
    for name in ("a", "b"):
        (root / name).mkdir()
        for index in range(per_class):
            Image.fromarray(_photo(index)).save(root / name / f"{index}.png")
    _truncated_jpeg(root / cut_class / "cut.jpg", 7)


def test_truncated_images_are_skipped_by_name_everywhere_or_raise(tmp_path):
    _folder_with_a_cut_file(tmp_path, 3, "a")
    with pytest.warns(UserWarning, match="cut.jpg: cannot be decoded"):
        source = sources.open_source(tmp_path)
    assert source.num_examples == 6
    with pytest.raises(BadImageError, match="cut.jpg"):
        sources.open_source(tmp_path, on_bad_image="raise")
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2, class_names=["a", "b"])
    with pytest.warns(UserWarning, match="cut.jpg"):
        result = classifier.evaluate(tmp_path, image_size=16, verbose=0, return_dict=True)
    assert set(result) >= {"loss", "accuracy"}
    with pytest.raises(BadImageError, match="cut.jpg"):
        classifier.predict([tmp_path / "a" / "0.png", tmp_path / "a" / "cut.jpg"])


@pytest.mark.slow
def test_a_folder_where_nothing_decodes_fails_at_once_instead_of_spinning(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for index in range(2):
            _truncated_jpeg(tmp_path / name / f"{index}.jpg", index)
    script = (
        "import sys, warnings, numpy as np\n"
        "warnings.simplefilter('ignore')\n"
        "from bitkeras import BiTBackbone, BiTClassifier\n"
        "classifier = BiTClassifier(BiTBackbone(block_units=(1, 1, 1, 1), width_factor=0.5))\n"
        "try:\n"
        "    classifier.fit(sys.argv[1], hyperrule=dict(steps=2, batch_size=2, crop_size=16),\n"
        "                   verbose=0)\n"
        "except ValueError as error:\n"
        "    print('refused:', error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], timeout=120,
                            capture_output=True, text=True, cwd=os.getcwd())
    assert "refused:" in result.stdout and "no readable images" in result.stdout, (
        result.stdout + result.stderr[-2000:])


def test_non_finite_pixels_are_refused_with_the_image_index():
    images = np.random.default_rng(0).uniform(0, 1, (6, 8, 8, 3)).astype(np.float32)
    images[4, 2, 3, 1] = np.nan
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
    with pytest.raises(ValueError, match="image 4 holds nan"):
        classifier.fit(images, np.arange(6) % 2, epochs=1, batch_size=2)
    images[4, 2, 3, 1] = np.inf
    with pytest.raises(ValueError, match="image 4 holds inf"):
        classifier.predict(images)
    assert not classifier.compiled  # refused before anything was set up


def test_a_fit_that_meets_a_nan_loss_leaves_the_weights_it_started_with():
    images, labels = worker_data()
    images, labels = np.concatenate([images] * 2) / np.float32(255), np.concatenate([labels] * 2)
    # Streamed data is checked on its first 64 images only: past them, the loss goes NaN.
    images[70] = np.nan
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    classifier = tiny_classifier()
    before = classifier.get_weights()
    with pytest.raises(run_state.NonFiniteLossError, match="back to what they were before"):
        classifier.fit(dataset, hyperrule=dict(steps=6, crop_size=16, resize_size=20),
                       batch_size=16,
                       shuffle=False, verbose=0)
    for now, then in zip(classifier.get_weights(), before):
        np.testing.assert_array_equal(now, then)


def test_a_checkpoint_folder_in_use_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path):
    lock = tmp_path / run_state.LOCK_FILE
    lock.write_text(f"{socket.gethostname()} {os.getppid()}")  # a live process holds it
    images, labels = worker_data()
    arguments = dict(hyperrule=dict(steps=2, batch_size=16, crop_size=16, resize_size=20),
                     checkpoint_dir=tmp_path, verbose=0)
    classifier = tiny_classifier()
    with pytest.raises(RuntimeError, match="in use by another run"):
        classifier.fit((images, labels), **arguments)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(f"{socket.gethostname()} {dead.pid}")
    history = classifier.fit((images, labels), **arguments)
    assert history.start_step == 0 and not lock.exists()  # released at the end
    lock.write_text("")  # a run between creating its lock and writing its name in it
    with pytest.raises(RuntimeError, match="in use by a run starting"):
        classifier.fit((images, labels), **arguments)
    os.utime(lock, (0, 0))  # ... or one killed right then, long ago
    assert classifier.fit((images, labels), **arguments).start_step == 2  # resumed at its end


def test_resuming_names_what_differs_and_refuses_damaged_or_foreign_state(tmp_path):
    images, labels = worker_data()
    arguments = dict(hyperrule=dict(steps=2, batch_size=16, crop_size=16, resize_size=20),
                     checkpoint_dir=tmp_path, verbose=0)
    tiny_classifier().fit((images, labels), seed=1, **arguments)
    with pytest.raises(ValueError, match=r"seed: 1 there, 2 here.*delete"):
        tiny_classifier().fit((images, labels), seed=2, **arguments)
    with pytest.raises(ValueError, match=r"data: '\w+' there, '\w+' here"):
        tiny_classifier().fit((images[::-1], labels[::-1]), seed=1, **arguments)
    (tmp_path / run_state.RUN_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="run.json.*damaged"):
        tiny_classifier().fit((images, labels), seed=1, **arguments)


def test_a_checkpoint_past_the_runs_end_is_refused(tmp_path):
    classifier = tiny_classifier()
    classifier.compile(optimizer="sgd", loss="mse")
    classifier.optimizer.build(classifier.trainable_variables)
    classifier.optimizer.iterations.assign(150)
    classifier.save_weights(tmp_path / run_state.CHECKPOINT_FILE)
    (tmp_path / run_state.RUN_FILE).write_text("{}")
    with pytest.raises(ValueError, match="at step 150, past this run's 30 steps"):
        run_state.resume(classifier, tmp_path, {}, total_steps=30)
    keras.backend.clear_session()


def test_saving_over_a_read_only_file_is_refused(tmp_path):
    target = tmp_path / "model.keras"
    target.write_text("precious")
    target.chmod(0o444)
    with pytest.raises(PermissionError, match="read-only"):
        tiny_classifier().save(target)
    assert target.read_text() == "precious"


def test_rules_and_seeds_are_checked_before_the_classifier_changes():
    images, labels = worker_data()
    classifier = BiTClassifier(BiTBackbone(**TINY))
    for bad in (dict(seed=None), dict(seed="x"), dict(seed=-1),
                dict(hyperrule=dict(steps=2, base_learning_rate=float("inf"))),
                dict(hyperrule=dict(steps=2, mixup_alpha=float("nan")))):
        with pytest.raises(ValueError, match="seed|base_learning_rate|mixup_alpha"):
            classifier.fit((images, labels), batch_size=16, verbose=0, **{
                "hyperrule": dict(steps=2), **bad})
        assert classifier.head is None  # no head added on bad input


def test_cli_user_errors_are_one_line_exit_2_and_leave_no_folder(tmp_path, capsys):
    from bitkeras.jobs import cli

    out = tmp_path / "out"
    status = cli.main(["finetune", "--data", str(tmp_path / "missing"), "--out", str(out)])
    error = capsys.readouterr().err
    assert status == 2 and error.startswith("bitkeras: error: ") and error.count("\n") == 1
    assert "Traceback" not in error and "missing" in error
    assert not out.exists()


def test_cli_checks_out_before_any_work_and_says_its_version(tmp_path, capsys):
    import bitkeras
    from bitkeras.jobs import cli

    taken = tmp_path / "results.txt"
    taken.write_text("mine")
    for command in (["finetune"], ["detect"], ["pretrain"], ["experiment", "degradation"]):
        status = cli.main([*command, "--out", str(taken)])
        error = capsys.readouterr().err
        assert status == 2 and f"--out {str(taken)!r} is a file, not a folder" in error, error
    assert taken.read_text() == "mine"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"bitkeras {bitkeras.__version__}\n"


def test_cli_interrupts_say_how_to_resume(tmp_path, capsys, monkeypatch):
    from bitkeras.finetuning import run_state
    from bitkeras.jobs import cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run", interrupted)
    argv = ["pretrain", "--out", str(tmp_path / "up")]
    assert cli.main(argv) == 130
    assert capsys.readouterr().err == "bitkeras: interrupted.\n"  # no checkpoint yet
    assert not (tmp_path / "up").exists()
    (tmp_path / "up" / "checkpoints").mkdir(parents=True)
    (tmp_path / "up" / "checkpoints" / run_state.CHECKPOINT_FILE).write_bytes(b"state")
    assert cli.main(argv) == 130
    assert f"Resume from the last checkpoint with: bitkeras pretrain --out {tmp_path / 'up'}" \
        in capsys.readouterr().err


def test_a_run_that_fails_leaves_the_previous_outputs_whole(tmp_path, monkeypatch):
    from bitkeras.jobs import transfer

    out = tmp_path / "out"
    out.mkdir()
    for name in transfer.OUTPUTS:
        (out / name).write_text(f"old {name}")

    def half_run(args, staging):
        staging.mkdir(parents=True)
        (staging / "finetuned.keras").write_text("new model")
        raise KeyboardInterrupt  # during the scratch fit

    monkeypatch.setattr(transfer, "_run", half_run)
    args = type("Args", (), {"out": str(out), "data": None})()
    with pytest.raises(KeyboardInterrupt):
        transfer.run(args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        name: f"old {name}" for name in transfer.OUTPUTS}

    def whole_run(args, staging):
        staging.mkdir(parents=True)
        for name in transfer.OUTPUTS:
            (staging / name).write_text(f"new {name}")
        return {"seconds": 1.0}

    monkeypatch.setattr(transfer, "_run", whole_run)
    transfer.run(args)
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        name: f"new {name}" for name in transfer.OUTPUTS}


def test_damaged_saved_models_and_checkpoints_are_named(tmp_path):
    from bitkeras import load_model

    model = tmp_path / "model.keras"
    tiny_classifier().save(model)
    model.write_bytes(model.read_bytes()[:200])
    with pytest.raises(ValueError, match="model.keras.*save the model again"):
        load_model(model)
    with pytest.raises(FileNotFoundError, match="no model file"):
        load_model(tmp_path / "absent.keras")
    images, labels = worker_data()
    arguments = dict(hyperrule=dict(steps=2, batch_size=16, crop_size=16, resize_size=20),
                     checkpoint_dir=tmp_path / "run", verbose=0)
    tiny_classifier().fit((images, labels), **arguments)
    state = tmp_path / "run" / run_state.CHECKPOINT_FILE
    state.write_bytes(state.read_bytes()[:1000])
    with pytest.raises(ValueError, match="latest.weights.h5.*cannot be read.*delete"):
        tiny_classifier().fit((images, labels), **arguments)


def test_a_plain_keras_model_given_to_the_finetune_job_is_refused(tmp_path):
    from bitkeras.jobs import transfer

    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    plain.save(tmp_path / "plain.keras")
    with pytest.raises(ValueError, match="without a BiT backbone"):
        transfer._pretrained_backbone(str(tmp_path / "plain.keras"))


def test_validation_data_with_a_truncated_file_skips_it_by_name(tmp_path):
    _folder_with_a_cut_file(tmp_path, 2, "b")
    images, labels = worker_data()
    classifier = BiTClassifier(BiTBackbone(**TINY), class_names=["a", "b"])
    with pytest.warns(UserWarning, match="cut.jpg"):
        history = classifier.fit((images, labels % 2),
                                 hyperrule=dict(steps=2, crop_size=16, resize_size=20),
                                 batch_size=16, validation_data=tmp_path, verbose=0)
    assert "val_loss" in history.history


def test_a_photo_collections_system_folders_and_links_are_handled(tmp_path):
    outside = tmp_path / "elsewhere.png"
    Image.fromarray(_photo(9)).save(outside)
    root = tmp_path / "photos"
    for name in ("cats", "dogs"):
        (root / name / "@eaDir").mkdir(parents=True)  # a NAS's thumbnails: real images
        Image.fromarray(_photo(1)).save(root / name / "@eaDir" / "thumb.jpg")
        Image.fromarray(_photo(2)).save(root / name / "photo.png")
        (root / name / "Thumbs.db").write_bytes(b"\0" * 64)
    (root / "__MACOSX" / "cats").mkdir(parents=True)
    (root / "__MACOSX" / "cats" / "._photo.png").write_bytes(b"\0" * 64)
    (root / "cats" / "linked.png").symlink_to(outside)
    (root / "dogs" / "gone.png").symlink_to(tmp_path / "deleted.png")
    (root / "dogs" / "loop").symlink_to(root / "dogs", target_is_directory=True)
    with pytest.warns(UserWarning, match="gone.png: a link to nothing"):
        source = sources.open_source(root)
    assert source.class_names == ("cats", "dogs")
    assert sorted(os.path.basename(os.fsdecode(path)) for path in source.table[0]) == [
        "linked.png", "photo.png", "photo.png"]


def test_a_dataset_of_bytes_that_are_no_image_is_refused_clearly():
    garbage = tf.data.Dataset.from_tensor_slices(([b"\x89PNG not really", b"\0" * 9],
                                                  [0, 1]))
    with pytest.raises(BadImageError, match="cannot be decoded"):
        sources.open_source(garbage)


def test_a_dataset_that_repeats_forever_is_refused_instead_of_read_without_end():
    # Claims infinite cardinality but ends, so that reading it fails (not hangs)
    # if the check is ever lost.
    images = np.zeros((4, 8, 8, 3), np.float32)
    endless = tf.data.Dataset.from_tensor_slices((images, [0, 1, 0, 1])).apply(
        tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
    classifier = BiTClassifier(BiTBackbone(**TINY))
    with pytest.raises(ValueError, match=r"repeats forever .*without \.repeat\(\)"):
        classifier.fit(endless.batch(2), steps_per_epoch=2, epochs=1, verbose=0)
    assert classifier.num_classes is None  # refused before the head was added
    finite = tf.data.Dataset.from_tensor_slices((images, [0, 1, 0, 1]))
    with pytest.raises(ValueError, match="repeats forever"):
        classifier.fit(finite, validation_data=endless, validation_steps=1, verbose=0)
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
    with pytest.raises(ValueError, match="repeats forever"):
        classifier.evaluate(endless, steps=1, verbose=0)
    with pytest.raises(ValueError, match="repeats forever"):
        classifier.predict(endless.map(lambda image, label: image), steps=1, verbose=0)


def test_damaged_preset_folders_and_hub_modules_are_named(tmp_path):
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=2)
    classifier.save_to_preset(tmp_path / "preset")
    (tmp_path / "preset" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="preset folder .*preset.* cannot be loaded"):
        BiTClassifier.from_preset(tmp_path / "preset")
    with pytest.raises(ValueError, match="preset folder"):
        BiTBackbone.from_preset(tmp_path / "preset")
    (tmp_path / "module").mkdir()
    (tmp_path / "module" / "saved_model.pb").write_bytes(b"\0garbage")
    with pytest.raises(ValueError, match="cannot be loaded as a SavedModel"):
        BiTClassifier.from_hub(tmp_path / "module")


def test_the_cli_keeps_the_traceback_when_asked(tmp_path, monkeypatch):
    from bitkeras.jobs import cli

    monkeypatch.setenv("BITKERAS_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        cli.main(["finetune", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_grey_arrays_paths_with_labels_and_ragged_lists_at_the_door(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (16, 16, 16), np.uint8)
    labels = np.arange(16) % 2
    classifier = BiTClassifier(BiTBackbone(**TINY))
    classifier.fit(grey, labels, epochs=1, batch_size=8, verbose=0,
                   hyperrule={"crop_size": 16, "resize_size": 16})
    rgb = np.repeat(grey[..., None], 3, axis=-1)  # what a grey image file is read as
    expected = classifier.predict(rgb, verbose=0)
    for form in (grey, grey[..., None]):
        np.testing.assert_array_equal(classifier.predict(form, verbose=0), expected)
        assert np.isfinite(classifier.evaluate(form, labels, verbose=0)).all()
    paths = []
    for index, image in enumerate(rgb[:8]):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(image).save(paths[-1])
    history = classifier.fit(paths, labels[:8], epochs=1, batch_size=8, verbose=0,
                             hyperrule={"crop_size": 16, "resize_size": 16})
    assert history.params["hyperrule"]["batch_size"] == 8
    with pytest.raises(ValueError, match="paths and labels differ in length: 8 paths, 7"):
        classifier.fit(paths, labels[:7])
    ragged = [rgb[0], rgb[1], rgb[2, :8]]
    for call in (lambda: classifier.predict(ragged), lambda: classifier.fit(ragged, labels[:3])):
        with pytest.raises(ValueError, match=r"images\[2\] is shaped \(8, 16, 3\) but "
                                             r"images\[0\] \(16, 16, 3\).*image files"):
            call()


def test_file_names_that_are_not_utf8_are_read(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("red", "blue"):
        folder = os.path.join(os.fsencode(tmp_path), name.encode())
        os.makedirs(folder)
        for index in range(4):
            image = rng.integers(0, 256, (12, 12, 3), np.uint8)
            # Latin-1 bytes, as an old camera or a Windows share may name files.
            Image.fromarray(image).save(os.path.join(folder, b"caf\xe9-%d.png" % index))
    source = sources.open_source(tmp_path, on_bad_image="raise")
    assert source.num_examples == 8 and source.class_names == ("blue", "red")
    classifier = BiTClassifier(BiTBackbone(**TINY))
    history = classifier.fit(tmp_path, epochs=1, batch_size=4, verbose=0, on_bad_image="raise",
                             hyperrule={"crop_size": 12, "resize_size": 12})
    assert len(history.epoch) == 1
    paths = sorted((tmp_path / "red").iterdir())
    assert classifier.predict(paths, verbose=0).shape == (4, 2)


_AS_THE_COMMAND = """
import sys
sys.argv[0] = "/usr/bin/bitkeras"  # what the console script's process has
from bitkeras.jobs.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit_:  # --help
    code = exit_.code
print("tensorflow loaded:", "tensorflow" in sys.modules)
sys.exit(code)
"""


def test_the_command_answers_help_without_tensorflow_and_keeps_its_log_lines_quiet(tmp_path):
    """As the `bitkeras` console script runs: the package starts light, --help loads no
    TensorFlow, and a command that does prints none of its C++ start-up lines (a user
    error is then the one line of standard error)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    script = tmp_path / "as_the_command.py"
    script.write_text(_AS_THE_COMMAND)

    def command(*arguments):
        return subprocess.run([sys.executable, str(script), *arguments], env=env,
                              capture_output=True, text=True, cwd=tmp_path, timeout=300)

    helped = command("finetune", "--help")
    assert "--data DATA" in helped.stdout and "tensorflow loaded: False" in helped.stdout
    assert helped.returncode == 0 and helped.stderr == ""
    # `python -m bitkeras` as well: Python's own import log names no TensorFlow module.
    module = subprocess.run([sys.executable, "-X", "importtime", "-m", "bitkeras", "--help"],
                            env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert module.returncode == 0 and "COMMAND" in module.stdout
    assert "bitkeras.jobs.cli" in module.stderr and "tensorflow" not in module.stderr
    failed = command("finetune", "--data", str(tmp_path / "missing"), "--out",
                     str(tmp_path / "out"))
    assert failed.returncode == 2 and "tensorflow loaded: True" in failed.stdout
    assert failed.stderr.startswith("bitkeras: error: ") and failed.stderr.count("\n") == 1, \
        failed.stderr


_HELD_IN_C = """
import signal
import time
from bitkeras.jobs import cli
with cli.interrupt_deadline(grace=0.5):
    # A command Python cannot interrupt, as one in XLA's compiler is until it returns:
    # here Python's own handler does nothing, so no KeyboardInterrupt ever comes.
    signal.signal(signal.SIGINT, lambda number, frame: None)
    print("ready", flush=True)
    time.sleep(120)
    print("finished", flush=True)
"""


def test_ctrl_c_ends_a_command_held_in_a_call_python_cannot_interrupt(tmp_path):
    """Python acts on Ctrl-C only between bytecodes; a command in a long C++ call (XLA
    compiling a step) still ends, with status 130, `grace` seconds after it."""
    script = tmp_path / "held.py"
    script.write_text(_HELD_IN_C)
    held = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert held.stdout.readline() == "ready\n"
    held.send_signal(signal.SIGINT)
    out, err = held.communicate(timeout=120)
    assert held.returncode == 130 and "finished" not in out
    assert "bitkeras: interrupted (ended 0.5 s after Ctrl-C" in err


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["BiT-HyperRule:"])
def test_ctrl_c_ends_the_finetune_command_at_each_phase(tmp_path, moment):
    """Ctrl-C while the rule is being set up and XLA measured (the line after the rule's
    block starts the calibration of a 500-step fit): exit 130. ("Estimated: ", in
    training, passed too; the fast test_cli_interrupts_say_how_to_resume covers it.)"""
    images, labels = _digit_folder(tmp_path / "data")
    script = tmp_path / "as_the_command.py"
    script.write_text(_AS_THE_COMMAND)
    environment = dict(os.environ)
    environment.pop(xla.OVERRIDE_ENV, None)  # the tests' session turns the measurement off
    run = subprocess.Popen([sys.executable, str(script), "finetune", "--data",
                            str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                            "--few-shot"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, cwd=tmp_path, env=environment)
    for line in run.stdout:
        if line.startswith(moment) or (moment == "BiT-HyperRule:" and "training examples" in
                                       line):
            break
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-2000:]
    assert "bitkeras: interrupted" in err


def _digit_folder(root, classes=3, per_class=20):
    from bitkeras.data import datasets

    images, labels = datasets.digits("all")
    for digit in range(classes):
        folder = root / f"digit{digit}"
        folder.mkdir(parents=True)
        for index, image in enumerate(images[labels == digit][:per_class]):
            Image.fromarray(image).save(folder / f"{index}.png")
    return images, labels


def test_resuming_with_another_network_says_so_in_a_few_lines(tmp_path):
    images, labels = worker_data()
    arguments = dict(hyperrule=dict(steps=2, batch_size=16, crop_size=16, resize_size=20),
                     checkpoint_dir=tmp_path, verbose=0)
    tiny_classifier().fit((images, labels), **arguments)
    wider = BiTClassifier(BiTBackbone((1, 1, 1, 1), 1), 4, name="wider")
    before = [weight.copy() for weight in wider.get_weights()]
    with pytest.raises(ValueError, match="holds the weights of another network") as caught:
        wider.fit((images, labels), **arguments)
    message = str(caught.value)
    assert len(message) < 800 and "wider is unchanged" in message, message
    for ours, theirs in zip(wider.get_weights(), before):
        np.testing.assert_array_equal(ours, theirs)
