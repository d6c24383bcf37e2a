"""Encoders and publishers (PyAV): RTSP push (ANNOUNCE/RECORD), files (mp4/mkv) and HLS.

* :class:`EncoderSettings` - codec, preset, CRF or bitrate, GOP; ``libx264`` with
  ``tune=zerolatency`` for live output; ``h264_nvenc``/``hevc_nvenc`` when present.
* :class:`TimestampMapper` - output timestamps in ``1/fps`` units from the source's
  own times: strictly increasing, also across camera reconnects (a new
  connection continues one frame after the last output frame).
* :class:`Publisher` - one output container; takes packed ``yuv420p`` frames.
* :class:`SinkWorker` - a thread that encodes and publishes a camera's enhanced
  frames, with a watchdog: a write that takes longer than ``watchdog_s`` (a hung
  server) or fails (server gone) closes the output and reconnects with backoff.
"""
from __future__ import annotations

import errno
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from .config import ReconnectConfig
from .errors import UserError
from .frame_queue import FrameQueue
from .recording import SegmentedOutput
from .sources import backoff_delay
from .urls import RTSP, SCHEMES, mask_url, scheme, scheme_of

log = logging.getLogger(__name__)


@dataclass
class EncoderSettings:
    codec: str = "libx264"
    preset: str | None = "auto"  # auto: ultrafast when inference shares the CPU, else veryfast
    crf: int | None = 23
    bitrate: str | None = None  # "4M", "800k"; overrides crf
    gop: int | None = None  # frames between keyframes; default 2 s of video
    tune: str | None = "zerolatency"  # live output; None for files
    threads: int = 0  # 0 = codec default
    cpu_inference: bool = False  # the model runs on the CPU too: keep the encoder light

    @classmethod
    def from_config(cls, cfg, live: bool = True, cpu_inference: bool = False) -> EncoderSettings:
        """From :class:`config.EncoderConfig` (or anything with codec/preset/crf/bitrate/gop)."""
        return cls(codec=cfg.codec, preset=cfg.preset, crf=cfg.crf, bitrate=cfg.bitrate, gop=cfg.gop,
                   tune="zerolatency" if live else None, cpu_inference=cpu_inference)

    def resolved_preset(self) -> str | None:
        if self.preset != "auto":
            return self.preset
        return "ultrafast" if self.cpu_inference else "veryfast"


def parse_bitrate(text: str) -> int:
    """``4M`` / ``800k`` / ``1500000`` -> bits per second."""
    t = str(text).strip().lower()
    mult = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if mult != 1 else t) * mult
    except ValueError:
        raise UserError(f"bitrate {text!r} is not a number like 4M or 800k") from None
    if value <= 0:
        raise UserError(f"bitrate {text!r} must be positive")
    return int(value)


def codec_available(name: str) -> bool:
    import av

    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:  # noqa: BLE001 - UnknownCodecError and friends
        return False


@functools.lru_cache(maxsize=None)
def encoder_problem(name: str, width: int = 256, height: int = 144) -> str | None:
    """Why encoder ``name`` cannot encode ``width`` x ``height`` here (None when it can). A hardware
    encoder can be in the FFmpeg build and still fail to open (no GPU, a driver or container
    without the video capability, or a size over its limit: H.264 NVENC stops at 4096x4096, less
    than a x4 of a 1280x720 camera), so this opens one at that size, once per process and size."""
    import av

    if not codec_available(name):
        return f"{name} is not in this FFmpeg build"
    try:
        ctx = av.CodecContext.create(name, "w")
        ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = width, height, "yuv420p", Fraction(1, 25)
        ctx.open()
    except Exception as exc:  # noqa: BLE001 - any failure means: use another encoder
        return f"{type(exc).__name__}: {exc}"
    return None


#: hardware encoders, and the software encoder of the same format to fall back to
HARDWARE_FALLBACK = {"h264_nvenc": "libx264", "hevc_nvenc": "libx265"}
_warned: set[tuple[str, int, int]] = set()


