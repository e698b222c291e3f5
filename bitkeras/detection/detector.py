"""BiTDetector: keras-hub's RetinaNet on a BiT backbone, its fine-tuning rule and COCO evaluation.

RetinaNet (feature pyramid P3..P7 over the backbone's P3..P5, class and box
heads, focal loss, anchors, non-max suppression) is keras-hub's own
`RetinaNetObjectDetector`; bitkeras adds the BiT backbone, class names, the
letterboxed input of `bitkeras.detection.data`, `detect` (boxes in the
original images' pixels), COCO mean average precision through `pycocotools`
and a SavedModel that serves encoded image bytes.
"""

import contextlib
import dataclasses
import io
import math

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from keras_hub.layers import NonMaxSuppression

import bitkeras.detection.data as detection_data
from bitkeras.finetuning.schedules import WarmupStaircase
from bitkeras.io import export, presets
from bitkeras.io.pretrained import BiTBackbone
from bitkeras.models.architecture import unit_name
from bitkeras.models.layers import group_normalization

BOX_FORMAT = "xyxy"
SCORE_THRESHOLD = 0.05
"""Detections below this score are dropped before NMS (COCO practice, as Detectron's)."""


@dataclasses.dataclass(frozen=True)
class DetectionRule:
    """How long and how fast a detector fine-tunes: the BiT paper's COCO setting, scaled to the data.

    The paper fine-tunes RetinaNet on COCO-2017 at 1024 px, batch 256, learning
    rate 0.08, for 30 epochs. As the classification HyperRule does, the rule
    keeps the learning rate per example (0.08 / 256, times the batch), and
    takes the image side from the data: 1024 px for images of 640 px and more,
    otherwise their longer side rounded up to a multiple of 128 (P7's stride).
    The rate drops tenfold at 2/3 and 8/9 of training after a linear warm-up
    (Detectron's RetinaNet schedule: the paper's text we work from gives no drop points).
    SGD with momentum 0.9 and weight decay 1e-4, as RetinaNet trains.
    """

    image_size: int
    batch_size: int
    steps: int
    base_learning_rate: float = 0.08
    base_batch_size: int = 256
    epochs: float = 30.0
    warmup_steps: int = 500
    momentum: float = 0.9
    weight_decay: float = 1e-4

    @classmethod
    def for_data(cls, num_images, image_side, batch_size=256, steps=None):
        """The rule for `num_images` training images whose longer side is `image_side` pixels."""
        if num_images < 1 or image_side < 1 or batch_size < 1:
            raise ValueError(f"num_images, image_side and batch_size must be positive; got "
                             f"{num_images}, {image_side}, {batch_size}")
        image_size = 1024 if image_side >= 640 else 128 * math.ceil(image_side / 128)
        steps = steps or math.ceil(cls.epochs * num_images / batch_size)
        return cls(image_size, batch_size, steps)

    @property
    def learning_rate(self):
        return self.base_learning_rate * self.batch_size / self.base_batch_size

    def schedule(self):
        warmup = min(self.warmup_steps, self.steps // 10)
        return WarmupStaircase(self.learning_rate, warmup,
                               (round(self.steps * 2 / 3), round(self.steps * 8 / 9)))

    def optimizer(self):
        return keras.optimizers.SGD(self.schedule(), momentum=self.momentum,
                                    weight_decay=self.weight_decay)


@keras.saving.register_keras_serializable(package="bitkeras")
class PreActivationPyramid(keras_hub.models.FeaturePyramidBackbone):
    """P3..P5 of a pre-activation (v2) ResNet, normalized as the layer after each sees them.

    A ResNet-v2 block's output is the raw residual sum, whose scale grows with
    depth (in BiT's weights, to thousands): the next unit normalizes it first.
    Each level here is that pre-activation: GroupNorm + ReLU, initialised with
    the parameters of the next block's first norm (P5: the backbone's own final
    norm, shared), the taps timm's `features_only` takes for pre-activation
    ResNets. An encoder without BiT's layers passes its levels through.
    """

    def __init__(self, encoder, levels=(3, 4, 5), **kwargs):
        outputs = {}
        for level in levels:
            x = encoder.pyramid_outputs[f"P{level}"]
            if getattr(encoder, "architecture", None) is not None:
                if f"P{level + 1}" in encoder.pyramid_outputs:
                    source = encoder.get_layer(unit_name(level, 1)).norm_a
                    norm = group_normalization(name=f"P{level}_norm", dtype=encoder.dtype_policy)
                    x = norm(x)
                    norm.set_weights(source.get_weights())
                else:
                    x = encoder.get_layer("final_norm")(x)
                x = keras.layers.ReLU(name=f"P{level}_relu", dtype=encoder.dtype_policy)(x)
            outputs[f"P{level}"] = x
        kwargs.setdefault("dtype", encoder.dtype_policy)
        super().__init__(inputs=encoder.input, outputs=outputs, **kwargs)
        self.encoder = encoder
        self.levels = tuple(levels)
        self.pyramid_outputs = outputs

    def get_config(self):
        config = super().get_config()
        config.update(encoder=keras.layers.serialize(self.encoder), levels=list(self.levels))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config, encoder=keras.layers.deserialize(config["encoder"]))
        return cls(**config)


