"""BiTClassifier: a BiTBackbone with a dense head, images in [0, 1] -> logits.

Fine-tuning (`fit`), evaluation and prediction take data in any form
`bitkeras.finetuning.sources` reads and run it through `bitkeras.finetuning.pipeline`.
"""

import dataclasses
import pathlib
import types
import warnings

import keras
import keras_hub

from bitkeras import files
from bitkeras.checks import check_positive_integer
from bitkeras.finetuning import distribute, pipeline, sources, training
from bitkeras.finetuning.hyperrule import BASE_LEARNING_RATE, HyperRule
from bitkeras.finetuning.upstream import rule_from_config
from bitkeras.io import checkpoint, export, hub, presets
from bitkeras.io.weights import resolve_weights
from bitkeras.models.backbone import BiTBackbone
from bitkeras.models.images import standardize_images
from bitkeras.models.inference import Predictions, ViewAverage, check_test_time_augmentation

EVAL_BATCH_SIZE = 32
"""Images per batch in `evaluate` and `predict` (views, with ten-crop)."""



@keras.saving.register_keras_serializable(package="bitkeras")
class BiTClassifier(files.AtomicSaveMixin, keras_hub.models.ImageClassifier):
    """A BiT backbone and a dense head returning logits, shape (batch, num_classes).

    A keras-hub `ImageClassifier` task for `BiTBackbone`: `save_to_preset(dir)`
    writes a keras-hub preset folder (with a model card) that
    `BiTClassifier.from_preset(dir)` and `keras_hub.models.ImageClassifier.from_preset(dir)`
    both load.

    The head is initialised to zeros (weights and bias), as BiT fine-tuning
    starts. Without `num_classes` the classifier has no head until `fit`
    reads the number of classes (and their names) from the data.

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
    >>> history = classifier.fit(images, labels, epochs=2, batch_size=8, crop_size=32,
    ...                          resize_size=36, verbose=0)
    >>> len(history.epoch), classifier.hyperrule.steps, classifier.num_classes
    (2, 4, 2)
    >>> classifier.predict(images[:3], verbose=0).shape
    (3, 2)
    >>> classifier.fit("flowers/train")  # doctest: +SKIP
    """

    backbone_cls = BiTBackbone

    def __init__(self, backbone, num_classes=None, class_names=None, hyperrule=None, **kwargs):
        kwargs.setdefault("name", "bit_classifier")
        # keras-hub's Task, not ImageClassifier's functional build: the head is
        # BiT's zero-initialised float32 Dense, and it can come later, from the
        # data. Not compiled here: fit compiles from the rule unless the user did.
        keras_hub.models.Task.__init__(self, compile=False, **kwargs)
        # What the user's own compile() asked for (empty until then); fit keeps it.
        # Read-only and not a dict, so Keras does not track what is in it as state.
        self._compile_request = types.MappingProxyType({})
        self.backbone = backbone
        self.head = None
        self.num_classes = None
        self.class_names = None
        if isinstance(hyperrule, dict):
            hyperrule = rule_from_config(hyperrule)
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

    def compile(self, optimizer="auto", loss="auto", metrics="auto", jit_compile="auto",
                **kwargs):
        """Keras `compile` with BiT defaults for the arguments left at "auto".

        "auto": SGD with momentum 0.9 at BiT's base learning rate 0.003, sparse
        softmax cross-entropy on the logits, accuracy; XLA on GPUs and TPUs
        and off on CPUs, where it made the R50x1 training step slower and
        inference faster (figures in README.md, from benchmarks/throughput.py).
        `fit` then keeps whatever is not "auto" (the user's optimizer, loss,
        metrics and settings) and fills the "auto" ones from the HyperRule
        (SGD on the rule's warm-up and decays; one-hot cross-entropy, which
        MixUp needs).
        """
        self._compile_request = types.MappingProxyType(dict(
            optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=jit_compile, **kwargs))
        self._compile_defaults(optimizer, loss, metrics, jit_compile, **kwargs)

    def _compile_defaults(self, optimizer="auto", loss="auto", metrics="auto",
                          jit_compile="auto", **kwargs):
        if optimizer == "auto":
            optimizer = keras.optimizers.SGD(learning_rate=BASE_LEARNING_RATE, momentum=0.9)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics == "auto":
            metrics = ["accuracy"]
        jit_compile = distribute.jit_compile_for(jit_compile, distribute.strategy_for("default"))
        self._micro_batches = 1  # whole batches, unless fit sets batch_split after this
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics,
                        jit_compile=jit_compile, **kwargs)

    def compile_from_config(self, config):
        """Restores the compile arguments saved in a `.keras` file."""
        super().compile(**keras.saving.deserialize_keras_object(config))
        self._micro_batches = 1
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def fit(self, x=None, y=None, batch_size=None, epochs=None, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1, *, hyperrule=None,
            examples_per_class=None, seed=0, trainable="all", batch_split=1, variant="paper",
            split=None, class_names=None, on_bad_image="warn", strategy="auto",
            precision="float32", jit_compile="auto", checkpoint_dir=None,
            checkpoint_every=None, **overrides):
        """Keras's `fit`, sized and scheduled by the BiT-HyperRule; returns Keras's `History`.

        `x`: images as a NumPy array with labels `y` (as in Keras), or data
        that carries its labels: a folder with one sub-folder of images per
        class (JPEG, PNG, BMP, GIF, ...), "tfds:NAME" (or "tfds:NAME:SPLIT";
        `split` defaults to "train"), a tuple `(images, labels)`, or a
        tf.data.Dataset of `(image, label)` (batched or not: bitkeras batches
        by the rule). A classifier without a head gets one sized (and named)
        from the data.

        The rule (`bitkeras.HyperRule`) is computed from the number of
        examples and their typical size, unless `hyperrule` is given. Keras's
        `batch_size` and `epochs` override its batch (the learning rate
        scaled linearly, as the rule says) and its length (`epochs` passes of
        `steps_per_epoch` steps, default one pass over the data; warm-up and
        decays move in proportion); keyword `overrides` replace any rule
        field (`steps=`, `crop_size=`, `mixup_alpha=`, `flip=False`, ...).
        It is printed at the start, stored as `history.hyperrule` and on the
        classifier. Without `epochs`, Keras epochs are rounds of at least one
        pass over the data (at most 20) and training stops after exactly the
        rule's `steps` optimizer steps.

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

        - `examples_per_class`, `seed`: few-shot training on K examples of each
          class, drawn reproducibly; `seed` also seeds the augmentation.
        - `trainable`: "all" (full fine-tuning), "head" (a linear probe on
          frozen features) or "block1".."block4" (that block onwards).
        - `batch_split`: accumulate gradients over this many micro-batches per
          optimizer step (same update as the full batch, less memory).
        - `on_bad_image`: "warn" skips unreadable files with one warning that
          names them, "raise" stops.
        - `strategy`: "auto" (see `bitkeras.finetuning.distribute`: TPU, several workers,
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
        """
        if x is None:
            raise TypeError("fit() needs data: images and labels, a folder, 'tfds:NAME' or "
                            "a dataset")
        if sample_weight is not None:
            raise ValueError(
                "fit(sample_weight=...) is not supported: the HyperRule pipeline crops, flips "
                "and mixes examples; use class_weight=, or keras.Model.fit on your own batches"
            )
        if initial_epoch:
            raise ValueError(
                f"fit(initial_epoch={initial_epoch!r}) is not supported: pass checkpoint_dir= "
                f"and rerun the same call to resume a fit where it stopped"
            )
        if epochs is not None and "steps" in overrides:
            raise ValueError(
                f"fit got both epochs={epochs!r} and steps={overrides['steps']!r}; give one"
            )
        data = sources.keras_data(x, y)
        if validation_split and validation_data is None:
            data, validation_data = sources.split_validation(data, validation_split)
        if validation_data is not None:
            sources.data_form(validation_data, "validation_data")  # fail before any work
        strategy = distribute.training_strategy(self, strategy)
        if distribute.needs_replica(self, strategy, precision) and not isinstance(
                self.backbone, BiTBackbone):
            raise ValueError(
                f"fit(strategy=..., precision={precision!r}) rebuilds the model for the "
                f"strategy or precision, which needs a native BiT backbone; this one is a "
                f"{type(self.backbone).__name__}: convert it (from_hub(..., convert=True))"
            )
        source = sources.open_source(data, split=split, class_names=class_names,
                                     on_bad_image=on_bad_image)
        if examples_per_class is not None:
            source = source.few_shot(examples_per_class, seed)
        if batch_size is not None:
            overrides["batch_size"] = batch_size
        rule = training.resolve_rule(source.num_examples, source.image_size, hyperrule,
                                     variant, **overrides)
        passes = training.keras_schedule(rule, source.num_examples, epochs, steps_per_epoch)
        rule = passes.rule
        training.check_batching(rule, source.num_examples, batch_split,
                                strategy.num_replicas_in_sync)
        training.check_trainable(trainable, self.backbone)
        request = self._compile_request
        sparse_labels = training.wants_sparse_labels(request.get("loss", "auto"))
        if sparse_labels and rule.mixup_alpha > 0:
            raise ValueError(
                f"the compiled loss takes class ids, but the rule mixes labels (MixUp, alpha "
                f"{rule.mixup_alpha}): pass mixup_alpha=0 to fit, or compile with a loss on "
                f"one-hot labels such as CategoricalCrossentropy(from_logits=True)"
            )
        # Last of the checks: it may add the head, which nothing should do on bad input.
        source = self._adopt_classes(source)
        validation = None
        if validation_data is not None:
            validation_source = sources.open_source(
                validation_data, class_names=self.class_names, on_bad_image=on_bad_image,
                default_split="validation|test")
            validation_source.check_labels(self.num_classes)
            validation = pipeline.eval_dataset(
                validation_source, rule.crop_size, validation_batch_size or rule.batch_size,
                one_hot_classes=None if sparse_labels else self.num_classes)
        if verbose:
            print(rule.describe(source.num_examples))
        run = {"rule": rule.get_config(), "seed": seed, "examples": source.num_examples,
               "classes": self.num_classes, "examples_per_class": examples_per_class,
               "trainable": trainable, "batch_split": batch_split, "precision": precision,
               **({"shuffle": False} if not shuffle else {})}

        def batches(start_step):
            train = pipeline.train_dataset(source, rule, self.num_classes, rule.batch_size, seed,
                                           skip_bad_images=on_bad_image == "warn",
                                           start_step=start_step, shuffle=shuffle)
            if sparse_labels:
                train = train.map(lambda images, labels: (
                    images, keras.ops.argmax(labels, axis=-1)))
            return train

        if jit_compile == "auto":
            jit_compile = request.get("jit_compile", "auto")
        with training.on_strategy(self, strategy, precision) as model, \
                training.trainable_from(model, trainable):
            model.compile_for_rule(rule, batch_split, trainable,
                                   distribute.jit_compile_for(jit_compile, strategy), request)
            history, start_step = training.train(
                model, rule, batches, passes, run, checkpoint_dir=checkpoint_dir,
                checkpoint_every=checkpoint_every, callbacks=callbacks, verbose=verbose,
                validation_data=validation, class_weight=class_weight,
                validation_steps=validation_steps, validation_freq=validation_freq)
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
        # Private Keras API (_maybe_symbolic_build, data_adapter), checked on Keras 3.15.
        if iterator is not None and data_batch is None and distribute.model_strategy(self):
            data_batch = iterator.data_adapter.get_tf_dataset().element_spec
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def compile_for_rule(self, rule, batch_split=1, trainable="all", jit_compile=False,
                         request=None):
        """Compiles for training on `rule`; for a repeat of the last setup, zeroes its optimizer.

        What `fit` and `bitkeras.pretrain` call before their training loop.
        `request`: compile arguments given by the user (`compile`'s own, for
        `fit`); what it leaves out or at "auto" comes from the rule: SGD on its
        schedule (with an UpstreamRecipe's weight decay), one-hot
        cross-entropy, accuracy. `batch_split`: micro-batches a train step
        accumulates over. Repeating the
        setup with the rule's own optimizer keeps Keras's traced train step
        (seconds per fit for many short fits, as in a few-shot table) while
        the optimizer's state (step count, momentum) returns to zero, so the
        fit is the same as on a newly compiled model.
        """
        arguments = dict(request or {}, jit_compile=jit_compile)
        optimizer = arguments.pop("optimizer", "auto")
        loss = arguments.pop("loss", "auto")
        metrics = arguments.pop("metrics", "auto")
        sparse_labels = training.wants_sparse_labels(loss)
        setup = (rule, batch_split, trainable, jit_compile)
        cached = getattr(self, "_fit_setup", None)
        if optimizer == "auto" and cached is not None and cached[0] == setup and (
                cached[1] is self.optimizer) and (
                type(self.optimizer) is keras.optimizers.SGD):  # all of its state starts at 0
            for variable in self.optimizer.variables:
                variable.assign(keras.ops.zeros(variable.shape, variable.dtype))
        else:
            keras.Model.compile(
                self,
                optimizer=training.make_optimizer(rule) if optimizer == "auto" else optimizer,
                loss=keras.losses.CategoricalCrossentropy(from_logits=True) if loss == "auto"
                else loss,
                metrics=self._fit_metrics(sparse_labels) if metrics == "auto" else metrics,
                **arguments,
            )
            self._fit_setup = (setup, self.optimizer) if optimizer == "auto" else None
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
                 steps=None, callbacks=None, return_dict=False, *, split=None,
                 image_size=None, test_time_augmentation=None, on_bad_image="warn",
                 **kwargs):
        """Keras's `evaluate` on images preprocessed as fine-tuning does; Keras's return.

        The loss and metrics are the compiled ones: after `fit`, the loss,
        "accuracy" and, with more than 5 classes, "top5_accuracy"; a
        classifier never compiled is compiled with `compile()`'s defaults
        first. `x`, `y` as in `fit` (TFDS defaults to the "test" split, else
        "validation"). Images are resized to the crop size of the rule the
        classifier was fine-tuned with (`image_size` to override; a
        never-fitted classifier uses the HyperRule's size for the data).
        `test_time_augmentation="ten_crop"` scores the mean probabilities of
        ten crops. Unreadable files are skipped with a warning, or raise with
        `on_bad_image="raise"`. `batch_size` (default 32 images), `verbose`,
        `steps`, `callbacks` and `return_dict` keep their Keras meaning.
        """
        if kwargs.pop("_use_cached_eval_dataset", False):
            # Keras's own validation inside fit: its plain loop on our dataset.
            return super().evaluate(x, y, batch_size=batch_size, verbose=verbose,
                                    sample_weight=sample_weight, steps=steps,
                                    callbacks=callbacks, return_dict=return_dict,
                                    _use_cached_eval_dataset=True, **kwargs)
        if kwargs:
            raise TypeError(f"unknown evaluate argument(s) {sorted(kwargs)}")
        if sample_weight is not None:
            raise ValueError("evaluate(sample_weight=...) is not supported by bitkeras's "
                             "evaluation pipeline; call keras.Model.evaluate on your own batches")
        self._require_head()
        if not self.compiled:
            self._compile_defaults()
        source = sources.open_source(sources.keras_data(x, y), split=split,
                                     class_names=self.class_names, on_bad_image=on_bad_image,
                                     default_split="test|validation")
        source.check_labels(self.num_classes)
        sparse_labels = training.wants_sparse_labels(self.loss)
        model, dataset = self._inference(source, test_time_augmentation, image_size,
                                         batch_size, None if sparse_labels else self.num_classes)
        if model is not self:
            model.compile(**training.loss_and_metrics(self))
        return keras.Model.evaluate(model, dataset, verbose=verbose, steps=steps,
                                    callbacks=callbacks, return_dict=return_dict)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None, *,
                image_size=None, test_time_augmentation=None):
        """Keras's `predict`: logits, a NumPy array (N, num_classes), as `call` returns them.

        `x`: an array (N, height, width, 3) (uint8, or float in [0, 1]), image
        file paths (a list, or one path), or a tf.data.Dataset of images or of
        (image, label), batched or not. Preprocessing as in `evaluate`. With
        `test_time_augmentation="ten_crop"` the rows are the log of the mean
        probability over the ten views: softmax of them gives those means, as
        it gives the probabilities of plain logits. `classify` returns class
        ids, probabilities and names instead.
        """
        self._require_head()
        model, dataset = self._inference(sources.open_images(x), test_time_augmentation,
                                         image_size, batch_size)
        return keras.Model.predict(model, dataset.map(lambda images, labels: images),
                                   verbose=verbose, steps=steps, callbacks=callbacks)

    def classify(self, x, batch_size=None, verbose="auto", *, image_size=None,
                 test_time_augmentation=None):
        """Class ids, probabilities and class names for images: a `Predictions`.

        Takes what `predict` takes. Returns class_ids (N,), probabilities
        (N, classes) (averaged over the views with ten-crop) and class_names
        (N names; class ids as strings for a classifier without names).
        """
        logits = self.predict(x, batch_size=batch_size, verbose=verbose, image_size=image_size,
                              test_time_augmentation=test_time_augmentation)
        names = self.class_names or tuple(str(i) for i in range(self.num_classes))
        return Predictions.from_logits(logits, names)

    def _require_head(self):
        if self.head is None:
            raise ValueError(f"{self.name} has no head yet: fit it first, or pass num_classes")

    def _inference(self, source, test_time_augmentation, image_size, batch_size,
                   one_hot_classes=None):
        """(the model to run, batches of (images, labels)) for `source` at the rule's crop size."""
        check_test_time_augmentation(test_time_augmentation)
        rule = self.hyperrule or HyperRule.for_dataset(source.num_examples, source.image_size)
        if image_size is not None:
            rule = dataclasses.replace(rule, crop_size=image_size,
                                       resize_size=max(image_size, rule.resize_size))
        ten_crop = test_time_augmentation == "ten_crop"
        views = 10 if ten_crop else 1
        dataset = pipeline.eval_dataset(
            source, rule.crop_size, max(1, (batch_size or EVAL_BATCH_SIZE) // views),
            one_hot_classes=one_hot_classes, resize_size=rule.resize_size, ten_crop=ten_crop)
        return (ViewAverage(self) if ten_crop else self), dataset

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

    def save_to_preset(self, preset_dir, max_shard_size=10):
        """Writes a keras-hub preset folder, and `MODEL_CARD.md` in it.

        `BiTClassifier.from_preset(preset_dir)` and
        `keras_hub.models.ImageClassifier.from_preset(preset_dir)` load it
        back with the same weights, class names and rule.
        """
        self._require_head()
        if not isinstance(self.backbone, BiTBackbone):
            raise ValueError(
                f"save_to_preset needs a native BiTBackbone; this one is a "
                f"{type(self.backbone).__name__}: convert it (from_hub(..., convert=True))"
            )
        super().save_to_preset(str(preset_dir), max_shard_size=max_shard_size)
        files.write_text(pathlib.Path(preset_dir) / "MODEL_CARD.md", model_card(self))

    @classmethod
    def from_preset(cls, name, weights="default", num_classes=None, **kwargs):
        """A classifier of a named architecture or released model.

        `weights` as in `BiTBackbone.from_preset`. With `num_classes=None` the
        checkpoint's own head is kept (its size read from the file: 21843 for
        BiT-M, 1000 for BiT-S and the ILSVRC-2012 models), with the preset's
        class names where known; with a number, the backbone is loaded and a
        new zero-initialised head of that size added.

        >>> glyphs = BiTClassifier.from_preset("BiT-Glyphs-R14x0.5")  # shipped, offline
        >>> glyphs.num_classes, glyphs.class_names[:3]
        (132, ('char_0', 'char_1', 'char_2'))
        >>> BiTClassifier.from_preset("BiT-M-R50x1", weights="auto")  # doctest: +SKIP
        """
        if presets.is_keras_hub_preset(name):
            if num_classes is not None:  # a new head: keras-hub then skips the saved one
                kwargs.update(num_classes=num_classes, class_names=None)
            return super().from_preset(str(name), load_weights=weights is not None, **kwargs)
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
        """A classifier on a TF-Hub module: a URL (cached as TF-Hub caches it) or a folder.

        A feature-vector module gets a new zero-initialised head (`num_classes`
        or `class_names`; or none yet, sized by `fit`). `convert=True` makes
        the backbone native (see `BiTBackbone.from_hub`). A BiT
        classification module outputs logits, not features, so it is always
        converted (with a warning saying so, unless `convert=True` asked for
        it): with `num_classes=None` and no class names it keeps its head (and
        the class names of its labels file), otherwise a new head goes on its
        backbone.
        """
        if not convert:
            module = hub.HubModule(handle, trainable=trainable, name="hub_module")
            if not module.has_bit_head:
                return cls(hub.HubBackbone(module=module, trainable=trainable), num_classes,
                           class_names, **kwargs)
            warnings.warn(
                f"{str(handle)!r} is a BiT classification module: it outputs logits, not "
                f"features, so it was converted to a native BiTBackbone "
                f"(from_hub(..., convert=True)) to "
                + ("keep its head" if num_classes is None and class_names is None else
                   "put a new head on its features"), stacklevel=2)
        backbone, arrays, labels = BiTBackbone.from_module_checkpoint(handle, trainable)
        has_head = checkpoint.HEAD_PREFIX + "conv2d/bias" in arrays
        if num_classes is None and class_names is None and has_head:
            head_classes = arrays[checkpoint.HEAD_PREFIX + "conv2d/bias"].shape[0]
            names = labels if labels and len(labels) == head_classes else None
            classifier = cls(backbone, head_classes, names, **kwargs)
            checkpoint.load_arrays(classifier, arrays, handle)
            return classifier
        return cls(backbone, num_classes, class_names, **kwargs)

    def export(self, filepath, format="saved_model", output="logits", **kwargs):
        """Writes a TF-Hub style SavedModel: the released BiT modules' interface.

        `format`: "saved_model" or "tf_hub" (the same reusable TF2 SavedModel);
        `output`: "logits" (a classification module, with a serving signature
        for encoded image bytes and the class names as an asset) or "features"
        (a feature-vector module). See `bitkeras.io.export`. Keras's own formats
        ("tf_saved_model", "onnx", ...) go to `keras.Model.export`.
        """
        if format in export.FORMATS:
            kwargs["output"] = output
        return export.export_or_delegate(self, filepath, format, super().export, **kwargs)


def load_model(path, safe_mode=True):
    """A bitkeras model saved with `model.save(path)` (a `.keras` file).

    Restores class names, the HyperRule (and so the preprocessing sizes) and,
    for a compiled model, its optimizer state. A model on a TF-Hub module
    layer reloads the module from its handle, which Keras only does with
    `safe_mode=False` (a SavedModel can run any TensorFlow graph: load only
    files you trust).
    """
    return keras.saving.load_model(path, safe_mode=safe_mode)


def model_card(classifier):
    """A short model card (Markdown) for a classifier saved as a preset."""
    backbone = classifier.backbone
    names = classifier.class_names or tuple(str(i) for i in range(classifier.num_classes))
    shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
    rule = classifier.hyperrule
    lines = [
        f"# {classifier.name}",
        "",
        "A BiT image classifier (ResNet-v2 with GroupNorm and Weight Standardization) "
        "saved by bitkeras as a keras-hub preset.",
        "",
        f"- Architecture: block units {tuple(backbone.block_units)}, width factor "
        f"{backbone.width_factor}, {classifier.count_params():,} parameters.",
        f"- Classes: {classifier.num_classes} ({shown}).",
        "- Input: RGB images of any size, float in [0, 1] or uint8; the model rescales "
        "them to [-1, 1] itself. Output: logits.",
        f"- Fine-tuning rule: {rule.get_config() if rule else 'none yet (not fine-tuned)'}.",
        "",
        "Load with `bitkeras.BiTClassifier.from_preset(PATH)` or "
        "`keras_hub.models.ImageClassifier.from_preset(PATH)` (import bitkeras first).",
        "",
    ]
    return "\n".join(lines)
