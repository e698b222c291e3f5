"""Glyphs: a procedurally rendered upstream dataset that needs no download.

Each image shows one thing from one of `len(CLASS_NAMES)` classes: a
character (digits, Latin letters, Greek letters, symbols) rendered from one of the
DejaVu and STIX fonts that matplotlib ships, a geometric shape, or a texture.
Every example draws its own font, size, stroke weight, affine transform
(rotation, shear, scale, shift), elastic warp (half of them), foreground and
background colours (either polarity), background gradient, blur or
resolution loss, and pixel noise, so the classes can only be told apart by
their form.

The printed digits 0-9 are classes, as the classes of many BiT downstream
tasks are among ImageNet-21k's: bitkeras's default downstream task, 8x8 scans
of handwritten digits, is then a real domain shift (handwriting, scanner
resolution) from data the upstream model has seen in print.

Example `i` of a set depends only on (`seed`, `i`) and the installed fonts and
Pillow: the same call gives the same pixels, and any slice can be rendered on
its own. Labels cycle through the classes (example `i` has class
`i % num_classes`), so every set is balanced.

>>> images, labels = make_glyphs(8, seed=0, image_size=32)
>>> images.shape, images.dtype, labels[:3]
((8, 32, 32, 3), dtype('uint8'), array([0, 1, 2]))
"""

import functools
import math
import pathlib
from concurrent import futures

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

DIGITS = "0123456789"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "abdefghijkmnqrtuy"
"""Upper case, and the lower-case letters whose shape differs from their capital."""

GREEK = "ΓΔΘΛΞΠΣΦΨΩαβγδεζηθλμξπρσφψω"
SYMBOLS = "+×÷=≠<>?!@#$%&*§¶€£¥∞√∫∑∂≈~^"

SHAPES = ("disc", "ring", "square", "square_outline", "triangle", "triangle_outline",
          "diamond", "star", "cross", "hexagon", "ellipse", "arc", "crescent", "arrow",
          "bars", "heart")
TEXTURES = ("stripes", "checkerboard", "dots", "grid", "zigzag", "concentric", "waves",
            "speckle")

CLASS_NAMES = tuple(f"char_{c}" for c in DIGITS + LETTERS + GREEK + SYMBOLS) + SHAPES + TEXTURES
"""Class names in label order: characters as 'char_X', then shapes, then textures."""

NUM_CLASSES = len(CLASS_NAMES)

DEFAULT_EXAMPLES = 60_000
"""How many glyphs the upstream data set has unless told otherwise (`bitkeras pretrain`)."""

FORM_CLASSES = tuple(range(NUM_CLASSES - len(SHAPES) - len(TEXTURES), NUM_CLASSES))
"""The class ids of the shapes and textures: the 24 classes a small network learns fastest."""

FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
)
"""The fonts characters are drawn from; all ship with matplotlib."""

_SUPERSAMPLE = 2
"""Shapes and text are drawn at this multiple of the image size, then downsampled."""


