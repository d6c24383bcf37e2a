"""One output container and its encoder (PyAV): files (MP4/MOV, Matroska, MPEG-TS...), HLS, and
network outputs (RTSP push, RTMP, SRT, UDP/TCP) opened by FFmpeg.

* :class:`EncoderSettings` - codec, preset, CRF or bitrate, GOP; ``libx264`` with
  ``tune=zerolatency`` for live output; ``h264_nvenc``/``hevc_nvenc`` when present.
* :func:`output_args` - the muxer and its options for an output URL or path.
* :class:`Publisher` - one open output: takes packed ``yuv420p`` frames, places keyframes by
  output time, and cuts a local file back to its last whole fragment after a failed write.

:class:`~ultrares_stream.sinks.SinkWorker` drives a publisher (in this process for files, in a
child process for network outputs: :mod:`.sink_process`).
"""
from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import UserError
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


def keyframe_due(last_key: int | None, pts: int, gop: int, step: int = 0) -> bool:
    """Whether the frame at ``pts`` must be a keyframe: the first, or the last frame before the
    GOP (``gop`` ticks of output time) would be exceeded, the next frame expected up to ``step``
    ticks later (the largest recent spacing). The encoder counts frames, so when frames are
    dropped (a camera faster than its model) a GOP of frames spans more time; this keeps
    keyframes at most ``gop`` ticks apart unless a gap is longer than any recent one."""
    return last_key is None or (gop > 0 and pts + step - last_key > gop)


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
        self._last_pts: int | None = None
        self._steps: deque[int] = deque(maxlen=50)  # the last spacings between frames (ticks)
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
        if self._last_pts is not None:
            self._steps.append(max(0, pts - self._last_pts))
        if keyframe_due(self._last_key, pts, self.gop, max(self._steps, default=0)):
            frame.pict_type = av.video.frame.PictureType.I
            self._last_key = pts
        self._last_pts = pts
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

    def holds_frames(self) -> bool:
        """Whether the output holds a whole video frame (a network output: assumed)."""
        import av

        if "://" in self.target:
            return True
        try:
            with av.open(self.target) as c:
                return any(packet.size for packet in c.demux(video=0))
        except (av.error.FFmpegError, OSError):
            return False

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
