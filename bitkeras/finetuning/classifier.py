"""BiTClassifier: a BiT classifier that fine-tunes with the BiT-HyperRule, as a Keras model.

`HeadClassifier` (the network) with BiT's weights (`bitkeras.io.pretrained`)
and Keras's calls kept: `fit` takes data in any form
`bitkeras.finetuning.sources` reads, sizes and schedules the run by the
HyperRule and trains it through the one loop of `bitkeras.finetuning.training`;
`evaluate` and `predict` run the classifier's preprocessor on it.
"""

import json
import os
import re
import tempfile
import types
import zipfile

import h5py
import keras

from bitkeras import compat, files
from bitkeras.checks import check_positive_integer
from bitkeras.finetuning import distribute, evaluation, fitting, training
from bitkeras.finetuning.hyperrule import BASE_LEARNING_RATE
from bitkeras.finetuning.optimizers import SGD
from bitkeras.finetuning.upstream import rule_from_config
from bitkeras.io.pretrained import BiTBackbone, PretrainedClassifier
from bitkeras.models.classifier import HeadClassifier, logits_loss


class FineTuningClassifier(compat.BuildFromDatasetSpec, HeadClassifier):
    """A classifier that fine-tunes with the BiT-HyperRule, keeping Keras's calls.

    The fine-tuning shared by `BiTClassifier` and `bitkeras.ResNetClassifier`:
    `compile`, `fit` (HyperRule-sized and scheduled), `evaluate` and
    `predict` (with ten-crop and multi-scale testing), `classify`. See
    `BiTClassifier` for the whole contract.
    """

    def __init__(self, backbone, num_classes=None, class_names=None, hyperrule=None,
                 preprocessor=None, compile=True, **kwargs):
        # keras-hub's `compile=True` compiles a task with its defaults; a fine-tuning
        # classifier's defaults come from the HyperRule, so `fit` (or `evaluate`) compiles
        # it then. compile=False leaves compiling to the user, as keras-hub's tasks do.
        super().__init__(backbone, num_classes, class_names, preprocessor, compile=False,
                         **kwargs)
        self.compile_by_default = compile
        # What the user's own compile() asked for (empty until then); fit keeps it.
        # Read-only and not a dict, so Keras does not track what is in it as state.
        self._compile_request = types.MappingProxyType({})
        self.batch_split = 1
        if isinstance(hyperrule, dict):
            hyperrule = rule_from_config(hyperrule)
        self.hyperrule = hyperrule
        if hyperrule is not None and self.image_size is None:
            self.preprocessor.image_converter.image_size = (hyperrule.crop_size,) * 2

    def compile(self, optimizer="auto", loss="auto", metrics="auto", jit_compile="auto",
                batch_split=1, **kwargs):
        """Keras `compile` with BiT defaults for the arguments left at "auto".

        "auto": SGD with momentum 0.9 at BiT's base learning rate 0.003, sparse
        softmax cross-entropy on the logits, accuracy; XLA on GPUs and TPUs
        and off on CPUs, where it made the R50x1 training step slower and
        inference faster (figures in benchmarks/README.md, from benchmarks/throughput.py).
        `fit` then keeps whatever is not "auto" (the user's optimizer, loss,
        metrics and settings) and fills the "auto" ones from the HyperRule
        (SGD on the rule's warm-up and decays; one-hot cross-entropy, which
        MixUp needs).

        Added to Keras's arguments: `batch_split`, the number of equal
        micro-batches a train step cuts each batch into, accumulating their
        gradients into one update (the update of the whole batch, with the
        activations of one micro-batch in memory). It is kept as the
        attribute `batch_split` and in the compile config a `.keras` file saves.

        The model returns logits: a cross-entropy named by string is taken on
        them (with a warning), a loss object on probabilities is refused
        (`bitkeras.models.classifier.logits_loss`).
        """
        training.check_batch_split(batch_split)
        loss = logits_loss(loss, self.name)
        self._compile_request = types.MappingProxyType(dict(
            optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=jit_compile,
            batch_split=batch_split, **kwargs))
        self._compile_defaults(optimizer, loss, metrics, jit_compile, batch_split, **kwargs)

    def _check_compiled(self, call):
        if not (self.compiled or self.compile_by_default):
            raise ValueError(
                f"You must call `compile()` before `{call}()`: {self.name} was made with "
                f"compile=False, which leaves compiling to you (compile() with no arguments "
                f"takes bitkeras's defaults, and fit() then fills them from the HyperRule)")

    @property
    def compile_request(self):
        """What the user's own `compile()` asked for (empty until then): `fit` keeps it."""
        return self._compile_request

    def _compile_defaults(self, optimizer="auto", loss="auto", metrics="auto",
                          jit_compile="auto", batch_split=1, **kwargs):
        if optimizer == "auto":
            optimizer = SGD(learning_rate=BASE_LEARNING_RATE, momentum=0.9)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics == "auto":
            metrics = ["accuracy"]
        jit_compile = distribute.jit_compile_for(jit_compile, distribute.strategy_for("default"))
        self._compile_keras(optimizer=optimizer, loss=loss, metrics=metrics,
                            jit_compile=jit_compile, batch_split=batch_split, **kwargs)

    def _compile_keras(self, batch_split=1, **arguments):
        """Keras's own compile, and the micro-batches its train step will use."""
        check_positive_integer(batch_split, "batch_split")
        keras.Model.compile(self, **arguments)
        self.batch_split = batch_split

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            config["batch_split"] = self.batch_split
        return config

    def compile_from_config(self, config):
        """Restores the compile arguments saved in a `.keras` file."""
        config = dict(config)
        batch_split = config.pop("batch_split", 1)
        self._compile_keras(batch_split=batch_split,
                            **keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def fit(self, x=None, y=None, batch_size=None, epochs=None, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1, *, hyperrule=None,
            trainable="all", examples_per_class=None, seed=0, class_names=None,
            on_bad_image="warn", strategy="auto", precision="float32", checkpoint_dir=None,
            checkpoint_every=None, **kwargs):
        """Keras's `fit`, sized and scheduled by the BiT-HyperRule; returns Keras's `History`.

        `x`: images as a NumPy array with labels `y` (as in Keras), or data
        that carries its labels: a folder with one sub-folder of images per
        class (JPEG, PNG, BMP, GIF, ...), "tfds:NAME" (its "train" split) or
        "tfds:NAME:SPLIT", a tuple `(images, labels)`, or a finite
        tf.data.Dataset of `(image, label)`, batched or not. Labels as Keras's
        losses take them: class ids, shaped (N,) or (N, 1), or one-hot rows. A
        classifier without a head gets one sized (and named) from the data.

        The rule (`bitkeras.HyperRule`) is computed from the number of
        examples and their typical size. `hyperrule` changes it, as one
        object: a dict of the fields to change (`hyperrule={"crop_size": 32,
        "flip": False, "steps": 300}`; "variant": "released" for the released
        code's resolutions), or a whole rule to run as it is (a `HyperRule`, an
        `UpstreamRecipe`). Keras's `batch_size` and `epochs` set its batch (the
        learning rate scaled linearly, as the rule says) and its length
        (`epochs` passes of `steps_per_epoch` steps, default one pass over the
        data; warm-up and decays move in proportion). It is printed, and kept
        in `history.hyperrule` and on the classifier. Without `epochs`, Keras
        epochs are rounds of at least one pass (at most 20 of them), stopping
        after exactly the rule's `steps`.

        A classifier the user compiled trains with the user's optimizer, loss
        and metrics (those not left at "auto"); a sparse loss gets class ids
        and needs `mixup_alpha=0`. Otherwise fit compiles SGD (momentum 0.9)
        on the rule's schedule and one-hot cross-entropy.

        Keras's `verbose`, `callbacks`, `validation_data` (any form `x`
        takes), `validation_split` (arrays), `shuffle`, `class_weight`,
        `steps_per_epoch`, `validation_steps`, `validation_batch_size` and
        `validation_freq` keep their Keras meaning. `sample_weight` and
        `initial_epoch` are refused (the rule's pipeline has no per-example
        weights; resume with `checkpoint_dir`).

        XLA and micro-batches are `compile`'s; the keywords bitkeras adds
        (`trainable`, `strategy`, ...): `bitkeras.finetuning.fitting`.
        """
        fitting.check_keras_arguments(x, sample_weight, initial_epoch, seed, epochs, hyperrule,
                                      kwargs)
        self._check_compiled("fit")
        strategy = distribute.training_strategy(self, strategy)
        fitting.check_strategy(self, strategy, precision)
        source, validation_data = fitting.open_data(
            x, y, validation_split, validation_data, class_names, on_bad_image,
            examples_per_class, seed)
        plan = fitting.plan(self, source, hyperrule, batch_size, epochs, steps_per_epoch,
                            strategy, trainable)
        # Last of the checks: it may add the head, which nothing should do on bad input.
        source = fitting.adopt_classes(self, source)
        validation = fitting.validation_dataset(self, validation_data, plan, on_bad_image,
                                                validation_batch_size)
        rule = plan.rule
        if verbose:
            print(rule.describe(source.num_examples))
        run = fitting.run_record(self, source, plan, seed, examples_per_class, trainable,
                                 precision, shuffle, checkpoint_dir)
        jit_compile = fitting.jit_compile(self, strategy, plan, precision, verbose)
        with training.on_strategy(self, strategy, precision) as model, \
                training.trainable_from(model, trainable):
            model.compile_for_rule(rule, plan.batch_split, jit_compile, self.compile_request)
            history, start_step = training.train(
                model, rule, fitting.batches(self, source, plan, seed, shuffle), plan.passes,
                run, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                callbacks=callbacks, verbose=verbose,
                validation_data=fitting.validation_batches(validation, strategy, jit_compile),
                class_weight=class_weight, validation_steps=validation_steps,
                validation_freq=validation_freq)
        self.hyperrule = rule
        if self.preprocessor is not None:
            self.preprocessor.image_converter.image_size = (rule.crop_size, rule.crop_size)
        return fitting.annotated(history, rule, start_step)

    def train_step(self, *arguments):  # (data), or JAX's (state, data)
        if self.batch_split == 1:
            logs = super().train_step(*arguments)
        else:
            logs = training.accumulated_train_step(self, *arguments, self.batch_split)
        return distribute.reducible_logs(logs, distribute.model_strategy(self))

    def test_step(self, *arguments):
        return distribute.reducible_logs(super().test_step(*arguments),
                                         distribute.model_strategy(self))

    def compile_for_rule(self, rule, batch_split=1, jit_compile=False, request=None):
        """Compiles for training on `rule`: a fresh optimizer, the fit's loss and metrics.

        What `fit` and `bitkeras.pretrain` call before their training loop.
        `request`: compile arguments given by the user (`compile`'s own, for
        `fit`); what it leaves out or at "auto" comes from the rule: SGD on its
        schedule (with an UpstreamRecipe's weight decay), one-hot
        cross-entropy, accuracy. `batch_split`: micro-batches a train step
        accumulates over.
        """
        arguments = dict(request or {}, jit_compile=jit_compile, batch_split=batch_split)
        optimizer = arguments.pop("optimizer", "auto")
        loss = arguments.pop("loss", "auto")
        metrics = arguments.pop("metrics", "auto")
        sparse_labels = training.wants_sparse_labels(loss)
        self._compile_keras(
            optimizer=training.make_optimizer(rule) if optimizer == "auto" else optimizer,
            loss=keras.losses.CategoricalCrossentropy(from_logits=True) if loss == "auto"
            else loss,
            metrics=self._fit_metrics(sparse_labels) if metrics == "auto" else metrics,
            **arguments,
        )
        if self.built and not self.optimizer.built:
            # Its slots now, not inside the first trace of the train step: a
            # tf.function that creates variables traces twice.
            self.optimizer.build(self.trainable_variables)

    def _fit_metrics(self, sparse_labels=False):
        """Accuracy, and top-5 where it means something, on the labels fit feeds."""
        if sparse_labels:
            metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
            top5 = keras.metrics.SparseTopKCategoricalAccuracy
        else:
            metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
            top5 = keras.metrics.TopKCategoricalAccuracy
        if self.num_classes > 5:
            metrics.append(top5(k=5, name="top5_accuracy"))
        return metrics


    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False, *, image_size=None,
                 test_time_augmentation=None, on_bad_image="warn", **kwargs):
        """Keras's `evaluate` on images preprocessed as fine-tuning does; Keras's return.

        The loss and metrics are the compiled ones: after `fit`, the loss,
        "accuracy" and, with more than 5 classes, "top5_accuracy"; a
        classifier never compiled is compiled with `compile()`'s defaults
        first. `x`, `y` as in `fit` ("tfds:NAME" reads the "test" split, else
        "validation"). Images go through the classifier's preprocessor, which
        resizes them to its `image_size`: the crop size of the rule the
        classifier was fine-tuned with, or a preset's resolution
        (`image_size=` to override for the call; a classifier with no size
        yet uses the HyperRule's crop size for the data).
        `test_time_augmentation="ten_crop"` scores the mean probabilities of
        ten crops of the image resized as the rule resizes for training;
        `"multi_scale"`, of the whole image, aspect kept, at shorter sides 224,
        256, 384, 480 and 640 scaled by the classifier's `image_size` / 224
        (ResNet's fully-convolutional multi-scale testing, stated for 224-pixel
        crops; one image a batch; `image_size=` does not apply). Unreadable
        files are skipped with a warning, or raise with `on_bad_image="raise"`.
        `batch_size` (default 32 images), `verbose`,
        `steps`, `callbacks` and `return_dict` keep their Keras meaning.
        """
        if kwargs.pop(compat.KERAS_FIT_VALIDATION, False):
            if evaluation.holds_real_rows(x):  # batches filled up to one size
                return evaluation.score_real_rows(self, x, steps, verbose, callbacks, return_dict)
            # Keras's own validation inside fit: its plain loop on our dataset.
            return super().evaluate(x, y, batch_size=batch_size, verbose=verbose,
                                    sample_weight=sample_weight, steps=steps,
                                    callbacks=callbacks, return_dict=return_dict,
                                    **{compat.KERAS_FIT_VALIDATION: True}, **kwargs)
        if kwargs:
            raise TypeError(f"unknown evaluate argument(s) {sorted(kwargs)}")
        if sample_weight is not None:
            raise ValueError("evaluate(sample_weight=...) is not supported by bitkeras's "
                             "evaluation pipeline; call keras.Model.evaluate on your own batches")
        self.require_head()
        self._check_compiled("evaluate")
        if not self.compiled:
            self._compile_defaults()
        return evaluation.evaluate(self, x, y, batch_size, verbose, steps, callbacks,
                                   return_dict, image_size, test_time_augmentation,
                                   on_bad_image)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None, *,
                image_size=None, test_time_augmentation=None):
        """Keras's `predict`: logits, a NumPy array (N, num_classes), as `call` returns them.

        `x`: an array (N, height, width, 3) (uint8, or float in [0, 1]), image
        file paths (a list, or one path), or a tf.data.Dataset of images or of
        (image, label), batched or not. Preprocessing as in `evaluate`. With
        `test_time_augmentation="ten_crop"` the rows are the log of the mean
        probability over the ten views: softmax of them gives those means, as
        it gives the probabilities of plain logits; likewise over the scales with
        `"multi_scale"` (see `evaluate`). `classify` returns class
        ids, probabilities and names instead.
        """
        self.require_head()
        return evaluation.predict(self, x, batch_size, verbose, steps, callbacks, image_size,
                                  test_time_augmentation)

    def get_config(self):
        config = super().get_config()
        config["hyperrule"] = None if self.hyperrule is None else self.hyperrule.get_config()
        return config