@keras.saving.register_keras_serializable(package="bitkeras")
class BiTDetector(keras_hub.models.RetinaNetObjectDetector):
    """keras-hub's RetinaNet with a BiT (or any bitkeras ResNet) backbone and named classes.

    `backbone`: a keras-hub `RetinaNetBackbone`; `from_preset` builds one from a
    BiT preset, handle, file or `ResNetV2Backbone`. `image_size`: the side
    images are letterboxed to (a multiple of 128). Inputs are uint8 or [0, 255]
    float images of that size (`bitkeras.detection.data.letterbox`); `predict`
    returns keras-hub's {"boxes" ("xyxy" pixels of the input), "confidence",
    "labels", "num_detections"}; `detect` takes images of any size and answers
    in their own pixels, with class names.

    `use_prediction_head_norm` (keras-hub's option) defaults to True here:
    GroupNorm in the class and box heads, BiT's normalization throughout (and
    RetinaNet's GN variant). Measured on the rendered scenes (160 steps, same
    seed and rule): AP 0.24 with it, 0.01 without, whose heads barely move at
    the paper's learning rate.

    Example:

    >>> from bitkeras import ResNetV2Backbone
    >>> detector = BiTDetector.from_preset(
    ...     ResNetV2Backbone(block_units=(1, 1, 1, 1), width_factor=0.5),
    ...     class_names=["disc", "square"], image_size=128)
    >>> found = detector.detect([np.zeros((100, 60, 3), np.uint8)])
    >>> sorted(found[0])
    ['boxes', 'class_names', 'labels', 'scores']
    """

    def __init__(self, backbone, class_names, image_size=512, num_classes=None,
                 bounding_box_format=BOX_FORMAT, preprocessor=None, prediction_decoder=None,
                 use_prediction_head_norm=True, **kwargs):
        class_names = tuple(str(name) for name in class_names)
        if not class_names or len(set(class_names)) != len(class_names):
            raise ValueError(f"class_names must be distinct names, at least one; got "
                             f"{list(class_names)}")
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(f"num_classes={num_classes} but {len(class_names)} class_names")
        if image_size % 128:
            raise ValueError(f"image_size must be a multiple of 128 (RetinaNet's P7 stride); "
                             f"got {image_size}")
        preprocessor = preprocessor or keras_hub.models.RetinaNetObjectDetectorPreprocessor(
            image_converter=keras_hub.layers.RetinaNetImageConverter(
                scale=1 / 255, bounding_box_format=bounding_box_format))
        prediction_decoder = prediction_decoder or NonMaxSuppression(
            bounding_box_format, from_logits=True, confidence_threshold=SCORE_THRESHOLD)
        super().__init__(backbone, num_classes=len(class_names),
                         bounding_box_format=bounding_box_format, preprocessor=preprocessor,
                         prediction_decoder=prediction_decoder,
                         use_prediction_head_norm=use_prediction_head_norm, **kwargs)
        self.class_names = class_names
        self.image_size = image_size
        self._detect_function = None
        _retinanet_initialisation(self)

    @classmethod
    def from_preset(cls, preset, class_names=None, image_size=512, weights="default",
                    **kwargs):
        """A detector on `preset`: a BiT preset name, hf:// handle or path, or a backbone model.

        A keras-hub preset folder saved from a BiTDetector loads as it was
        (keras-hub's `from_preset`). Otherwise `class_names` is required and
        the heads start fresh; `weights` is as in `BiTBackbone.from_preset`.
        """
        if not isinstance(preset, keras.Model) and presets.is_keras_hub_preset(preset):
            return super().from_preset(str(preset), **kwargs)
        if class_names is None:
            raise ValueError("class_names is required: the names of the classes to detect")
        encoder = preset if isinstance(preset, keras.Model) else BiTBackbone.from_preset(
            preset, weights=weights)
        if not hasattr(encoder, "pyramid_outputs"):
            raise TypeError(f"{type(encoder).__name__} has no pyramid_outputs: RetinaNet "
                            f"needs a FeaturePyramidBackbone such as ResNetV2Backbone")
        backbone = keras_hub.models.RetinaNetBackbone(
            image_encoder=PreActivationPyramid(encoder), min_level=3, max_level=7, use_p5=False,
            dtype=encoder.dtype_policy)
        return cls(backbone, class_names, image_size=image_size, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(class_names=list(self.class_names), image_size=self.image_size)
        return config

    def get_compile_config(self):
        # keras-hub's ObjectDetector.compile takes its own arguments (box and class losses),
        # which Keras's default compile config cannot replay: a saved detector keeps its
        # optimizer, and reloads compiled with it and keras-hub's losses.
        if not self.compiled:
            return None
        return {"optimizer": keras.optimizers.serialize(self.optimizer)}

    def compile_from_config(self, config):
        self.compile(optimizer=keras.optimizers.deserialize(config["optimizer"]))
        if self.built:  # its variables, for the saved state to load into (as Keras does)
            self.optimizer.build(self.trainable_variables)

    def batches(self, data, batch_size, training=False):
        """`data` (anything `open_detection_data` takes) as `fit`/`evaluate` batches."""
        data = detection_data.open_detection_data(data)
        self._check_classes(data)
        return detection_data.batches(data, self.image_size, batch_size, training=training)

    def _check_classes(self, data):
        if tuple(data.class_names) != self.class_names:
            raise ValueError(f"{data.description} has classes {list(data.class_names)}, the "
                             f"detector {list(self.class_names)}: build the detector with "
                             f"class_names=data.class_names")

    def detect(self, images, batch_size=8):
        """Detections for each image (uint8 (H, W, 3), any size), in its own pixels.

        Returns one dict per image: "boxes" float32 (k, 4) "xyxy", "scores" (k,),
        "labels" int (k,), "class_names" (k,) str, best first.
        """
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise ValueError("detect takes a list or batch of images; wrap a single image "
                             "in a list")
        if self._detect_function is None:
            self._detect_function = tf.function(self.detections_in_image_pixels, input_signature=[
                tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.uint8),
                tf.TensorSpec([None], tf.float32), tf.TensorSpec([None, 2], tf.float32)])
        results = []
        for start in range(0, len(images), batch_size):
            chunk = [np.asarray(image) for image in images[start:start + batch_size]]
            for index, image in enumerate(chunk):
                detection_data.check_image(image, f"images[{start + index}]")
            boxed, scales = zip(*(detection_data.letterbox(image, self.image_size)
                                  for image in chunk))
            shapes = np.array([image.shape[:2] for image in chunk], np.float32)
            found = [t.numpy() for t in self._detect_function(
                tf.stack(boxed), tf.stack(scales), shapes)]
            for boxes, scores, labels, count in zip(*found):
                results.append({
                    "boxes": boxes[:count], "scores": scores[:count],
                    "labels": labels[:count].astype(np.int64),
                    "class_names": [self.class_names[label] for label in labels[:count]]})
        return results

    def detections_in_image_pixels(self, images, scales, shapes):
        """`detections` of letterboxed `images`, boxes mapped back to the original images.

        `scales` (batch,): each image's letterbox scale; `shapes` (batch, 2): its
        original (height, width). Boxes are divided by the scale and clipped to
        the original image.
        """
        boxes, scores, labels, counts = self.detections(images)
        limits = tf.stack([shapes[:, 1], shapes[:, 0], shapes[:, 1], shapes[:, 0]], axis=-1)
        boxes = tf.clip_by_value(boxes / scales[:, None, None], 0.0, limits[:, None, :])
        return boxes, scores, labels, counts

    def detections(self, images):
        """Letterboxed uint8 images (batch, image_size, image_size, 3) -> their detections.

        Returns (boxes float32 (batch, 100, 4) "xyxy" in those pixels, scores
        (batch, 100), labels int32 (batch, 100), counts int32 (batch,)); slots past
        an image's count hold label -1. Decoded one image at a time: keras-hub's
        NonMaxSuppression needs a static batch size, which a graph of any batch
        size (a serving signature, `detect`'s last short batch) does not have.
        """
        x = self.preprocessor(images)
        predictions = self(x, training=False)

        def decode(arguments):
            boxes, logits, image = arguments
            found = self.decode_predictions(
                {"bbox_regression": boxes[None], "cls_logits": logits[None]}, image[None])
            return (tf.cast(found["boxes"][0], tf.float32),
                    tf.cast(found["confidence"][0], tf.float32),
                    tf.cast(found["labels"][0], tf.int32),
                    tf.cast(found["num_detections"][0], tf.int32))

        return tf.map_fn(
            decode, (predictions["bbox_regression"], predictions["cls_logits"], x),
            fn_output_signature=(tf.float32, tf.float32, tf.int32, tf.int32))

    def export_serving(self, path):
        """A SavedModel whose signature takes encoded images and returns their detections.

        `serving_default`: {"images": string (batch,) of JPEG/PNG/GIF/BMP/WebP
        bytes} -> {"boxes" float32 (batch, 100, 4) "xyxy" in each image's own
        pixels, "scores" (batch, 100), "class_names" string (batch, 100) ("" in
        unused slots), "num_detections" int32 (batch,)}. Returns the path.
        """
        return export.write_saved_model(
            path, lambda assets: _DetectorModule(self),
            lambda module: {"serving_default": module.serving_default})


