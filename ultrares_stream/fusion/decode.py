"""The frames of a clip around a time (PyAV), for fusing a box marked at that time."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FieldError, UserError


@dataclass
class Frames:
    """``rgb`` frames (uint8 HxWx3), their ``times`` (s), which are key frames, and the index of
    the frame nearest the requested time (the reference)."""

    rgb: list[np.ndarray]
    times: list[float]
    keyframes: list[bool]
    reference: int


def _decoded(path: Path, at: float, count: int):
    """(time, frame) pairs from the key frame before ``at`` until ``count // 2 + 1`` frames past it,
    the frame rate, and the time of the last frame decoded (None: none)."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise UserError(f"{path}: no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 25)
        start = max(0.0, at - (count / 2 + 2) / fps)
        if start > 0 and stream.time_base:
            container.seek(int(start / stream.time_base), stream=stream, backward=True)
        out, after, last = [], 0, None
        for i, frame in enumerate(container.decode(stream)):
            t = last = frame.time if frame.time is not None else i / fps
            if t < start - 1e-6:
                continue
            out.append((t, frame))
            after += t > at + 0.5 / fps
            if after > count // 2 + 1:
                break
        return out, fps, last


def frames_around(path: str | Path, at: float, count: int) -> Frames:
    """``count`` frames of ``path`` centred on the one nearest ``at`` seconds (fewer at the ends).
    UserError for a missing or corrupt clip and for a time outside it."""
    import av

    path = Path(path)
    if not path.is_file():
        raise UserError(f"clip not found: {path}")
    if at < 0:
        raise FieldError("at", f"{at:g}: the time must be >= 0 seconds")
    try:
        decoded, fps, last = _decoded(path, at, count)
    except av.FFmpegError as exc:
        raise UserError(f"{path}: cannot decode the video (corrupt or not a video: {exc})") from None
    if last is None:
        raise UserError(f"{path}: no frames decoded")
    if not decoded or at > decoded[-1][0] + 1.0 / fps:
        raise FieldError("at", f"{at:g} s is past the end of {path.name} (its last frame is at {last:.3f} s)")
    times = [t for t, _ in decoded]
    ref = int(np.argmin([abs(t - at) for t in times]))
    lo = max(0, min(ref - count // 2, len(decoded) - count))
    chosen = decoded[lo: lo + count]
    return Frames([f.to_ndarray(format="rgb24") for _, f in chosen], [t for t, _ in chosen],
                  [bool(getattr(f, "key_frame", False)) for _, f in chosen], ref - lo)
