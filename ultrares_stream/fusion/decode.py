"""The frames of a clip for fusing (PyAV): around a marked time (``ultrares zoom --at``), or its
first seconds (``ultrares zoom --auto``), each with the quantisers its encoder used (:mod:`.codec`)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FieldError, UserError
from .codec import DECODER_OPTIONS, QuantiserMap, quantisers


@dataclass
class Frames:
    """``rgb`` frames (uint8 HxWx3), their ``times`` (s), which are key frames, the index of the
    frame nearest the requested time (the reference), and each frame's quantisers (None where the
    codec does not give them)."""

    rgb: list[np.ndarray]
    times: list[float]
    keyframes: list[bool]
    reference: int = 0
    quantisers: list[QuantiserMap | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rgb)

    def window(self, lo: int, count: int, reference: int) -> Frames:
        """``count`` frames from position ``lo``, with the frame at position ``reference`` the reference."""
        cut = slice(lo, lo + count)
        return Frames(self.rgb[cut], self.times[cut], self.keyframes[cut], reference - lo, self.quantisers[cut])


def _timed(container, stream) -> Iterator[tuple[float, object]]:
    """(time s, frame) in presentation order, the frames carrying their quantisers."""
    fps = float(stream.average_rate or 25)
    stream.codec_context.options = DECODER_OPTIONS
    for i, frame in enumerate(container.decode(stream)):
        yield (frame.time if frame.time is not None else i / fps), frame


def _opened(path: Path):
    """``path`` open for reading (PyAV container) and its video stream; UserError if it is not a video."""
    import av

    if not path.is_file():
        raise UserError(f"clip not found: {path}")
    container = av.open(str(path))
    if not container.streams.video:
        container.close()
        raise UserError(f"{path}: no video stream")
    return container, container.streams.video[0]


def _collect(decoded: list[tuple[float, object]], codec: str, reference: int = 0) -> Frames:
    clip = Frames([], [], [], reference)
    for t, frame in decoded:
        _add(clip, t, frame, codec)
    return clip


def _add(clip: Frames, t: float, frame, codec: str) -> None:
    clip.rgb.append(frame.to_ndarray(format="rgb24"))
    clip.times.append(float(t))
    clip.keyframes.append(bool(getattr(frame, "key_frame", False)))
    clip.quantisers.append(quantisers(frame, codec))


def _decoded(path: Path, at: float, count: int):
    """(time, frame) from the key frame before ``at`` until ``count // 2 + 1`` frames past it, the
    frame rate, the codec's name and the time of the last frame decoded (None: none)."""
    container, stream = _opened(path)
    with container:
        fps = float(stream.average_rate or 25)
        start = max(0.0, at - (count / 2 + 2) / fps)
        if start > 0 and stream.time_base:
            container.seek(int(start / stream.time_base), stream=stream, backward=True)
        out, after, last = [], 0, None
        for t, frame in _timed(container, stream):
            last = t
            if t < start - 1e-6:
                continue
            out.append((t, frame))
            after += t > at + 0.5 / fps
            if after > count // 2 + 1:
                break
        return out, fps, stream.codec_context.name, last


def frames_around(path: str | Path, at: float, count: int) -> Frames:
    """``count`` frames of ``path`` centred on the one nearest ``at`` seconds (fewer at the ends).
    UserError for a missing or corrupt clip and for a time outside it."""
    import av

    path = Path(path)
    if at < 0:
        raise FieldError("at", f"{at:g}: the time must be >= 0 seconds")
    try:
        decoded, fps, codec, last = _decoded(path, at, count)
    except av.FFmpegError as exc:
        raise UserError(f"{path}: cannot decode the video (corrupt or not a video: {exc})") from None
    if last is None:
        raise UserError(f"{path}: no frames decoded")
    if not decoded or at > decoded[-1][0] + 1.0 / fps:
        raise FieldError("at", f"{at:g} s is past the end of {path.name} (its last frame is at {last:.3f} s)")
    ref = int(np.argmin([abs(t - at) for t, _ in decoded]))
    lo = max(0, min(ref - count // 2, len(decoded) - count))
    return _collect(decoded[lo: lo + count], codec, ref - lo)


def first_seconds(path: str | Path, seconds: float) -> Frames:
    """The first ``seconds`` of ``path``'s video; UserError for a missing or unreadable file."""
    import av

    path = Path(path)
    clip = Frames([], [], [])
    try:
        container, stream = _opened(path)
        with container:
            for t, frame in _timed(container, stream):
                if t > seconds:
                    break
                _add(clip, t, frame, stream.codec_context.name)
    except av.FFmpegError as exc:
        raise UserError(f"{path}: cannot decode the video (corrupt or not a video: {exc})") from None
    if not clip.rgb:
        raise UserError(f"{path}: no frames decoded")
    return clip
