"""Video sources (PyAV): RTSP (TCP or UDP), RTMP, HTTP/HLS, files and V4L2 devices.

A :class:`Source` yields decoded frames as packed ``yuv420p`` arrays (the colour
conversion to RGB happens once, on the inference device). Live sources never
"end": a decode loop that stops, an I/O error or a read timeout is a disconnect,
followed by a reconnect after an exponential backoff with jitter, forever, until
:meth:`Source.stop`. Every open sets FFmpeg's ``timeout`` option (microseconds;
FFmpeg 8 ignores the old ``stimeout``) *and* PyAV's interrupt-callback timeout,
so a dead or hung camera is noticed within ``reconnect.timeout_s``.

Container frame counts (``nb_frames``) are never used: they are absent or wrong
for streams and often for files too.
"""
from __future__ import annotations

import functools
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import UserError
from .fusion.codec import DECODER_OPTIONS, QuantiserMap, quantisers
from .urls import HTTP, RTSP, V4L2, is_live, mask_url, scheme

log = logging.getLogger(__name__)

DEFAULT_FPS = Fraction(25)
#: file suffixes taken for video without sniffing the content (``enhance`` folders, recorded jobs)
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".mov", ".m4v", ".avi", ".webm", ".ts", ".m2ts", ".mts", ".flv",
                            ".wmv", ".mpg", ".mpeg", ".3gp", ".ogv", ".264", ".h264"})


#: seconds of an outage during which a live source is retried every ``reconnect.initial_s``
QUICK_RETRY_S = 10.0


@dataclass(frozen=True)
class Reconnect:
    """Timeouts and backoff of a live input or output (``reconnect:`` in the config, whose
    :class:`~ultrares_stream.config.ReconnectConfig` has the same fields): the first retry after
    ``initial_s``, doubling up to ``max_s``; ``timeout_s`` for a connect or a read."""

    initial_s: float = 0.5
    max_s: float = 30.0
    timeout_s: float = 5.0
    watchdog_s: float | None = None  # outputs: how long a receiver may stay silent (None: timeout_s)

    @property
    def silence_s(self) -> float:
        """How long an output's receiver may stay silent before it is dropped as hung."""
        return self.timeout_s if self.watchdog_s is None else self.watchdog_s


class FinishedSource(UserError):
    """A live input that turned out to be a finished recording: it is not retried."""


def backoff_delay(attempt: int, initial: float = 0.5, cap: float = 30.0, jitter: float = 0.25,
                  rand: float | None = None) -> float:
    """Seconds to wait before reconnect ``attempt`` (1, 2, ...): ``initial * 2**(attempt-1)``,
    capped, then spread by +/- ``jitter`` (a fraction) so many cameras do not reconnect in step."""
    if attempt < 1:
        return 0.0
    base = min(cap, initial * 2.0 ** min(attempt - 1, 60))
    r = random.random() if rand is None else rand
    return max(0.0, min(cap, base * (1.0 + jitter * (2.0 * r - 1.0))))


def open_args(url: str, transport: str = "tcp", timeout_s: float = 5.0) -> dict:
    """Keyword arguments for ``av.open`` for this input: format, FFmpeg options, PyAV timeout."""
    text = str(url)
    us = str(int(timeout_s * 1_000_000))
    options: dict[str, str] = {}
    fmt = None
    read_s = timeout_s
    row = scheme(text)
    if row is not None and row.timeout_option:
        options[row.timeout_option] = us
    if row is RTSP:
        if transport not in ("tcp", "udp"):
            raise UserError(f"rtsp_transport must be tcp or udp, not {transport!r}")
        # FFmpeg's RTSP demuxer answers the first failed read with the frame its RTP depacketiser
        # still held, and fails only on the next: two read timeouts pass before a frozen camera
        # is an error. Half of timeout_s each keeps that within timeout_s.
        read_s = timeout_s / 2
        options.update(rtsp_transport=transport, timeout=str(int(read_s * 1_000_000)))
        # the RTP jitter buffer adds latency; keep reordering short for live video
        options["max_delay"] = "500000"
        # stream parameters come in the SDP and the first keyframe: probing longer only delays (re)connects
        options.update(analyzeduration="200000", probesize="65536")
    elif row is HTTP:
        options["reconnect"] = "0"  # the source's own reconnect loop, with backoff, does that
    elif row is V4L2:
        fmt = "v4l2"
        text = text.split("://", 1)[1] if "://" in text else text
    return {"file": text, "format": fmt, "options": options, "timeout": (timeout_s, read_s)}


