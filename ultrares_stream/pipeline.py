"""The pipeline of one input, declared in one place: a live camera, a recorded file and the
benchmark are all built by :func:`build`, read top to bottom::

    Source (decode) -> FrameQueue -> Batcher: device stages, batched across cameras
        (to RGB -> upscale -> stabilise -> to YUV, :mod:`.stages`) -> FrameQueue -> SinkWorker (encode, publish)

A :class:`Pipeline` owns the threads and counts of that path: the reader thread, the frames in
flight, and the close sequence (every frame read comes back from the batcher before the output is
closed). It is the batcher's client. What to do with a camera (alpha and model changes, status,
snapshots) stays in :class:`~ultrares_stream.stream.Stream`; a recorded job's own batcher and the
final copy into the output's container stay in :mod:`.recorded`. Stages and sinks take plain
values: the YAML config stops at :mod:`.stream` and :mod:`.recorded`.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

from .batcher import Batcher, Enhanced
from .frame_queue import FrameQueue, QueueClosed
from .recording import RetentionPolicy, SegmentedOutput
from .publisher import EncoderSettings, container_for
from .sinks import SinkHooks, SinkWorker
from .sources import DEFAULT_FPS, Frame, Reconnect, Source
from . import stages as device
from .stages import Route, Stage
from .temporal import Stabiliser, StabiliserSettings
from .urls import scheme

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineSpec:
    """What :func:`build` needs to know about one input, as plain values.

    ``live``: None = from the input URL. ``queue_policy``: what the input queue does when full
    (``auto``: block for files, drop the oldest frame live); the output queue blocks for files and
    drops the oldest frame live. ``copy``: input streams (audio, subtitles) whose packets
    are copied into a file output with the source's timestamps (recorded jobs). ``recording``:
    segment length and retention of a live camera's file output. ``stages``: the device stages,
    in order (default :data:`.stages.DEVICE_STAGES`; its stabiliser stage passes frames through
    where ``stabilise`` is None). Pipelines with the same ``stages`` object share batches."""

    name: str
    input: str
    output: str
    live: bool | None = None
    transport: str = "tcp"
    queue_size: int = 8
    queue_policy: str = "auto"  # the input queue's: drop_oldest, block, or auto (block for files)
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    stabilise: StabiliserSettings | None = None
    reconnect: Reconnect = field(default_factory=Reconnect)
    hwaccel: str | None = None
    copy: tuple[int, ...] = ()
    fps: Fraction = DEFAULT_FPS  # the output rate until the source knows its own
    recording: RetentionPolicy | None = None
    stages: tuple[Stage, ...] | None = None  # None: stages.DEVICE_STAGES
    quantisers: bool = False  # frames carry the encoder's quantisers (a camera's zoom history)


@dataclass(frozen=True)
class Hooks:
    """What the owner of a pipeline hears of it, all optional: ``on_frame(frame)`` for each frame
    read, before it is queued (it may raise to refuse the input: the pipeline stops with that
    error); ``on_drop(frame)`` for each frame a lossy queue drops; ``on_published(enhanced,
    seconds)`` and ``metadata(made_by)`` as :class:`~ultrares_stream.sinks.SinkHooks`."""

    on_frame: Callable[[Frame], None] | None = None
    on_drop: Callable | None = None
    on_published: Callable | None = None
    metadata: Callable | None = None


def build(spec: PipelineSpec, *, batcher: Batcher, router: Callable[[], Route], metrics=None,
          hooks: Hooks = Hooks()) -> Pipeline:
    """The whole path of a frame for ``spec``: decode, queue, device stages on ``batcher`` (routed by
    ``router``: which model view and output size, asked once per batch), queue, encode and publish."""
    source = Source(spec.input, spec.name, live=spec.live, transport=spec.transport, reconnect=spec.reconnect,
                    metrics=metrics, hwaccel=spec.hwaccel, copy=spec.copy)
    source.quantisers = spec.quantisers
    policy = "drop_oldest" if source.live else "block"
    frames = FrameQueue(spec.queue_size, policy if spec.queue_policy == "auto" else spec.queue_policy,
                        on_drop=hooks.on_drop)
    stabiliser = Stabiliser(spec.stabilise) if spec.stabilise is not None else None
    lane = Lane(device.DEVICE_STAGES if spec.stages is None else spec.stages, stabiliser, router)
    enhanced = FrameQueue(max(4, spec.queue_size * 2), policy, on_drop=hooks.on_drop)
    sink = SinkWorker(spec.output, spec.encoder, enhanced, name=spec.name, live=source.live, reconnect=spec.reconnect,
                      metrics=metrics,
                      hooks=SinkHooks(fps=lambda: source.fps or spec.fps, on_published=hooks.on_published,
                                      metadata=hooks.metadata,
                                      copy_from=(lambda: source.copied_streams) if spec.copy else None,
                                      segments=segmented_output(spec.output, source.live, spec.recording)))
    return Pipeline(spec.name, source, frames, lane, enhanced, sink, batcher, hooks.on_frame)


def segmented_output(output: str, live: bool, policy: RetentionPolicy | None) -> SegmentedOutput | None:
    """Where a file output writes each time it opens (None: a network or HLS output, or a recorded
    job's partial file, which keeps one path)."""
    if policy is None or scheme(output) is not None or container_for(output) is None:
        return None
    return SegmentedOutput(output, live=live, policy=policy)


@dataclass(frozen=True)
class Lane:
    """What the batcher does with a pipeline's frames: the device stages, the camera's
    stabiliser (per-camera state of the :class:`~.stages.Stabilise` stage) and its router."""

    stages: tuple[Stage, ...]
    stabiliser: Stabiliser | None
    router: Callable[[], Route]


class Pipeline:
    """One input's frames from decode to publish (built by :func:`build`); the batcher's client.

    :meth:`start` attaches it to the batcher and starts the reader and the sink; a file input
    closes its output by itself once every frame is back from the batcher; :meth:`stop` stops
    reading and finishes what is queued and in flight.
    """

    def __init__(self, name: str, source: Source, frames: FrameQueue, lane: Lane, enhanced: FrameQueue,
                 sink: SinkWorker, batcher: Batcher, on_frame: Callable[[Frame], None] | None = None):
        self.name, self.source, self.queue, self.out_queue, self.sink = name, source, frames, enhanced, sink
        self.lane, self.batcher, self.on_frame = lane, batcher, on_frame
        self.live = source.live
        self.stages, self.stabiliser = lane.stages, lane.stabiliser  # the batcher's view of this client
        self.enqueued = 0  # frames handed to the queue
        self.delivered = 0  # frames back from the batcher
        self.failed = 0  # frames lost to inference errors
        self.error: BaseException | None = None
        self._reader: threading.Thread | None = None

    # --- the batcher's client ---------------------------------------------------
    def route(self) -> Route:
        return self.lane.router()

    def deliver(self, out: Enhanced) -> None:
        """An enhanced frame back from the batcher: into the output queue (a lossless queue waits
        for room, unless the pipeline failed: nothing takes frames any more). It counts as
        delivered once it is in the queue, so a file job closes its output only after its last
        frame is in."""
        try:
            while not self.out_queue.put(out, timeout=0.2):
                if self.error is not None or self.sink.error is not None:
                    return
        except QueueClosed:
            pass
        finally:
            self.delivered += 1

    # --- life cycle -------------------------------------------------------------
    def start(self) -> Pipeline:
        self.batcher.attach(self)
        self.sink.start()
        self._reader = threading.Thread(target=self._read, name=f"source-{self.name}", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        try:
            for frame in self.source.frames():
                if self.on_frame is not None:
                    self.on_frame(frame)
                if not self._put(frame):
                    return
        except Exception as exc:  # noqa: BLE001 - a file that cannot be read, an input refused
            self.fail(exc)
            log.error("%s: %s", self.name, exc)
        finally:
            self.queue.close()
            if not self.live:
                self._finish_output()

    def _put(self, frame: Frame) -> bool:
        """Queue a frame (waiting for room in a lossless queue); False when reading must stop."""
        try:
            while not self.queue.put(frame, timeout=0.5):
                if self.source.stopped:
                    return False
        except QueueClosed:
            return False
        self.enqueued += 1
        return True

    def fail(self, exc: BaseException) -> None:
        """Stop reading because of ``exc`` (kept in :attr:`error`); what is queued still finishes."""
        if self.error is None:
            self.error = exc
        self.source.stop()

    def in_flight(self) -> int:
        """Frames handed to the queue and not back from the batcher yet (delivered, failed or dropped)."""
        return self.enqueued - self.delivered - self.failed - self.queue.dropped

    def drain(self, until: float = math.inf) -> None:
        """Wait until every frame read is back from the batcher, the batcher stopped, the output
        closed, or the monotonic clock passed ``until``."""
        while self.in_flight() > 0 and self.batcher.alive and not self.out_queue.closed and time.monotonic() < until:
            time.sleep(0.02)

    def _finish_output(self) -> None:
        """File input read to the end: once every frame is back from the batcher, close the output."""
        self.drain()
        self.out_queue.close()
        log.info("%s: input finished (%d frames); closing the output", self.name, self.enqueued)

    @property
    def reading(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    @property
    def finished(self) -> bool:
        """A file source read to the end and everything published (never true for live cameras)."""
        return (not self.live and self._reader is not None and not self._reader.is_alive()
                and self.queue.drained() and not self.sink.alive)

    def wait_finished(self, timeout: float | None = None) -> bool:
        """For file inputs: wait until every frame is published and the output closed."""
        end = None if timeout is None else time.monotonic() + timeout
        if self._reader is not None:
            self._reader.join(timeout)
        self.sink.join(None if end is None else max(0.0, end - time.monotonic()))
        return self.finished

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading, let the frames read come back from the batcher, flush and close the output."""
        self.source.stop()
        self.queue.close()
        if self._reader is not None:
            self._reader.join(timeout)
        end = time.monotonic() + timeout
        self.drain(end)
        self.batcher.detach(self.name)
        self.out_queue.close()
        self.sink.stop(max(0.5, end - time.monotonic()))

    def drops(self) -> int:
        return self.queue.dropped + self.out_queue.dropped
