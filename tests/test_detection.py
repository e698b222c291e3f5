"""Detection transfer: data (scenes, COCO JSON, TFDS records), the rule, keras-hub's RetinaNet
on a BiT backbone (training, COCO AP by pycocotools, bytes serving), and `bitkeras detect`."""

import io
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from bitkeras.detection import (
    BadAnnotationError,
    BiTDetector,
    COCOEvaluation,
    DetectionData,
    DetectionRule,
    from_coco_json,
    render_scenes,
)
from bitkeras.detection import data as detection_data
from bitkeras.detection.detector import PreActivationPyramid
from bitkeras.models import kernels
from bitkeras.models.backbone import ResNetV2Backbone

TINY_DETECTOR = dict(block_units=(1, 1, 1, 1), width_factor=0.5)


def test_rendered_scenes_are_deterministic_and_box_their_ink():
    first, again = render_scenes(6, seed=3).numpy(), render_scenes(6, seed=3).numpy()
    other = render_scenes(6, seed=4).numpy()
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(first, again))
    assert not np.array_equal(first[0][0], other[0][0])
    for image, boxes, labels in first:
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert 1 <= len(boxes) == len(labels) <= 4
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= 128)
        assert np.all(boxes[:, 2:] - boxes[:, :2] >= 4)  # at least 4 px of ink each way
        assert np.all((labels >= 0) & (labels < 6))
    with pytest.raises(ValueError, match="unknown glyph classes"):
        render_scenes(1, class_names=("disc", "unicorn"))


def _png(path, height, width, value=120):
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)


def test_coco_json_boxes_are_converted_and_bad_ones_named(tmp_path):
    (tmp_path / "images").mkdir()
    _png(tmp_path / "images" / "a.png", 40, 60)
    _png(tmp_path / "b.png", 30, 30)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 60},
                   {"id": 2, "file_name": "b.png", "height": 30, "width": 30},
                   {"id": 3, "file_name": "missing.png", "height": 30, "width": 30},
                   {"id": 4, "file_name": "broken.png", "height": 30, "width": 30}],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 7, "bbox": [5, 6, 10, 20]},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [50, 0, 10, 40]},
            {"id": 12, "image_id": 1, "category_id": 3, "bbox": [55, 0, 10, 10]},  # outside
            {"id": 13, "image_id": 2, "category_id": 7, "bbox": [1, 1, 0, 5]},  # zero area
            {"id": 14, "image_id": 2, "category_id": 99, "bbox": [1, 1, 5, 5]},  # no class
            {"id": 15, "image_id": 42, "category_id": 7, "bbox": [1, 1, 5, 5]},  # no image
        ]}
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(BadAnnotationError) as error:
        from_coco_json(tmp_path, on_bad="raise")
    for named in ("annotation 12", "outside the 60x40 image", "annotation 13", "zero area",
                  "annotation 14", "unknown class", "annotation 15: no image has id 42",
                  "missing.png", "broken.png"):
        assert named in str(error.value)
    with pytest.warns(UserWarning, match="6 bad annotation"):
        data = from_coco_json(tmp_path / "annotations.json")
    assert data.class_names == ("dog", "cat")  # in category id order
    examples = data.numpy()
    assert [image.shape for image, _, _ in examples] == [(40, 60, 3), (30, 30, 3)]
    np.testing.assert_array_equal(examples[0][1], [[5, 6, 15, 26], [50, 0, 60, 40]])
    np.testing.assert_array_equal(examples[0][2], [1, 0])
    assert examples[1][1].shape == (0, 4)


