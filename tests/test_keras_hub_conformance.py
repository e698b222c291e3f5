"""keras-hub's own test harness (keras_hub.src.tests.test_case.TestCase), run on bitkeras's
backbones and tasks as keras-hub runs it on its own families: config round trips, saving,
mixed precision, quantization, the feature pyramid, the task's predict and fit.
"""

import os
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf
import tree
from keras_hub.src.tests.test_case import TestCase

from bitkeras import (
    BiTBackbone,
    BiTClassifier,
    HeadClassifier,
    ResNetBackbone,
    ResNetClassifier,
    ResNetV2Backbone,
)
from bitkeras.finetuning import xla
from bitkeras.models import resnet_family
from tests.helpers import TINY

# A backend tensor, not a NumPy array: Keras 3.15's compute_output_spec, which the harness
# calls with its input data, cannot take a NumPy array through a Rescaling layer.
IMAGES = keras.ops.convert_to_tensor(
    np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 3)).astype("float32"))
PYRAMID = {"expected_pyramid_output_keys": ["P2", "P3", "P4", "P5"],
           "expected_pyramid_image_sizes": [(16, 16), (8, 8), (4, 4), (2, 2)]}


class BackboneConformance(TestCase):
    def test_bit_backbone(self):
        self.run_vision_backbone_test(cls=ResNetV2Backbone, init_kwargs=dict(TINY),
                                      input_data=IMAGES, expected_output_shape=(2, 1024),
                                      **PYRAMID)

    def test_bit_backbone_with_weights_api(self):
        self.run_vision_backbone_test(cls=BiTBackbone, init_kwargs=dict(TINY),
                                      input_data=IMAGES, expected_output_shape=(2, 1024),
                                      **PYRAMID)

    def test_family_backbone(self):
        config = resnet_family.cifar(8, shortcut="A").replace(width_factor=0.5).get_config()
        self.run_vision_backbone_test(
            cls=ResNetBackbone, init_kwargs=config, input_data=IMAGES[:, :32, :32],
            expected_output_shape=(2, 32),
            expected_pyramid_output_keys=["P0", "P1", "P2"],
            expected_pyramid_image_sizes=[(32, 32), (16, 16), (8, 8)])

    @pytest.mark.slow
    def test_saved_backbones(self):
        for cls in (ResNetV2Backbone, BiTBackbone):
            self.run_model_saving_test(cls=cls, init_kwargs=dict(TINY), input_data=IMAGES)
        config = resnet_family.cifar(8, shortcut="A").replace(width_factor=0.5).get_config()
        self.run_model_saving_test(cls=ResNetBackbone, init_kwargs=config,
                                   input_data=IMAGES[:, :32, :32])


class TaskConformance(TestCase):
    """keras-hub's task harness: config round trip, predict with and without the
    preprocessor, fit on arrays and datasets, and fit refused without compile when the
    task was made with compile=False."""

    def _run(self, cls, backbone):
        labels = np.array([0, 1])
        self.run_task_test(cls=cls, init_kwargs={"backbone": backbone, "num_classes": 2},
                           train_data=(IMAGES[:, :32, :32], labels),
                           expected_output_shape=(2, 2))

    def test_head_classifier(self):
        self._run(HeadClassifier, ResNetV2Backbone(**TINY))

    @pytest.mark.slow
    def test_fine_tuning_classifier_whole(self):
        """The harness as it is, its fits included: each runs the HyperRule's schedule for
        the harness's two images (500 steps of both), without timing XLA against plain
        TensorFlow first (not what this test is about). The backbone's weights are taken
        as trained at 32 px, so the rule crops 32 px rather than 128 (a quarter of a
        minute a fit instead of a minute). ResNetClassifier's fit is the same code
        (FineTuningClassifier), run on it by the fast share below."""
        self.enterContext(mock.patch.dict(os.environ, {xla.OVERRIDE_ENV: "0"}))
        self._run(BiTClassifier, BiTBackbone(**TINY, weights_resolution=32))

    def test_fine_tuning_classifiers(self):
        """The fast default run's share of the harness: its serialization test, predict
        through the preprocessor and split from it, fit with Keras's epoch arguments on
        arrays and datasets, and fit refused without compile after compile=False."""
        images, labels = IMAGES[:, :32, :32], np.array([0, 1])
        dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
        family = resnet_family.cifar(8).replace(width_factor=0.5).get_config()
        for cls, backbone in ((BiTClassifier, BiTBackbone(**TINY)),
                              (ResNetClassifier, ResNetBackbone(**family))):
            task = cls(backbone=backbone, num_classes=2)
            self.run_serialization_test(task)
            preprocessor = task.preprocessor
            tree.assert_same_structure(preprocessor(images, labels)[0], task._inputs_struct,
                                       check_types=False)
            kernel = task.head.kernel  # a head that is not zero, so outputs can differ
            kernel.assign(np.random.default_rng(1).normal(0, 1, kernel.shape).astype("float32"))
            task.preprocessor.image_converter.image_size = (24, 24)
            output = task.predict(images, verbose=0)
            self.assertEqual(output.shape, (2, 2))
            self.assertAllClose(output, task.predict(dataset, verbose=0))
            task.preprocessor = None
            self.assertAllClose(output, task.predict(dataset.map(preprocessor), verbose=0))
            task.preprocessor = preprocessor
            for data in ((images, labels), (dataset,)):
                task.fit(*data, epochs=1, steps_per_epoch=2, verbose=0)
            task = cls(backbone=backbone, num_classes=2, compile=False)
            with self.assertRaisesRegex(ValueError, "You must call `compile"):
                task.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
            task.compile()
            task.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