def pick_hwaccel(device: str, mode: str = "auto", probe: Callable[[str], str | None] | None = None) -> str | None:
    """The FFmpeg hardware decoder for inputs feeding a model on ``device``: ``"cuda"`` (NVDEC)
    when the model runs on CUDA and an NVDEC context can be created here, else None (software).
    ``mode`` ``"off"`` never asks for one. ``probe(kind)`` returns why ``kind`` is unusable, or
    None (default :func:`hwaccel_problem`)."""
    if mode == "off" or not str(device).startswith("cuda"):
        return None
    problem = (probe or hwaccel_problem)("cuda")
    if problem:
        log.warning("NVDEC decoding unavailable (%s); cameras are decoded in software", problem)
        return None
    return "cuda"


def hwaccel_args(hwaccel: str | None) -> dict:
    """Extra ``av.open`` arguments to decode on ``hwaccel`` ("cuda" = NVDEC); frames come back in
    system memory, and codecs the hardware lacks are decoded in software."""
    if not hwaccel:
        return {}
    from av.codec.hwaccel import HWAccel

    return {"hwaccel": HWAccel(device_type=hwaccel, allow_software_fallback=True)}


@functools.lru_cache(maxsize=None)
def hwaccel_problem(kind: str) -> str | None:
    """Why FFmpeg's ``kind`` hardware decoder cannot be used here (None when it can): not in
    this FFmpeg build, or its device cannot be created (no GPU, driver or container without
    video capabilities). Checked once per process by creating an H.264 decoder context."""
    try:
        from av.codec import Codec
        from av.codec.hwaccel import HWAccel, hwdevices_available
    except ImportError as exc:
        return f"PyAV has no hardware decoding ({exc})"
    if kind not in hwdevices_available():
        return f"this FFmpeg build has no {kind} device"
    try:
        HWAccel(device_type=kind).create(Codec("h264", "r"))
    except Exception as exc:  # noqa: BLE001 - any failure means: decode in software
        return describe_error(exc)
    return None


@dataclass
class Frame:
    """One decoded frame: packed yuv420p (``(H*3/2, W)`` uint8: Y rows, then U, then V)."""

    data: np.ndarray
    width: int
    height: int
    index: int  # per-source sequence number, never reset (monotonic across reconnects)
    time_s: float | None  # source presentation time in seconds (None if unknown)
    received: float = field(default_factory=time.monotonic)  # monotonic clock at decode
    decode_s: float = 0.0
    epoch: int = 0  # connection number: changes after every reconnect
    packets: list = field(default_factory=list)  # demuxed packets of the copied streams (Source ``copy``)
    quantisers: QuantiserMap | None = None  # the encoder's quantisers (Source ``quantisers``, where the codec gives them)


