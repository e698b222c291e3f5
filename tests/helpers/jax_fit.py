"""Fine-tunes a tiny BiT with the HyperRule under Keras's JAX backend; prints one JSON line.

    KERAS_BACKEND=jax python -m tests.helpers.jax_fit CHECKPOINT_DIR

A fit with MixUp and checkpoints, interrupted after its first checkpoint and
resumed by the same call; a fit whose loss turns NaN; micro-batches, refused by
`compile`; and `compile()` alone, which takes XLA there as `fit` does.
"""

import json
import sys

import keras
import numpy as np

from bitkeras import BiTBackbone, BiTClassifier
from bitkeras.finetuning import run_state
from tests.helpers import TINY

RULE = dict(steps=40, crop_size=16, resize_size=18, base_learning_rate=0.05,
            mixup_alpha=0.2)


class Interrupt(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == 15:
            raise KeyboardInterrupt


def classifier():
    keras.utils.set_random_seed(0)
    return BiTClassifier(BiTBackbone(**TINY), num_classes=2)


def main(checkpoints):
    rng = np.random.default_rng(0)
    labels = np.arange(64) % 2
    images = (rng.uniform(0, 0.4, (64, 16, 16, 3)) + 0.5 * labels[:, None, None, None])
    images = images.astype(np.float32)
    fit = dict(batch_size=16, hyperrule=RULE, checkpoint_dir=checkpoints, checkpoint_every=10,
               verbose=0)
    try:
        classifier().fit(images, labels, callbacks=[Interrupt()], **fit)
    except KeyboardInterrupt:
        pass
    resumed = classifier()
    history = resumed.fit(images, labels, **fit)
    results = {"backend": keras.backend.backend(), "jit_compile": resumed.jit_compile,
               "start_step": history.start_step,
               "iterations": int(resumed.optimizer.iterations),
               "accuracy": resumed.evaluate(images, labels, return_dict=True,
                                            verbose=0)["accuracy"],
               "finite": bool(np.isfinite(resumed.predict(images, verbose=0)).all())}
    exploding = classifier()
    before = exploding.get_weights()
    try:
        exploding.fit(images, labels, batch_size=16, verbose=0, hyperrule=dict(
            RULE, base_learning_rate=1e12, warmup_steps=0, decay_boundaries=()))
    except run_state.NonFiniteLossError:
        results["nan_stop_restored"] = all(np.array_equal(a, b) for a, b in zip(
            before, exploding.get_weights()))
    try:
        classifier().compile(batch_split=2)
    except NotImplementedError as error:
        results["batch_split"] = str(error)
    compiled = classifier()
    compiled.compile()
    results["compile_jit"] = compiled.jit_compile
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
