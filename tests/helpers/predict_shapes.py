"""Counts what `predict` traces and compiles when the number of images changes.

    python -m tests.helpers.predict_shapes DUMP_DIR     # prints one JSON line

Run with XLA_FLAGS=--xla_dump_to=DUMP_DIR, set before TensorFlow starts (XLA
reads its flags once per process), so that every program XLA compiles leaves a
file there; BITKERAS_NATIVE=0 runs the inference's XLA clusters instead of
bitkeras's C++ ops. After a first call, predicts of 16, 20, 7 and 33 images
(partial batches, new counts) are counted: traces of the predict function and
XLA programs compiled, and then for 165 images (a call long enough to standardize
the kernels once, outside the graph). Then the same for the exported SavedModel's
`serving_default` signature (images of any count and size, as TF Serving
sends them): its first call, then 20, 7 and 33 images. Last, `evaluate`'s: see
`evaluate_counts`.
"""

import json
import pathlib
import sys

import keras
import numpy as np
import tensorflow as tf

from bitkeras import BiTBackbone, BiTClassifier
from tests.helpers import TINY, reference


def compiled(folder):
    return len(list(pathlib.Path(folder).glob("*before_optimizations.txt")))


def main(folder):
    keras.utils.set_random_seed(0)
    classifier = BiTClassifier(BiTBackbone(**TINY), num_classes=3)
    head = classifier.head.kernel
    head.assign(np.random.default_rng(1).normal(0, 0.1, head.shape).astype("float32"))
    images = np.random.default_rng(0).uniform(0, 255, (33, 32, 32, 3)).astype("uint8")

    def predict(batch):
        return classifier.predict(batch, verbose=0, image_size=32)

    first = predict(images[:16])
    traces, programs = classifier.predict_function.experimental_get_tracing_count(), compiled(
        folder)
    function = classifier.predict_function
    outputs = {count: predict(images[:count]) for count in (16, 20, 7, 33)}
    # A call of 5 batches (of 32): the first that standardizes the kernels once per call.
    outputs[165] = predict(np.concatenate([images] * 5))
    # A function made anew (Keras's reset) is a new trace too: said so, not counted.
    new_traces = (classifier.predict_function.experimental_get_tracing_count() - traces
                  if classifier.predict_function is function else "predict_function made anew")
    new_programs = compiled(folder) - programs
    one_by_one = np.concatenate([predict(images[k:k + 1]) for k in range(33)])
    scale = np.abs(one_by_one).max()
    one_by_one = np.concatenate([one_by_one] * 5)  # the images of the 165
    classifier.export(f"{folder}-export")
    serving = tf.saved_model.load(f"{folder}-export").signatures["serving_default"]
    pixels = tf.image.resize(images.astype("float32") / 255, (32, 32))
    served = {16: serving(images=pixels[:16])["logits"].numpy()}
    serving_programs = compiled(folder)
    served.update({count: serving(images=pixels[:count])["logits"].numpy()
                   for count in (20, 7, 33)})
    serving_new_programs = compiled(folder) - serving_programs
    evaluated = evaluate_counts(classifier, images, one_by_one[:33], folder)
    print(json.dumps({
        **evaluated,
        "serving_new_programs": serving_new_programs,
        "serving_difference": max(float(np.abs(logits - one_by_one[:len(logits)]).max() / scale)
                                  for logits in served.values()),
        "first_traces": traces,
        "new_traces": new_traces,
        "new_programs": new_programs,
        "rows": {count: len(output) for count, output in outputs.items()},
        "difference": max(float(np.abs(output - one_by_one[:len(output)]).max() / scale)
                          for output in [first, *outputs.values()]),
    }))


def evaluate_counts(classifier, images, logits, folder):
    """Traces of the classifier's call and XLA programs compiled over evaluates of 16, 20,
    7 and 33 images after a first, compiled as fit leaves it and then with XLA for the
    whole step (`jit_compile=True`), and how far each result is from the loss and
    accuracy computed here from `logits`, the images' logits one by one."""
    labels = np.arange(len(images)) % 3
    traced = [0]
    call = classifier.call

    def counted(*args, **kwargs):  # run once per trace in graphs, once per call eagerly
        traced[0] += 1
        return call(*args, **kwargs)

    classifier.call = counted
    counts = {}
    for name, jit_compile in (("evaluate", False), ("evaluate_xla", True)):
        classifier.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                           metrics=["accuracy"], jit_compile=jit_compile)
        classifier.evaluate(images[:16], labels[:16], verbose=0, image_size=32)
        traces, programs = traced[0], compiled(folder)
        errors = []
        for count in (16, 20, 7, 33):
            scores = classifier.evaluate(images[:count], labels[:count], verbose=0,
                                         image_size=32, return_dict=True)
            loss = reference.cross_entropy(logits[:count], labels[:count]).mean()
            accuracy = (logits[:count].argmax(-1) == labels[:count]).mean()
            errors += [abs(scores["loss"] - loss) / loss, abs(scores["accuracy"] - accuracy)]
        counts.update({f"{name}_new_traces": traced[0] - traces,
                       f"{name}_new_programs": compiled(folder) - programs,
                       f"{name}_error": float(max(errors))})
    classifier.call = call
    return counts


if __name__ == "__main__":
    main(sys.argv[1])