def stream_fps(stream, default: Fraction = DEFAULT_FPS) -> Fraction:
    """A PyAV video stream's frame rate (average, else guessed, else base), or ``default`` when
    it has none or an implausible one (outside 1-240 fps)."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if rate and 1 <= float(rate) <= 240:
        return Fraction(rate).limit_denominator(1001)
    return default


def frame_to_yuv420p(frame) -> tuple[np.ndarray, int, int]:
    """A PyAV VideoFrame -> packed yuv420p array with even width and height."""
    w, h = frame.width, frame.height
    ew, eh = w - w % 2, h - h % 2
    if (ew, eh) != (w, h):
        frame = frame.reformat(width=ew, height=eh, format="yuv420p")
    return frame.to_ndarray(format="yuv420p"), ew, eh


class Source:
    """A reader of one input. Iterate :meth:`frames`; call :meth:`stop` from another thread.

    ``live``: None = decide from the URL (:func:`is_live`). Live sources reconnect
    forever; files are read once and end, skipping undecodable packets (``bad_packets``).
    ``reconnect``: the read/connect timeout and the reconnect backoff (default :class:`Reconnect`).
    ``copy``: indices of audio/subtitle streams whose packets ride along with the frames
    (``Frame.packets``: those demuxed before the next frame) for a sink that copies them.
    :attr:`quantisers` (set before :meth:`frames`): each frame carries its encoder's block
    quantisers (``Frame.quantisers``, :mod:`.fusion.codec`), for a camera's zoom history;
    recorded jobs do without.
    """

    def __init__(self, url: str, name: str = "camera", *, live: bool | None = None, transport: str = "tcp",
                 reconnect: Reconnect | None = None, metrics=None, hwaccel: str | None = None,
                 copy: Collection[int] = ()):
        self.url = str(url)
        self.name = name
        self.live = is_live(self.url) if live is None else live
        if not self.live and "://" not in self.url and not Path(self.url).exists():
            raise UserError(f"{self.url}: no such file")
        self.transport = transport
        self.reconnect = reconnect or Reconnect()
        self.metrics = metrics
        self.decode_threads = 1
        self.max_frames: int | None = None  # files: stop after this many frames (benchmarks, previews)
        self.hwaccel = hwaccel  # FFmpeg hardware decoder ("cuda" = NVDEC), software fallback (pick_hwaccel)
        # whether the decoder really runs on that hardware (FFmpeg falls back to software
        # quietly for codecs or sizes it lacks); known after the first frame of a connection
        self.hardware_decoding: bool | None = None
        self.fps: Fraction | None = None  # frame rate of the input, known once connected
        self.copy = frozenset(copy)
        self.quantisers = False  # keep each frame's encoder quantisers (a camera's zoom verdict reads them)
        self.copied_streams: list = []  # the input streams of ``copy``, known once connected
        self.bad_packets = 0  # undecodable packets a file skipped
        self.state = "starting"
        self.cause: str | None = None  # why the source is not delivering frames (None while it is)
        self.reconnects = 0
        self._slow_attempts = 0  # reconnect attempts past the quick retries of an outage
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._index = 0
        self._epoch = 0
        self._container = None
        self._kept = None  # a finished file's container, open while its copied packets are in flight

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def frames(self) -> Iterator[Frame]:
        """Decoded frames; for live sources this only ends when :meth:`stop` is called, or when the
        input turns out to be a finished recording (an HLS playlist that has ended).

        Reconnects: every ``reconnect.initial_s`` for the first :data:`QUICK_RETRY_S` of an outage
        (a camera that restarts is back within about that), then twice as long at each failed
        attempt from there (``2 * initial_s``, ``4 * initial_s``...) up to ``reconnect.max_s``,
        with jitter; a connection that delivered frames starts over.
        """
        attempt = 0
        outage_since: float | None = None
        while not self._stop.is_set():
            got_any = False
            try:
                for frame in self._read_once():
                    got_any = True
                    attempt = 0
                    self.cause = None
                    yield frame
                    if self._stop.is_set():
                        return
                if not self.live:
                    self.state = "finished"
                    return
                self.cause = "the stream ended"
                log.warning("%s: stream from %s ended; reconnecting", self.name, self.masked_url)
            except FinishedSource as exc:
                self.state, self.cause = "ended", str(exc)
                log.error("%s: %s", self.name, exc)
                return
            except UserError as exc:
                if not self.live:
                    raise
                self.cause = str(exc)
                log.warning("%s: %s", self.name, exc)
            except Exception as exc:  # av.error.* and OSError: the camera is gone or hung
                if not self.live:
                    raise UserError(f"{self.masked_url}: cannot decode: {describe_error(exc)}") from None
                self.cause = describe_error(exc)
                log.warning("%s: source %s: %s", self.name, self.masked_url, self.cause)
                if self.metrics is not None:
                    self.metrics.errors.labels(self.name, "decode").inc()
            finally:
                self._set_down()
            if self._stop.is_set():
                return
            attempt = 1 if got_any else attempt + 1
            if got_any or outage_since is None:
                outage_since = time.monotonic()
            delay = self._reconnect_delay(time.monotonic() - outage_since)
            self.state = "reconnecting"
            log.info("%s: reconnecting to %s in %.1f s (attempt %d)", self.name, self.masked_url, delay, attempt)
            if self._stop.wait(delay):
                return
            self.reconnects += 1
            if self.metrics is not None:
                self.metrics.reconnects.labels(self.name, "source").inc()

    def _reconnect_delay(self, outage_s: float) -> float:
        """The wait before the next reconnect, ``outage_s`` into an outage: quick retries, then
        exponential backoff that starts where they end."""
        if outage_s < QUICK_RETRY_S:
            self._slow_attempts = 0
            return backoff_delay(1, self.reconnect.initial_s, self.reconnect.max_s)
        self._slow_attempts += 1
        return backoff_delay(self._slow_attempts + 1, self.reconnect.initial_s, self.reconnect.max_s)

    def _set_down(self) -> None:
        self.connected.clear()
        if self.metrics is not None:
            self.metrics.up.labels(self.name).set(0)

    def _open(self, args: dict):
        import av

        return av.open(args["file"], format=args["format"], options=args["options"], timeout=args["timeout"],
                       **hwaccel_args(self.hwaccel))

    def _read_once(self) -> Iterator[Frame]:
        import av

        args = open_args(self.url, self.transport, self.reconnect.timeout_s)
        self.state = "connecting"
        log.info("%s: opening %s", self.name, self.masked_url)
        try:
            container = self._open(args)
        except (av.error.FileNotFoundError, av.error.InvalidDataError) as exc:
            if not self.live:
                raise UserError(f"{self.masked_url}: not a readable video ({describe_error(exc)})") from None
            raise
        self._container = container
        try:
            stream = self._connected(container)
            yield from self._frames_of(container, stream)
        finally:
            self._container = None
            if self.live:
                # Down now, and close in the background: a camera that froze ends the decode loop
                # at FFmpeg's socket timeout (as an end of stream, not an error), and closing it
                # sends an RTSP TEARDOWN that waits another timeout for an answer.
                self._set_down()
                threading.Thread(target=_close_quietly, args=(container,), daemon=True,
                                 name=f"close-{self.name}").start()
            elif self.copied_streams:
                self._kept = container  # Frame.packets and the sink's output streams refer to its streams
            else:
                container.close()

    def _connected(self, container):
        """Check a freshly opened input and start a connection on its first video stream."""
        if not container.streams.video:
            raise UserError(f"{self.masked_url}: has no video stream")
        if self.live and container.format.name == "hls" and container.duration:
            raise FinishedSource(f"{self.masked_url} is an HLS playlist that has ended (a recording, not a live "
                                 "camera): enhance it with 'ultrares enhance', or give the live playlist")
        stream = container.streams.video[0]
        stream.thread_type = "SLICE" if self.live else "AUTO"
        stream.codec_context.thread_count = self.decode_threads
        if self.quantisers:  # the quantisers a zoom's verdict reads (fusion/codec.py)
            stream.codec_context.options = DECODER_OPTIONS
        self.fps = stream_fps(stream, default=self.fps or DEFAULT_FPS)
        self._epoch += 1
        self.hardware_decoding = None  # known again after this connection's first frame
        self.state = "running"
        self.connected.set()
        if self.metrics is not None:
            self.metrics.up.labels(self.name).set(1)
        log.info("%s: connected to %s: %s %dx%d at %.3g fps", self.name, self.masked_url,
                 stream.codec_context.name, stream.codec_context.width, stream.codec_context.height, float(self.fps))
        return stream

    def _frames_of(self, container, stream) -> Iterator[Frame]:
        """This connection's frames, timed by :class:`FrameClock`, until it ends, :meth:`stop` or
        ``max_frames``."""
        clock = FrameClock(self.fps, synthetic=container.format.name == "avi")
        t0 = time.perf_counter()
        for frame, packets in self._decoded(container, stream):
            if self.hardware_decoding is None:
                self._note_decoder(stream)
            data, w, h = frame_to_yuv420p(frame)
            out = Frame(data, w, h, self._index, clock.time(frame.time, time.monotonic() if self.live else None),
                        decode_s=time.perf_counter() - t0, epoch=self._epoch, packets=packets,
                        quantisers=quantisers(frame, stream.codec_context.name) if self.quantisers else None)
            self._index += 1
            if self.metrics is not None:
                self.metrics.frames_in.labels(self.name).inc()
                self.metrics.observe_stage(self.name, "decode", out.decode_s)
            yield out
            if self._stop.is_set() or (self.max_frames is not None and self._index >= self.max_frames):
                return
            t0 = time.perf_counter()

    def _note_decoder(self, stream) -> None:
        """After a connection's first frame: whether the hardware decoder asked for really runs."""
        self.hardware_decoding = bool(stream.codec_context.is_hwaccel)
        if self.hwaccel and not self.hardware_decoding:
            log.warning("%s: %s decoding unavailable for this stream; decoding in software", self.name, self.hwaccel)

    def close(self) -> None:
        """Close a file kept open for its copied streams (``copy``), once their packets are muxed."""
        kept, self._kept = self._kept, None
        if kept is not None:
            kept.close()

    def _decoded(self, container, stream) -> Iterator[tuple[object, list]]:
        """(frame, packets of the copied streams demuxed before the next frame; the last frame takes
        the rest). A live source without copies decodes as it comes; an undecodable packet ends a
        live connection, and is skipped (and counted) in a file."""
        import av

        copied = [s for s in container.streams if s.index in self.copy and s.type in ("audio", "subtitle")]
        self.copied_streams = copied
        if self.live and not copied:
            yield from ((frame, []) for frame in container.decode(stream))
            return
        held, packets = None, []
        for packet in container.demux([stream, *copied]):
            if packet.stream.index != stream.index:
                if packet.dts is not None:
                    packets.append(packet)
                continue
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                if self.live:
                    raise
                self.bad_packets += 1
                log.warning("%s: skipping an undecodable packet: %s", self.name, describe_error(exc))
                continue
            for frame in frames:
                if held is not None:
                    yield held, packets
                    packets = []
                held = frame
        if held is not None:
            yield held, packets


