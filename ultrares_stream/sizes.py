"""Output sizes: presets, ``WxH`` strings, and fitting inside a box with the aspect ratio kept."""
from __future__ import annotations

from .errors import UserError

PRESETS: dict[str, tuple[int, int]] = {
    "720p": (1280, 720),
    "1080p": (1920, 1080),
    "1440p": (2560, 1440),
    "4k": (3840, 2160),
}


def is_decimal(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes '²' (which ``int`` refuses) and '١٠٠'."""
    return text.isascii() and text.isdigit()


def parse_size(text: str) -> tuple[int, int]:
    """``1080p`` / ``4k`` / ``1920x1080`` -> (width, height)."""
    key = text.strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    parts = key.split("x")
    if len(parts) == 2 and all(is_decimal(p) for p in parts):
        w, h = int(parts[0]), int(parts[1])
        if 16 <= w <= 16384 and 16 <= h <= 16384:
            return w, h
    raise UserError(f"output size {text!r} is not one of {', '.join(PRESETS)} or WIDTHxHEIGHT (16..16384)")


def parse_size_range(text: str) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """``960x540`` (one size) or ``480x270:960x540:1920x1080`` (MIN:OPT:MAX) -> three (width, height),
    each no larger than the next."""
    sizes = [parse_size(p) for p in str(text).split(":")]
    if len(sizes) not in (1, 3):
        raise UserError(f"frame sizes {text!r}: expected WxH or MIN:OPT:MAX sizes, e.g. 480x270:960x540:960x540")
    lo, opt, hi = sizes * 3 if len(sizes) == 1 else sizes
    if not (lo[0] <= opt[0] <= hi[0] and lo[1] <= opt[1] <= hi[1]):
        raise UserError(f"frame sizes {text!r}: need MIN <= OPT <= MAX in both width and height")
    return lo, opt, hi


def fit_inside(width: int, height: int, box: tuple[int, int], even: bool = False) -> tuple[int, int]:
    """Largest size with ``width:height``'s aspect ratio that fits inside ``box``."""
    bw, bh = box
    ratio = min(bw / width, bh / height)
    w, h = max(1, round(width * ratio)), max(1, round(height * ratio))
    w, h = min(w, bw), min(h, bh)
    if even:  # yuv420p encoders need even dimensions
        w, h = max(2, w - w % 2), max(2, h - h % 2)
    return w, h
