"""BiTClassifier: a BiT classifier that fine-tunes with the BiT-HyperRule, as a Keras model.

`HeadClassifier` (the network) with BiT's weights (`bitkeras.io.pretrained`)
and Keras's calls kept: `fit` takes data in any form
`bitkeras.finetuning.sources` reads, sizes and schedules the run by the
HyperRule and trains it through the one loop of `bitkeras.finetuning.training`;
`evaluate` and `predict` run the classifier's preprocessor on it.
"""

import contextlib
import os
import types
import zipfile

import keras

from bitkeras.checks import check_positive_integer, check_seed
from bitkeras.finetuning import distribute, pipeline, sources, training, xla
from bitkeras.finetuning.hyperrule import BASE_LEARNING_RATE, HyperRule
from bitkeras.finetuning.optimizers import SGD
from bitkeras.finetuning.upstream import rule_from_config
from bitkeras.io.pretrained import BiTBackbone, PretrainedClassifier
from bitkeras.models import kernels
from bitkeras.models.backbone import ResNetV2Backbone
from bitkeras.models.classifier import HeadClassifier
from bitkeras.models.inference import (
    MULTI_SCALE_SIDES,
    MultiScaleAverage,
    ViewAverage,
    check_test_time_augmentation,
)
from bitkeras.models.layers import StandardizedConv2D
from bitkeras.models.preprocessing import ten_crop_views
from bitkeras.models.resnet_backbone import ResNetFamilyBackbone

EVAL_BATCH_SIZE = 32
"""Images per batch in `evaluate` and `predict` (views, with ten-crop)."""

STANDARDIZE_ONCE_MIN_BATCHES = 4
"""`predict` and `evaluate` standardize kernels once per call from this many batches on.

Standardizing R50x1's kernels outside the graph took about 0.1 s on a 2-core
Xeon, and saved about 0.025 s in each batch after (128x128, batch 16); both
scale with the kernels, not the images.
"""