def _close_quietly(container) -> None:
    try:
        container.close()
    except Exception as exc:  # noqa: BLE001 - the connection is already gone
        log.debug("closing a dead input: %s", exc)


#: a step of a live source's clock this much ahead of the time that passed is a clock jump, not video
CLOCK_JUMP_S = 2.0


class FrameClock:
    """Frame times in seconds from the source's own clock (RTP, MPEG-TS or container times), made
    safe for a recording:

    * a frame without a time (the first frame from RTSP often has none) is one nominal frame
      after the last; the source's own times take over again from the next frame that has one;
    * a step backwards, or (live sources, given ``received`` times) a step more than
      :data:`CLOCK_JUMP_S` ahead of the time that passed between the two frames' arrival (a
      camera's clock set forward), is bridged: the clock is re-anchored so the frame follows
      the last by the time that passed (at least one frame), and later frames keep the source's
      spacing from there;
    * AVI has no presentation times at all (only decode order): timed from the frame rate.
    """

    def __init__(self, fps: Fraction, synthetic: bool = False, jump_s: float = CLOCK_JUMP_S):
        self.fps = fps
        self.synthetic = synthetic
        self.jump_s = jump_s
        self.last: float | None = None
        self.offset = 0.0  # added to the source's times since the last bridge
        self.bridges = 0  # clock jumps and backward steps bridged
        self._received: float | None = None

    def time(self, t: float | None, received: float | None = None) -> float:
        """The time of a frame whose source time is ``t`` (None: unknown), received (monotonic
        clock, live sources) at ``received``."""
        frame = 1.0 / float(self.fps)
        passed = None if received is None or self._received is None else received - self._received
        self._received = received
        if self.synthetic or t is None or self.last is None:
            out = (0.0 if t is None or self.synthetic else t) if self.last is None else self.last + frame
            if t is not None and not self.synthetic:
                self.offset = out - t
            self.last = out
            return out
        out = t + self.offset
        step = out - self.last
        if step <= 0 or (passed is not None and step - passed > self.jump_s):
            bridged = self.last + max(frame, passed or 0.0)
            log.info("source clock %s by %.3f s; bridged", "jumped" if step > 0 else "went back", step)
            self.bridges += 1
            self.offset += bridged - out
            out = bridged
        self.last = out
        return out


def describe_error(exc: BaseException) -> str:
    """A one-line description of an error (``Type: message``) with any URL's secrets masked."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return re.sub(r"[a-z][a-z0-9+.-]*://\S+", lambda m: mask_url(m.group(0)), text, flags=re.I)


def probe(path: str | Path, timeout_s: float = 10.0) -> dict:
    """Width, height, fps (Fraction) and codec of a video's first stream; UserError if unreadable."""
    import av

    try:
        with av.open(str(path), timeout=timeout_s) as c:
            if not c.streams.video:
                raise UserError(f"{mask_url(str(path))}: has no video stream")
            s = c.streams.video[0]
            return {"width": s.codec_context.width, "height": s.codec_context.height, "fps": stream_fps(s),
                    "codec": s.codec_context.name}
    except av.error.FFmpegError as exc:
        raise UserError(f"{mask_url(str(path))}: not a readable video ({describe_error(exc)})") from None