def font_folder():
    """The folder of matplotlib's bundled TrueType fonts."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            "bitkeras.data.glyphs renders characters from the fonts that matplotlib ships: "
            "pip install matplotlib"
        ) from error
    return pathlib.Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.lru_cache(maxsize=None)
def _font(file_name, size):
    return ImageFont.truetype(str(font_folder() / file_name), size)


def make_glyphs(num_examples, seed=0, image_size=32, start=0, workers=None, classes=None):
    """Renders examples `start .. start + num_examples - 1` of the set keyed by `seed`.

    Returns (images uint8 (N, image_size, image_size, 3), labels int64 (N,)).
    `classes`: render only these class ids (e.g. `FORM_CLASSES`), in turn; the
    labels are then positions in `classes` (0 .. len(classes) - 1). Rendering
    runs on a thread pool (`workers`, default: one per CPU).
    """
    if num_examples < 0 or image_size < 8:
        raise ValueError(
            f"make_glyphs needs num_examples >= 0 and image_size >= 8; got "
            f"num_examples={num_examples}, image_size={image_size}"
        )
    positions = range(start, start + num_examples)
    if classes is None:
        indices = list(positions)
    else:
        classes = list(classes)
        if not classes or any(c not in range(NUM_CLASSES) for c in classes):
            raise ValueError(f"classes must be class ids in 0..{NUM_CLASSES - 1}; got {classes}")
        # Example k of the subset is the (k // len)-th rendering of its class.
        indices = [k // len(classes) * NUM_CLASSES + classes[k % len(classes)]
                   for k in positions]
    images = np.zeros((num_examples, image_size, image_size, 3), np.uint8)
    with futures.ThreadPoolExecutor(workers) as pool:
        for position, image in enumerate(
            pool.map(lambda index: render(index, seed, image_size), indices, chunksize=64)
        ):
            images[position] = image
    labels = np.array([index % NUM_CLASSES for index in indices], np.int64)
    if classes is not None:
        labels = np.array([classes.index(label) for label in labels], np.int64)
    return images, labels


def render(index, seed=0, image_size=32):
    """Example `index` of the set keyed by `seed`: uint8 (image_size, image_size, 3)."""
    rng = np.random.default_rng([seed, index])
    label = index % NUM_CLASSES
    canvas = image_size * _SUPERSAMPLE
    mask = _draw_mask(CLASS_NAMES[label], canvas, rng)
    mask = _random_affine(mask, rng)
    if rng.random() < 0.5:
        mask = _elastic(mask, rng)
    mask = np.asarray(mask.resize((image_size, image_size), Image.Resampling.BOX),
                      np.float32)[..., None] / 255.0
    background, foreground = colours(image_size, rng)
    image = background * (1.0 - mask) + foreground * mask
    image = _degrade(image, rng)
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def draw_form(name, size, rng):
    """The form of class `name` (a `CLASS_NAMES` entry), randomly posed: float (size, size) in [0, 1].

    1 is ink, 0 background, with anti-aliased edges; the form is centred, scaled,
    rotated and sheared at random as in `render`. Used by the detection scenes.
    """
    mask = _random_affine(_draw_mask(name, size * _SUPERSAMPLE, rng), rng)
    return np.asarray(mask.resize((size, size), Image.Resampling.BOX), np.float32) / 255.0


def _draw_mask(name, canvas, rng):
    """The class's form as a white-on-black 'L' image of size `canvas`."""
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    if name.startswith("char_"):
        _draw_character(draw, name[len("char_"):], canvas, rng)
    elif name in SHAPES:
        _draw_shape(draw, name, canvas, rng)
    else:
        draw_texture(draw, name, canvas, rng)
    return mask