def pick_codec(name: str, size: tuple[int, int] | None = None) -> str:
    """The encoder to open for output frames of ``size`` (width, height; None: a small probe).

    ``auto``: h264_nvenc on a CUDA machine where it opens at that size, else libx264. A named
    hardware encoder that cannot open at that size falls back to its software twin, with one
    warning per encoder and size (not one per reconnect). Other named codecs are checked.
    """
    if name == "auto":
        try:
            import torch

            cuda = torch.cuda.is_available()
        except ImportError:  # pragma: no cover
            cuda = False
        if not cuda:
            return "libx264"
        name = "h264_nvenc"
    if name in HARDWARE_FALLBACK:
        w, h = size or (256, 144)
        problem = encoder_problem(name, w, h)
        if problem is None:
            return name
        if (name, w, h) not in _warned:
            _warned.add((name, w, h))
            log.warning("%s cannot encode %dx%d here (%s); encoding with %s", name, w, h, problem,
                        HARDWARE_FALLBACK[name])
        return HARDWARE_FALLBACK[name]
    if not codec_available(name):
        raise UserError(f"video encoder {name!r} is not available in this FFmpeg build (try libx264)")
    return name


def codec_options(s: EncoderSettings, fps: Fraction) -> tuple[dict[str, str], int | None, int]:
    """FFmpeg codec options, bit rate (or None) and GOP for the settings."""
    opts: dict[str, str] = {}
    gop = s.gop or max(1, round(float(fps) * 2))
    bit_rate = parse_bitrate(s.bitrate) if s.bitrate else None
    preset = s.resolved_preset()
    if s.codec in ("libx264", "libx265"):
        if preset:
            opts["preset"] = preset
        if s.tune:
            opts["tune"] = s.tune
        if bit_rate is None and s.crf is not None:
            opts["crf"] = str(s.crf)
        if s.codec == "libx264":
            opts["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
        opts["forced-idr"] = "1"  # a keyframe asked for by time is an IDR: a point to start playing from
    elif s.codec.endswith("_nvenc"):
        opts["preset"] = preset if preset and re.fullmatch(r"p[1-7]", preset) else "p4"
        if s.tune:
            opts["tune"] = "ll"
        if bit_rate is None and s.crf is not None:
            opts.update(rc="vbr", cq=str(s.crf))
        opts["bf"] = "0"
        opts["forced-idr"] = "1"
    return opts, bit_rate, gop


#: file suffix -> FFmpeg muxer: the one table for camera outputs and recorded jobs (``.m3u8`` is HLS)
OUTPUT_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm",
                     ".ts": "mpegts", ".m2ts": "mpegts", ".mts": "mpegts", ".flv": "flv", ".avi": "avi"}


def container_for(path: str | Path) -> str | None:
    """The muxer :func:`output_args` uses for a file named ``path`` (None: not a known video suffix)."""
    return OUTPUT_CONTAINERS.get(Path(str(path)).suffix.lower())


def output_args(url: str, live: bool = True, timeout_s: float = 5.0,
                keep_times: bool = False) -> tuple[str, str | None, dict[str, str]]:
    """(target, container format, muxer options) for an output URL or path. ``keep_times``: the
    file keeps the source's timestamps and copied audio (recorded jobs): MP4/MOV are then written
    whole at the close, as fragments cannot carry the edit lists (encoder delay, AAC priming)
    that keep them in sync; Matroska (a recorded job's partial file) closes a cluster a second."""
    text = str(url)
    row = scheme(text)
    if row is not None and row.publish_format:
        options = {row.timeout_option: str(int(timeout_s * 1e6))} if row.publish_timeout else {}
        return text, row.publish_format, ({"rtsp_transport": "tcp", **options} if row is RTSP else options)
    if row is not None and row.live:
        raise UserError(f"{mask_url(text)}: publishing over {scheme_of(text)}:// is not supported; use "
                        f"{', '.join(f'{k}://' for k, v in SCHEMES.items() if v.publish_format)}, "
                        "a .m3u8 path for HLS or a file")
    suffix = Path(text).suffix.lower()
    if suffix == ".m3u8":
        # append_list: a reopened output (a new size, a restart) continues the playlist's media sequence
        # and segment numbers after a discontinuity tag, instead of starting over at 0 on old segments
        flags = "delete_segments+independent_segments+append_list" if live else "independent_segments+append_list"
        return text, "hls", {"hls_time": "2", "hls_list_size": "6" if live else "0", "hls_flags": flags}
    fmt = OUTPUT_CONTAINERS.get(suffix)
    if fmt in ("mp4", "mov") and keep_times:
        return text, fmt, {"movflags": "+faststart+use_metadata_tags"}
    if fmt == "matroska" and keep_times:
        # a recorded job's partial file: a cluster a second at most, flushed with each packet, so a
        # killed job leaves a file that plays up to about a second before the kill
        return text, fmt, {"cluster_time_limit": "1000", "flush_packets": "1"}
    if fmt in ("mp4", "mov"):
        # fragmented at every keyframe and at least every second, flushed with each packet, live or not: a
        # killed service or a full disk loses at most the last second (a failed write is cut back to the
        # last whole fragment). use_metadata_tags keeps the provenance tags.
        return text, fmt, {"movflags": "frag_keyframe+empty_moov+default_base_moof+use_metadata_tags",
                           "frag_duration": "1000000", "flush_packets": "1"}
    if fmt is not None:
        return text, fmt, {}
    raise UserError(f"{mask_url(text)}: unknown output kind; use rtsp://, rtmp://, or a .mp4, .mkv, .avi, .ts or .m3u8 path")