def _bomb_png(path, side=20000):
    """A PNG whose header declares side x side pixels, with no pixel data to speak of."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_a_decompression_bomb_in_coco_data_is_refused_before_decoding(tmp_path):
    _png(tmp_path / "a.png", 20, 20)
    _bomb_png(tmp_path / "bomb.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 20},
                       {"id": 2, "file_name": "bomb.png", "height": 20000, "width": 20000}],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}]}
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(BadAnnotationError, match="bomb.png.*DecompressionBomb"):
        from_coco_json(tmp_path, on_bad="raise")
    with pytest.warns(UserWarning, match="bomb.png"):
        assert from_coco_json(tmp_path).num_images == 1


def test_boxes_and_labels_given_as_arrays_are_checked_at_the_door():
    images = [np.zeros((20, 30, 3), np.uint8)] * 2
    good = DetectionData.from_arrays(images, [[[1, 2, 10, 12]], []], [[1], []], ("a", "b"))
    assert good.num_images == 2
    with pytest.raises(BadAnnotationError) as error:
        DetectionData.from_arrays(
            images, [[[1, 2, 10, 12], [5, 5, 40, 10]], [[10, 2, 4, 12], [0, 0, 5, 5]]],
            [[2, 0], [1, 1.5]], ("a", "b"))
    message = str(error.value)
    for named in ("image 0, box 0: label 2 is not a class id in [0, 2)",
                  "image 0, box 1: outside the 30x20 image",
                  "image 1, box 0: zero area", "image 1, box 1: label 1.5"):
        assert named in message, message


def test_tfds_records_become_pixel_boxes():
    record = {"image": tf.zeros((50, 200, 3), tf.uint8),
              "objects": {"bbox": tf.constant([[0.1, 0.25, 0.5, 1.0]]),
                          "label": tf.constant([4], tf.int64)}}
    _, boxes, labels = detection_data.tfds_example(record)
    np.testing.assert_allclose(boxes.numpy(), [[50, 5, 200, 25]], rtol=1e-6)
    assert labels.dtype == tf.int32 and labels.numpy().tolist() == [4]


def test_batches_letterbox_images_scale_boxes_and_pad_labels():
    images = [np.full((50, 100, 3), 200, np.uint8), np.full((64, 32, 3), 50, np.uint8)]
    data = DetectionData.from_arrays(images, [[[10, 5, 30, 45]], [[0, 0, 32, 64], [4, 4, 8, 8]]],
                                     [[1], [0, 1]], ("a", "b"))
    x, y = next(iter(detection_data.batches(data, 128, batch_size=2)))
    assert x.shape == (2, 128, 128, 3) and x.dtype == tf.uint8
    np.testing.assert_allclose(y["boxes"][0].numpy(), [[12.8, 6.4, 38.4, 57.6], [0, 0, 0, 0]],
                               rtol=1e-6)
    np.testing.assert_allclose(y["boxes"][1].numpy(), [[0, 0, 64, 128], [8, 8, 16, 16]])
    np.testing.assert_array_equal(y["labels"].numpy(), [[1, -1], [0, 1]])
    assert x[0, 63, 0, 0] == 200 and x[0, 64, 0, 0] == 0  # padded below the image
    with pytest.raises(ValueError, match="one label per box"):
        DetectionData.from_arrays(images[:1], [[[0, 0, 1, 1]]], [[0, 1]], ("a",))


def test_the_rule_is_the_papers_coco_setting_scaled_to_the_data():
    coco = DetectionRule.for_data(118_287, 640)
    assert (coco.image_size, coco.batch_size, coco.learning_rate) == (1024, 256, 0.08)
    assert coco.steps == math.ceil(30 * 118_287 / 256)
    small = DetectionRule.for_data(300, 100, batch_size=8, steps=90)
    assert (small.image_size, small.steps) == (128, 90)
    assert small.learning_rate == pytest.approx(0.08 * 8 / 256)
    schedule = small.schedule()
    rates = [float(schedule(step)) for step in (9, 50, 70, 89)]
    assert rates == pytest.approx([small.learning_rate, small.learning_rate,
                                   small.learning_rate / 10, small.learning_rate / 100])
    assert DetectionRule.for_data(10, 300).image_size == 384
    with pytest.raises(ValueError, match="positive"):
        DetectionRule.for_data(0, 100)


def test_pyramid_levels_are_the_next_norms_pre_activations():
    encoder = ResNetV2Backbone(**TINY_DETECTOR)
    pyramid = PreActivationPyramid(encoder)
    images = np.random.default_rng(0).uniform(0, 1, (1, 64, 64, 3)).astype("float32")
    levels = pyramid(images)
    raw = keras.Model(encoder.input, encoder.pyramid_outputs)(images)
    # P3 is what block 3's first unit normalizes: its own GroupNorm and ReLU.
    norm = encoder.get_layer("block3_unit01").norm_a
    np.testing.assert_allclose(levels["P3"], keras.ops.relu(norm(raw["P3"])), rtol=1e-5,
                               atol=1e-6)
    final = keras.ops.relu(encoder.get_layer("final_norm")(raw["P5"]))
    np.testing.assert_allclose(levels["P5"], final, rtol=1e-5, atol=1e-6)
    assert sorted(levels) == ["P3", "P4", "P5"]


def _png_bytes(image):
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    return png.getvalue()


@pytest.mark.slow
def test_retinanet_on_a_bit_backbone_trains_scores_and_serves_bytes(tmp_path):
    keras.utils.set_random_seed(0)
    train, test = render_scenes(16, seed=0, objects=(1, 3), object_sizes=(32, 72)), \
        render_scenes(6, seed=1, objects=(1, 3), object_sizes=(32, 72))
    detector = BiTDetector.from_preset(ResNetV2Backbone(**TINY_DETECTOR),
                                       class_names=train.class_names, image_size=128)
    heads = detector.classification_head.prediction_layer.bias.numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-heads)), 0.01, rtol=1e-5)  # the focal prior
    detector.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    x, y = next(iter(detector.batches(train, 8)))
    before = detector.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    history = detector.fit(detector.batches(train, 8, training=True), epochs=1,
                           steps_per_epoch=12, verbose=0, shuffle=False,
                           callbacks=[COCOEvaluation(test)])  # pycocotools on held-out scenes
    after = detector.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    assert after < 0.8 * before, (before, after)

    metrics = {name[len("val_"):]: values[-1] for name, values in history.history.items()
               if name.startswith("val_")}
    assert set(metrics) == {"AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR100"}
    assert all(-1 <= value <= 1 for value in metrics.values())

    image = test.numpy()[0][0][:, :100]  # not square: boxes come back in its own pixels
    found = detector.detect([image])[0]
    assert found["boxes"].shape[1:] == (4,) and len(found["scores"]) == len(found["labels"])
    assert np.all(found["boxes"] >= 0) and np.all(found["boxes"][:, [0, 2]] <= 100)
    assert set(found["class_names"]) <= set(train.class_names)

    # The export computes in the plain form (kernels.portable), `detect` in the faster
    # one. The two agree on the network's outputs within float error...
    boxed, scale = detection_data.letterbox(image, detector.image_size)
    x = detector.preprocessor(boxed[None])
    faster = detector(x, training=False)
    with kernels.portable():
        plain = detector(x, training=False)
    for name in ("cls_logits", "bbox_regression"):
        scale_of = float(np.max(np.abs(plain[name])))
        np.testing.assert_allclose(faster[name], plain[name], rtol=0, atol=1e-4 * scale_of)
    # ...but among this barely trained detector's 100 low, close scores, an error that
    # small may flip which of two boxes non-max suppression keeps, and that choice
    # changes those it suppresses next. So the served detections are compared with
    # `detect`'s own function traced in the plain form, on the same letterboxed image.
    with kernels.portable():
        boxes, scores, labels, counts = tf.function(detector.detections_in_image_pixels)(
            boxed[None], scale[None], tf.constant([image.shape[:2]], tf.float32))
    count = int(counts[0])
    expected = list(zip(boxes[0, :count].numpy(), scores[0, :count].numpy(),
                        [detector.class_names[label] for label in labels[0, :count]]))
    served = tf.saved_model.load(str(detector.export_serving(tmp_path / "serving")))
    answer = served.signatures["serving_default"](images=tf.constant([_png_bytes(image)]))
    assert int(answer["num_detections"][0]) == count
    served = [(box, score, name.decode()) for box, score, name in zip(
        answer["boxes"][0, :count].numpy(), answer["scores"][0, :count].numpy(),
        answer["class_names"][0, :count].numpy())]
    assert_same_detections(served, expected)
    assert set(answer["class_names"][0, count:].numpy()) <= {b""}


def assert_same_detections(served, found):
    """Each served (box, score, class name) matches its own found one, within float error.

    Both sides compute in the same form, yet in two graphs: two scores that agree
    within float error may sort either way, so the detections are paired one to
    one, not by position; and of two boxes of a class whose scores tie within
    float error and that overlap as much as non-max suppression's threshold,
    either may be the one kept, so such a pair is paired too.
    """
    unmatched = list(found)
    for box, score, name in served:
        ties = [index for index, (other_box, other_score, other_name) in enumerate(unmatched)
                if other_name == name and np.isclose(score, other_score, rtol=1e-4, atol=1e-5)]
        same = [index for index in ties if np.allclose(box, unmatched[index][0], rtol=1e-4,
                                                       atol=1e-3)]
        swapped = [index for index in ties if _iou(box, unmatched[index][0]) >= 0.5]
        assert same or swapped, (box, score, name, found)
        unmatched.pop((same or swapped)[0])
    assert not unmatched


def _iou(first, second):
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    width = min(first[2], second[2]) - max(first[0], second[0])
    height = min(first[3], second[3]) - max(first[1], second[1])
    overlap = max(width, 0) * max(height, 0)
    area = (first[2] - first[0]) * (first[3] - first[1])
    other = (second[2] - second[0]) * (second[3] - second[1])
    union = area + other - overlap
    return overlap / union if union > 0 else 0.0  # two empty boxes share no area


def test_detector_refuses_mismatched_classes_and_sizes():
    backbone = ResNetV2Backbone(**TINY_DETECTOR)
    with pytest.raises(ValueError, match="multiple of 128"):
        BiTDetector.from_preset(backbone, class_names=["a"], image_size=100)
    with pytest.raises(ValueError, match="class_names is required"):
        BiTDetector.from_preset(backbone)
    detector = BiTDetector.from_preset(backbone, class_names=["a", "b"], image_size=128)
    with pytest.raises(ValueError, match="class_names=data.class_names"):
        detector.batches(render_scenes(1), 1)
    with pytest.raises(ValueError, match="wrap a single image"):
        detector.detect(np.zeros((8, 8, 3), np.uint8))


@pytest.mark.slow
def test_detect_job_end_to_end(tmp_path):
    from bitkeras.jobs import cli

    out = tmp_path / "run"
    report = cli.run(["detect", "--train-images", "8", "--test-images", "4", "--steps", "3",
                      "--batch-size", "4", "--evaluations", "2", "--out", str(out),
                      "--verbose", "0"])
    written = json.loads((out / "report.json").read_text())
    assert written["final"].keys() == {"pretrained", "scratch"}
    assert written["curves"]["steps"] == [2, 3]  # every step given is trained
    assert len(written["curves"]["scratch"]["AP50"]) == 2
    assert written["gain"]["AP"] == pytest.approx(
        written["final"]["pretrained"]["AP"] - written["final"]["scratch"]["AP"])
    assert report["rule"]["steps"] == 3 and (out / "report.png").stat().st_size > 10_000
    loaded = keras.saving.load_model(out / "detector.keras")
    assert isinstance(loaded, BiTDetector) and loaded.class_names == tuple(
        written["class_names"])
    # Reloaded compiled with the rule's optimizer, its state after the 3 steps kept.
    assert isinstance(loaded.optimizer, keras.optimizers.SGD)
    assert int(loaded.optimizer.iterations) == 3
    prior = -math.log(99)  # where the class head's bias starts: the training was kept
    assert np.any(loaded.classification_head.prediction_layer.bias.numpy() != np.float32(prior))
    served = tf.saved_model.load(str(out / "serving")).signatures["serving_default"]
    image = render_scenes(1, seed=5).numpy()[0][0]
    answer = served(images=tf.constant([_png_bytes(image), _png_bytes(image[:64])]))
    assert answer["boxes"].shape == (2, 100, 4) and answer["class_names"].dtype == tf.string


def test_tfds_detection_datasets_read_with_pixel_boxes(monkeypatch, tmp_path):
    pytest.importorskip("importlib_resources")  # what TFDS needs to build datasets
    from tests.helpers.tiny_tfds import BitkerasTinyBoxes, prepare

    prepare(BitkerasTinyBoxes, tmp_path, monkeypatch)
    train = detection_data.open_detection_data("tfds:bitkeras_tiny_boxes")
    assert (train.num_images, train.class_names) == (3, ("box", "bar"))
    for (image, boxes, labels), expected in zip(train.numpy(), BitkerasTinyBoxes.BOXES):
        assert image.shape == (32, 48, 3)
        pixels = [(left, top, right, bottom) for top, left, bottom, right in expected]
        np.testing.assert_allclose(boxes, pixels, atol=1e-4)
        assert labels.tolist() == [k % 2 for k in range(len(expected))]
    assert detection_data.open_detection_data("tfds:bitkeras_tiny_boxes:validation").num_images \
        == 2