def _draw_character(draw, character, canvas, rng):
    font = _font(FONT_FILES[rng.integers(len(FONT_FILES))],
                 int(canvas * rng.uniform(0.55, 0.9)))
    stroke = int(rng.integers(0, max(1, canvas // 12) + 1))
    draw.text((canvas / 2, canvas / 2), character, fill=255, font=font, anchor="mm",
              stroke_width=stroke, stroke_fill=255)


def _regular_polygon(center, radius, sides, rotation):
    return [(center + radius * math.cos(rotation + 2 * math.pi * k / sides),
             center + radius * math.sin(rotation + 2 * math.pi * k / sides))
            for k in range(sides)]


def _draw_shape(draw, name, canvas, rng):
    c = canvas / 2
    r = canvas * rng.uniform(0.25, 0.42)
    width = max(1, int(canvas * rng.uniform(0.04, 0.12)))
    box = (c - r, c - r, c + r, c + r)
    if name == "disc":
        draw.ellipse(box, fill=255)
    elif name == "ring":
        draw.ellipse(box, outline=255, width=width)
    elif name == "square":
        draw.rectangle(box, fill=255)
    elif name == "square_outline":
        draw.rectangle(box, outline=255, width=width)
    elif name == "triangle":
        draw.polygon(_regular_polygon(c, r, 3, -math.pi / 2), fill=255)
    elif name == "triangle_outline":
        draw.polygon(_regular_polygon(c, r, 3, -math.pi / 2), outline=255, width=width)
    elif name == "diamond":
        draw.polygon([(c, c - r), (c + 0.6 * r, c), (c, c + r), (c - 0.6 * r, c)], fill=255)
    elif name == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.42
            angle = -math.pi / 2 + math.pi * k / 5
            points.append((c + radius * math.cos(angle), c + radius * math.sin(angle)))
        draw.polygon(points, fill=255)
    elif name == "cross":
        draw.rectangle((c - r, c - width, c + r, c + width), fill=255)
        draw.rectangle((c - width, c - r, c + width, c + r), fill=255)
    elif name == "hexagon":
        draw.polygon(_regular_polygon(c, r, 6, 0.0), fill=255)
    elif name == "ellipse":
        draw.ellipse((c - r, c - 0.5 * r, c + r, c + 0.5 * r), fill=255)
    elif name == "arc":
        draw.arc(box, 200, 340, fill=255, width=width)
    elif name == "crescent":
        draw.ellipse(box, fill=255)
        draw.ellipse((c - 0.55 * r, c - r, c + 1.45 * r, c + r), fill=0)
    elif name == "arrow":
        draw.rectangle((c - r, c - width, c + 0.2 * r, c + width), fill=255)
        draw.polygon([(c + r, c), (c + 0.1 * r, c - 0.6 * r), (c + 0.1 * r, c + 0.6 * r)],
                     fill=255)
    elif name == "bars":
        for offset in (-0.6, 0.0, 0.6):
            draw.rectangle((c + offset * r - width / 2, c - r, c + offset * r + width / 2, c + r),
                           fill=255)
    elif name == "heart":
        draw.ellipse((c - r, c - 0.8 * r, c, c + 0.1 * r), fill=255)
        draw.ellipse((c, c - 0.8 * r, c + r, c + 0.1 * r), fill=255)
        draw.polygon([(c - 0.97 * r, c - 0.2 * r), (c + 0.97 * r, c - 0.2 * r), (c, c + r)],
                     fill=255)


def draw_texture(draw, name, canvas, rng):
    """Draws texture `name` (one of TEXTURES) in white on `draw`'s `canvas`-pixel square.

    Period, stroke width and phase are drawn from `rng`.
    """
    period = canvas * rng.uniform(0.12, 0.3)
    width = max(1, int(period * rng.uniform(0.25, 0.5)))
    steps = np.arange(-canvas, 2 * canvas, period)
    if name == "stripes":
        for x in steps:
            draw.rectangle((x, -canvas, x + width, 2 * canvas), fill=255)
    elif name == "checkerboard":
        for i, x in enumerate(steps):
            for j, y in enumerate(steps):
                if (i + j) % 2 == 0:
                    draw.rectangle((x, y, x + period, y + period), fill=255)
    elif name == "dots":
        for x in steps:
            for y in steps:
                draw.ellipse((x, y, x + width, y + width), fill=255)
    elif name == "grid":
        line = max(1, width // 2)
        for x in steps:
            draw.rectangle((x, -canvas, x + line, 2 * canvas), fill=255)
            draw.rectangle((-canvas, x, 2 * canvas, x + line), fill=255)
    elif name == "zigzag":
        for y in steps:
            points = [(x, y + (period / 2 if k % 2 else 0))
                      for k, x in enumerate(np.arange(-canvas, 2 * canvas, period / 2))]
            draw.line(points, fill=255, width=max(1, width // 2))
    elif name == "concentric":
        c = canvas / 2 + rng.uniform(-0.2, 0.2) * canvas
        for radius in np.arange(period / 2, 1.5 * canvas, period):
            draw.ellipse((c - radius, c - radius, c + radius, c + radius), outline=255,
                         width=max(1, width // 2))
    elif name == "waves":
        xs = np.arange(-canvas, 2 * canvas, 2.0)
        for y in steps:
            points = [(x, y + period * 0.3 * math.sin(2 * math.pi * x / (2 * period))) for x in xs]
            draw.line(points, fill=255, width=max(1, width // 2))
    elif name == "speckle":
        count = int(rng.integers(20, 60))
        for x, y in rng.uniform(0, canvas, size=(count, 2)):
            size = rng.uniform(1, width + 1)
            draw.ellipse((x, y, x + size, y + size), fill=255)


def _random_affine(mask, rng):
    """Rotation, shear, anisotropic scale and shift about the centre."""
    size = mask.size[0]
    angle = rng.uniform(-0.45, 0.45)  # radians, about 25 degrees
    shear = rng.uniform(-0.3, 0.3)
    scale_x, scale_y = rng.uniform(0.75, 1.15, size=2)
    shift_x, shift_y = rng.uniform(-0.12, 0.12, size=2) * size
    cos, sin = math.cos(angle), math.sin(angle)
    # The forward map A (rotate @ shear @ scale); Pillow wants output -> input.
    forward = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1, shear], [0, 1]]) @ np.diag(
        [scale_x, scale_y])
    inverse = np.linalg.inv(forward)
    centre = np.array([size / 2, size / 2])
    offset = centre - inverse @ (centre + np.array([shift_x, shift_y]))
    coefficients = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1],
                    offset[1])
    return mask.transform(mask.size, Image.Transform.AFFINE, coefficients,
                          resample=Image.Resampling.BILINEAR)


def _elastic(mask, rng, cells=4):
    """A smooth random warp, as in handwriting: a grid of jittered quads mapped to squares."""
    size = mask.size[0]
    step = size / cells
    points = np.mgrid[0:cells + 1, 0:cells + 1].transpose(1, 2, 0).astype(float) * step
    jitter = rng.normal(0, size * rng.uniform(0.02, 0.05), points.shape)
    jitter[[0, -1], :] = jitter[:, [0, -1]] = 0  # keep the border in place
    source = points + jitter
    mesh = []
    for row in range(cells):
        for column in range(cells):
            box = (int(column * step), int(row * step), int((column + 1) * step),
                   int((row + 1) * step))
            corners = [source[row, column], source[row + 1, column],
                       source[row + 1, column + 1], source[row, column + 1]]
            # MESH quads are (x, y) pairs: upper-left, lower-left, lower-right, upper-right.
            mesh.append((box, tuple(float(v) for y, x in corners for v in (x, y))))
    return mask.transform(mask.size, Image.Transform.MESH, mesh,
                          resample=Image.Resampling.BILINEAR)


def colours(image_size, rng):
    """(background (S, S, 3) float in [0, 1], foreground (3,)) with visible contrast."""
    while True:
        foreground, background = rng.uniform(0, 1, size=(2, 3))
        if rng.random() < 0.4:  # grey levels, as in scans
            foreground[:], background[:] = foreground[0], background[0]
        if abs(foreground.mean() - background.mean()) > 0.3:
            break
    ramp = np.linspace(-0.5, 0.5, image_size)
    angle = rng.uniform(0, 2 * math.pi)
    gradient = math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None]
    strength = rng.uniform(0, 0.25)
    background = np.clip(background + strength * gradient[..., None], 0, 1)
    return background.astype(np.float32), foreground.astype(np.float32)


def _degrade(image, rng):
    """Random blur, resolution loss and Gaussian pixel noise on a float image."""
    size = image.shape[0]
    choice = rng.random()
    if choice < 0.6:
        picture = Image.fromarray(np.clip(image * 255, 0, 255).astype(np.uint8))
        if choice < 0.25:
            picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
        else:  # a coarse scan, upsampled: few pixels, each an average of ink
            low = int(rng.integers(max(4, size // 5), size // 2 + 1))
            picture = picture.resize((low, low), Image.Resampling.BOX).resize(
                (size, size), Image.Resampling.BILINEAR)
        image = np.asarray(picture, np.float32) / 255.0
    noise = rng.uniform(0, 0.08)
    return image + rng.normal(0, noise, size=image.shape).astype(np.float32)
