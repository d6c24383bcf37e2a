"""A camera that sends MPEG-TS over UDP with a clock of its own, for timing faults.

It declares one frame rate and sends at another, times its frames by its own wall clock
(90 kHz), and can set that clock forward at a given moment: what cheap cameras and encoders do,
and what ``sources.FrameClock`` must record in real time (docs/recording.md).
"""
from __future__ import annotations

import threading
import time
from fractions import Fraction

import numpy as np

CLOCK = Fraction(1, 90000)


def send_ts_camera(url: str, seconds: float, fps: float, *, declared_fps: int = 25, jump_at: float | None = None,
                   jump_s: float = 3600.0, size: tuple[int, int] = (64, 48),
                   stop: threading.Event | None = None) -> list[float]:
    """Send ``seconds`` of video to ``url`` (``udp://HOST:PORT?pkt_size=1316``) at ``fps`` frames a
    second while declaring ``declared_fps``; from ``jump_at`` s on, the camera's clock is
    ``jump_s`` ahead. Returns the send times (seconds from the start)."""
    import av

    w, h = size
    c = av.open(url, "w", format="mpegts")
    s = c.add_stream("libx264", rate=declared_fps)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    s.time_base = s.codec_context.time_base = CLOCK
    s.options = {"preset": "ultrafast", "tune": "zerolatency", "x264-params": "keyint=12"}
    sent, t0 = [], time.monotonic()
    while (stop is None or not stop.is_set()) and time.monotonic() - t0 < seconds:
        now = time.monotonic() - t0
        frame = av.VideoFrame.from_ndarray(np.full((h * 3 // 2, w), (len(sent) * 9) % 255, np.uint8),
                                           format="yuv420p")
        frame.pts = int((now + (jump_s if jump_at is not None and now >= jump_at else 0)) / CLOCK)
        frame.time_base = CLOCK
        c.mux(s.encode(frame))
        sent.append(now)
        time.sleep(max(0.0, t0 + len(sent) / fps - time.monotonic()))
    c.mux(s.encode(None))
    c.close()
    return sent