@keras.saving.register_keras_serializable(package="bitkeras")
class BiTClassifier(PretrainedClassifier, FineTuningClassifier):
    """A BiT backbone and a dense head returning logits, shape (batch, num_classes).

    A keras-hub `ImageClassifier` task for `BiTBackbone`: `save_to_preset(dir)`
    writes a keras-hub preset folder (with a model card) that
    `BiTClassifier.from_preset(dir)` and `keras_hub.models.ImageClassifier.from_preset(dir)`
    both load.

    `HeadClassifier` (the network: a zero-initialised float32 head, the
    preprocessor) with BiT's weights (`from_preset`, `from_hub`, `export`,
    see `bitkeras.io.pretrained`). Without `num_classes` the classifier has
    no head until `fit` reads the number of classes (and their names) from
    the data. `hyperrule`: the rule it was fine-tuned with (set by `fit`,
    saved with the model).

    A Keras model whose calls keep Keras's meaning: `fit(x, y, ...)`
    fine-tunes with the BiT-HyperRule filling in what the call leaves open,
    on arrays, a folder of class sub-folders, a TFDS name or a tf.data
    dataset; `predict(x)` returns logits as an array; `evaluate(x, y)` the
    compiled loss and metrics; `classify(x)` adds class ids, probabilities
    and names. Images follow `bitkeras.models.images`: float in [0, 1] or uint8.

    Example:

    >>> backbone = BiTBackbone(block_units=(1, 1, 1, 1), width_factor=0.5)
    >>> classifier = BiTClassifier(backbone)
    >>> images = np.random.default_rng(0).uniform(0, 1, (16, 32, 32, 3)).astype("float32")
    >>> labels = np.arange(16) % 2
    >>> history = classifier.fit(images, labels, epochs=2, batch_size=8, verbose=0,
    ...                          hyperrule={"crop_size": 32, "resize_size": 36})
    >>> len(history.epoch), classifier.hyperrule.steps, classifier.num_classes
    (2, 4, 2)
    >>> classifier.predict(images[:3], verbose=0).shape
    (3, 2)
    >>> classifier.fit("flowers/train")  # doctest: +SKIP
    """

    backbone_cls = BiTBackbone


