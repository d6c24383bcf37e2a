"""Publishing a camera's enhanced frames: a thread per output that encodes, muxes and reconnects.

* :class:`TimestampMapper` - output timestamps in ``1/fps`` units from the source's
  own times: strictly increasing, also across camera reconnects (a new
  connection continues one frame after the last output frame).
* :class:`SinkWorker` - a thread that encodes and publishes a camera's enhanced
  frames through a :class:`~ultrares_stream.publisher.Publisher`, with a watchdog: a write
  that takes longer than ``watchdog_s`` (a hung server) or fails (server gone, disk full)
  closes the output and reopens it with backoff (a file: in a new segment).
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from urllib.parse import urlsplit

from .errors import UserError
from .frame_queue import FrameQueue
from .publisher import EncoderSettings, Publisher, output_args
from .recording import SegmentedOutput
from .sink_process import RemotePublisher
from .sources import DEFAULT_FPS, Reconnect, backoff_delay
from .urls import mask_url, scheme, scheme_of

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class SinkHooks:
    """What a :class:`SinkWorker` asks of its pipeline, all optional.

    ``fps``: a callable returning the output frame rate (the input's), read when the output is
    (re)opened (default 25). ``on_published(enhanced, seconds)`` is called after each frame is
    written. ``metadata``: a callable taking the upscaler that made a frame (``Enhanced.made_by``,
    or None) and returning a file output's container tags; a file output whose frames start
    coming from another upscaler (an alpha or model change) continues in a new file or segment,
    tagged from its first frame. ``copy_from`` (file outputs): a callable returning the input
    streams whose packets ride along with the frames (``Frame.packets``); they are copied into
    the output after their frame, and video keeps the source's timestamps. ``segments``: where
    each open of a camera's file output writes (:class:`~ultrares_stream.recording.SegmentedOutput`).
    """

    fps: Callable[[], Fraction] = lambda: DEFAULT_FPS  # noqa: E731 - a default callable
    on_published: Callable | None = None
    metadata: Callable[[object], dict[str, str]] | None = None
    copy_from: Callable[[], list] | None = None
    segments: SegmentedOutput | None = None


#: why a write failed -> the state a file output is in until a write succeeds again
WRITE_FAILURES = {errno.ENOSPC: "disk-full", errno.EDQUOT: "disk-full", errno.EROFS: "output-error",
                  errno.EACCES: "output-error", errno.EPERM: "output-error", errno.ENOTDIR: "output-error",
                  errno.EISDIR: "output-error", errno.ENOENT: "output-error"}


#: free bytes a full disk must have again before recording resumes in a new segment
RESUME_FREE_BYTES = 512 * 1024


def failure_state(exc: BaseException) -> str:
    """The sink state a failed open or write leaves: ``disk-full``, ``output-error`` (a file that
    cannot be written) or ``reconnecting`` (a network peer gone)."""
    return WRITE_FAILURES.get(getattr(exc, "errno", None) or 0, "reconnecting")


class SinkWorker:
    """Thread: take enhanced frames from ``queue``, encode and publish; reconnect on failure.

    ``reconnect``: the connect/write timeout, the reconnect backoff and the watchdog (how long a
    write may block or an RTSP server stay silent before the connection is dropped:
    :attr:`~.sources.Reconnect.silence_s`; default :class:`~.sources.Reconnect`). ``hooks``: what
    the worker asks of its pipeline (:class:`SinkHooks`: the frame rate, callbacks, segments).
    ``state`` and ``cause`` say what the output is doing and, when it is not publishing, why.
    """

    def __init__(self, url: str, settings: EncoderSettings, queue: FrameQueue, *, name: str = "camera",
                 live: bool = True, reconnect: Reconnect | None = None, metrics=None, hooks: SinkHooks | None = None):
        self.url, self.settings, self.queue = url, settings, queue
        self.name, self.live = name, live
        self.reconnect = reconnect or Reconnect()
        self.watchdog_s = self.reconnect.silence_s
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
        if self.live:  # a file job has no receiver to hang: a slow disk or a paused process only waits
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
        writer drop the connection and reconnect. Opening and the first write (the header: the
        RTSP handshake) are not watched: they have their own timeout (the connect timeout, and
        the publisher process's start).
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
                self._check_space()
                pub = self._publisher(made_by)
                if self.hooks.copy_from is not None:
                    pub.open(width, height, self.hooks.fps(), copy_from=self.hooks.copy_from())
                else:
                    pub.open(width, height, self.hooks.fps())
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
        """A segment that holds no frame (its open or first write failed, or its frames were all
        in the fragment a full disk cut off) is removed."""
        if self.hooks.segments is not None and (pub.frames == 0 or not pub.holds_frames()):
            self.hooks.segments.discard_last()

    def _check_space(self) -> None:
        """After a full disk: raise ENOSPC until the segments' folder has :data:`RESUME_FREE_BYTES`
        free again, so that a still-full disk is not tried with a segment a second."""
        segments = self.hooks.segments
        if self.state != "disk-full" or segments is None or not segments.paths:
            return
        free = shutil.disk_usage(segments.paths[-1].parent).free
        if free < RESUME_FREE_BYTES:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: waiting for free space "
                                        f"({free / 1e6:.1f} MB free, {RESUME_FREE_BYTES / 1e6:.1f} MB "
                                        "needed to resume recording)")

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
            self.mapper = TimestampMapper(self.hooks.fps(), rebase=self.hooks.copy_from is None)
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
        dropped (live outputs: reconnect with a new connection or segment). The first write of a
        connection is not watched: it writes the header (the RTSP handshake), bounded by the
        connect timeout like the open."""
        self._write_started = time.monotonic() if pub.frames else None
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
