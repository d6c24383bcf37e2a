"""Recorded footage: enhance a video file through the pipeline every camera runs.

The pipeline is the one :func:`.pipeline.build` declares for a camera: Source (file: demux +
decode; audio/subtitle packets ride along with their frames) -> FrameQueue (block: nothing is
dropped) -> Batcher (this job's own: the device stages) -> FrameQueue (block) -> SinkWorker
(encode + mux; copies the audio/subtitle packets; source timestamps). A fix to a stage fixes
both paths. Video keeps the input's timestamps (``sinks.TimestampMapper`` without rebasing) and
the copied packets keep theirs, so audio stays in sync. The job writes Matroska to a hidden
name beside ``dst`` (``.NAME.partial.mkv``): if the process is killed, that file plays up to
about a second before the kill, audio included. At the end it is stream-copied into ``dst``'s
container (:mod:`.remux`; MP4/MOV with ``+faststart``) and removed. On Ctrl-C or SIGTERM the
frames read so far are finished into a playable file at ``dst`` the same way and
:class:`EnhanceInterrupted` (a ``KeyboardInterrupt``) is raised with the stats.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import provenance, remux
from .admission import same_file
from .batcher import Batcher, default_max_batch, pipeline_threads
from .config import RECORDED_CRF, RECORDED_PRESET
from .errors import UserError
from .pipeline import Hooks, PipelineSpec, build
from .publisher import EncoderSettings, container_for, output_args
from .sources import VIDEO_SUFFIXES, Reconnect, describe_error, pick_hwaccel, stream_fps
from .stages import Route
from .temporal import StabiliserSettings

log = logging.getLogger(__name__)

__all__ = ["VIDEO_SUFFIXES", "EnhanceInterrupted", "enhance_video", "is_video", "video_size_problem"]

#: codecs each output container takes as a stream copy (others are skipped with a warning)
COPYABLE = {
    "mp4": {"aac", "mp3", "ac3", "eac3", "opus", "flac", "alac", "mov_text"},
    "mov": {"aac", "mp3", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s24le", "mov_text"},
    "matroska": None,  # anything
    "avi": {"mp3", "ac3", "pcm_s16le", "pcm_u8"},
    "mpegts": {"aac", "mp3", "ac3", "eac3", "opus", "mp2", "dvb_subtitle", "dvd_subtitle"},
}
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
#: smallest input side a video may have (a 1x1 stream rounds down to 0x0 for yuv420p)
MIN_VIDEO_SIDE = 8
#: largest output side H.264 (libx264 and the decoders that play it) handles
MAX_VIDEO_SIDE = 8192
#: an input read to its end with fewer frames than this share of what its header announces was cut short
TRUNCATED_SHARE = 0.9


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
    try:
        with av.open(str(path), timeout=10) as c:
            name = c.format.name
            if name == "image2" or name.endswith("_pipe"):
                return False
            return bool(c.streams.video)
    except Exception:  # noqa: BLE001 - unreadable: not a video
        return False


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


def output_container(dst: Path) -> str:
    """The muxer for a recorded job's output ``dst`` (the sinks' table), or UserError."""
    fmt = container_for(dst)
    if fmt not in COPYABLE:
        raise UserError(f"{dst}: output must be .mp4, .mov, .mkv, .avi or .ts (.mkv keeps every audio and "
                        "subtitle stream)")
    return fmt


def even_size(width: int, height: int) -> tuple[int, int]:
    return width - width % 2, height - height % 2


@dataclass
class Plan:
    """What a recorded job knows before it starts, read from the input."""

    fps: Fraction
    out_size: tuple[int, int]  # even
    copy: list[int]  # audio/subtitle stream indices copied into the output
    total: int | None  # frames expected (from the duration), for the progress bar


def read_plan(src: Path, dst: Path, fmt: str, scale: int, size: tuple[int, int] | None) -> Plan:
    """Open ``src`` once: check it can be enhanced to ``size`` (or x``scale``), pick the streams
    to copy into ``fmt``, and decode the first frames. UserError for anything unreadable."""
    try:
        inp = av.open(str(src), timeout=30)
    except av.error.FFmpegError as exc:
        raise UserError(f"{src}: not a readable video ({describe_error(exc)})") from None
    with inp:
        if not inp.streams.video:
            raise UserError(f"{src}: has no video stream")
        vin = inp.streams.video[0]
        if vin.codec_context is None:
            raise UserError(f"{src}: the video stream cannot be decoded (damaged header or unknown codec)")
        problem = video_size_problem(vin.codec_context.width, vin.codec_context.height, size, scale)
        if problem:
            raise UserError(f"{src}: {problem}")
        w, h = even_size(vin.codec_context.width, vin.codec_context.height)
        fps = stream_fps(vin)
        duration = _duration_s(inp, vin)
        copy = _copyable(inp, fmt, src.name, dst.suffix)
    out = even_size(*(size if size is not None else (w * scale, h * scale)))
    return Plan(fps, out, copy, int(duration * float(fps)) if duration else None)


def _copyable(inp, fmt: str, label: str, suffix: str) -> list[int]:
    allowed = COPYABLE[fmt]
    copy = []
    for s in inp.streams:
        if s.type not in ("audio", "subtitle"):
            continue
        if allowed is not None and s.codec_context.name not in allowed:
            log.warning("%s: %s stream #%d (%s) cannot be copied into %s; skipped (use .mkv to keep it)",
                        label, s.type, s.index, s.codec_context.name, suffix)
            continue
        copy.append(s.index)
    return copy


def _duration_s(inp, vin) -> float | None:
    if vin.duration is not None and vin.time_base is not None:
        return float(vin.duration * vin.time_base)
    if inp.duration is not None:
        return inp.duration / 1_000_000
    return None


class RecordedJob:
    """One file through the pipeline :func:`.pipeline.build` declares (the one every camera runs),
    on a batcher of its own, losslessly. :meth:`start`, then :meth:`poll` until it returns False;
    :meth:`stop_reading` (Ctrl-C, SIGTERM) lets the frames read so far finish."""

    def __init__(self, src: Path, tmp: Path, upscaler, plan: Plan, encoder: EncoderSettings, max_batch: int,
                 threads: int | None, stabilise: StabiliserSettings | None):
        self.name, self.upscaler, self.plan = src.name, upscaler, plan
        self.metadata = provenance.video_metadata(provenance.for_upscaler(upscaler))  # container tags
        self.batcher = Batcher(str(upscaler.device), max_batch, threads=threads)
        # a slow frame is no hung server: a file output never reconnects (watchdog off)
        spec = PipelineSpec(src.name, str(src), str(tmp), live=False, queue_size=max(8, 2 * max_batch),
                            encoder=encoder, stabilise=stabilise, reconnect=Reconnect(watchdog_s=math.inf),
                            hwaccel=pick_hwaccel(str(upscaler.device)), copy=tuple(plan.copy), fps=plan.fps)
        route = Route(upscaler, plan.out_size)
        self.pipeline = build(spec, batcher=self.batcher, router=lambda: route,
                              hooks=Hooks(metadata=lambda _made_by: self.metadata))
        self.source, self.sink = self.pipeline.source, self.pipeline.sink
        self.batcher.on_error = lambda _name, exc: self.pipeline.fail(exc)

    def start(self) -> RecordedJob:
        self.batcher.start()
        self.pipeline.start()
        return self

    @property
    def errors(self) -> list[BaseException]:
        """What stopped the job: an unreadable input, an inference or a publisher failure."""
        return [e for e in (self.pipeline.error, self.sink.error) if e is not None][:1]

    def stop_reading(self) -> None:
        self.source.stop()

    @property
    def frames(self) -> int:
        return self.sink.published

    @property
    def fps(self) -> Fraction:
        """The output's frame rate: the sink's (``Publisher.open`` limits the denominator so)."""
        return Fraction(self.source.fps or self.plan.fps).limit_denominator(1001)

    def poll(self) -> bool:
        """False once the output is closed (every frame read is back and published, or it failed)."""
        if self.sink.error is not None:
            self.pipeline.fail(self.sink.error)
        if not self.batcher.alive and not self.pipeline.reading:
            self.pipeline.out_queue.close()
        return self.sink.alive

    def close(self) -> None:
        self.stop_reading()
        self.pipeline.stop(timeout=60.0)
        self.source.close()  # the input kept open for its copied packets, now muxed
        self.batcher.stop()

    def input_damage(self, read_to_end: bool = True) -> str | None:
        """What reading the input found wrong with it (None: nothing): packets that could not be
        decoded, or, ``read_to_end``, fewer frames than its header announces (a file cut short)."""
        found = []
        if self.source.bad_packets:
            found.append(f"{self.source.bad_packets} undecodable packet(s)")
        read, total = self.pipeline.enqueued, self.plan.total
        if read_to_end and total and read < TRUNCATED_SHARE * total:
            found.append(f"it ends after {read} of the about {total} frames its header announces")
        return "; ".join(found) or None

    def stats(self, seconds: float, interrupted: bool, dst: Path) -> dict:
        return {"frames": self.frames, "seconds": seconds, "fps": self.frames / seconds if seconds > 0 else 0.0,
                "output": str(dst), "copied_packets": self.sink.copied, "bad_packets": self.source.bad_packets,
                "interrupted": interrupted}


def enhance_video(src: Path, dst: Path, upscaler, size: tuple[int, int] | None = None, progress: bool = True,
                  max_batch: int | None = None, encoder: EncoderSettings | None = None,
                  threads: int | None = None, stabilise: StabiliserSettings | None = None) -> dict:
    """Enhance ``src`` into ``dst``; returns ``{"frames", "seconds", "fps", "output", ...}``.

    ``size`` = (width, height) of the output (default: the model's scale). ``threads``: torch
    threads of the network on the CPU, one batch at a time (default: one single-threaded batch
    per core, :func:`batcher.cpu_inference_plan`).
    ``stabilise``: temporal stabiliser settings (:mod:`.temporal`), None for none.
    Raises :class:`UserError` for unreadable input, :class:`EnhanceInterrupted` on Ctrl-C/SIGTERM.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise UserError(f"{src}: no such file")
    check_not_own_input(src, dst)
    plan = read_plan(src, dst, output_container(dst), upscaler.scale, size)
    encoder = encoder or EncoderSettings(preset=RECORDED_PRESET, crf=RECORDED_CRF, tune=None)
    max_batch = max_batch or default_max_batch(upscaler.device.type)
    threads = pipeline_threads(threads, upscaler.device.type, upscaler.engine.concurrent_passes)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(dst)
    with writer_lock(tmp, dst):
        job = RecordedJob(src, tmp, upscaler, plan, encoder, max_batch, threads, stabilise)
        return _run_job(job, plan, src, tmp, dst, progress)


def _run_job(job: RecordedJob, plan: Plan, src: Path, tmp: Path, dst: Path, progress: bool) -> dict:
    log.info("enhancing %s -> %s (%s%s)", src, dst, f"about {plan.total} frames at {float(plan.fps):.3g} fps"
             if plan.total else f"{float(plan.fps):.3g} fps",
             f", copying {len(plan.copy)} audio/subtitle stream(s)" if plan.copy else "")
    t0 = time.perf_counter()
    interrupted = _run(job, plan.total, src.name, progress)
    stats = job.stats(time.perf_counter() - t0, interrupted, dst)
    return _finish(job, stats, src, tmp, dst)


def _run(job: RecordedJob, total: int | None, label: str, progress: bool) -> bool:
    """Run ``job`` to the end with a progress bar; True when Ctrl-C or SIGTERM cut it short."""
    interrupted = threading.Event()

    def interrupt() -> None:
        interrupted.set()
        job.stop_reading()

    with _on_sigterm(interrupt):
        job.start()
        try:
            try:
                _wait(job, total, label, progress)
            except KeyboardInterrupt:
                interrupt()
                _wait(job, None, label, False)
        finally:
            job.close()
    return interrupted.is_set()


def _finish(job: RecordedJob, stats: dict, src: Path, tmp: Path, dst: Path) -> dict:
    """Put the finished output in place (:func:`place_output`), or remove it and raise what went wrong."""
    if job.errors:
        tmp.unlink(missing_ok=True)
        err = job.errors[0]
        if isinstance(err, UserError):
            raise err
        raise UserError(f"{src}: enhancing failed: {describe_error(err)}") from err
    damage = job.input_damage(read_to_end=not stats["interrupted"])
    if stats["frames"] == 0:
        tmp.unlink(missing_ok=True)
        if stats["interrupted"]:
            raise EnhanceInterrupted(stats)
        raise UserError(f"{src}: no video frames could be decoded"
                        + (f" (the input is damaged or truncated: {damage})" if damage else ""))
    try:
        place_output(job, src, tmp, dst, damage)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM while copying into dst's container
        raise EnhanceInterrupted({**stats, "interrupted": True, "output": str(tmp)}) from None
    if stats["interrupted"]:
        log.warning("interrupted: wrote the %d frames done so far to %s", stats["frames"], dst)
        raise EnhanceInterrupted(stats)
    if damage:
        log.warning("%s: the input is damaged or truncated (%s); wrote the %d frames it could decode to %s",
                    src, damage, stats["frames"], dst)
    log.info("wrote %s: %d frames in %.1f s (%.2f fps)", dst, stats["frames"], stats["seconds"], stats["fps"])
    return stats


def partial_path(dst: Path) -> Path:
    """The hidden Matroska file a job writes while it runs (it plays even if the job is killed)."""
    return dst.with_name(f".{dst.stem}.partial.mkv")


def staged_path(dst: Path) -> Path:
    """Where the partial file is copied into ``dst``'s container before it is renamed into place."""
    return dst.with_name(f".{dst.stem}.partial{dst.suffix}")


def written_paths(dst: Path) -> list[tuple[str, Path]]:
    """Every file a job writing ``dst`` writes, and what each is."""
    return [("the output", dst), ("the partial file of the output", partial_path(dst)),
            ("the staging file of the output", staged_path(dst))]


def check_not_own_input(src: Path, dst: Path) -> None:
    """UserError, before anything is written, when ``src`` is ``dst`` or a file a job writing ``dst``
    writes (its partial or staging file), links resolved: the job would destroy its own input."""
    for what, path in written_paths(dst):
        if same_file(src, path):
            raise UserError(f"{src}: the input is {what} {dst} (a job writing {dst} would overwrite it); "
                            "copy or rename the input first, or choose another output")


@contextmanager
def writer_lock(tmp: Path, dst: Path):
    """Hold an exclusive lock on ``dst``'s partial file ``tmp`` (created empty, not truncated) while
    a job writes it: a second job with the same output stops with a UserError before writing."""
    while True:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"another job is writing {dst} (it holds {tmp.name}); wait for it to finish "
                            "or choose another output") from None
        if _names(fd, tmp):
            break
        os.close(fd)  # a job that finished removed or renamed the file we opened: lock the new one
    try:
        yield
    finally:
        if _names(fd, tmp) and os.fstat(fd).st_size == 0:
            tmp.unlink(missing_ok=True)  # nothing was written (the job failed before its first packet)
        os.close(fd)