def load_model(path, safe_mode=True):
    """A bitkeras model saved with `model.save(path)` (a `.keras` file).

    Restores class names, the HyperRule (and so the preprocessing sizes) and,
    for a compiled model, its optimizer state. A model on a TF-Hub module
    layer reloads the module from its handle, which Keras only does with
    `safe_mode=False` (a SavedModel can run any TensorFlow graph: load only
    files you trust).
    """
    path = os.fspath(path)
    files.sweep_partials(os.path.dirname(os.path.abspath(path)))  # what killed saves left
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file {path!r}")
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path!r} is not a .keras file (a zip archive): it is empty, truncated or another "
            f"kind of file; save the model again"
        )
    try:
        with tempfile.TemporaryDirectory() as folder:
            return keras.saving.load_model(_functional_layout(path, folder),
                                           safe_mode=safe_mode)
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise ValueError(
            f"{path!r} cannot be loaded as a Keras model ({type(error).__name__}: {error}); "
            f"save the model again"
        ) from error


WEIGHTS_FILE = "model.weights.h5"
"""Where a `.keras` archive keeps the weights, by Keras's paths of the model's layers."""


def _functional_layout(path, folder):
    """`path`, or where in `folder` a copy is with its classifier's weights where Keras looks
    for them now.

    Classifiers saved before they became functional keras-hub tasks keep their weights
    under their attributes (`backbone/`, `head/`); a functional model's are under its
    layers, named by class (`layers/bi_t_backbone/`, `layers/dense/`), and BiT's input
    scaling had another class (`rescaling`). Other files are returned as they are.
    """
    with zipfile.ZipFile(path) as archive:
        with archive.open(WEIGHTS_FILE) as weights, h5py.File(weights, "r") as groups:
            legacy = "backbone" in groups  # read from the file's index, not the weights
        if not legacy:
            return path
        config = json.loads(archive.read("config.json"))
        copy = os.path.join(folder, "model.keras")
        with zipfile.ZipFile(copy, "w") as target:
            for item in archive.infolist():
                if item.filename != WEIGHTS_FILE:
                    target.writestr(item, archive.read(item))
            moved = os.path.join(folder, WEIGHTS_FILE)
            with open(moved, "wb") as out:
                out.write(archive.read(WEIGHTS_FILE))
    backbone = _snake_case(config["config"]["backbone"]["class_name"])
    with h5py.File(moved, "r+") as weights:
        weights.move("backbone", f"layers/{backbone}")
        if "head" in weights:
            weights.move("head", "layers/dense")
        inner = weights[f"layers/{backbone}/layers"]
        if "rescaling" in inner:
            inner.move("rescaling", "input_scaling")
        weights.create_group("layers/input_layer/vars")
    with zipfile.ZipFile(copy, "a") as target:
        target.write(moved, WEIGHTS_FILE)
    return copy


def _snake_case(class_name):
    """A class name as Keras names its object in a weights file ("BiTBackbone" ->
    "bi_t_backbone")."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