def keyframe_due(last_key: int | None, pts: int, gop: int) -> bool:
    """Whether the frame at ``pts`` must be a keyframe: the first, or ``gop`` ticks of output time
    after the last one. The encoder counts frames, so when frames are dropped (a camera faster
    than its model) a GOP of frames spans more time; this keeps keyframes ``gop`` ticks apart."""
    return last_key is None or (gop > 0 and pts - last_key >= gop)


def rtsp_server_answers(url: str, timeout_s: float = 2.0) -> bool:
    """True when the RTSP server at ``url`` answers an ``OPTIONS`` request within ``timeout_s``."""
    import socket

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 554
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            target = f"rtsp://{host}:{port}{parts.path or '/'}"
            sock.sendall(f"OPTIONS {target} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: ultrares-watchdog\r\n\r\n".encode())
            return sock.recv(64).startswith(b"RTSP/")
    except OSError:
        return False


class TimestampMapper:
    """Source times -> strictly increasing output pts in units of ``1/fps``.

    Within one connection (``epoch``) the source's spacing is kept (a dropped frame
    leaves a gap, so playback speed stays real time); a new epoch (reconnect)
    continues one frame after the last output timestamp. ``rebase``: the first frame
    is pts 0 (cameras, whose clocks start anywhere); False keeps the source's own
    times from the start (recorded files, whose copied audio keeps its times too).
    """

    def __init__(self, fps: Fraction, rebase: bool = True):
        self.fps = Fraction(fps)
        self.rebase = rebase
        self.last: int | None = None
        self._epoch: int | None = None
        self._offset = 0

    def map(self, time_s: float | None, epoch: int = 0) -> int:
        if time_s is None:
            pts = 0 if self.last is None else self.last + 1
        else:
            ticks = round(time_s * self.fps)
            if self.last is None:
                self._epoch = epoch
                self._offset = -ticks if self.rebase else 0
            elif epoch != self._epoch:
                self._epoch = epoch
                self._offset = self.last + 1 - ticks
            pts = ticks + self._offset
            if self.last is not None and pts <= self.last:
                pts = self.last + 1
                self._offset = pts - ticks
        self.last = pts
        return pts


