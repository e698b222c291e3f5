"""Fine-tunes a tiny BiT with the HyperRule under Keras's JAX backend; prints one JSON line.

    KERAS_BACKEND=jax python -m tests.helpers.jax_fit CHECKPOINT_DIR

A fit with MixUp and checkpoints, interrupted after its first checkpoint and
resumed by the same call; a fit whose loss turns NaN; `compile()` alone, which takes
XLA there as `fit` does; fits in mixed bfloat16 and float16 (loss scaling); a student
distilled from the trained classifier; and fits with `keras.distribution.DataParallel`
over two host devices and with micro-batches (`compile(batch_split=...)`), each against
the same fit on one device, whole.
"""

import json
import os
import sys

# Two host devices for the data-parallel fit (XLA reads this once, before JAX starts).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=2")

import keras  # noqa: E402 (after XLA_FLAGS)
import numpy as np

from bitkeras import BiTBackbone, BiTClassifier, distill  # noqa: E402
from bitkeras.finetuning import run_state  # noqa: E402
from tests.helpers import TINY  # noqa: E402

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
    compiled = classifier()
    compiled.compile()
    results["compile_jit"] = compiled.jit_compile
    results.update(mixed_precision(images, labels))
    results.update(distilled(resumed, images))
    results.update(data_parallel(images, labels))
    print(json.dumps(results))


def mixed_precision(images, labels):
    """Fits in each half precision: the compute dtype and optimizer seen in training, the
    first and last losses, the accuracy before and after, and the classifier's dtypes."""
    results = {}
    for precision in ("mixed_bfloat16", "mixed_float16"):
        model, seen = classifier(), {}

        class Seen(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                seen.update(optimizer=type(self.model.optimizer).__name__,
                            compute_dtype=self.model.compute_dtype)

        before = model.evaluate(images, labels, verbose=0, return_dict=True)["accuracy"]
        history = model.fit(images, labels, batch_size=16, verbose=0, precision=precision,
                            callbacks=[Seen()], hyperrule=dict(
                                RULE, steps=30, mixup_alpha=0.0, base_learning_rate=0.003))
        results[precision] = {
            **seen, "losses": [history.history["loss"][0], history.history["loss"][-1]],
            "accuracy": [before, model.evaluate(images, labels, verbose=0,
                                                return_dict=True)["accuracy"]],
            "dtypes": sorted({str(weight.dtype) for weight in model.weights}),
            "classifier_dtype": model.compute_dtype}
    return results


def distilled(teacher, images):
    """A fresh tiny BiT distilled from the trained one, images alone, consistent teaching."""
    student = classifier()
    history = distill(teacher, student, images, mode="consistent", batch_size=16, verbose=0,
                      hyperrule=dict(RULE, steps=12, mixup_alpha=0.0))
    agree = np.argmax(student.predict(images, verbose=0), -1) == np.argmax(
        teacher.predict(images, verbose=0), -1)
    return {"distill_loss": history.history["loss"][-1],
            "distill_agreement": float(np.mean(agree))}


def data_parallel(images, labels):
    """The same short fit on one device and split over two by Keras's DataParallel.

    Two steps: the updates then agree within float error (5e-7 of their scale
    after one step, 2e-6 after two); over more steps at this learning rate the
    two runs' rounding drifts apart (4e-3 after eight).
    """
    import jax

    fit = dict(batch_size=16, verbose=0, hyperrule=dict(RULE, steps=2))

    def trained(batch_split=1):
        model = classifier()
        model.compile(batch_split=batch_split)
        model.fit(images, labels, **fit)
        return model

    alone, micro = trained(), trained(batch_split=4)
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    try:
        split, split_micro = trained(), trained(batch_split=2)
        kernel = split.head.kernel.value
        devices = len(kernel.sharding.device_set)
        accuracy = split.evaluate(images, labels, return_dict=True, verbose=0)["accuracy"]
        predicted = split.predict(images, verbose=0).shape
    finally:
        keras.distribution.set_distribution(None)
    # The updates compared, relative to their scale (all start from the same weights).
    start = classifier().get_weights()

    def update(model):
        return [after - before for after, before in zip(model.get_weights(), start)]

    one = update(alone)
    scale = max(float(np.abs(change).max()) for change in one)

    def difference(model):
        return max(float(np.abs(a - b).max()) for a, b in zip(one, update(model))) / scale

    return {"devices": len(jax.devices()), "kernel_devices": devices,
            "update_scale": scale, "data_parallel_difference": difference(split),
            "micro_batches_difference": difference(micro),
            "micro_batches_iterations": int(micro.optimizer.iterations),
            "data_parallel_micro_batches_difference": difference(split_micro),
            "data_parallel_accuracy": accuracy, "data_parallel_predicted": predicted}


if __name__ == "__main__":
    main(sys.argv[1])