class FineTuningClassifier(HeadClassifier):
    """A classifier that fine-tunes with the BiT-HyperRule, keeping Keras's calls.

    The fine-tuning shared by `BiTClassifier` and `bitkeras.ResNetClassifier`:
    `compile`, `fit` (HyperRule-sized and scheduled), `evaluate` and
    `predict` (with ten-crop and multi-scale testing), `classify`. See
    `BiTClassifier` for the whole contract.
    """

    def __init__(self, backbone, num_classes=None, class_names=None, hyperrule=None,
                 preprocessor=None, **kwargs):
        super().__init__(backbone, num_classes, class_names, preprocessor, **kwargs)
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
        inference faster (figures in README.md, from benchmarks/throughput.py).
        `fit` then keeps whatever is not "auto" (the user's optimizer, loss,
        metrics and settings) and fills the "auto" ones from the HyperRule
        (SGD on the rule's warm-up and decays; one-hot cross-entropy, which
        MixUp needs).

        Added to Keras's arguments: `batch_split`, the number of equal
        micro-batches a train step cuts each batch into, accumulating their
        gradients into one update (the update of the whole batch, with the
        activations of one micro-batch in memory). It is kept as the
        attribute `batch_split` and in the compile config a `.keras` file saves.
        """
        self._compile_request = types.MappingProxyType(dict(
            optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=jit_compile,
            batch_split=batch_split, **kwargs))
        self._compile_defaults(optimizer, loss, metrics, jit_compile, batch_split, **kwargs)

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
            examples_per_class=None, seed=0, trainable="all", batch_split=None, variant="paper",
            split=None, class_names=None, on_bad_image="warn", strategy="auto",
            precision="float32", jit_compile="auto", checkpoint_dir=None,
            checkpoint_every=None, **overrides):
        """Keras's `fit`, sized and scheduled by the BiT-HyperRule; returns Keras's `History`.

        `x`: images as a NumPy array with labels `y` (as in Keras), or data
        that carries its labels: a folder with one sub-folder of images per
        class (JPEG, PNG, BMP, GIF, ...), "tfds:NAME" (or "tfds:NAME:SPLIT";
        `split` defaults to "train"), a tuple `(images, labels)`, or a
        finite tf.data.Dataset of `(image, label)` (batched or not: bitkeras
        batches by the rule). Labels as Keras's losses take them: class ids,
        shaped (N,) or (N, 1), or one-hot rows (`keras.utils.to_categorical`).
        A classifier without a head gets one sized (and named) from the data
        (the one-hot width, where labels are one-hot).

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
          optimizer step (same update as the full batch, less memory; default:
          the one given to `compile`, else 1).
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
        - `jit_compile`: "auto" (XLA on GPU and TPU; on a CPU, where this
          machine measured it faster for this model: see
          `bitkeras.finetuning.xla`), True or False.
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
        check_seed(seed, "fit(seed=...)")
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
                self.backbone, (ResNetV2Backbone, ResNetFamilyBackbone)):
            raise ValueError(
                f"fit(strategy=..., precision={precision!r}) rebuilds the model for the "
                f"strategy or precision, which needs a native backbone; this one is a "
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
        request = self._compile_request
        if batch_split is None:
            batch_split = request.get("batch_split", 1)
        training.check_batching(rule, source.num_examples, batch_split,
                                strategy.num_replicas_in_sync)
        training.check_trainable(trainable, self.backbone)
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
                validation_source, validation_batch_size or rule.batch_size,
                self._converter(rule.crop_size),
                one_hot_classes=None if sparse_labels else self.num_classes)
        if verbose:
            print(rule.describe(source.num_examples))
        run = {"rule": rule.get_config(), "seed": seed, "examples": source.num_examples,
               "classes": self.num_classes, "examples_per_class": examples_per_class,
               "trainable": trainable, "batch_split": batch_split, "precision": precision,
               **({"shuffle": False} if not shuffle else {})}
        if checkpoint_dir is not None:  # only checkpoints need the data's identity
            run["data"] = source.fingerprint()

        def batches(start_step):
            train = pipeline.train_dataset(source, rule, self.num_classes, rule.batch_size, seed,
                                           start_step=start_step, shuffle=shuffle)
            if sparse_labels:
                train = train.map(lambda images, labels: (
                    images, keras.ops.argmax(labels, axis=-1)))
            return train

        if jit_compile == "auto":
            jit_compile = request.get("jit_compile", "auto")
        jit_compile = xla.resolve(
            jit_compile, strategy, self, rule,
            rule.batch_size // (strategy.num_replicas_in_sync * batch_split), precision, verbose)
        with training.on_strategy(self, strategy, precision) as model, \
                training.trainable_from(model, trainable):
            model.compile_for_rule(rule, batch_split, jit_compile, request)
            history, start_step = training.train(
                model, rule, batches, passes, run, checkpoint_dir=checkpoint_dir,
                checkpoint_every=checkpoint_every, callbacks=callbacks, verbose=verbose,
                validation_data=validation, class_weight=class_weight,
                validation_steps=validation_steps, validation_freq=validation_freq)
        self.hyperrule = rule
        self.preprocessor.image_converter.image_size = (rule.crop_size, rule.crop_size)
        history.hyperrule = rule
        history.start_step = start_step
        history.params["hyperrule"] = rule.get_config()
        return history

    def train_step(self, data):
        if self.batch_split == 1:
            logs = super().train_step(data)
        else:
            logs = training.accumulated_train_step(self, data, self.batch_split)
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

    def _adopt_classes(self, source):
        """Sizes a missing head from the data, or checks the data against the head."""
        if source.num_classes < 2:
            raise ValueError(
                f"{source.description} has a single class; a classifier needs at least 2"
            )
        if self.head is None:
            self.add_head(source.num_classes)
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
        self.require_head()
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
        with self._standardized_once(model, dataset, steps):
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
        it gives the probabilities of plain logits; likewise over the scales with
        `"multi_scale"` (see `evaluate`). `classify` returns class
        ids, probabilities and names instead.
        """
        self.require_head()
        model, dataset = self._inference(sources.open_images(x), test_time_augmentation,
                                         image_size, batch_size)
        with self._standardized_once(model, dataset, steps):
            return keras.Model.predict(model, dataset.map(lambda images, labels: images),
                                       verbose=verbose, steps=steps, callbacks=callbacks)

    @contextlib.contextmanager
    def _standardized_once(self, model, dataset, steps):
        """Within the block, `model`'s inference standardizes each kernel once, not per batch.

        See `kernels.standardized_once`: the weights must not change within
        the block. Only for calls of at least `STANDARDIZE_ONCE_MIN_BATCHES`
        batches (or of unknown length), and not under a distribution strategy
        (the copies would be one device's variables).
        """
        batches = int(dataset.cardinality())  # negative: unknown or endless
        if steps is not None:
            batches = steps if batches < 0 else min(batches, steps)
        if (0 <= batches < STANDARDIZE_ONCE_MIN_BATCHES
                or not distribute.is_default(self.distribute_strategy)):
            yield
            return
        # Private Keras API (_flatten_layers: nested layers), checked on Keras 3.15.
        convolutions = [layer for layer in self._flatten_layers()
                        if isinstance(layer, StandardizedConv2D)]
        with kernels.standardized_once(convolutions) as new:
            if new:  # functions traced before the copies existed do not read them
                model.predict_function = model.test_function = None
            yield

    def _inference(self, source, test_time_augmentation, image_size, batch_size,
                   one_hot_classes=None):
        """(the model to run, batches of (images, labels)) for `source`, preprocessed."""
        check_test_time_augmentation(test_time_augmentation)
        if test_time_augmentation == "multi_scale" and image_size is not None:
            raise ValueError("image_size does not apply to test_time_augmentation="
                             "'multi_scale', which sees each image whole at several "
                             "scales; leave image_size out")
        rule = self.hyperrule or HyperRule.for_dataset(source.num_examples, source.image_size)
        crop_size = image_size or self.image_size or rule.crop_size
        if test_time_augmentation == "multi_scale":
            # ResNet's sides are for 224-pixel training crops: scaled to this classifier's.
            sides = [max(1, round(side * crop_size / 224)) for side in MULTI_SCALE_SIDES]
            # Each image's views at every scale; sizes differ, so one image a batch.
            dataset = pipeline.eval_dataset(
                source, 1, lambda image: pipeline.multi_scale_views(image, sides),
                one_hot_classes=one_hot_classes)
            return MultiScaleAverage(self), dataset
        ten_crop = test_time_augmentation == "ten_crop"
        views = 10 if ten_crop else 1
        if ten_crop:
            # Resized as the rule resizes for its crops (160 for 128, 448 for 384, ...).
            resize_size = max(crop_size, round(crop_size * rule.resize_size / rule.crop_size))
            converter = self._converter(resize_size)
        else:
            converter = self._converter(crop_size)
        dataset = pipeline.eval_dataset(
            source, max(1, (batch_size or EVAL_BATCH_SIZE) // views), converter,
            one_hot_classes=one_hot_classes,
            views=(lambda image: ten_crop_views(image, crop_size)) if ten_crop else None)
        return (ViewAverage(self) if ten_crop else self), dataset

    def _converter(self, image_size):
        """The preprocessor's image converter, resizing to an `image_size` square."""
        converter = self.preprocessor.image_converter
        return type(converter).from_config(
            {**converter.get_config(), "image_size": (image_size, image_size)})

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
    >>> history = classifier.fit(images, labels, epochs=2, batch_size=8, crop_size=32,
    ...                          resize_size=36, verbose=0)
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
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file {path!r}")
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path!r} is not a .keras file (a zip archive): it is empty, truncated or another "
            f"kind of file; save the model again"
        )
    try:
        return keras.saving.load_model(path, safe_mode=safe_mode)
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"{path!r} cannot be loaded as a Keras model ({type(error).__name__}: {error}); "
            f"save the model again"
        ) from error