class Publisher:
    """One open output: encoder + container. ``write`` takes packed yuv420p frames."""

    def __init__(self, url: str, settings: EncoderSettings | None = None, *, live: bool = True,
                 timeout_s: float = 5.0, name: str = "camera", metadata: dict[str, str] | None = None,
                 keep_times: bool = False):
        self.url = str(url)
        self.metadata = metadata or {}  # container tags of a file output (provenance)
        self.settings = settings or EncoderSettings()
        self.live = live
        self.timeout_s = timeout_s
        self.name = name
        self.container = None
        self.stream = None
        self.frames = 0
        self.copied = 0  # packets of copied (audio/subtitle) streams muxed
        self._copies: dict[int, object] = {}  # input stream index -> output stream
        self.width = self.height = 0
        self.gop = 0  # ticks (1/fps) between keyframes at most, whatever the frames' spacing
        self._last_key: int | None = None  # pts of the last keyframe asked for
        self.good_size = 0  # a local file's size after its last complete write (a fragment boundary)
        self.target, self.format, self.options = output_args(self.url, live, timeout_s, keep_times)

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def open(self, width: int, height: int, fps: Fraction, container=None, copy_from=()):
        """Open the output (or add the video stream to an already open ``container``). ``copy_from``:
        input streams (audio, subtitles) added after the video, for :meth:`copy`."""
        import av

        codec = pick_codec(self.settings.codec, (width, height))
        fps = Fraction(fps).limit_denominator(1001)
        opts, bit_rate, gop = codec_options(EncoderSettings(**{**self.settings.__dict__, "codec": codec}), fps)
        if container is None:
            if "://" not in self.target:
                Path(self.target).parent.mkdir(parents=True, exist_ok=True)
            try:
                container = av.open(self.target, "w", format=self.format, options=self.options,
                                    timeout=self.timeout_s)
            except av.error.FFmpegError as exc:
                raise ConnectionError(f"cannot open output {self.masked_url}: {exc}") from None
            container.metadata.update(self.metadata)  # files, RTSP (session name) and HLS (MPEG-TS service)
        self.container = container
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1) / fps
        stream.codec_context.time_base = Fraction(1) / fps
        stream.codec_context.gop_size = gop
        if bit_rate:
            stream.bit_rate = bit_rate
        if self.settings.threads:
            stream.codec_context.thread_count = self.settings.threads
        stream.options = opts
        self.stream = stream
        self._copies = {s.index: container.add_stream_from_template(s) for s in copy_from}
        self.width, self.height = width, height
        self.fps = fps
        self.gop = gop
        log.info("%s: publishing %dx%d at %.3g fps with %s to %s", self.name, width, height, float(fps),
                 codec, self.masked_url)
        return self

    def encode(self, data: np.ndarray, pts: int) -> list:
        """Encode one packed yuv420p frame; returns the packets (not yet muxed)."""
        import av

        frame = av.VideoFrame.from_ndarray(data, format="yuv420p")
        frame.pts = pts
        frame.time_base = self.stream.codec_context.time_base
        if keyframe_due(self._last_key, pts, self.gop):
            frame.pict_type = av.video.frame.PictureType.I
            self._last_key = pts
        return self.stream.encode(frame)

    def mux(self, packets) -> None:
        if packets:
            self.container.mux(packets)

    def copy(self, packets) -> None:
        """Mux demuxed packets of the ``copy_from`` streams as they are (their own timestamps)."""
        for packet in packets:
            packet.stream = self._copies[packet.stream.index]
            self.container.mux(packet)
            self.copied += 1

    def send(self, data: np.ndarray, pts: int) -> tuple[float, float]:
        """Encode and mux one packed yuv420p frame; returns (encode_s, mux_s)."""
        t0 = time.perf_counter()
        packets = self.encode(data, pts)
        t1 = time.perf_counter()
        self.mux(packets)
        return t1 - t0, time.perf_counter() - t1

    def write(self, data: np.ndarray, pts: int) -> None:
        self.send(data, pts)
        self.frames += 1

    def mark_good(self) -> None:
        """Remember a local file's size after a complete write: a write that fails later (a full
        disk) is cut back to it, so the file ends on a whole fragment and decodes to its end."""
        if "://" not in self.target:
            try:
                self.good_size = os.path.getsize(self.target)
            except OSError:
                pass

    def cut_back(self) -> None:
        """After a failed write to a local file: drop the partial fragment at its end."""
        if "://" in self.target or not os.path.exists(self.target):
            return
        try:
            os.truncate(self.target, self.good_size)
        except OSError as exc:
            log.warning("%s: could not cut %s back to its last whole fragment: %s", self.name, self.target, exc)

    def close(self, flush: bool = True) -> None:
        container, self.container = self.container, None
        if container is None:
            return
        try:
            if flush and self.stream is not None:
                container.mux(self.stream.encode(None))
        except Exception as exc:  # noqa: BLE001 - a gone server must not stop the close
            log.debug("%s: flushing %s: %s", self.name, self.masked_url, exc)
        finally:
            try:
                container.close()
            except Exception as exc:  # noqa: BLE001
                log.debug("%s: closing %s: %s", self.name, self.masked_url, exc)


