"""keras-hub's own test harness (keras_hub.src.tests.test_case.TestCase), run on bitkeras's
backbones as keras-hub runs it on its own families: config round trips, saving, mixed
precision, quantization, the feature pyramid.
"""

import keras
import numpy as np
import pytest
from keras_hub.src.tests.test_case import TestCase

from bitkeras import BiTBackbone, ResNetBackbone, ResNetV2Backbone
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