def _retinanet_initialisation(detector):
    """Initialises the heads as RetinaNet's paper does: kernels N(0, 0.01), class bias at the prior.

    keras-hub 0.32's RetinaNetObjectDetector draws the head kernels from Keras's
    RandomNormal (stddev 0.05), which grows the logits about twofold per layer
    (to hundreds), and gives the focal-loss prior (0.01) to the box head instead
    of the class head, which starts every class at probability 0.5: a first loss
    in the thousands and a diverging start.
    """
    initializer = keras.initializers.RandomNormal(stddev=0.01)
    for head in (detector.classification_head, detector.box_head):
        for conv in (*head.conv_layers, head.prediction_layer):
            conv.kernel.assign(initializer(conv.kernel.shape, conv.kernel.dtype))
            if conv.bias is not None:
                conv.bias.assign(np.zeros(conv.bias.shape, conv.bias.dtype))
    prior = detector.classification_head.prediction_layer.bias
    probability = 0.01
    prior.assign(np.full(prior.shape, -math.log((1 - probability) / probability), prior.dtype))


class _DetectorModule(tf.Module):
    def __init__(self, detector):
        super().__init__()
        self.detector = detector
        self.class_names = tf.constant(("",) + detector.class_names)
        self.serving_default = tf.function(self._detect_bytes, input_signature=[
            tf.TensorSpec([None], tf.string, name="images")])

    def _detect_bytes(self, images):
        size = self.detector.image_size

        def decode(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            image = export.apply_orientation(image, export.exif_orientation(data))
            boxed, scale = detection_data.letterbox(image, size)
            shape = tf.cast(tf.shape(image)[:2], tf.float32)
            return boxed, scale, shape

        boxed, scales, shapes = tf.map_fn(decode, images, fn_output_signature=(
            tf.TensorSpec([size, size, 3], tf.uint8), tf.TensorSpec([], tf.float32),
            tf.TensorSpec([2], tf.float32)))
        boxes, scores, labels, counts = self.detector.detections_in_image_pixels(
            boxed, scales, shapes)
        return {"boxes": boxes, "scores": scores,
                "class_names": tf.gather(self.class_names, tf.maximum(labels, -1) + 1),
                "num_detections": counts}


def coco_evaluation(detector, data, batch_size=8):
    """COCO box metrics of `detector` on `data`, computed by pycocotools.

    Returns {"AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR100"}
    (fractions in [0, 1]; -1 where the data has no box of that size).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data = detection_data.open_detection_data(data)
    detector._check_classes(data)
    truth = {"images": [], "annotations": [],
             "categories": [{"id": i, "name": n} for i, n in enumerate(data.class_names)]}
    results = []
    # A batch of images at a time: the data is never all in memory at once.
    for chunk in _chunks(data.records.as_numpy_iterator(), batch_size):
        found = detector.detect([image for image, _, _ in chunk], batch_size=batch_size)
        for (image, boxes, labels), detections in zip(chunk, found):
            image_id = len(truth["images"])
            truth["images"].append({"id": image_id, "height": image.shape[0],
                                    "width": image.shape[1]})
            for box, label in zip(_xywh(boxes), labels):
                truth["annotations"].append({
                    "id": len(truth["annotations"]) + 1, "image_id": image_id,
                    "category_id": int(label), "bbox": box.tolist(), "iscrowd": 0,
                    "area": float(box[2] * box[3])})
            for box, score, label in zip(_xywh(detections["boxes"]), detections["scores"],
                                         detections["labels"]):
                results.append({"image_id": image_id, "category_id": int(label),
                                "bbox": box.tolist(), "score": float(score)})
    if not truth["annotations"]:
        raise ValueError(f"{data.description} has no boxes to evaluate against")
    if not results:
        return dict.fromkeys(METRICS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ground = COCO()
        ground.dataset = truth
        ground.createIndex()
        evaluation = COCOeval(ground, ground.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: float(evaluation.stats[index]) for name, index in METRICS.items()}


def _chunks(iterable, size):
    chunk = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


METRICS = {"AP": 0, "AP50": 1, "AP75": 2, "AP_small": 3, "AP_medium": 4, "AP_large": 5,
           "AR100": 8}
"""pycocotools' summary: the name of each figure bitkeras reports -> its index in `stats`."""


def _xywh(boxes):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.asarray(keras.utils.bounding_boxes.convert_format(
        boxes, source="xyxy", target="xywh"), np.float64).reshape(-1, 4)


class COCOEvaluation(keras.callbacks.Callback):
    """Scores the model with `coco_evaluation` during `fit`.

    By default at the end of every `every`-th epoch, the figures going into the
    epoch's logs (and so the History) as "val_AP", "val_AP50", ... With
    `at_steps` (optimizer steps, counted from this fit's start), after each of
    those batches instead. Either way `results` lists (step, figures) pairs.
    """

    def __init__(self, data, every=1, batch_size=8, at_steps=None):
        super().__init__()
        self.data = detection_data.open_detection_data(data)
        self.every = every
        self.batch_size = batch_size
        self.at_steps = None if at_steps is None else set(at_steps)
        self.results = []
        self._steps = 0

    def on_train_begin(self, logs=None):
        self._steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if self.at_steps is not None and self._steps in self.at_steps:
            self._score()

    def on_epoch_end(self, epoch, logs=None):
        if self.at_steps is None and (epoch + 1) % self.every == 0:
            metrics = self._score()
            if logs is not None:
                logs.update({f"val_{name}": value for name, value in metrics.items()})

    def _score(self):
        metrics = coco_evaluation(self.model, self.data, self.batch_size)
        self.results.append((self._steps, metrics))
        return metrics
