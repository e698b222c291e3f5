import signal

import keras
import numpy as np
import pytest

from bitkeras.finetuning import run_state
from tests.helpers import fit_worker, wait_for_line
from tests.helpers.fit_worker import classifier as tiny_classifier
from tests.helpers.fit_worker import data as worker_data


@pytest.mark.slow
def test_a_fit_killed_with_sigkill_resumes_and_ends_equal_to_an_uninterrupted_one(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir(), killed.mkdir()
    uninterrupted = fit_worker.start("resume", straight, straight / "checkpoints")
    victim = fit_worker.start("resume", killed, killed / "checkpoints", "pause")
    # It holds still once a checkpoint is written: killed mid-run, whatever the speed.
    wait_for_line(victim, fit_worker.PAUSED)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    victim.stdout.close()
    assert not (killed / "final.npy").exists()
    output = fit_worker.finish(fit_worker.start("resume", killed, killed / "checkpoints"))
    start = int(output.split("start_step ")[1].split()[0])
    assert 0 < start < 12 and start % 3 == 0  # resumed from a checkpoint, mid-run
    assert "optimizer_step 12" in output  # and finished at the planned step count
    assert "optimizer_step 12" in fit_worker.finish(uninterrupted)
    np.testing.assert_allclose(np.load(killed / "final.npy"), np.load(straight / "final.npy"),
                               atol=1e-5)


def test_a_nan_loss_stops_the_fit_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    classifier = tiny_classifier()
    images, labels = worker_data()

    class PoisonAtStep(keras.callbacks.Callback):
        # A weight turned NaN after step 4: the loss of step 5 is NaN.
        def on_train_batch_end(self, batch, logs=None):
            if run_state.optimizer_step(self.model) == 4:
                self.model.head.bias.assign(np.full(4, np.nan, np.float32))

    with pytest.raises(run_state.NonFiniteLossError, match=r"loss became nan at step 5") as error:
        classifier.fit((images, labels), hyperrule=dict(steps=10, crop_size=16, resize_size=20),
                       batch_size=16,
                       checkpoint_dir=tmp_path, checkpoint_every=2, verbose=0,
                       callbacks=[PoisonAtStep()])
    assert f"back at its last good checkpoint, step 4 in {str(tmp_path)!r}" in str(error.value)
    kept = tiny_classifier()
    kept.load_weights(tmp_path / run_state.CHECKPOINT_FILE)
    assert all(np.isfinite(w).all() for w in kept.get_weights())
    for restored, saved in zip(classifier.get_weights(), kept.get_weights()):
        np.testing.assert_array_equal(restored, saved)  # the classifier is back there too


def test_a_checkpoint_of_nan_weights_is_never_written(tmp_path):
    classifier = tiny_classifier()
    classifier.compile(optimizer="sgd", loss="mse")
    classifier.optimizer.build(classifier.trainable_variables)
    callback = run_state.RunCheckpoint(tmp_path, every=1, run={})
    callback.set_model(classifier)
    callback.save()
    good = (tmp_path / run_state.CHECKPOINT_FILE).read_bytes()
    classifier.head.kernel.assign(np.full(classifier.head.kernel.shape, np.inf, np.float32))
    with pytest.raises(run_state.NonFiniteLossError, match="head.*NaN or Inf after step 0"):
        callback.save()
    assert (tmp_path / run_state.CHECKPOINT_FILE).read_bytes() == good


def test_a_checkpoint_folder_of_another_run_is_refused(tmp_path):
    images, labels = worker_data()
    rule = dict(batch_size=16, crop_size=16, resize_size=20)
    arguments = dict(checkpoint_dir=tmp_path, verbose=0)
    tiny_classifier().fit((images, labels), hyperrule=dict(rule, steps=2), **arguments)
    with pytest.raises(ValueError, match="holds another run"):
        tiny_classifier().fit((images, labels), hyperrule=dict(rule, steps=3), **arguments)
    # The same run again is already complete: it resumes at its end and trains no more.
    history = tiny_classifier().fit((images, labels), hyperrule=dict(rule, steps=2), **arguments)
    assert history.start_step == 2
