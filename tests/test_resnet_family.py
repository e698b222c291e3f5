"""The ResNet family: configurations, counts, keras.applications parity, option A, BiT."""

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from bitkeras import BiTBackbone, ResNetBackbone, ResNetClassifier, WeightsUnavailableError
from bitkeras.models import resnet_family
from bitkeras.io.presets import PRESETS
from bitkeras.models.resnet_family import ResNetConfig
from bitkeras.models.resnet_layers import InputScaling
from tests.helpers import TINY, reference

PAPER_MULTIPLY_ADDS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}
"""He et al. 2015, Table 1: billions of multiply-adds at 224x224."""

PAPER_CIFAR_PARAMETERS = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}
"""He et al. 2015, Table 6: millions of parameters of the CIFAR-10 ResNets."""


@pytest.mark.parametrize("depth", sorted(PAPER_MULTIPLY_ADDS))
def test_imagenet_multiply_adds_match_the_paper(depth):
    billions = resnet_family.imagenet_v1(depth).multiply_adds(224) / 1e9
    # The paper gives one decimal: within one unit of it.
    assert abs(billions - PAPER_MULTIPLY_ADDS[depth]) < 0.1
    assert PRESETS[f"ResNet{depth}"].config.depth == depth
    assert PRESETS[f"ResNet{depth}"].config.multiply_adds(224) == pytest.approx(
        billions * 1e9, rel=0.01)  # the Keras twins differ only by biases


@pytest.mark.parametrize("depth", sorted(PAPER_CIFAR_PARAMETERS))
def test_cifar_parameters_match_the_paper(depth):
    config = PRESETS[f"ResNet{depth}-CIFAR"].config
    millions = config.parameter_count(num_classes=10, statistics=False) / 1e6
    given = PAPER_CIFAR_PARAMETERS[depth]
    decimals = len(str(given).split(".")[1])
    assert abs(millions - given) < 10 ** -decimals
    assert config.depth == depth and config.shortcut == "A"


def test_every_preset_counts_what_its_keras_model_holds():
    for name in ("ResNet20-CIFAR", "Plain20-CIFAR", "ResNet18", "Plain18"):
        backbone = ResNetBackbone.from_preset(name)
        mean_image = 32 * 32 * 3 if backbone.resnet_config.input_scaling == "pixel_mean" else 0
        assert backbone.count_params() - mean_image == backbone.resnet_config.parameter_count(0)
        if name == "Plain1202-CIFAR":
            # Built whole (its nested parts counted above); its step is ResNet1202's without
            # the shortcuts, whose units train in Plain110-CIFAR: 30 s of CI saved.
            return
    for changes in (dict(shortcut="B"), dict(shortcut="C"), dict(preactivation=True),
                    dict(normalization="group", weight_standardization=True),
                    dict(normalization="none", conv_bias="all", width_factor=2)):
        backbone = ResNetBackbone.from_preset("ResNet20-CIFAR", **changes)
        assert (backbone.count_params() - 32 * 32 * 3
                == backbone.resnet_config.parameter_count(0)), changes


@pytest.mark.slow
@pytest.mark.parametrize("depth", [50, 101, 152])
def test_keras_application_twins_count_exactly(depth):
    for suffix, application in (("", f"ResNet{depth}"), ("V2", f"ResNet{depth}V2")):
        expected = getattr(keras.applications, application)(weights=None).count_params()
        config = PRESETS[f"ResNet{depth}{suffix}"].config
        assert config.parameter_count(1000) == expected, application
    backbone = ResNetBackbone.from_preset(f"ResNet{depth}", weights=None)
    assert backbone.count_params() == PRESETS[f"ResNet{depth}"].config.parameter_count(0)


def test_option_a_has_no_parameters_and_plain_networks_no_shortcut():
    option_a = ResNetBackbone.from_preset("ResNet20-CIFAR")
    option_b = ResNetBackbone.from_preset("ResNet20-CIFAR", shortcut="B")
    pads = [layer for layer in option_a.layers if "_0_" in layer.name]
    assert len(pads) == 2 and all(not layer.weights for layer in pads)  # stages 2 and 3
    projections = [layer for layer in option_b.layers if layer.name.endswith("_0_conv")]
    assert len(projections) == 2
    plain = ResNetBackbone.from_preset("Plain20-CIFAR")
    assert not [layer for layer in plain.layers if isinstance(layer, keras.layers.Add)]
    assert len([layer for layer in option_a.layers if isinstance(layer, keras.layers.Add)]) == 9
    assert plain.count_params() == option_a.count_params()


