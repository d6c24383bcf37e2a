"""Recorded footage: enhance a video file, keeping its audio and subtitles in sync.

Three threads overlap the work, in the file's own packet order:

    demux + decode  ->  [bounded, blocking queue]  ->  inference (batches of up to
    ``max_batch`` consecutive frames, :func:`batcher.enhance_batch`)  ->  [queue]  ->
    encode + mux (video re-encoded, audio/subtitle packets copied as they are)

Nothing is dropped (the queues block). Output timestamps are the input's, so the
copied audio stays in sync. The result is written to a hidden temporary name
beside ``dst`` and renamed on success. On Ctrl-C or SIGTERM the frames done so
far are flushed into a playable file at ``dst`` and :class:`EnhanceInterrupted`
(a ``KeyboardInterrupt``) is raised with the stats.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from fractions import Fraction
from pathlib import Path

import torch

from . import provenance
from .batcher import cpu_inference_threads, default_max_batch, enhance_batch
from .errors import UserError
from .sinks import EncoderSettings, Publisher
from .temporal import Stabiliser, StabiliserSettings
from .sources import DEFAULT_FPS, FrameClock, _describe, frame_to_yuv420p, hwaccel_args, pick_hwaccel

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".m4v", ".avi", ".webm", ".ts", ".m2ts", ".mts", ".flv", ".wmv",
                  ".mpg", ".mpeg", ".3gp", ".ogv"}
OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi",
                  ".ts": "mpegts", ".m2ts": "mpegts", ".mts": "mpegts"}
#: codecs each output container takes as a stream copy (others are skipped with a warning)
COPYABLE = {
    "mp4": {"aac", "mp3", "ac3", "eac3", "opus", "flac", "alac", "mov_text"},
    "mov": {"aac", "mp3", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s24le", "mov_text"},
    "matroska": None,  # anything
    "avi": {"mp3", "ac3", "pcm_s16le", "pcm_u8"},
    "mpegts": {"aac", "mp3", "ac3", "eac3", "opus", "mp2", "dvb_subtitle", "dvd_subtitle"},
}
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
_END = object()


class EnhanceInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM during :func:`enhance_video`; ``stats`` describes the partial file written."""

    def __init__(self, stats: dict):
        super().__init__(f"interrupted after {stats['frames']} frames; partial output {stats['output']}")
        self.stats = stats


