"""Plate readability: how much of what an OCR reads on the original an up-scaler gives back.

Protocol (``ultrares eval --task plates DIR``): for each annotated plate, a crop of the photo
around it (the plate plus ``CONTEXT`` pixels each side, aligned to the scale) is down-scaled
x``scale`` with MATLAB bicubic, up-scaled back by each method, and the plate box is read by the
OCR. A method's score is the mean *character accuracy* against the true text,
``max(0, 1 - edit distance / length)`` on upper-case letters and digits, and the share of the
bicubic -> original gap it closes: ``(method - bicubic) / (original - bicubic)``.

The OCR is injectable (``Reader``: RGB uint8 crop -> text); :func:`rapidocr_reader` is the
default, RapidOCR's PP-OCR recogniser on onnxruntime, which ships its own model files.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .matlab_resize import imresize

Reader = Callable[[np.ndarray], str]
UpscaleFn = Callable[[np.ndarray], np.ndarray]

CONTEXT = 48  # HR pixels of scene kept around the plate: the nets see real surroundings


@dataclass(frozen=True)
class Plate:
    """One annotated plate: the photo it is in, its box (x, y, w, h) in HR pixels and its text."""

    image: Path
    box: tuple[int, int, int, int]
    text: str


def normalise(text: str) -> str:
    """Upper-case letters and digits only: separators, spaces and OCR punctuation dropped."""
    return re.sub(r"[^A-Z0-9]", "", text.upper())


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


#: characters plates print alike, read as one (``--task plates-clip`` folds them)
CONFUSABLE = str.maketrans({"O": "0", "I": "1"})


def char_accuracy(read: str, truth: str, fold: bool = False) -> float:
    """``max(0, 1 - edit_distance / len(truth))`` on :func:`normalise`-d strings; ``fold``: O/0 and
    I/1 count as the same character (:data:`CONFUSABLE`)."""
    truth, read = normalise(truth), normalise(read)
    if fold:
        truth, read = truth.translate(CONFUSABLE), read.translate(CONFUSABLE)
    if not truth:
        raise ValueError("empty plate text")
    return max(0.0, 1.0 - edit_distance(read, truth) / len(truth))


def gap_closed(method: float, bicubic: float, original: float) -> float:
    """Share of the bicubic -> original accuracy gap a method closes (nan without a gap)."""
    gap = original - bicubic
    return (method - bicubic) / gap if gap > 1e-9 else float("nan")


def read_annotations(folder: Path) -> list[Plate]:
    """Plates of a folder of photos with OpenALPR-style ``.txt`` files: ``file x y w h PLATE`` lines."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"plate folder not found: {folder}")
    plates = []
    for txt in sorted(folder.glob("*.txt")):
        for n, line in enumerate(txt.read_text(errors="replace").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            try:
                name, x, y, w, h, text = parts[0], *map(int, parts[1:5]), parts[5]
            except (ValueError, IndexError):
                raise UserError(f"{txt}:{n}: expected 'file x y w h PLATE', got {line.strip()!r}") from None
            image = folder / name
            if not image.is_file() or w <= 0 or h <= 0 or not normalise(text):
                continue
            plates.append(Plate(image, (x, y, w, h), text))
    if not plates:
        raise UserError(f"{folder}: no annotated plates (.txt files of 'file x y w h PLATE' beside the photos)")
    return plates


def context_crop(image: np.ndarray, box: tuple[int, int, int, int], scale: int,
                 context: int = CONTEXT) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The part of ``image`` around ``box`` with ``context`` pixels each side, its origin and
    size multiples of ``scale`` (so that the down-scale is exact), and the box within it."""
    h, w = image.shape[:2]
    x, y, bw, bh = box
    x0 = max(0, (x - context) // scale * scale)
    y0 = max(0, (y - context) // scale * scale)
    x1 = min(w // scale * scale, -(-(x + bw + context) // scale) * scale)
    y1 = min(h // scale * scale, -(-(y + bh + context) // scale) * scale)
    if x1 - x0 < scale or y1 - y0 < scale:
        raise ValueError(f"plate box {box} is outside the {w}x{h} image")
    return image[y0:y1, x0:x1], (x - x0, y - y0, bw, bh)


def _box(img: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = box
    return np.ascontiguousarray(img[max(0, y): y + h, max(0, x): x + w])


@dataclass
class PlateResult:
    """Mean character accuracy per method over the plates, and what each read."""

    accuracy: dict[str, float]
    reads: list[dict[str, str]]  # per plate: {"image", "truth", method: text ...}

    @property
    def count(self) -> int:
        return len(self.reads)

    def gap(self, method: str) -> float:
        return gap_closed(self.accuracy[method], self.accuracy["bicubic"], self.accuracy["original"])


def score_plates(samples: Iterable[tuple[str, np.ndarray, tuple[int, int, int, int], str]],
                 methods: Mapping[str, UpscaleFn], reader: Reader, scale: int = 4) -> PlateResult:
    """Read every plate on the original, on bicubic of its x``scale`` down-scale and on each method's
    up-scale of it. ``samples`` yields (name, RGB uint8 image, box, text); methods map LR -> SR uint8."""
    totals: dict[str, float] = {}
    reads = []
    for name, image, box, text in samples:
        crop, inner = context_crop(image, box, scale)
        lr = imresize(crop, scale=1 / scale)
        outputs = {"original": crop, "bicubic": imresize(lr, scale=scale)}
        outputs.update({label: fn(lr) for label, fn in methods.items()})
        row = {"image": name, "truth": text}
        for label, out in outputs.items():
            row[label] = reader(_box(out, inner))
            totals[label] = totals.get(label, 0.0) + char_accuracy(row[label], text)
        reads.append(row)
    if not reads:
        raise ValueError("no plates to score")
    return PlateResult({k: v / len(reads) for k, v in totals.items()}, reads)


def photo_samples(plates: Iterable[Plate]):
    """(name, RGB image, box, text) for :func:`score_plates`, reading each photo once."""
    from PIL import Image

    cache: dict[Path, np.ndarray] = {}
    for p in plates:
        if p.image not in cache:
            cache.clear()
            with Image.open(p.image) as im:
                cache[p.image] = np.asarray(im.convert("RGB"))
        yield p.image.name, cache[p.image], p.box, p.text


def rapidocr_engine(needed_by: str = "the plate evaluation"):
    """RapidOCR (PP-OCR on onnxruntime, its model files in its wheel); UserError where it is missing."""
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        raise UserError(f"{needed_by} needs RapidOCR: pip install rapidocr-onnxruntime "
                        "(installed by `make test` / the [dev] extra)") from None
    return RapidOCR()


#: what ``ultrares zoom --read`` says read the text, for the provenance
READER_NAME = "RapidOCR PP-OCR recogniser (onnxruntime)"


def character_reader(needed_by: str = "--read") -> Callable[[np.ndarray], list[tuple[str, float]]]:
    """RGB crop -> [(character, confidence 0-1), ...]: RapidOCR's recogniser, each character
    with the probability its CTC step gave it."""
    engine = rapidocr_engine(needed_by)

    def read(crop: np.ndarray) -> list[tuple[str, float]]:
        result, _ = engine.text_rec(np.ascontiguousarray(crop[:, :, ::-1]), return_word_box=True)
        text, _mean, (_steps, _words, _cols, _states, confidences) = result[0]
        return list(zip(text, (float(c) for c in confidences))) if text else []

    return read


def rapidocr_reader() -> Reader:
    """RapidOCR's text recogniser (PP-OCR, onnxruntime) on a plate crop; no detection step."""
    engine = rapidocr_engine()

    def read(crop: np.ndarray) -> str:
        result, _ = engine(np.ascontiguousarray(crop[:, :, ::-1]), use_det=False, use_cls=False, use_rec=True)
        return "".join(text for text, _score in (result or []))

    return read
