"""What several test modules share: the tiny architecture, synthetic image folders,
and (in the modules beside this one) reference numerics, workers and data formats.

Test modules import from here, never from each other or from conftest.
"""

import numpy as np
import pytest

TINY = dict(block_units=(1, 1, 1, 1), width_factor=0.5)
"""The smallest BiT: 1 unit per block, 32 root channels."""


COLORS = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (210, 40, 40)}
"""Classes of the synthetic image folders, told apart by colour."""


def make_image_folder(root, per_class=10, seed=0, extras=True):
    """A folder of class sub-folders of noisy colour images in several file formats.

    With `extras`, the folder also holds a corrupt file (red/broken.jpg), a
    grayscale PNG, a palette PNG, an RGBA PNG, a CMYK JPEG and a palette BMP.
    Returns the folder.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    formats = ("jpg", "png", "bmp", "gif")
    for name, colour in COLORS.items():
        folder = root / name
        folder.mkdir(parents=True)
        for index in range(per_class):
            size = (int(rng.integers(30, 60)), int(rng.integers(30, 60)))
            pixels = np.clip(np.array(colour) + rng.normal(0, 30, (*size, 3)), 0, 255)
            image = Image.fromarray(pixels.astype(np.uint8))
            image.save(folder / f"{index:03d}.{formats[index % len(formats)]}")
    if extras:
        red = Image.fromarray(np.full((40, 40, 3), COLORS["red"], np.uint8))
        (root / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
        Image.fromarray(np.full((40, 40), 120, np.uint8)).save(root / "green" / "gray.png")
        red.convert("P").save(root / "red" / "palette.png")
        red.convert("RGBA").save(root / "red" / "alpha.png")
        red.convert("CMYK").save(root / "red" / "cmyk.jpg")
        red.convert("P").save(root / "red" / "palette.bmp")
    return root


def wait_for_line(process, wanted):
    """Reads `process`'s piped text output up to a line `wanted`; returns what it read.

    For tests that act on a process at a moment it announces (a checkpoint
    written, a save begun) instead of after a guessed delay. Fails, with the
    output, if the process ends first.
    """
    lines = []
    while not lines or lines[-1].strip() != wanted:
        line = process.stdout.readline()
        if not line:
            process.wait()
            pytest.fail(f"the process ended (status {process.returncode}) before it printed "
                        f"{wanted!r}:\n" + "".join(lines)[-3000:])
        lines.append(line)
    return "".join(lines)