@dataclass(frozen=True)
class SinkHooks:
    """What a :class:`SinkWorker` asks of its pipeline, all optional.

    ``on_published(enhanced, seconds)`` is called after each frame is written. ``metadata``:
    a callable taking the upscaler that made a frame (``Enhanced.made_by``, or None) and
    returning a file output's container tags; a file output whose frames start coming from
    another upscaler (an alpha or model change) continues in a new file or segment, tagged
    from its first frame. ``copy_from`` (file outputs): a callable returning the input streams
    whose packets ride along with the frames (``Frame.packets``); they are copied into the
    output after their frame, and video keeps the source's timestamps. ``segments``: where
    each open of a camera's file output writes (:class:`~ultrares_stream.recording.SegmentedOutput`).
    """

    on_published: Callable | None = None
    metadata: Callable[[object], dict[str, str]] | None = None
    copy_from: Callable[[], list] | None = None
    segments: SegmentedOutput | None = None


#: why a write failed -> the state a file output is in until a write succeeds again
WRITE_FAILURES = {errno.ENOSPC: "disk-full", errno.EDQUOT: "disk-full", errno.EROFS: "output-error",
                  errno.EACCES: "output-error", errno.EPERM: "output-error", errno.ENOTDIR: "output-error",
                  errno.EISDIR: "output-error", errno.ENOENT: "output-error"}


def failure_state(exc: BaseException) -> str:
    """The sink state a failed open or write leaves: ``disk-full``, ``output-error`` (a file that
    cannot be written) or ``reconnecting`` (a network peer gone)."""
    return WRITE_FAILURES.get(getattr(exc, "errno", None) or 0, "reconnecting")


