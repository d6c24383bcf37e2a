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

from ..errors import UserError
from .crop import FusionSettings, fuse_box
from .evidence import UNREADABLE, FusedCrop, tags
from .live import single_frame
from .regions import Box, TextDetector, Track, update_tracks


@dataclass
class Clip:
    """Decoded frames (RGB uint8), their times (s) and key-frame flags."""

    rgb: list[np.ndarray]
    times: list[float]
    keyframes: list[bool]


@dataclass
class Plate:
    """One tracked region fused: its track, the reference frame's position and box, the fused crop
    and the reference frame's bicubic x4 of the same box."""

    track: Track
    reference: int
    box: Box
    crop: FusedCrop
    single: np.ndarray


def decode_clip(path: Path, seconds: float) -> Clip:
    """The first ``seconds`` of ``path``'s video; UserError for a missing or unreadable file."""
    import av

    if not path.is_file():
        raise UserError(f"clip not found: {path}")
    rgb, times, keys = [], [], []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"{path}: no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or 25)
            for i, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else i / fps
                if t > seconds:
                    break
                rgb.append(frame.to_ndarray(format="rgb24"))
                times.append(float(t))
                keys.append(bool(getattr(frame, "key_frame", False)))
    except av.FFmpegError as exc:
        raise UserError(f"{path}: cannot decode the video (corrupt or not a video: {exc})") from None
    if not rgb:
        raise UserError(f"{path}: no frames decoded")
    return Clip(rgb, times, keys)


def find_tracks(clip: Clip, detector, every: int = 5, min_hits: int = 2) -> list[Track]:
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


def fuse_track(clip: Clip, track: Track, count: int, settings: FusionSettings = FusionSettings()) -> Plate:
    """Fuse ``track`` on the frame where its region is largest, from ``count`` frames around it."""
    ref = max(track.seen, key=lambda p: (track.seen[p][2] * track.seen[p][3], -abs(p - np.median(list(track.seen)))))
    box = padded(track.seen[ref], clip.rgb[ref].shape)
    lo = max(0, min(ref - count // 2, len(clip.rgb) - count))
    window = slice(lo, lo + count)
    crop = fuse_box(clip.rgb[window], clip.times[window], ref - lo, box, settings, clip.keyframes[window])
    return Plate(track, ref, box, crop, single_frame(clip.rgb[ref], box, settings.scale))


def auto_zoom(path: Path, count: int = 16, every: int = 5, seconds: float = 20.0,
              detector=None) -> tuple[Clip, list[Plate]]:
    """Every plate-like region of the first ``seconds`` of ``path``, tracked and fused."""
    detector = detector or TextDetector()  # a missing RapidOCR is reported before decoding
    clip = decode_clip(path, seconds)
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