def _names(fd: int, path: Path) -> bool:
    """True while ``path`` is the file open as ``fd``."""
    try:
        st, here = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


def place_output(job: RecordedJob, src: Path, tmp: Path, dst: Path, damage: str | None = None) -> None:
    """Put the finished partial file ``tmp`` at ``dst``: renamed for Matroska, else stream-copied
    into ``dst``'s container beside it, renamed into place, and ``tmp`` removed. If the copy
    fails, ``tmp`` is kept and the UserError names it, and blames the input when reading it found
    ``damage`` (:meth:`RecordedJob.input_damage`): its packets are what the copy carries."""
    _, fmt, options = output_args(str(dst), live=False, keep_times=True)
    if fmt == "matroska":
        os.replace(tmp, dst)
        return
    staged = staged_path(dst)
    try:
        with _on_sigterm(_interrupt_main):  # SIGTERM while copying: as Ctrl-C, the partial file stays
            shift = remux.muxer_shift(remux.first_times(tmp), remux.first_times(src), sorted(job.plan.copy))
            remux.remux(tmp, staged, fmt, options, job.metadata, job.fps, shift)
            os.replace(staged, dst)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        staged.unlink(missing_ok=True)
        if damage and not _output_fault(exc):
            raise UserError(f"{src}: the input is damaged or truncated ({damage}); the {job.frames} frames it "
                            f"could decode are enhanced in {tmp} (Matroska), but copying them into "
                            f"{dst.name} failed ({describe_error(exc)})") from exc
        raise UserError(f"{dst}: writing the output failed ({describe_error(exc)}); the enhanced video "
                        f"is kept in {tmp}") from exc
    except BaseException:  # Ctrl-C while copying: the partial file stays, playable
        staged.unlink(missing_ok=True)
        raise
    tmp.unlink()


def _output_fault(exc: BaseException) -> bool:
    """True when ``exc`` is the output's own fault whatever the input: a full disk, no permission,
    a read-only file system."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM,
                                                      errno.EROFS)


def _interrupt_main() -> None:
    raise KeyboardInterrupt


@contextmanager
def _on_sigterm(callback):
    """SIGTERM calls ``callback`` (in the main thread only; elsewhere signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, lambda _signum, _frame: callback())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _wait(job: RecordedJob, total: int | None, label: str, progress: bool) -> None:
    """Poll ``job`` until its output is closed, showing a progress bar when ``progress``."""
    if not progress:
        while job.poll():
            time.sleep(0.05)
        return
    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[fps]:.2f} fps"), TimeElapsedColumn(), TextColumn("ETA"),
                  TimeRemainingColumn(), transient=False) as bar:
        task = bar.add_task(label, total=total, fps=0.0)
        while job.poll():
            time.sleep(0.25)
            done, dt = job.frames, time.perf_counter() - t0
            bar.update(task, completed=done, fps=done / dt if dt > 0 else 0.0,
                       total=max(total, done) if total else None)
        bar.update(task, completed=job.frames, total=job.frames)