class SinkWorker:
    """Thread: take enhanced frames from ``queue``, encode and publish; reconnect on failure.

    ``fps``: a callable returning the output frame rate (the input's), read when
    the output is (re)opened. ``reconnect``: the connect/write timeout and the reconnect
    backoff (default ``ReconnectConfig()``); ``watchdog_s``: how long a write may block or an
    RTSP server stay silent before the connection is dropped (default ``reconnect.timeout_s``).
    ``hooks``: the callbacks of :class:`SinkHooks`. ``state`` and ``cause`` say what the output
    is doing and, when it is not publishing, why.
    """

    def __init__(self, url: str, settings: EncoderSettings, fps: Callable[[], Fraction], queue: FrameQueue, *,
                 name: str = "camera", live: bool = True, reconnect: ReconnectConfig | None = None,
                 watchdog_s: float | None = None, metrics=None, hooks: SinkHooks | None = None):
        self.url, self.settings, self.fps_fn, self.queue = url, settings, fps, queue
        self.name, self.live = name, live
        self.reconnect = reconnect or ReconnectConfig()
        self.watchdog_s = self.reconnect.timeout_s if watchdog_s is None else watchdog_s
        self.metrics = metrics
        self.hooks = hooks or SinkHooks()
        output_args(url, live, self.reconnect.timeout_s)  # validate the URL early (UserError)
        self.published = 0
        self.copied = 0  # packets of copy_from streams muxed
        self.reconnects = 0
        self._failures = 0  # consecutive dropped connections: the reconnect backoff grows with them
        self.state = "idle"
        self.cause: str | None = None  # why the output is not publishing (None while it is)
        self.mapper: TimestampMapper | None = None
        self._pub: Publisher | None = None
        self._made_by = None  # the upscaler whose provenance the open file carries
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_started: float | None = None
        self._watchdog: threading.Thread | None = None
        self._hung = threading.Event()
        self.error: BaseException | None = None

    def start(self) -> SinkWorker:
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)
        self._thread.start()
        self._watchdog = threading.Thread(target=self._watch, name=f"watchdog-{self.name}", daemon=True)
        self._watchdog.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the frames already queued, flush and close the output."""
        self.queue.close()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("%s: publisher did not finish within %.0f s", self.name, timeout)
        self._stop.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` s for the publisher thread to end (the queue closed and drained,
        the output flushed and closed); True when it has ended (or never started)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.alive

    def _watch(self) -> None:
        """Notice a server that stopped answering, even while writes still fit in socket buffers.

        Two signs: a write blocked longer than ``watchdog_s``; or, for RTSP, the
        server not answering an ``OPTIONS`` request on a side connection for
        ``watchdog_s`` since the output was opened or last answered. Either one makes the
        writer drop the connection and reconnect. Opening is not watched: it has its own
        timeout (the connect timeout, and the publisher process's start).
        """
        probe = scheme_of(self.url) == "rtsp"  # plain RTSP only: an rtsps server expects TLS first
        last_ok, watched = time.monotonic(), None
        while not self._stop.wait(0.5):
            now = time.monotonic()
            started = self._write_started
            stuck = started is not None and now - started > self.watchdog_s
            pub = self._pub
            if probe and pub is not None and pub.container is not None:
                if pub is not watched:  # a new connection: its silence counts from now
                    watched, last_ok = pub, now
                if rtsp_server_answers(self.url, timeout_s=min(2.0, self.watchdog_s)):
                    last_ok = time.monotonic()
                elif time.monotonic() - last_ok > self.watchdog_s:
                    stuck = True
            else:
                last_ok = now
            if stuck and not self._hung.is_set():
                self._hung.set()
                self._set_state("hung", f"the receiver did not answer for {self.watchdog_s:.0f} s")
                log.warning("%s: publisher %s is not responding (for %.0f s); reconnecting", self.name,
                            mask_url(self.url), self.watchdog_s)
                if self.metrics is not None:
                    self.metrics.errors.labels(self.name, "publish").inc()

    def _set_state(self, state: str, cause: str | None = None) -> None:
        self.state, self.cause = state, cause

    def _publisher(self, made_by) -> Publisher:
        """A new, unopened publisher for the next connection or segment."""
        from .sink_process import RemotePublisher

        metadata = self.hooks.metadata(made_by) if self.hooks.metadata else None
        args = dict(live=self.live, timeout_s=self.reconnect.timeout_s, name=self.name, metadata=metadata)
        if (row := scheme(self.url)) is not None and row.publish_format:  # a network peer: a child process
            return RemotePublisher(self.url, self.settings, **args)
        target = self.hooks.segments.next_path() if self.hooks.segments is not None else self.url
        return Publisher(target, self.settings, keep_times=self.hooks.copy_from is not None, **args)

    def _open(self, width: int, height: int, made_by=None) -> Publisher:
        attempt = 0
        while True:
            pub = None
            try:
                pub = self._publisher(made_by)
                if self.hooks.copy_from is not None:
                    pub.open(width, height, self.fps_fn(), copy_from=self.hooks.copy_from())
                else:
                    pub.open(width, height, self.fps_fn())
                self._made_by = made_by
                return pub
            except (ConnectionError, OSError) as exc:
                if not self.live:
                    raise UserError(str(exc)) from None
                if pub is not None:
                    self._forget(pub)
                attempt += 1
                delay = backoff_delay(attempt, self.reconnect.initial_s, self.reconnect.max_s)
                self._set_state(failure_state(exc.__context__ or exc), str(exc))
                log.warning("%s: %s; retrying in %.1f s", self.name, exc, delay)
                if self.metrics is not None:
                    self.metrics.errors.labels(self.name, "publish").inc()
                if self._stop.wait(delay):
                    raise

    def _forget(self, pub: Publisher) -> None:
        """A segment that holds no frame (its open or first write failed) is removed."""
        if self.hooks.segments is not None and pub.frames == 0:
            self.hooks.segments.discard_last()

    def _run(self) -> None:
        self._set_state("waiting")
        try:
            while True:
                got = self.queue.get_with_wait(0.25)
                if got is None:
                    if self.queue.drained():
                        break
                    continue
                enhanced, _ = got
                self._publish(enhanced)
        except Exception as exc:  # noqa: BLE001
            self.error = exc
            self._set_state("failed", str(exc))
            log.error("%s: publisher stopped: %s", self.name, exc)
        finally:
            if self._pub is not None:
                self._close(self._pub)
            if self.state != "failed":
                self._set_state("stopped")

    def _close(self, pub: Publisher, flush: bool = True) -> None:
        pub.close(flush=flush)
        self._pub = None
        if self.hooks.segments is not None:
            self.hooks.segments.prune()

    def _drop_connection(self, pub: Publisher, why: str, exc: BaseException | None = None) -> None:
        log.warning("%s: %s: %s; reconnecting", self.name, mask_url(self.url), why)
        self._close(pub, flush=False)
        if isinstance(pub, Publisher):
            pub.cut_back()
        self._forget(pub)
        self.reconnects += 1
        self._failures += 1
        self._set_state(failure_state(exc) if exc is not None else "reconnecting", why)
        if self.metrics is not None:
            self.metrics.reconnects.labels(self.name, "sink").inc()

    def _reopen_reason(self, pub: Publisher, enhanced) -> str | None:
        """Why the open output cannot take this frame: its size changed, the file's provenance
        (the upscaler that makes the frames) changed, or its segment ran its length."""
        if (pub.width, pub.height) != (enhanced.width, enhanced.height):
            return f"output size changed to {enhanced.width}x{enhanced.height}"
        if self.hooks.metadata is not None and enhanced.made_by is not None and enhanced.made_by is not self._made_by:
            return "model or alpha changed"
        if self.hooks.segments is not None and self.hooks.segments.due():
            return "segment length reached"
        return None

    def _publish(self, enhanced) -> None:
        if self.mapper is None:
            self.mapper = TimestampMapper(self.fps_fn(), rebase=self.hooks.copy_from is None)
        pts = self.mapper.map(enhanced.source.time_s, enhanced.source.epoch)
        for attempt in range(2):
            pub = self._pub
            if pub is not None and (why := self._reopen_reason(pub, enhanced)) is not None:
                log.info("%s: %s; continuing in a new output%s", self.name, why,
                         " segment" if self.hooks.segments is not None else "")
                self._close(pub)
                pub = None
            if pub is not None and self._hung.is_set():
                self._drop_connection(pub, "server not responding")
                pub = None
                if self._stop.wait(backoff_delay(self._failures, self.reconnect.initial_s, self.reconnect.max_s)):
                    return
            if pub is None:
                pub = self._pub = self._open(enhanced.width, enhanced.height, enhanced.made_by)
                self._hung.clear()
            if self._write(pub, enhanced, pts):
                return
            if self._stop.wait(backoff_delay(self._failures, self.reconnect.initial_s, self.reconnect.max_s)):
                return

    def _write(self, pub: Publisher, enhanced, pts: int) -> bool:
        """Encode and mux one frame (and its copied packets); False when the output failed and was
        dropped (live outputs: reconnect with a new connection or segment)."""
        self._write_started = time.monotonic()
        try:
            encode_s, mux_s = pub.send(enhanced.data, pts)
            pub.frames += 1
            if self.hooks.copy_from is not None:
                pub.copy(enhanced.source.packets)
                self.copied += len(enhanced.source.packets)
        except Exception as exc:  # noqa: BLE001 - server gone or hung (socket timeout), disk full
            self._write_started = None
            if not self.live:
                raise
            self._drop_connection(pub, f"publishing failed ({exc if str(exc) else type(exc).__name__})", exc)
            if self.metrics is not None:
                self.metrics.errors.labels(self.name, "publish").inc()
            return False
        finally:
            self._write_started = None
        if isinstance(pub, Publisher):
            pub.mark_good()
        self.published += 1
        self._failures = 0
        if self.state != "running":
            self._set_state("running")
        if self.metrics is not None:
            self.metrics.observe_stage(self.name, "encode", encode_s)
            self.metrics.observe_stage(self.name, "publish", mux_s)
        if self.hooks.on_published is not None:
            self.hooks.on_published(enhanced, encode_s + mux_s)
        return True