def is_video(path: str | Path) -> bool:
    """True when ``path`` holds a video (sniffed from its content, not its name); images are not."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return False
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return False
    import av

    try:
        with av.open(str(path), timeout=10) as c:
            name = c.format.name
            if name == "image2" or name.endswith("_pipe"):
                return False
            return bool(c.streams.video)
    except Exception:  # noqa: BLE001 - unreadable: not a video
        return False


#: smallest input side a video may have (a 1x1 stream rounds down to 0x0 for yuv420p)
MIN_VIDEO_SIDE = 8
#: largest output side H.264 (libx264 and the decoders that play it) handles
MAX_VIDEO_SIDE = 8192


def video_size_problem(width: int, height: int, size: tuple[int, int] | None, scale: int) -> str | None:
    """Why a ``width`` x ``height`` video cannot be enhanced to ``size`` (or x``scale``), or None."""
    if not width or not height:
        return "the video stream has no frame size (damaged?)"
    if min(width, height) < MIN_VIDEO_SIDE:
        return f"frames of {width}x{height} are too small (at least {MIN_VIDEO_SIDE}x{MIN_VIDEO_SIDE})"
    out_w, out_h = size if size is not None else (width * scale, height * scale)
    if max(out_w, out_h) > MAX_VIDEO_SIDE:
        return (f"the output would be {out_w}x{out_h}; videos are limited to {MAX_VIDEO_SIDE} pixels a side "
                "(choose a smaller --size or --scale)")
    return None


def _check_output(dst: Path) -> str:
    fmt = OUTPUT_FORMATS.get(dst.suffix.lower())
    if fmt is None:
        raise UserError(f"{dst}: output must be .mp4, .mov, .mkv, .avi or .ts (.mkv keeps every audio and "
                        "subtitle stream)")
    return fmt


def enhance_video(src: Path, dst: Path, upscaler, size: tuple[int, int] | None = None, progress: bool = True,
                  max_batch: int | None = None, encoder: EncoderSettings | None = None,
                  threads: int | None = None, stabilise: StabiliserSettings | None = None) -> dict:
    """Enhance ``src`` into ``dst``; returns ``{"frames", "seconds", "fps", "output", ...}``.

    ``size`` = (width, height) of the output (default: the model's scale). ``threads``: torch
    threads of the network on the CPU (default :func:`~ultrares_stream.batcher.cpu_inference_threads`).
    ``stabilise``: temporal stabiliser settings (:mod:`.temporal`), None for none.
    Raises :class:`UserError` for unreadable input, :class:`EnhanceInterrupted` on Ctrl-C/SIGTERM.
    """
    import av

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise UserError(f"{src}: no such file")
    if src.resolve() == dst.resolve():
        raise UserError(f"{dst}: output would overwrite the input; choose another name")
    fmt = _check_output(dst)
    try:
        inp = av.open(str(src), timeout=30, **hwaccel_args(pick_hwaccel(str(upscaler.device))))
    except av.error.FFmpegError as exc:
        raise UserError(f"{src}: not a readable video ({_describe(exc)})") from None
    if not inp.streams.video:
        inp.close()
        raise UserError(f"{src}: has no video stream")
    vin = inp.streams.video[0]
    if vin.codec_context is None:
        inp.close()
        raise UserError(f"{src}: the video stream cannot be decoded (damaged header or unknown codec)")
    vin.thread_type = "AUTO"
    vin.codec_context.thread_count = 1
    rate = vin.average_rate or vin.guessed_rate or DEFAULT_FPS
    fps = Fraction(rate).limit_denominator(1001)
    copies = []
    for s in inp.streams:
        if s.type not in ("audio", "subtitle"):
            continue
        allowed = COPYABLE[fmt]
        if allowed is not None and s.codec_context.name not in allowed:
            log.warning("%s: %s stream #%d (%s) cannot be copied into %s; skipped (use .mkv to keep it)",
                        src.name, s.type, s.index, s.codec_context.name, dst.suffix)
            continue
        copies.append(s)
    duration = _duration_s(inp, vin)
    total = int(duration * float(fps)) if duration else None

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.partial{dst.suffix}")
    out = av.open(str(tmp), "w", format=fmt, options={"movflags": "+faststart+use_metadata_tags"} if fmt in ("mp4", "mov") else {})
    out.metadata.update(provenance.video_metadata(provenance.for_upscaler(upscaler)))
    settings = encoder or EncoderSettings(preset="medium", crf=18, tune=None)
    pub = Publisher(str(tmp), settings, live=False, name=src.name)
    in_w, in_h = vin.codec_context.width, vin.codec_context.height
    problem = video_size_problem(in_w, in_h, size, upscaler.scale)
    if problem:
        out.close()
        inp.close()
        tmp.unlink(missing_ok=True)
        raise UserError(f"{src}: {problem}")
    in_w, in_h = in_w - in_w % 2, in_h - in_h % 2
    out_w, out_h = size if size is not None else (in_w * upscaler.scale, in_h * upscaler.scale)
    out_w, out_h = out_w - out_w % 2, out_h - out_h % 2
    size = (out_w, out_h)
    pub.open(out_w, out_h, fps, container=out)  # video first, and every stream before the first packet
    out_map = {}
    for s in copies:
        out_map[s.index] = out.add_stream_from_template(s)

    stop = threading.Event()
    errors: list[BaseException] = []
    max_batch = max_batch or default_max_batch(upscaler.device.type)
    net_threads = cpu_inference_threads(threads)
    decoded_q: queue.Queue = queue.Queue(maxsize=max(8, 2 * max_batch))
    enhanced_q: queue.Queue = queue.Queue(maxsize=max(8, 2 * max_batch))
    counters = {"frames": 0, "decoded": 0, "bad_packets": 0, "copied": 0}
    stabiliser = Stabiliser(stabilise) if stabilise is not None else None

    def put(q: queue.Queue, item) -> bool:
        while True:
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                if errors:
                    return False

    def demux() -> None:
        clock = FrameClock(fps, synthetic=inp.format.name == "avi")
        try:
            for packet in inp.demux([vin, *copies]):
                if stop.is_set():
                    break
                if packet.stream.index != vin.index:
                    if packet.dts is not None and not put(decoded_q, ("packet", packet)):
                        return
                    continue
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as exc:
                    counters["bad_packets"] += 1
                    log.warning("%s: skipping an undecodable packet: %s", src.name, _describe(exc))
                    continue
                for f in frames:
                    t = clock.time(f.time)
                    data, w, h = frame_to_yuv420p(f)
                    counters["decoded"] += 1
                    if not put(decoded_q, ("frame", (data, w, h, t))):
                        return
        except Exception as exc:  # noqa: BLE001
            errors.append(UserError(f"{src}: cannot decode: {_describe(exc)}"))
        finally:
            put(decoded_q, _END)

    def infer() -> None:
        try:
            if upscaler.device.type == "cpu":
                torch.set_num_threads(net_threads)
            pending: list = []  # consecutive frames of one size, with packets queued behind them

            def flush() -> bool:
                frames = [p for p in pending if p[0] == "frame"]
                if frames:
                    w, h = frames[0][1][1], frames[0][1][2]
                    outs = enhance_batch(upscaler, [f[1][0] for f in frames], w, h, size, stabiliser)
                    it = iter(outs)
                    for kind, item in pending:
                        if kind == "frame":
                            if not put(enhanced_q, ("frame", (next(it), item[3]))):
                                return False
                        elif not put(enhanced_q, (kind, item)):
                            return False
                else:
                    for p in pending:
                        if not put(enhanced_q, p):
                            return False
                pending.clear()
                return True

            while True:
                item = decoded_q.get()
                if item is _END:
                    break
                kind, payload = item
                if kind == "frame":
                    first = next((p for p in pending if p[0] == "frame"), None)
                    if first is not None and (first[1][1], first[1][2]) != (payload[1], payload[2]):
                        if not flush():
                            return
                    pending.append(item)
                    if sum(1 for p in pending if p[0] == "frame") >= max_batch and not flush():
                        return
                else:
                    pending.append(item)
            flush()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            put(enhanced_q, _END)

    def write() -> None:
        last_pts: int | None = None
        try:
            while True:
                item = enhanced_q.get()
                if item is _END:
                    break
                kind, payload = item
                if kind == "packet":
                    payload.stream = out_map[payload.stream.index]
                    out.mux(payload)
                    counters["copied"] += 1
                    continue
                data, t = payload
                pts = round(t * fps)
                if last_pts is not None and pts <= last_pts:
                    pts = last_pts + 1
                last_pts = pts
                pub.write(data, pts)
                counters["frames"] += 1
            if pub.stream is not None:
                out.mux(pub.stream.encode(None))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
            while enhanced_q.get() is not _END:  # unblock the producers
                pass

    interrupted = []

    def on_sigterm(signum, _frame):
        interrupted.append(signum)
        stop.set()

    old_handler = None
    if threading.current_thread() is threading.main_thread():
        old_handler = signal.signal(signal.SIGTERM, on_sigterm)
    threads = [threading.Thread(target=f, name=f"enhance-{f.__name__}", daemon=True) for f in (demux, infer, write)]
    t0 = time.perf_counter()
    log.info("enhancing %s -> %s (%s%s)", src, dst, f"about {total} frames at {float(fps):.3g} fps" if total
             else f"{float(fps):.3g} fps", f", copying {len(copies)} audio/subtitle stream(s)" if copies else "")
    for t in threads:
        t.start()
    try:
        _wait(threads, counters, total, src.name, progress, stop, interrupted)
    except KeyboardInterrupt:
        interrupted.append(signal.SIGINT)
        stop.set()
        _wait(threads, counters, None, src.name, False, stop, interrupted)
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
        try:
            out.close()
        finally:
            inp.close()
    seconds = time.perf_counter() - t0
    stats = {"frames": counters["frames"], "seconds": seconds,
             "fps": counters["frames"] / seconds if seconds > 0 else 0.0, "output": str(dst),
             "copied_packets": counters["copied"], "bad_packets": counters["bad_packets"],
             "interrupted": bool(interrupted)}
    if errors:
        tmp.unlink(missing_ok=True)
        err = errors[0]
        if isinstance(err, UserError):
            raise err
        raise UserError(f"{src}: enhancing failed: {_describe(err)}") from err
    if counters["frames"] == 0:
        tmp.unlink(missing_ok=True)
        if interrupted:
            raise EnhanceInterrupted(stats)
        raise UserError(f"{src}: no video frames could be decoded")
    os.replace(tmp, dst)
    if interrupted:
        log.warning("interrupted: wrote the %d frames done so far to %s", counters["frames"], dst)
        raise EnhanceInterrupted(stats)
    log.info("wrote %s: %d frames in %.1f s (%.2f fps)", dst, stats["frames"], seconds, stats["fps"])
    return stats


def _duration_s(inp, vin) -> float | None:
    if vin.duration is not None and vin.time_base is not None:
        return float(vin.duration * vin.time_base)
    if inp.duration is not None:
        return inp.duration / 1_000_000
    return None


def _wait(threads, counters, total, label, progress, stop, interrupted) -> None:
    if not progress:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.2)
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[fps]:.2f} fps"), TimeElapsedColumn(), TextColumn("ETA"),
                  TimeRemainingColumn(), transient=False) as bar:
        task = bar.add_task(label, total=total, fps=0.0)
        while any(t.is_alive() for t in threads):
            threads[-1].join(0.25)
            done = counters["frames"]
            dt = time.perf_counter() - t0
            bar.update(task, completed=done, fps=done / dt if dt > 0 else 0.0,
                       total=max(total, done) if total else None)
        bar.update(task, completed=counters["frames"], total=counters["frames"])