def _numpy_option_a(weights, images, config):
    """ResNet v1 with option-A shortcuts and no normalization, in NumPy."""
    x = images.astype(np.float64) * 2 - 1
    x = reference.relu(reference.conv_valid(reference.pad(x, 1), weights["conv1_conv"], 1))
    for unit in config.units():
        name = f"conv{unit.stage + 1}_block{unit.index}"
        shortcut = x[:, ::unit.stride, ::unit.stride, :]
        extra = unit.out_channels - shortcut.shape[-1]
        shortcut = np.concatenate([shortcut, np.zeros(shortcut.shape[:3] + (extra,))], -1)
        h = reference.relu(reference.conv_valid(reference.pad(x, 1), weights[f"{name}_1_conv"],
                                                unit.stride))
        h = reference.conv_valid(reference.pad(h, 1), weights[f"{name}_2_conv"], 1)
        x = reference.relu(h + shortcut)
    return x.mean(axis=(1, 2))


def test_option_a_network_matches_numpy():
    config = ResNetConfig(block="basic", stage_units=(1, 1, 2), stage_channels=(4, 8, 16),
                          stem="cifar", shortcut="A", normalization="none", input_scaling="tf")
    backbone = ResNetBackbone(**config.get_config())
    rng = np.random.default_rng(0)
    weights = {}
    for layer in backbone.layers:
        if layer.weights:
            kernel = rng.normal(0, 0.3, layer.weights[0].shape).astype("float32")
            layer.set_weights([kernel])
            weights[layer.name] = kernel.astype(np.float64)
    images = rng.uniform(0, 1, (2, 9, 9, 3)).astype("float32")
    expected = _numpy_option_a(weights, images, config)
    np.testing.assert_allclose(backbone.predict(images, verbose=0), expected,
                               rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def _randomized_application(application):
    """A keras.applications model with random weights and non-trivial BatchNorm statistics."""
    model = getattr(keras.applications, application)(weights=None, classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([
                rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                rng.normal(0, 0.2, mean.shape), rng.uniform(0.5, 1.5, variance.shape)])
        elif layer.name == "predictions":
            kernel, bias = layer.get_weights()
            layer.set_weights([rng.normal(0, 0.05, kernel.shape), rng.normal(0, 0.1, bias.shape)])
    return model


def write_legacy_h5(model, path):
    """`model`'s weights in the released keras.applications `.h5` layout (Keras 2's)."""
    with h5py.File(path, "w") as file:
        file.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
        file.attrs["backend"] = b"tensorflow"
        file.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            group = file.create_group(layer.name)
            names = [f"{layer.name}/{weight.name}:0".encode() for weight in layer.weights]
            group.attrs["weight_names"] = names
            for name, value in zip(names, layer.get_weights()):
                group.create_dataset(name.decode(), data=value)
    return path


@pytest.mark.parametrize("application, preprocess, file_format", [
    ("ResNet50", keras.applications.resnet.preprocess_input, "legacy"),
    ("ResNet50V2", keras.applications.resnet_v2.preprocess_input, "keras3"),
])
@pytest.mark.slow
def test_keras_application_weights_give_the_same_logits(tmp_path, application, preprocess,
                                                        file_format):
    model = _randomized_application(application)
    if file_format == "legacy":
        path = write_legacy_h5(model, tmp_path / "resnet.h5")
    else:
        path = tmp_path / "resnet.weights.h5"
        model.save_weights(path)
    classifier = ResNetClassifier.from_preset(application, weights=path)
    assert classifier.num_classes == 1000 and classifier.image_size == 224
    images = np.random.default_rng(1).uniform(0, 1, (2, 224, 224, 3)).astype("float32")
    expected = np.asarray(model(preprocess(images * 255.0)))
    logits = classifier.predict(images, verbose=0)
    assert np.abs(logits - expected).max() / np.abs(expected).max() < 1e-5
    with pytest.raises(ValueError, match="make another network"):
        ResNetClassifier.from_preset(application, weights=path, shortcut="C")


def test_keras_application_weights_without_top_load_the_backbone(tmp_path):
    model = keras.applications.ResNet50V2(weights=None, include_top=False, pooling="avg")
    path = write_legacy_h5(model, tmp_path / "notop.h5")
    backbone = ResNetBackbone.from_preset("ResNet50V2", weights=path)
    images = np.random.default_rng(2).uniform(0, 1, (1, 64, 64, 3)).astype("float32")
    expected = np.asarray(model(keras.applications.resnet_v2.preprocess_input(images * 255)))
    np.testing.assert_allclose(backbone(images), expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())
    classifier = ResNetClassifier.from_preset("ResNet50V2", weights=path)
    assert classifier.head is None  # no head in the file: fit adds one


def test_weights_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="no keras.applications twin"):
        ResNetBackbone.from_preset("ResNet18", weights="anything.h5")
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        ResNetBackbone.from_preset("ResNet50", weights=tmp_path / "missing.h5")
    (tmp_path / "bad.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not an HDF5 weight file"):
        ResNetBackbone.from_preset("ResNet50", weights=str(tmp_path / "bad.h5"))
    with pytest.raises(ValueError, match="unknown preset 'ResNet21'"):
        ResNetBackbone.from_preset("ResNet21")
    with pytest.raises(TypeError, match="unknown argument.*shortcuts"):
        ResNetBackbone.from_preset("ResNet20-CIFAR", shortcuts="A")
    with pytest.raises(TypeError, match="unknown ResNetConfig field"):
        resnet_family.cifar(20).replace(shortcuts="A")
    with pytest.raises(ValueError, match="shortcut must be one of"):
        ResNetBackbone.from_preset("ResNet20-CIFAR", shortcut="D")
    with pytest.raises(ValueError, match="6n \\+ 2"):
        resnet_family.cifar(21)


def test_bit_is_the_family_network_of_its_configuration(tiny_checkpoint, images):
    """One builder: the family's bit_config network is BiT's, layer for layer, and takes
    a released checkpoint as it is."""
    path, arrays = tiny_checkpoint
    bit = BiTBackbone.from_preset(path)
    config = resnet_family.bit_config(**TINY)
    assert bit.resnet_config == config and config.bit_layout
    family = ResNetBackbone(**config.get_config())
    assert [(layer.name, type(layer)) for layer in family.layers] == [
        (layer.name, type(layer)) for layer in bit.layers]
    family.set_weights(bit.get_weights())
    expected, _, _ = reference.forward(arrays, images, TINY["block_units"])
    for network in (bit, family):
        np.testing.assert_allclose(network(images), expected, rtol=1e-4,
                                   atol=1e-4 * np.abs(expected).max())
    assert config.parameter_count(0) == bit.count_params()
    assert bit.layers_before(2) == ["root_conv", "block1_unit01"]
    # Another field makes another network of the family, in its own layout.
    other = config.replace(conv_bias="outputs")
    assert not other.bit_layout
    assert ResNetBackbone(**other.get_config()).get_layer("conv2_block1_1_conv")


def test_classifier_fine_tunes_saves_and_freezes_by_stage(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (16, 32, 32, 3)).astype("float32")
    labels = np.arange(16) % 2
    classifier = ResNetClassifier.from_preset("ResNet20-CIFAR", stage_units=(1, 1, 1))
    classifier.backbone.adapt(images)
    mean = classifier.backbone.get_layer("input_scaling").pixel_mean.numpy()
    np.testing.assert_allclose(mean, images.mean(axis=0), rtol=1e-5)
    stem = classifier.backbone.get_layer("conv1_conv").get_weights()[0].copy()
    history = classifier.fit(images, labels, epochs=1, batch_size=8, verbose=0,
                             trainable="block2", hyperrule=dict(crop_size=32, resize_size=36))
    assert history.hyperrule.steps == 2 and classifier.num_classes == 2
    np.testing.assert_array_equal(classifier.backbone.get_layer("conv1_conv").get_weights()[0],
                                  stem)  # frozen: before block 2
    with pytest.raises(ValueError, match="block must be 1..3"):
        classifier.fit(images, labels, epochs=1, batch_size=8, verbose=0, trainable="block4")
    expected = classifier.predict(images[:3], verbose=0)
    classifier.save(tmp_path / "resnet.keras")
    reloaded = keras.saving.load_model(tmp_path / "resnet.keras")
    assert isinstance(reloaded, ResNetClassifier)
    np.testing.assert_allclose(reloaded.predict(images[:3], verbose=0), expected,
                               rtol=1e-5, atol=1e-6)
    classifier.save_to_preset(tmp_path / "preset")
    from_folder = ResNetClassifier.from_preset(tmp_path / "preset")
    assert from_folder.class_names == classifier.class_names
    np.testing.assert_allclose(from_folder.predict(images[:3], verbose=0), expected,
                               rtol=1e-5, atol=1e-6)
    classifier.export(tmp_path / "served")
    served = tf.saved_model.load(str(tmp_path / "served"))
    logits = classifier(images[:3])
    np.testing.assert_allclose(served(images[:3]).numpy(), logits,
                               atol=1e-5 * np.abs(logits).max() + 1e-7)


def test_pixel_mean_is_subtracted_at_its_size_and_its_channel_average_elsewhere():
    rng = np.random.default_rng(4)
    scaling = InputScaling("pixel_mean", mean_image_size=4)
    images = rng.uniform(0, 1, (6, 4, 4, 3)).astype("float32")
    scaling.adapt(images)
    other = rng.uniform(0, 1, (1, 6, 5, 3)).astype("float32")
    expected_same = images[:1] - images.mean(axis=0)
    expected_other = other - images.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(scaling(images[:1]), expected_same, atol=1e-6)
    np.testing.assert_allclose(scaling(other), expected_other, atol=1e-6)
    traced = tf.function(scaling.call, input_signature=[tf.TensorSpec([None, None, None, 3])])
    np.testing.assert_allclose(traced(images[:1]), expected_same, atol=1e-6)
    np.testing.assert_allclose(traced(other), expected_other, atol=1e-6)
    with pytest.raises(ValueError, match="only a 'pixel_mean' scaling"):
        InputScaling("tf").adapt(images)


def test_imagenet_weights_offline_say_what_to_download_and_where(tmp_path, monkeypatch):
    import socket

    def offline(*args, **kwargs):
        raise socket.gaierror("no network in this test")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(socket, "getaddrinfo", offline)
    for weights in ("imagenet", "auto"):  # "auto": a twin's own weights are Keras's file
        with pytest.raises(WeightsUnavailableError, match="resnet50|ResNet50.*keras") as caught:
            ResNetBackbone.from_preset("ResNet50", weights=weights)
        assert str(tmp_path / "keras" / "models") in str(caught.value)


def test_one_table_and_one_meaning_of_weights_for_every_backbone(
        monkeypatch, tiny_checkpoint, images):
    from bitkeras.io import presets
    from bitkeras.models.architecture import Architecture

    path, arrays = tiny_checkpoint
    preset = presets.Preset("BiT-T-tiny", Architecture(**TINY).config, "tiny.npz", "test")
    monkeypatch.setitem(presets.PRESETS, preset.name, preset)
    expected, logits, _ = reference.forward(arrays, images, TINY["block_units"])
    # A BiT preset through the family's class: the same network, the same released file.
    family = ResNetBackbone.from_preset("BiT-T-tiny", weights=path)
    np.testing.assert_allclose(family(images), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
    assert family.architecture == Architecture(**TINY)
    classifier = ResNetClassifier.from_preset("BiT-T-tiny", weights=path)  # the head kept
    np.testing.assert_allclose(classifier(images), logits, rtol=1e-4,
                               atol=1e-4 * np.abs(logits).max())
    # BiT's class builds BiT's networks only, and says which class builds the rest.
    with pytest.raises(ValueError, match="another network of the ResNet family.*ResNetBackbone"):
        BiTBackbone.from_preset("ResNet20-CIFAR")
    with pytest.raises(ValueError, match="weights='auto'"):
        BiTBackbone.from_preset("BiT-T-tiny", weights="imagenet")
    # Weights and a changed network do not go together, for either kind of preset.
    for name, weights in (("BiT-T-tiny", path), ("ResNet50", "imagenet")):
        with pytest.raises(ValueError, match=r"changes \['width_factor'\] make another"):
            ResNetBackbone.from_preset(name, weights=weights, width_factor=2)
    assert ResNetBackbone.from_preset("BiT-T-tiny", weights=None, width_factor=1).architecture \
        == Architecture(TINY["block_units"], 1)


DEEPEST = ("ResNet1202-CIFAR", "Plain1202-CIFAR")
"""They run forward with batch statistics (at inference a fresh 1202-layer network's
BatchNorm passes activations that overflow)."""


WIDEST = ("R101x3", "R152x4")
"""BiT's widest architectures, left out: a training step of R152x4 held 12.7 GB (936 million
parameters and their gradients; R101x3, 388 million) where CI runs two test workers in
24 GiB. The same builder and units train in R50x3 (width 3) and R152x2 (depth 152)."""


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(name for name, preset in PRESETS.items()
                                         if preset.weights_file is None and name not in WIDEST))
def test_every_preset_builds_runs_forward_and_trains_a_step(name):
    keras.utils.set_random_seed(0)
    classifier = ResNetClassifier.from_preset(name, weights=None, num_classes=2)
    images = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    if name not in DEEPEST:  # theirs runs in the step below (an eager pass: 6 s of 30)
        logits = keras.ops.convert_to_numpy(classifier(images))
        assert logits.shape == (2, 2) and np.isfinite(logits).all()
    else:
        # Keras walks a graph one frame per layer: the deepest are built in nested parts.
        backbone = classifier.backbone
        mean_image = 32 * 32 * 3  # the CIFAR stem's per-pixel mean, which counts leave out
        assert len(backbone.layers) < 100
        assert backbone.count_params() - mean_image == backbone.resnet_config.parameter_count(0)
        if name == "Plain1202-CIFAR":
            # Built whole (its nested parts counted above); its step is ResNet1202's without
            # the shortcuts, whose units train in Plain110-CIFAR: 30 s of CI saved.
            return
    # Keras's eager step, the same computation as its traced one: one step does not repay
    # tracing it into a graph (minutes for the 1202-layer ones, 197 s seen on an Intel Xeon,
    # against about 10 s eagerly; ResNet152, 26 s against 6).
    classifier.compile(optimizer=keras.optimizers.SGD(0.01),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       run_eagerly=True)
    # A random head, so that the step's gradient reaches the stem (a zero head passes none).
    kernel = classifier.head.kernel
    kernel.assign(np.random.default_rng(1).normal(0, 0.1, kernel.shape).astype("float32"))
    first = keras.ops.convert_to_numpy(classifier.backbone.trainable_weights[0]).copy()
    results = classifier.train_on_batch(images, np.array([0, 1]))
    assert np.isfinite(results).all()
    assert not np.array_equal(
        keras.ops.convert_to_numpy(classifier.backbone.trainable_weights[0]), first)


def test_a_nested_network_computes_saves_reloads_and_freezes_as_a_flat_one(tmp_path,
                                                                          monkeypatch):
    # ResNet20 laid out in sub-models of 2 units, as the deepest networks are.
    from bitkeras.models import resnet_backbone

    config = resnet_family.cifar(20).replace(width_factor=0.5).get_config()
    keras.utils.set_random_seed(0)
    flat = ResNetBackbone(**config)
    monkeypatch.setattr(resnet_backbone, "NESTED_ABOVE_UNITS", 2)
    monkeypatch.setattr(resnet_backbone, "UNITS_PER_PART", 2)
    keras.utils.set_random_seed(0)
    nested = ResNetBackbone(**config)
    assert len(nested.layers) < len(flat.layers) and nested.count_params() == flat.count_params()
    assert nested.layers_before(2)[-1] == "conv2_block3_to_block3"
    assert sorted(nested.pyramid_outputs) == sorted(flat.pyramid_outputs)
    nested.set_weights(flat.get_weights())
    images = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(nested(images), flat(images), rtol=1e-5, atol=1e-5)
    classifier = ResNetClassifier(nested, num_classes=2)
    classifier.save(tmp_path / "nested.keras")
    reloaded = keras.saving.load_model(tmp_path / "nested.keras")
    np.testing.assert_array_equal(reloaded.predict(images, verbose=0),
                                  classifier.predict(images, verbose=0))
