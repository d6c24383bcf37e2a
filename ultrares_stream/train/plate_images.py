"""Synthetic training images with number plates and text: the content plate readers need.

Natural-image training sets (T91, BSD200) hold almost no characters, so a net trained on them
learns to smooth strokes away. These images put one to three plates on car-coloured panels:
US-style (about 2:1, the registration in heavy sans-serif characters half the plate high, a
state line above and a slogan below), European/UK-style (about 4.5:1) and bare lines of text,
dark-on-light and light-on-dark, 50-230 px wide as traffic cameras and phone photos see them,
sheared and rotated a little. Each plate is drawn at four times its size and resampled down, so
its edges are anti-aliased as a lens and sensor make them, not perfect steps.

Fonts: DejaVu's bold and condensed faces where Debian's ``fonts-dejavu-core`` is installed
(closer to plate lettering), else Pillow's bundled scalable font. A pure function of its seed
on a given machine.
"""
from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

_LETTERS = string.ascii_uppercase
_DIGITS = string.digits
_FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
#: plate-like faces, heaviest first; those present are used with equal probability
_FONT_FILES = ("DejaVuSansCondensed-Bold.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono-Bold.ttf",
               "DejaVuSansCondensed.ttf", "DejaVuSans.ttf")
_OVERSAMPLE = 4  # plates are drawn at this multiple of their final size, then resampled down


def plate_string(rng: np.random.Generator) -> str:
    """A plate-like string: US ``ABC1234`` / ``1ABC234``, UK ``AB12 CDE`` or 5-8 random characters."""
    pick = lambda chars, n: "".join(rng.choice(list(chars), n))  # noqa: E731
    kind = rng.integers(4)
    if kind == 0:
        return pick(_LETTERS, 3) + pick(_DIGITS, 4)
    if kind == 1:
        return pick(_DIGITS, 1) + pick(_LETTERS, 3) + pick(_DIGITS, 3)
    if kind == 2:
        return pick(_LETTERS, 2) + pick(_DIGITS, 2) + " " + pick(_LETTERS, 3)
    return pick(_LETTERS + _DIGITS, int(rng.integers(5, 9)))


@lru_cache(maxsize=1)
def font_files() -> tuple[Path, ...]:
    """The plate-like font files installed here (empty: Pillow's bundled font is used)."""
    return tuple(p for p in (_FONT_DIR / name for name in _FONT_FILES) if p.is_file())


def _face(rng: np.random.Generator):
    """A random plate-like face: a function from a pixel size to a font."""
    files = font_files()
    if not files:
        return lambda size: ImageFont.load_default(size=size)
    path = str(files[int(rng.integers(len(files)))])
    return lambda size: ImageFont.truetype(path, size)


def _colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(low, high, 3))


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font_for, box_w: int, box_h: int):
    """The largest font (from ``font_for(size)``) whose rendering of ``text`` fits box_w x box_h."""
    size = box_h
    while size > 4:
        font = font_for(size)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        if right - left <= box_w and bottom - top <= box_h:
            return font, (left, top, right, bottom)
        size = int(size * 0.9)
    font = font_for(4)
    return font, draw.textbbox((0, 0), text, font=font)


