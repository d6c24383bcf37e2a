"""``ultrares zoom --auto``: every plate-like region of a clip, tracked, fused x4, and a contact sheet.

Text regions are detected every ``every`` frames (:class:`.regions.TextDetector`), associated into
tracks (:func:`.regions.update_tracks`); each track seen at least ``min_hits`` times is fused once,
on the frame where its region is largest (the nearest view), from the ``count`` frames around it
(:func:`.crop.fuse_box`, which tracks the box through every frame by registration).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .crop import FusionSettings, fuse_box
from .decode import Frames, first_seconds
from .evidence import UNREADABLE, FusedCrop, tags
from .live import single_frame
from .regions import Box, TextDetector, Track, update_tracks


@dataclass
class Plate:
    """One tracked region fused: its track, the reference frame's position and box, the fused crop
    and the reference frame's bicubic x4 of the same box."""

    track: Track
    reference: int
    box: Box
    crop: FusedCrop
    single: np.ndarray


def find_tracks(clip: Frames, detector, every: int = 5, min_hits: int = 2) -> list[Track]:
    """Tracks of the regions ``detector`` finds every ``every`` frames, seen at least ``min_hits`` times
    (regions cut by the frame's edge are left out: part of their characters is not in the picture)."""
    tracks: list[Track] = []
    for pos in range(0, len(clip.rgb), every):
        h, w = clip.rgb[pos].shape[:2]
        whole = [b for b in detector(clip.rgb[pos]) if b[0] > 0 and b[1] > 0 and b[0] + b[2] < w and b[1] + b[3] < h]
        tracks = update_tracks(tracks, whole, pos, max_gap=3 * every)
    return [t for t in tracks if len(t.seen) >= min_hits]


def padded(box: Box, shape: tuple[int, ...], pad: int = 1) -> Box:
    """``box`` grown by ``pad`` pixels, clipped to the frame."""
    h, w = shape[:2]
    x0, y0 = max(0, box[0] - pad), max(0, box[1] - pad)
    return x0, y0, min(w, box[0] + box[2] + pad) - x0, min(h, box[1] + box[3] + pad) - y0


def fuse_track(clip: Frames, track: Track, count: int, settings: FusionSettings = FusionSettings()) -> Plate:
    """Fuse ``track`` on the frame where its region is largest, from ``count`` frames around it."""
    ref = max(track.seen, key=lambda p: (track.seen[p][2] * track.seen[p][3], -abs(p - np.median(list(track.seen)))))
    box = padded(track.seen[ref], clip.rgb[ref].shape)
    lo = max(0, min(ref - count // 2, len(clip.rgb) - count))
    window = clip.window(lo, count, ref)
    crop = fuse_box(window.rgb, window.times, window.reference, box, settings, window.keyframes,
                    window.quantisers)
    return Plate(track, ref, box, crop, single_frame(clip.rgb[ref], box, settings.scale))


def auto_zoom(path: Path, count: int = 16, every: int = 5, seconds: float = 20.0,
              detector=None) -> tuple[Frames, list[Plate]]:
    """Every plate-like region of the first ``seconds`` of ``path``, tracked and fused."""
    detector = detector or TextDetector()  # a missing RapidOCR is reported before decoding
    clip = first_seconds(path, seconds)
    return clip, [fuse_track(clip, t, count) for t in find_tracks(clip, detector, every)]


def contact_sheet(plates: list[Plate], gap: int = 8) -> np.ndarray:
    """One row per plate: a caption, the single frame's bicubic x4 and the fused crop side by side."""
    from PIL import Image, ImageDraw

    caption_h = 14
    rows = [np.concatenate([p.single, np.full((p.single.shape[0], gap, 3), 255, np.uint8), p.crop.image], 1)
            for p in plates]
    width = max([r.shape[1] for r in rows] + [320]) + 2 * gap
    height = sum(r.shape[0] + caption_h + gap for r in rows) + gap
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = gap
    for plate, row in zip(plates, rows):
        draw.text((gap, y), caption(plate), fill=(180, 20, 20) if plate.crop.verdict == UNREADABLE else (20, 20, 20))
        sheet.paste(Image.fromarray(row), (gap, y + caption_h))
        y += row.shape[0] + caption_h + gap
    return np.asarray(sheet)


def caption(plate: Plate) -> str:
    crop = plate.crop
    verdict = f"UNREADABLE ({crop.reason})" if crop.verdict == UNREADABLE else "fused"
    return (f"#{plate.track.id} box {','.join(map(str, plate.box))} at {crop.reference_time:.2f} s: "
            f"one frame | {len(crop.used)} of {len(crop.frames)} frames {verdict}")


def sheet_tags(plates: list[Plate]) -> dict[str, str]:
    """Provenance of the contact sheet: each row's, summarised."""
    first = tags(plates[0].crop) if plates else {}
    return {
        "Software": first.get("Software", ""),
        "Comment": f"Contact sheet of {len(plates)} plate-like regions: each row is one frame's bicubic x4 "
                   "(left) and a machine-fused x4 crop (right, multi-frame super-resolution). "
                   "Not an original recording.",
        "ultrares:model": "multi-frame fusion",
        "ultrares:rows": "; ".join(caption(p) for p in plates),
    }
