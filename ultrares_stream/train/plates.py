"""Synthetic training images with number plates and text: the content plate readers need.

Natural-image training sets (T91, BSD200) hold almost no characters, so a net trained on them
learns to smooth strokes away. These images put plates (US, UK and random alphanumeric
layouts, dark-on-light and light-on-dark, at many sizes, slightly rotated) and lines of text
on car-coloured backgrounds, for the HR crops of ``ultrares train --plates N``. Drawn with
Pillow's bundled scalable font: no font files needed. A pure function of its seed.
"""
from __future__ import annotations

import string

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

_LETTERS = string.ascii_uppercase
_DIGITS = string.digits


def plate_string(rng: np.random.Generator) -> str:
    """A plate-like string: US ``ABC1234``, UK ``AB12 CDE`` or 5-8 random characters."""
    pick = lambda chars, n: "".join(rng.choice(list(chars), n))  # noqa: E731
    kind = rng.integers(3)
    if kind == 0:
        return pick(_LETTERS, 3) + pick(_DIGITS, 4)
    if kind == 1:
        return pick(_LETTERS, 2) + pick(_DIGITS, 2) + " " + pick(_LETTERS, 3)
    return pick(_LETTERS + _DIGITS, int(rng.integers(5, 9)))


def _colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(low, high, 3))


def plate_image(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """One ``size`` x ``size`` RGB image holding a few plates and a line of text."""
    img = Image.new("RGB", (size, size), _colour(rng))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):  # body panels, lights, shadows
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        draw.rectangle([x0, y0, x0 + int(rng.integers(20, size)), y0 + int(rng.integers(10, size // 2))],
                       fill=_colour(rng))
    for _ in range(int(rng.integers(1, 4))):
        text = plate_string(rng)
        font = ImageFont.load_default(size=int(rng.integers(10, 44)))
        left, top, right, bottom = font.getbbox(text)
        pad = max(2, (bottom - top) // 4)
        dark_on_light = rng.random() < 0.75
        bg = _colour(rng, 170, 256) if dark_on_light else _colour(rng, 0, 90)
        ink = _colour(rng, 0, 60) if dark_on_light else _colour(rng, 200, 256)
        plate = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), bg)
        pd = ImageDraw.Draw(plate)
        pd.text((pad - left, pad - top), text, font=font, fill=ink)
        pd.rectangle([0, 0, plate.width - 1, plate.height - 1], outline=ink, width=max(1, pad // 3))
        plate = plate.rotate(float(rng.uniform(-8, 8)), resample=Image.Resampling.BICUBIC, expand=True,
                             fillcolor=bg)
        if plate.width < size and plate.height < size:
            x = int(rng.integers(0, size - plate.width))
            y = int(rng.integers(0, size - plate.height))
            img.paste(plate, (x, y))
    if rng.random() < 0.5:  # a little optical softness so that not every edge is a perfect step
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.8))))
    return np.asarray(img)


def plate_images(n: int, seed: int = 0, size: int = 256) -> list[np.ndarray]:
    """``n`` synthetic plate images (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    return [plate_image(rng, size) for _ in range(n)]