def draw_plate(rng: np.random.Generator, width: int) -> tuple[Image.Image, str]:
    """One RGBA plate ``width`` pixels wide (transparent outside it after rotation), and its
    registration (the characters a reader should return; state and slogan lines are not part of it)."""
    style = rng.choice(["us", "us", "us", "eu", "text"])
    aspect = {"us": rng.uniform(1.8, 2.2), "eu": rng.uniform(4.0, 4.9), "text": rng.uniform(3.0, 7.0)}[style]
    w = width * _OVERSAMPLE
    h = max(8, int(w / aspect))
    dark_on_light = rng.random() < 0.8
    bg = _colour(rng, 175, 256) if dark_on_light else _colour(rng, 0, 80)
    ink = _colour(rng, 0, 90) if dark_on_light else _colour(rng, 190, 256)
    plate = Image.new("RGBA", (w, h), bg + (255,))
    draw = ImageDraw.Draw(plate)
    font_for = _face(rng)  # one face for the whole plate
    text = plate_string(rng)
    if style == "us":
        band = h * rng.uniform(0.45, 0.55)  # registration characters about half the plate high
        if rng.random() < 0.7:  # state line
            state = "".join(rng.choice(list(_LETTERS), int(rng.integers(4, 11))))
            f, (l, t, r, b) = _fit_text(draw, state, font_for, int(w * 0.6), int(h * 0.16))
            draw.text(((w - (r - l)) / 2 - l, h * 0.05 - t), state, font=f, fill=_colour(rng, 0, 160))
        if rng.random() < 0.5:  # slogan line
            slogan = " ".join("".join(rng.choice(list(_LETTERS), int(rng.integers(3, 8)))) for _ in range(2))
            f, (l, t, r, b) = _fit_text(draw, slogan.title(), font_for, int(w * 0.7), int(h * 0.11))
            draw.text(((w - (r - l)) / 2 - l, h * 0.84 - t), slogan.title(), font=f, fill=_colour(rng, 0, 160))
    else:
        band = h * rng.uniform(0.6, 0.8)
    f, (l, t, r, b) = _fit_text(draw, text, font_for, int(w * rng.uniform(0.75, 0.9)), int(band))
    draw.text(((w - (r - l)) / 2 - l, (h - (b - t)) / 2 - t), text, font=f, fill=ink + (255,))
    if style != "text" and rng.random() < 0.7:  # embossed border or a dealer frame
        edge = int(h * rng.uniform(0.02, 0.07)) + 1
        draw.rectangle([0, 0, w - 1, h - 1], outline=(ink if rng.random() < 0.5 else _colour(rng, 0, 60)) + (255,),
                       width=edge)
    plate = plate.transform(plate.size, Image.Transform.AFFINE,
                            (1, float(rng.uniform(-0.12, 0.12)), 0, float(rng.uniform(-0.05, 0.05)), 1, 0),
                            resample=Image.Resampling.BICUBIC)
    plate = plate.rotate(float(rng.uniform(-6, 6)), resample=Image.Resampling.BICUBIC, expand=True)
    return plate.resize((max(1, plate.width // _OVERSAMPLE), max(1, plate.height // _OVERSAMPLE)),
                        Image.Resampling.LANCZOS), text


def plate_image(rng: np.random.Generator, size: int = 256, labels: list | None = None) -> np.ndarray:
    """One ``size`` x ``size`` RGB image holding one to three plates on car-like panels; each
    plate's ``((x, y, w, h), registration)`` is appended to ``labels`` when given."""
    img = Image.new("RGB", (size, size), _colour(rng))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):  # body panels, lights, shadows
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        draw.rectangle([x0, y0, x0 + int(rng.integers(20, size)), y0 + int(rng.integers(10, size // 2))],
                       fill=_colour(rng))
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(1, 4))):
        width = int(np.exp(rng.uniform(np.log(50), np.log(min(230, size - 8)))))  # log-uniform plate width
        plate, text = draw_plate(rng, width)
        if plate.width < size and plate.height < size:
            box = (int(rng.integers(0, size - plate.width)), int(rng.integers(0, size - plate.height)),
                   plate.width, plate.height)
            if any(_overlap(box, other) for other in boxes):
                continue  # plates never cover each other: every label stays readable
            boxes.append(box)
            img.paste(plate, box[:2], plate)
            if labels is not None:
                labels.append((box, text.replace(" ", "")))
    if rng.random() < 0.4:  # a little optical softness on top of the resampling
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.7))))
    return np.asarray(img)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def plate_images(n: int, seed: int = 0, size: int = 256) -> list[np.ndarray]:
    """``n`` synthetic plate images (deterministic for a seed)."""
    return [image for image, _ in labelled_plate_images(n, seed, size)]


def labelled_plate_images(n: int, seed: int = 0, size: int = 256) -> list[tuple[np.ndarray, list]]:
    """``n`` synthetic plate images, each with its plates' ``((x, y, w, h), registration)``
    (plates never overlap)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        labels: list = []
        out.append((plate_image(rng, size, labels), labels))
    return out
