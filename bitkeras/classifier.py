"""BiTClassifier: a BiTBackbone with a dense head, images in [0, 1] -> logits.

Fine-tuning (`fit`), evaluation and prediction take data in any form
`bitkeras.sources` reads and run it through `bitkeras.pipeline`.
"""

import dataclasses

import keras
import numpy as np

from bitkeras import checkpoint, distribute, files, pipeline, presets, run_state, sources, training
from bitkeras.backbone import BiTBackbone
from bitkeras.checks import check_positive_integer
from bitkeras.hyperrule import BASE_LEARNING_RATE, HyperRule
from bitkeras.images import standardize_images
from bitkeras.weights import resolve_weights

EVAL_BATCH_SIZE = 32
"""Images per batch in `evaluate` and `predict` (views, with ten-crop)."""

TEST_TIME_AUGMENTATIONS = (None, "ten_crop")


@keras.saving.register_keras_serializable(package="bitkeras")
class BiTClassifier(files.AtomicSaveMixin, keras.Model):
    """A BiT backbone and a dense head returning logits, shape (batch, num_classes).

    The head is initialised to zeros (weights and bias), as BiT fine-tuning
    starts. Without `num_classes` the classifier has no head until `fit`
    reads the number of classes (and their names) from the data.

    `fit(data)` fine-tunes with the BiT-HyperRule on a folder of class
    sub-folders, a TFDS name, `(images, labels)` arrays or a tf.data dataset;
    `evaluate(data)` returns accuracy and loss; `predict(images)` returns class
    ids, probabilities and class names. Images follow `bitkeras.images`: float
    in [0, 1] or uint8.

    Example:

    >>> backbone = BiTBackbone(block_units=(1, 1, 1, 1), width_factor=0.5)
    >>> classifier = BiTClassifier(backbone)
    >>> history = classifier.fit("flowers/", steps=50)   # one sub-folder per class
    >>> classifier.predict(["rose.jpg"]).class_names
    ('roses',)
    >>> imagenet = BiTClassifier.from_preset("BiT-M-R50x1-ILSVRC2012", weights="auto")
    """

    def __init__(self, backbone, num_classes=None, class_names=None, hyperrule=None, **kwargs):
        kwargs.setdefault("name", "bit_classifier")
        super().__init__(**kwargs)
        self.backbone = backbone
        self.head = None
        self.num_classes = None
        self.class_names = None
        if isinstance(hyperrule, dict):
            hyperrule = HyperRule(**hyperrule)
        self.hyperrule = hyperrule
        if class_names is not None:
            class_names = tuple(str(name) for name in class_names)
            if num_classes is None:
                num_classes = len(class_names)
            elif len(class_names) != num_classes:
                raise ValueError(
                    f"class_names has {len(class_names)} names for num_classes={num_classes}"
                )
            self.class_names = class_names
        if num_classes is not None:
            self._add_head(num_classes)

    def _add_head(self, num_classes):
        check_positive_integer(num_classes, "num_classes")
        # float32 under any dtype policy: logits and the loss keep full precision.
        self.head = keras.layers.Dense(
            num_classes, kernel_initializer="zeros", bias_initializer="zeros", name="head",
            dtype="float32",
        )
        self.num_classes = num_classes
        self.build((None, None, None, 3))

    def build(self, input_shape=None):
        self._require_head()
        self.head.build((None, self.backbone.feature_channels))
        self.built = True

    def call(self, images, training=None):
        self._require_head()
        images = standardize_images(images, self.name)
        return self.head(self.backbone(images, training=training))

    def compile(self, optimizer="auto", loss="auto", metrics="auto", jit_compile=False,
                **kwargs):
        """Keras `compile` with BiT defaults for the arguments left at "auto".

        XLA is off by default: on CPU it made the R50x1 training step slower
        and inference faster (figures in README.md, from
        benchmarks/throughput.py); pass `jit_compile=True` for inference-heavy use.
        """
        if optimizer == "auto":
            optimizer = keras.optimizers.SGD(learning_rate=BASE_LEARNING_RATE, momentum=0.9)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics == "auto":
            metrics = ["accuracy"]
        self._micro_batches = 1  # whole batches, unless fit sets batch_split after this
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics,
                        jit_compile=jit_compile, **kwargs)

    def compile_from_config(self, config):
        """Restores the compile arguments saved in a `.keras` file."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def fit(self, data=None, validation_data=None, hyperrule=None, *, examples_per_class=None,
            seed=0, trainable="all", batch_split=1, variant="paper", split=None,
            class_names=None, on_bad_image="warn", callbacks=None, verbose="auto",
            strategy="auto", precision="float32", jit_compile="auto", checkpoint_dir=None,
            checkpoint_every=None, **overrides):
        """Fine-tunes on `data` with the BiT-HyperRule; returns Keras's `History`.

        `data`: a folder with one sub-folder of images per class (JPEG, PNG,
        BMP, GIF, ...), "tfds:NAME" (or "tfds:NAME:SPLIT"; `split` defaults to
        "train"), a tuple `(images, labels)` of NumPy arrays, or a
        tf.data.Dataset of unbatched `(image, label)`. A classifier without a
        head gets one sized (and named) from the data.

        The rule (`bitkeras.HyperRule`) is computed from the number of
        examples and their typical size, unless `hyperrule` is given; keyword
        `overrides` replace its fields (`steps=`, `batch_size=`,
        `crop_size=`, `mixup_alpha=`, `flip=False`, ...). It is printed at the
        start, stored as `history.hyperrule` and on the classifier.

        - `examples_per_class`, `seed`: few-shot training on K examples of each
          class, drawn reproducibly; `seed` also seeds the augmentation.
        - `trainable`: "all" (full fine-tuning), "head" (a linear probe on
          frozen features) or "block1".."block4" (that block onwards).
        - `batch_split`: accumulate gradients over this many micro-batches per
          optimizer step (same update as the full batch, less memory).
        - `validation_data`: any form `data` takes, evaluated each Keras epoch.
        - `on_bad_image`: "warn" skips unreadable files with one warning that
          names them, "raise" stops.
        - `strategy`: "auto" (see `bitkeras.distribute`: TPU, several workers,
          several GPUs, else one device), a name ("default", "mirrored",
          "multi_worker", "tpu") or a `tf.distribute.Strategy`. The rule's
          batch is the global batch, split across replicas. A classifier
          built in a strategy's scope trains under that strategy; otherwise a
          copy is built in the strategy's scope, trained, and its weights
          copied back.
        - `precision`: "float32", "mixed_bfloat16" or "mixed_float16" (with
          loss scaling); GroupNorm statistics, weight standardization and the
          head stay in float32. The classifier itself stays float32.
        - `jit_compile`: "auto" (XLA on GPU and TPU, off on CPU, where it
          measured slower), True or False.
        - `checkpoint_dir`: write the training state (model, optimizer, step)
          there every `checkpoint_every` steps (default: 20 per run); the
          same call after a crash resumes from it and ends at the same step,
          on the same batches. A NaN or Inf loss stops the run with
          `NonFiniteLossError`, keeping the last good checkpoint.

        Keras epochs here are rounds of at least one pass over the data (at
        most 20); training stops after exactly `steps` optimizer steps.
        """
        if data is None:
            raise TypeError("fit() needs data: a folder, 'tfds:NAME', (images, labels) or a dataset")
        if validation_data is not None:
            sources.data_form(validation_data, "validation_data")  # fail before any work
        strategy = distribute.training_strategy(self, strategy)
        replicated = distribute.needs_replica(self, strategy, precision)
        if replicated and not isinstance(self.backbone, BiTBackbone):
            raise ValueError(
                f"fit(strategy=..., precision={precision!r}) rebuilds the model for the "
                f"strategy or precision, which needs a native BiT backbone; this one is a "
                f"{type(self.backbone).__name__}: convert it (from_hub(..., convert=True))"
            )
        source = sources.open_source(data, split=split, class_names=class_names,
                                     on_bad_image=on_bad_image)
        if examples_per_class is not None:
            source = source.few_shot(examples_per_class, seed)
        rule = training.resolve_rule(source.num_examples, source.image_size, hyperrule,
                                     variant, **overrides)
        training.check_batching(rule, source.num_examples, batch_split,
                                strategy.num_replicas_in_sync)
        training.check_trainable(trainable, self.backbone)
        # Last of the checks: it may add the head, which nothing should do on bad input.
        source = self._adopt_classes(source)
        validation = None
        if validation_data is not None:
            validation_source = sources.open_source(
                validation_data, class_names=self.class_names, on_bad_image=on_bad_image,
                default_split="validation|test")
            validation_source.check_labels(self.num_classes)
            validation = pipeline.eval_dataset(validation_source, rule.crop_size,
                                               rule.batch_size, one_hot_classes=self.num_classes)
        if verbose:
            print(rule.describe(source.num_examples))
        model = distribute.replicate(self, strategy, precision) if replicated else self
        run = {"rule": rule.get_config(), "seed": seed, "examples": source.num_examples,
               "classes": self.num_classes, "examples_per_class": examples_per_class,
               "trainable": trainable, "batch_split": batch_split, "precision": precision}
        with strategy.scope(), training.trainable_from(model, trainable):
            model._compile_for_fit(rule, batch_split, trainable,
                                   distribute.jit_compile_for(jit_compile, strategy))
            start_step, fit_callbacks = run_state.begin(
                model, checkpoint_dir, checkpoint_every, run, rule.steps, announce=bool(verbose))
            remaining = rule.steps - start_step
            history = keras.callbacks.History()
            history.params = {}
            if remaining > 0:
                train = pipeline.train_dataset(source, rule, self.num_classes, rule.batch_size,
                                               seed, skip_bad_images=on_bad_image == "warn",
                                               start_step=start_step)
                epochs, steps_per_epoch = training.keras_epochs(
                    remaining, -(-source.num_examples // rule.batch_size))
                history = keras.Model.fit(
                    model, train, validation_data=validation, epochs=epochs,
                    steps_per_epoch=steps_per_epoch, verbose=verbose, shuffle=False,
                    callbacks=[*fit_callbacks, training.StopAfterSteps(remaining),
                               *(callbacks or [])],
                )
        if model is not self:
            self.set_weights(model.get_weights())
        self.hyperrule = rule
        history.hyperrule = rule
        history.start_step = start_step
        history.params["hyperrule"] = rule.get_config()
        return history

    def train_step(self, data):
        micro_batches = getattr(self, "_micro_batches", 1)
        if micro_batches == 1:
            logs = super().train_step(data)
        else:
            logs = training.accumulated_train_step(self, data, micro_batches)
        return distribute.reducible_logs(logs, distribute.model_strategy(self))

    def test_step(self, data):
        return distribute.reducible_logs(super().test_step(data), distribute.model_strategy(self))

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a strategy Keras draws a batch to build the model symbolically
        # and averages it across replicas, which fails under
        # MultiWorkerMirroredStrategy (keras-team/keras#20585); the draw also
        # starts an iterator, so training would begin on a reshuffled second
        # pass. The build needs only shapes and dtypes: the dataset's spec.
        if iterator is not None and data_batch is None and distribute.model_strategy(self):
            data_batch = iterator.data_adapter.get_tf_dataset().element_spec
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _compile_for_fit(self, rule, batch_split, trainable, jit_compile):
        """Compiles for `fit`, or, for a repeat of the last fit's setup, starts its optimizer afresh.

        Repeating the setup keeps Keras's traced train step (seconds per fit
        for many short fits, as in a few-shot table) while the optimizer's
        state (step count, momentum) returns to zero, so the fit is the same
        as on a newly compiled model.
        """
        setup = (rule, batch_split, trainable, jit_compile)
        cached = getattr(self, "_fit_setup", None)
        if cached is not None and cached[0] == setup and cached[1] is self.optimizer and (
                type(self.optimizer) is keras.optimizers.SGD):  # all of its state starts at 0
            for variable in self.optimizer.variables:
                variable.assign(keras.ops.zeros(variable.shape, variable.dtype))
        else:
            self.compile(
                optimizer=training.make_optimizer(rule),
                loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                metrics=self._fit_metrics(),
                jit_compile=jit_compile,
            )
            self._fit_setup = (setup, self.optimizer)
        self._micro_batches = batch_split

    def _adopt_classes(self, source):
        """Sizes a missing head from the data, or checks the data against the head."""
        if source.num_classes < 2:
            raise ValueError(
                f"{source.description} has a single class; a classifier needs at least 2"
            )
        if self.head is None:
            self._add_head(source.num_classes)
            self.class_names = source.class_names
            return source
        if source.named and source.num_classes != self.num_classes:
            raise ValueError(
                f"{source.description} has {source.num_classes} classes but {self.name} has a "
                f"{self.num_classes}-class head; build a new classifier (or "
                f"from_preset(..., num_classes={source.num_classes})) for this data"
            )
        if self.class_names is None:
            self.class_names = source.class_names if source.named else tuple(
                str(i) for i in range(self.num_classes))
        source.check_labels(self.num_classes)
        return source.relabel(self.class_names)

    def _fit_metrics(self):
        """Accuracy on the soft one-hot labels of training, and top-5 where it means something."""
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
        if self.num_classes > 5:
            metrics.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy"))
        return metrics

    def evaluate(self, data=None, *, split=None, test_time_augmentation=None, image_size=None,
                 batch_size=EVAL_BATCH_SIZE, on_bad_image="warn", verbose="auto",
                 **keras_arguments):
        """Accuracy (top-1, and top-5 with more than 5 classes) and loss on `data`.

        `data` takes the forms `fit` takes (TFDS defaults to the "test" split,
        else "validation"). Images are resized to the crop size of the rule
        the classifier was fine-tuned with (`image_size` to override; a
        never-fitted classifier uses the HyperRule's size for the data).
        `test_time_augmentation="ten_crop"` averages the probabilities of ten
        crops. Unreadable files are skipped with a warning, or raise with
        `on_bad_image="raise"`. Returns {"accuracy", ["top5_accuracy",] "loss"}, the loss being
        the mean cross-entropy of the (averaged) probabilities.
        """
        if keras_arguments.get("_use_cached_eval_dataset"):
            # Keras's own validation inside fit: its plain loop.
            return super().evaluate(**keras_arguments)
        if keras_arguments:
            raise TypeError(f"unknown evaluate argument(s) {sorted(keras_arguments)}")
        self._require_head()
        source = sources.open_source(data, split=split, class_names=self.class_names,
                                     on_bad_image=on_bad_image, default_split="test|validation")
        source.check_labels(self.num_classes)
        probabilities = self._probabilities(source, test_time_augmentation, image_size,
                                            batch_size, verbose)
        labels = source.labels
        ranked = np.argsort(-probabilities, axis=1)
        results = {"accuracy": float(np.mean(ranked[:, 0] == labels))}
        if self.num_classes > 5:
            results["top5_accuracy"] = float(np.mean(np.any(ranked[:, :5] == labels[:, None], 1)))
        chosen = probabilities[np.arange(len(labels)), labels]
        results["loss"] = float(-np.mean(np.log(np.maximum(chosen, np.finfo(np.float32).tiny))))
        return results

    def predict(self, images, *, test_time_augmentation=None, image_size=None,
                batch_size=EVAL_BATCH_SIZE, verbose="auto"):
        """Class ids, probabilities and class names for `images`.

        `images`: an array (N, height, width, 3) (uint8, or float in [0, 1]),
        a list of image file paths (or one path), or a tf.data.Dataset of
        images or of (image, label). Preprocessing as in `evaluate`.
        Returns a `Predictions` (class_ids (N,), probabilities (N, classes),
        class_names: N names).
        """
        self._require_head()
        source = sources.open_images(images)
        probabilities = self._probabilities(source, test_time_augmentation, image_size,
                                            batch_size, verbose)
        class_ids = np.argmax(probabilities, axis=1)
        names = self.class_names or tuple(str(i) for i in range(self.num_classes))
        return Predictions(class_ids, probabilities, tuple(names[i] for i in class_ids))

    def _require_head(self):
        if self.head is None:
            raise ValueError(f"{self.name} has no head yet: fit it first, or pass num_classes")

    def _probabilities(self, source, test_time_augmentation, image_size, batch_size, verbose):
        if test_time_augmentation not in TEST_TIME_AUGMENTATIONS:
            raise ValueError(
                f"test_time_augmentation must be one of {list(TEST_TIME_AUGMENTATIONS)}; "
                f"got {test_time_augmentation!r}"
            )
        rule = self.hyperrule or HyperRule.for_dataset(source.num_examples, source.image_size)
        if image_size is not None:
            rule = dataclasses.replace(rule, crop_size=image_size,
                                       resize_size=max(image_size, rule.resize_size))
        ten_crop = test_time_augmentation == "ten_crop"
        views = 10 if ten_crop else 1
        dataset = pipeline.eval_dataset(
            source, rule.crop_size, max(1, batch_size // views),
            resize_size=rule.resize_size, ten_crop=ten_crop)
        dataset = dataset.map(lambda images, labels: keras.ops.reshape(
            images, (-1, rule.crop_size, rule.crop_size, 3)))
        logits = keras.Model.predict(self, dataset, verbose=verbose)
        logits = logits.reshape(source.num_examples, views, self.num_classes)
        return keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1)).mean(axis=1)

    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "class_names": None if self.class_names is None else list(self.class_names),
            "hyperrule": None if self.hyperrule is None else self.hyperrule.get_config(),
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)

    @classmethod
    def from_preset(cls, name, weights="default", num_classes=None, **kwargs):
        """A classifier of a named architecture or released model.

        `weights` as in `BiTBackbone.from_preset`. With `num_classes=None` the
        checkpoint's own head is kept (its size read from the file: 21843 for
        BiT-M, 1000 for BiT-S and the ILSVRC-2012 models), with the preset's
        class names where known; with a number, the backbone is loaded and a
        new zero-initialised head of that size added.

        >>> glyphs = BiTClassifier.from_preset("BiT-Glyphs-R14x0.5")  # shipped, offline
        """
        preset = presets.get_preset(name)
        path = resolve_weights(preset, weights)
        if num_classes is None:
            if path is None:
                raise ValueError(
                    f"BiTClassifier.from_preset({name!r}) without weights needs num_classes"
                )
            num_classes = checkpoint.read_head_classes(path)
            if num_classes is None:
                raise ValueError(
                    f"checkpoint {str(path)!r} has no head: pass num_classes to add a new one"
                )
            keep_head = True
            if preset.class_names is not None and len(preset.class_names) == num_classes:
                kwargs.setdefault("class_names", preset.class_names)
        else:
            keep_head = False
        architecture = preset.architecture
        backbone = BiTBackbone(architecture.block_units, architecture.width_factor)
        classifier = cls(backbone, num_classes, **kwargs)
        if path is not None:
            checkpoint.load_npz(classifier if keep_head else backbone, path)
        return classifier

    @classmethod
    def from_hub(cls, handle, num_classes=None, class_names=None, trainable=True,
                 convert=False, **kwargs):
        """A classifier on a TF-Hub module: a URL (cached by tensorflow_hub) or a folder.

        A feature-vector module gets a new zero-initialised head (`num_classes`
        or `class_names`; or none yet, sized by `fit`). `convert=True` makes
        the backbone native (see `BiTBackbone.from_hub`); a classification
        module converted with `num_classes=None` keeps its head, and its
        class names when it carries a labels file. Unconverted, a
        classification module outputs logits rather than features, so it
        cannot take a new head: that raises, saying to convert it.
        """
        from bitkeras import hub

        if convert:
            backbone, arrays, labels = hub.native_backbone(handle, trainable)
            has_head = checkpoint.HEAD_PREFIX + "conv2d/bias" in arrays
            if num_classes is None and class_names is None and has_head:
                head_classes = arrays[checkpoint.HEAD_PREFIX + "conv2d/bias"].shape[0]
                names = labels if labels and len(labels) == head_classes else None
                classifier = cls(backbone, head_classes, names, **kwargs)
                checkpoint.load_arrays(classifier, arrays, handle)
                return classifier
            return cls(backbone, num_classes, class_names, **kwargs)
        backbone = hub.HubBackbone(handle, trainable=trainable)
        if backbone.module.has_bit_head:
            raise ValueError(
                f"the module {str(handle)!r} is a classification module: it outputs logits, "
                f"not features. Use BiTClassifier.from_hub(..., convert=True) to keep its "
                f"head, or to put a new one on its backbone."
            )
        return cls(backbone, num_classes, class_names, **kwargs)

    def export(self, filepath, format="saved_model", output="logits", **kwargs):
        """Writes a TF-Hub style SavedModel: the released BiT modules' interface.

        `format`: "saved_model" or "tf_hub" (the same reusable TF2 SavedModel);
        `output`: "logits" (a classification module, with a serving signature
        for encoded image bytes and the class names as an asset) or "features"
        (a feature-vector module). See `bitkeras.export`. Keras's own formats
        ("tf_saved_model", "onnx", ...) go to `keras.Model.export`.
        """
        from bitkeras import export

        if format in export.FORMATS:
            kwargs["output"] = output
        return export.export_or_delegate(self, filepath, format, super().export, **kwargs)


@dataclasses.dataclass(frozen=True)
class Predictions:
    """What `BiTClassifier.predict` returns, one entry per image."""

    class_ids: np.ndarray
    """Most probable class of each image, shape (N,)."""
    probabilities: np.ndarray
    """Softmax probabilities, shape (N, num_classes), averaged over views with ten-crop."""
    class_names: tuple
    """Name of each image's most probable class."""


def load_model(path, safe_mode=True):
    """A bitkeras model saved with `model.save(path)` (a `.keras` file).

    Restores class names, the HyperRule (and so the preprocessing sizes) and,
    for a compiled model, its optimizer state. A model on a TF-Hub module
    layer reloads the module from its handle, which Keras only does with
    `safe_mode=False` (a SavedModel can run any TensorFlow graph: load only
    files you trust).
    """
    return keras.saving.load_model(path, safe_mode=safe_mode)
