"""A camera's last few seconds of decoded frames, for zooming into what it just saw.

:class:`FrameHistory` is a bounded ring of the decoded low-resolution frames (packed yuv420p,
as the source decodes them, with their frame index and timestamps). The camera's reader thread
:meth:`~FrameHistory.push`-es every frame it reads (a reference to the decoder's array: no copy,
no conversion on the frame path); a zoom request takes a :meth:`~FrameHistory.window` of them and
converts only those to RGB. Three bounds, whichever is reached first: ``seconds`` of frames
(by the monotonic clock at decode), ``max_frames``, and ``max_bytes`` of pixel data.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from .codec import QuantiserMap

#: defaults: the last 4 s, at most 64 frames and 128 MiB (at 1080p: 41 frames, 1.6 s at 25 fps)
HISTORY_SECONDS = 4.0
HISTORY_FRAMES = 64
HISTORY_BYTES = 128 * 1024 * 1024


@dataclass(frozen=True)
class HeldFrame:
    """One decoded frame: packed yuv420p ``data`` (``(H*3/2, W)`` uint8), its per-source ``index``,
    source presentation time ``time_s`` (None if unknown), monotonic time at decode and the
    encoder's ``quantisers`` (None where the codec gives none)."""

    data: np.ndarray
    width: int
    height: int
    index: int
    time_s: float | None
    received: float
    quantisers: QuantiserMap | None = None

    def rgb(self) -> np.ndarray:
        """The frame as HxWx3 uint8 RGB (BT.601, limited range: as the decoder's own conversion)."""
        import cv2

        return cv2.cvtColor(self.data, cv2.COLOR_YUV2RGB_I420)


class FrameHistory:
    """The last frames of one camera (thread-safe: one writer, any readers)."""

    def __init__(self, seconds: float = HISTORY_SECONDS, max_frames: int = HISTORY_FRAMES,
                 max_bytes: int = HISTORY_BYTES):
        self.seconds, self.max_frames, self.max_bytes = seconds, max_frames, max_bytes
        self._frames: deque[HeldFrame] = deque()
        self._bytes = 0
        self._lock = threading.Lock()

    def push(self, frame) -> None:
        """Keep ``frame`` (a :class:`~ultrares_stream.sources.Frame`); forget what falls out of the bounds."""
        held = HeldFrame(frame.data, frame.width, frame.height, frame.index, frame.time_s, frame.received,
                         frame.quantisers)
        with self._lock:
            if self._frames and (self._frames[-1].width, self._frames[-1].height) != (held.width, held.height):
                self._frames.clear()  # the input changed size: older frames show another picture
                self._bytes = 0
            self._frames.append(held)
            self._bytes += held.data.nbytes
            while len(self._frames) > 1 and (len(self._frames) > self.max_frames or self._bytes > self.max_bytes
                                             or held.received - self._frames[0].received > self.seconds):
                self._bytes -= self._frames.popleft().data.nbytes

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def nbytes(self) -> int:
        """Bytes of pixel data held."""
        return self._bytes

    def frames(self) -> list[HeldFrame]:
        """Every frame held, oldest first."""
        with self._lock:
            return list(self._frames)

    def window(self, count: int, reference: int | None = None) -> tuple[list[HeldFrame], int]:
        """Up to ``count`` consecutive frames around the one with index ``reference`` (default: the
        latest), centred on it where the history allows, and the reference's position among them.
        KeyError when ``reference`` is not held (any more); ([], -1) when nothing is."""
        held = self.frames()
        if not held:
            return [], -1
        at = len(held) - 1 if reference is None else next((i for i, f in enumerate(held) if f.index == reference), None)
        if at is None:
            raise KeyError(reference)
        lo = max(0, min(at - count // 2, len(held) - count))
        chosen = held[lo: lo + count]
        return chosen, at - lo
