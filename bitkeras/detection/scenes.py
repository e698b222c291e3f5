"""Rendered detection scenes: glyphs and shapes placed on textured backgrounds, with their boxes.

The offline detection data of `bitkeras detect`: the forms of bitkeras's glyph
classes (`bitkeras.data.glyphs`, which the shipped model was pre-trained on,
one centred form per 32-pixel image) at random sizes and places, several per
image, on a background of a colour gradient and a faint texture. Each box is
the tight box of its form's ink. Deterministic for a seed.
"""

import numpy as np
from PIL import Image, ImageDraw

from bitkeras.data import glyphs
from bitkeras.detection.data import DetectionData

CLASS_NAMES = ("disc", "square", "triangle", "ring", "char_A", "char_7")
"""The objects the default scenes hold: glyph class names."""


def render_scenes(num_images, seed=0, image_size=128, class_names=CLASS_NAMES,
                  objects=(1, 4), object_sizes=(18, 48)):
    """`num_images` scenes as a DetectionData (classes `class_names`, numbered in that order).

    `objects`: how many per image (inclusive range); `object_sizes`: the side of
    each object's square, in pixels (the box is the ink inside it). Objects do
    not overlap.
    """
    unknown = [name for name in class_names if name not in glyphs.CLASS_NAMES]
    if unknown:
        raise ValueError(f"unknown glyph classes {unknown}: choose from "
                         f"bitkeras.data.glyphs.CLASS_NAMES")
    if not 8 <= object_sizes[0] <= object_sizes[1] <= image_size:
        raise ValueError(f"object_sizes must be (low, high) with 8 <= low <= high <= "
                         f"image_size={image_size}; got {object_sizes}")
    scenes = [render_scene(index, seed, image_size, class_names, objects, object_sizes)
              for index in range(num_images)]
    images, boxes, labels = zip(*scenes) if scenes else ((), (), ())
    return DetectionData.from_arrays(
        images, boxes, labels, class_names,
        description=f"{num_images} rendered scenes (seed {seed}, {image_size}px)")


def render_scene(index, seed, image_size, class_names, objects, object_sizes):
    """Scene `index`: (uint8 image, float32 (k, 4) "xyxy" boxes, int32 (k,) labels)."""
    rng = np.random.default_rng([seed, index, 7])
    background, _ = glyphs.colours(image_size, rng)
    texture = np.asarray(_texture(image_size, rng), np.float32)[..., None] / 255.0
    shade = rng.uniform(-0.12, 0.12, size=3).astype(np.float32)
    image = np.clip(background + texture * shade, 0, 1)
    boxes, labels, taken = [], [], []
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        size = int(rng.integers(object_sizes[0], object_sizes[1] + 1))
        label = int(rng.integers(len(class_names)))
        for _attempt in range(20):
            x, y = rng.integers(0, image_size - size + 1, size=2)
            square = (x, y, x + size, y + size)
            if not any(_overlap(square, other) for other in taken):
                break
        else:
            continue
        form = glyphs.draw_form(class_names[label], size, rng)
        ink = np.argwhere(form > 0.5)
        if len(ink) == 0:
            continue
        patch = image[y:y + size, x:x + size]
        colour = _contrasting(patch.mean(axis=(0, 1)), rng)
        image[y:y + size, x:x + size] = patch * (1 - form[..., None]) + colour * form[..., None]
        (top, left), (bottom, right) = ink.min(axis=0), ink.max(axis=0) + 1
        boxes.append((x + left, y + top, x + right, y + bottom))
        labels.append(label)
        taken.append(square)
    noise = rng.normal(0, rng.uniform(0, 0.04), size=image.shape)
    image = np.clip(np.round((image + noise) * 255), 0, 255).astype(np.uint8)
    return (image, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int32))


def _texture(image_size, rng):
    """One of the glyph textures over the whole image, as an 'L' mask."""
    name = glyphs.TEXTURES[int(rng.integers(len(glyphs.TEXTURES)))]
    mask = Image.new("L", (image_size, image_size), 0)
    glyphs.draw_texture(ImageDraw.Draw(mask), name, image_size, rng)
    return mask


def _contrasting(mean, rng):
    """A colour whose every channel is at least 0.4 darker or lighter than `mean`'s mean."""
    level = float(mean.mean())
    low, high = (0.0, level - 0.4) if level > 0.5 else (level + 0.4, 1.0)
    return rng.uniform(low, high, size=3).astype(np.float32)


def _overlap(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
