"""One camera: its pipeline (built by :func:`.pipeline.build`), and what an operator does with it.

A :class:`Stream` turns the camera's config into a :class:`~.pipeline.PipelineSpec`, routes its
frames (model view, alpha, output size; changed while it runs), admits its input by cost, and
keeps its status (rates, latency, state and cause) and a JPEG snapshot. It implements the
``Stream`` contract of docs/architecture.md used by the web app.
"""
from __future__ import annotations

import io
import logging
import math
import threading
import time
from collections import deque
from dataclasses import replace

from . import provenance
from .admission import DEFAULT_MAX_OUTPUT_PIXELS, admit_output_size
from .batcher import Batcher, Enhanced
from .config import DEFAULT_ALPHA, CameraConfig, EncoderConfig, ReconnectConfig, RecordingConfig
from .fusion.history import FrameHistory
from .pipeline import Hooks, PipelineSpec, build
from .publisher import EncoderSettings
from .sizes import fit_inside, parse_size
from .sources import Frame, Reconnect
from .stages import Route
from .urls import mask_url
from .upscaler import FrameUpscaler, UpscalerPool  # noqa: F401 - the pool cameras share (re-exported)

log = logging.getLogger(__name__)


#: a camera "falls behind" when more than DROP_WARN_RATIO of its frames are dropped over DROP_WINDOW_S;
#: it is logged at most every DROP_WARN_EVERY_S (and exported as ultrares_drop_ratio)
DROP_WINDOW_S = 10.0
DROP_WARN_RATIO = 0.1
DROP_WARN_EVERY_S = 30.0


#: every state a camera reports (docs/recording.md, "Camera states"), one ultrares_camera_state series each
CAMERA_STATES = ("starting", "running", "degraded", "connecting", "reconnecting", "ended", "publisher-reconnecting",
                 "publisher-hung", "disk-full", "output-error", "failed", "finished")
#: a publisher's state -> the camera's, while it is not publishing
SINK_PROBLEMS = {"hung": "publisher-hung", "reconnecting": "publisher-reconnecting", "disk-full": "disk-full",
                 "output-error": "output-error"}


class _Rate:
    """Events per second over a sliding window."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self._t: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._t.append(now)
            self._prune(now)

    def _prune(self, now: float) -> None:
        """Drop events older than the window (hold the lock)."""
        while self._t and now - self._t[0] > self.window_s:
            self._t.popleft()

    def count(self) -> int:
        """Events in the window."""
        with self._lock:
            self._prune(time.monotonic())
            return len(self._t)

    def rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._prune(now)
            if len(self._t) < 2:
                return 0.0
            span = max(now - self._t[0], 1e-6)
            return (len(self._t) - 1) / span if span > 0 else 0.0


def _on_cpu(device: str) -> bool:
    """Whether a batcher's device (``cpu``, ``cuda:0`` ...) is the CPU, which the encoder then shares."""
    return device.split(":")[0] == "cpu"


def percentiles(values, qs=(50, 95, 99)) -> dict[str, float | None]:
    """Nearest-rank percentiles of ``values`` as ``{"p50": ..}`` (None when empty)."""
    v = sorted(values)
    out: dict[str, float | None] = {}
    for q in qs:
        out[f"p{q}"] = v[min(len(v) - 1, max(0, int(round(q / 100 * len(v) + 0.5)) - 1))] if v else None
    return out


def camera_spec(camera: CameraConfig, reconnect: ReconnectConfig, watchdog_s: float | None = None,
                hwaccel: str | None = None) -> PipelineSpec:
    """A camera's config as the plain values its pipeline is built from."""
    stabilise = camera.stabilise.settings() if camera.stabilise is not None else None
    return PipelineSpec(camera.name, camera.input, camera.output, transport=camera.rtsp_transport,
                        queue_size=camera.queue.size, queue_policy=camera.queue.policy,
                        stabilise=stabilise, hwaccel=hwaccel, quantisers=True,
                        reconnect=Reconnect(reconnect.initial_s, reconnect.max_s, reconnect.timeout_s, watchdog_s),
                        recording=(camera.recording or RecordingConfig()).policy())


class Stream:
    """One camera. Create, :meth:`start`, and later :meth:`stop` (flushes the output).

    ``camera``: the camera as :meth:`config.ServiceConfig.resolved_camera` gives it, defaults
    filled in; a field left None here means the plain default (the device's default model,
    :data:`config.DEFAULT_ALPHA`, model scale, the default encoder, no stabiliser). Live or not
    follows the input URL (:func:`urls.is_live`). ``reconnect``: timeouts and backoff of the
    source and the publisher. ``encoder``: encoder settings to use instead of the camera's
    (``bench`` encodes a file as a live camera would). ``watchdog_s``: how long the publisher
    waits on a server that stopped answering (default ``reconnect.timeout_s``).
    """

    def __init__(self, camera: CameraConfig, *, batcher: Batcher, pool: UpscalerPool,
                 reconnect: ReconnectConfig | None = None, encoder: EncoderSettings | None = None, metrics=None,
                 hwaccel: str | None = None, watchdog_s: float | None = None):
        rc = reconnect or ReconnectConfig()
        self.camera, self.name = camera, camera.name
        self.input_url, self.output_url = camera.input, camera.output
        self.metrics = metrics
        self.batcher, self.pool = batcher, pool
        self._size_spec = parse_size(camera.output_size) if camera.output_size else None
        self.model_name = camera.model
        self._route_lock = threading.Lock()
        self.alpha = float(DEFAULT_ALPHA if camera.alpha is None else camera.alpha)
        self.ensemble = camera.ensemble
        self.upscaler: FrameUpscaler = pool.get(self.model_name, self.alpha, self.ensemble)
        # after a change, until its weights are ready: (upscaler, model, alpha)
        self._next: tuple[FrameUpscaler, str | None, float] | None = None
        spec = camera_spec(camera, rc, watchdog_s, hwaccel)
        self.encoder = encoder or EncoderSettings.from_config(camera.encoder or EncoderConfig(),
                                                              live=spec.live, cpu_inference=_on_cpu(batcher.device))
        self.pipeline = build(replace(spec, encoder=self.encoder), batcher=batcher, router=self.route,
                              metrics=metrics, hooks=Hooks(on_frame=self._on_frame, on_drop=self._on_drop,
                                                           on_published=self._on_published,
                                                           metadata=self._provenance))
        self.source, self.queue, self.out_queue = self.pipeline.source, self.pipeline.queue, self.pipeline.out_queue
        self.sink, self.stabiliser, self.live = self.pipeline.sink, self.pipeline.stabiliser, self.pipeline.live
        self.frames_in = 0
        self.frames_out = 0
        self.first_published_at: float | None = None  # monotonic clock
        self.last_published_at: float | None = None
        self.started_at: float | None = None
        self.last_frame_at: float | None = None
        self.input_size: tuple[int, int] | None = None
        self._admitted: tuple[int, int] | None = None  # the input size last admitted (_admit)
        self.output_size: tuple[int, int] | None = None
        self._latencies: deque[float] = deque(maxlen=512)
        self._rate_in, self._rate_out = _Rate(), _Rate()
        self._window_in, self._window_drop = _Rate(DROP_WINDOW_S), _Rate(DROP_WINDOW_S)
        self._window_out = _Rate(DROP_WINDOW_S)
        self._drops_warned_at = -math.inf
        self._latest: Enhanced | None = None
        self._jpeg: tuple[float, bytes, int] | None = None
        self.history = FrameHistory()  # the last decoded frames, for zooms (fusion/live.py)
        self.first_output = threading.Event()
        if metrics is not None:
            self._bind_metrics(metrics)

    def _provenance(self, made_by) -> dict[str, str]:
        """A file output's container tags for frames made by ``made_by`` (default: the live upscaler)."""
        return provenance.video_metadata(provenance.for_upscaler(made_by or self.upscaler))

    # --- metrics --------------------------------------------------------------
    def _bind_metrics(self, m) -> None:
        n = self.name
        for state in CAMERA_STATES:
            m.camera_state.labels(n, state).set_function(lambda state=state: float(self.state == state))
        m.frames_in.labels(n)
        m.frames_out.labels(n)
        m.frames_dropped.labels(n)
        for side in ("source", "sink"):
            m.reconnects.labels(n, side)
        m.queue_capacity.labels(n).set(self.queue.maxsize)
        m.queue_depth.labels(n).set_function(lambda: self.queue.depth)
        m.drop_ratio.labels(n).set_function(self.drop_ratio)
        m.fps.labels(n, "in").set_function(self._rate_in.rate)
        m.fps.labels(n, "out").set_function(self._rate_out.rate)
        m.last_frame_age.labels(n).set_function(
            lambda: (time.monotonic() - self.last_frame_at) if self.last_frame_at is not None else float("nan"))
        m.up.labels(n).set(0)
        self._publish_model_info()

    def _publish_model_info(self) -> None:
        if self.metrics is None:
            return
        up = self.upscaler
        self.metrics.alpha.labels(self.name).set(self.alpha)
        size = self.output_size or self._size_spec
        self.metrics.model.labels(self.name).info({
            "model": str(up.model_name), "alpha": f"{self.alpha:g}", "engine": str(up.engine.name),
            "device": str(up.device), "ensemble": str(self.ensemble),
            "output_size": f"{size[0]}x{size[1]}" if size else "model scale"})

    def drop_ratio(self) -> float:
        """Share of the frames dropped over the last :data:`DROP_WINDOW_S` seconds."""
        return self._window_drop.count() / max(self._window_in.count(), 1)

    def _on_drop(self, _frame) -> None:
        if self.metrics is not None:
            self.metrics.frames_dropped.labels(self.name).inc()
        now = time.monotonic()
        self._window_drop.tick(now)
        ratio = self.drop_ratio()
        if ratio > DROP_WARN_RATIO and now - self._drops_warned_at > DROP_WARN_EVERY_S:
            self._drops_warned_at = now
            log.warning("%s: falling behind: %.0f %% of its frames dropped over the last %.0f s (inference cannot "
                        "keep up: fewer cameras on this device, a smaller output size or a faster model)",
                        self.name, 100 * ratio, DROP_WINDOW_S)

    # --- batcher client ---------------------------------------------------------
    def route(self) -> Route:
        """The model view and output size for the next batch (a pending change is made live here
        once its weights are ready)."""
        with self._route_lock:
            if self._next is not None:
                self._switch_when_ready()
            up = self.upscaler
        size = self._size_spec
        if size is not None and self.input_size is not None:
            w, h = self.input_size
            size = fit_inside(w, h, size, even=True)
        return Route(up, size)

    def _on_published(self, out: Enhanced, seconds: float) -> None:
        now = time.monotonic()
        self.frames_out += 1
        self.output_size = (out.width, out.height)
        if self.first_published_at is None:
            self.first_published_at = now
        self.last_published_at = now
        self._rate_out.tick(now)
        self._window_out.tick(now)
        latency = now - out.source.received
        self._latencies.append(latency)
        self._latest = out
        if self.metrics is not None:
            self.metrics.frames_out.labels(self.name).inc()
            self.metrics.end_to_end_seconds.labels(self.name).observe(latency)
        if not self.first_output.is_set():
            self.first_output.set()
            log.info("%s: first enhanced frame published (%dx%d, %.2f s end to end)", self.name, out.width,
                     out.height, latency)

    # --- life cycle -----------------------------------------------------------
    def start(self) -> Stream:
        self.started_at = time.monotonic()
        self.pipeline.start()
        log.info("%s: %s -> %s", self.name, mask_url(self.input_url), mask_url(self.output_url))
        return self

    def _on_frame(self, frame: Frame) -> None:
        """A frame read: admitted by cost (raises to refuse the input), then counted."""
        self._admit(frame.width, frame.height)
        self.history.push(frame)
        self.frames_in += 1
        self.last_frame_at = time.monotonic()
        self.input_size = (frame.width, frame.height)
        self._rate_in.tick(self.last_frame_at)
        self._window_in.tick(self.last_frame_at)

    def _admit(self, width: int, height: int) -> None:
        """Refuse an input whose output frames would be over the camera's pixel budget
        (``max_output_pixels``), before any of its frames reaches the shared batcher: one heavy
        camera must not starve the others. Checked again when the input's size changes."""
        if (width, height) != self._admitted:
            limit = DEFAULT_MAX_OUTPUT_PIXELS if self.camera.max_output_pixels is None else self.camera.max_output_pixels
            admit_output_size(self.name, width, height, int(self.upscaler.scale), self.camera.output_size, limit)
            self._admitted = (width, height)

    @property
    def error(self) -> BaseException | None:
        return self.pipeline.error

    @property
    def failed(self) -> int:
        """Frames lost to inference errors."""
        return self.pipeline.failed

    @property
    def finished(self) -> bool:
        """A file source read to the end and everything published (never true for live cameras)."""
        return self.pipeline.finished

    def wait_finished(self, timeout: float | None = None) -> bool:
        """For file inputs: wait until every frame is published and the output closed."""
        return self.pipeline.wait_finished(timeout)

    def source_drops(self) -> int:
        return self.pipeline.drops()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading, finish what is queued, flush and close the output."""
        self.pipeline.stop(timeout)
        with self._route_lock:
            self.pool.release(self.upscaler)
            if self._next is not None:
                self.pool.release(self._next[0])
                self._next = None
        log.info("%s: stopped (%d frames in, %d published, %d dropped)", self.name, self.frames_in,
                 self.frames_out, self.source_drops())

    # --- the Stream contract --------------------------------------------------
    @property
    def state(self) -> str:
        """What the camera is doing; :meth:`cause` says why when it is not ``running``."""
        if self.error is not None or self.sink.state == "failed":
            return "failed"
        if self.finished:
            return "finished"
        if self.source.state in ("reconnecting", "connecting", "starting", "ended"):
            return self.source.state
        if self.sink.state in SINK_PROBLEMS:
            return SINK_PROBLEMS[self.sink.state]
        if not self.first_output.is_set():
            return "starting"
        return "degraded" if self.degraded() else "running"

    def cause(self) -> str | None:
        """Why the camera is not publishing as it should (None when it is)."""
        if self.error is not None:
            return str(self.error)
        state = self.state
        if state in ("running", "finished"):
            return None
        if state == "degraded":
            return (f"publishing {self._window_out.count()} of {self._window_in.count()} frames received over "
                    f"{DROP_WINDOW_S:.0f} s (below min_publish_share {self.camera.min_publish_share:g}): "
                    "inference cannot keep up")
        if self.sink.state in SINK_PROBLEMS or self.sink.state == "failed":
            return self.sink.cause
        if self.source.cause:
            return self.source.cause
        return "waiting for the first enhanced frame" if state == "starting" else None

    def _segment(self) -> str | None:
        """The file name of the segment being recorded (None: not a segmented output)."""
        segments = self.sink.hooks.segments
        return segments.paths[-1].name if segments is not None and segments.paths else None

    def degraded(self) -> bool:
        """A live camera publishing under ``min_publish_share`` of the frames it received over the
        last :data:`DROP_WINDOW_S` (once it has run that long)."""
        published = self.first_published_at
        if not self.live or published is None or time.monotonic() - published < DROP_WINDOW_S:
            return False
        received = self._window_in.count()
        return received >= 5 and self._window_out.count() < self.camera.min_publish_share * received

    def status(self) -> dict:
        lat = percentiles(self._latencies)
        nxt = self._next
        return {
            "name": self.name,
            "state": self.state,
            "input": mask_url(self.input_url),
            "output": mask_url(self.output_url),
            "input_resolution": list(self.input_size) if self.input_size else None,
            "output_resolution": list(self.output_size) if self.output_size else None,
            "fps_in": round(self._rate_in.rate(), 2),
            "fps_out": round(self._rate_out.rate(), 2),
            "source_fps": float(self.source.fps) if self.source.fps else None,
            "latency_s": lat,
            "latency_p50_s": lat["p50"], "latency_p95_s": lat["p95"], "latency_p99_s": lat["p99"],
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "drops": self.source_drops(),
            "queue_depth": self.queue.depth,
            "queue_capacity": self.queue.maxsize,
            "reconnects": self.source.reconnects,
            "publisher_reconnects": self.sink.reconnects,
            "last_frame_age_s": (time.monotonic() - self.last_frame_at) if self.last_frame_at else None,
            "alpha": self.alpha,
            "model": str(self.upscaler.model_name),
            "ensemble": self.ensemble,
            "pending": {"model": str(nxt[0].model_name), "alpha": nxt[2]} if nxt is not None else None,
            "error": str(self.error) if self.error else None,
            "cause": self.cause(),
            "segment": self._segment(),
        }

    def set_alpha(self, alpha: float) -> None:
        """Switch to ``alpha`` between two batches (the stream keeps running)."""
        from .models.interpolation import check_alpha

        alpha = check_alpha(alpha)
        self._swap(self._target()[0], alpha)

    def set_model(self, model: str) -> None:
        """Switch model between two batches; raises UserError if it cannot be loaded."""
        self._swap(model, self._target()[1])

    def _target(self) -> tuple[str | None, float]:
        """The (model, alpha) asked for last: a change still being prepared, else the live one."""
        with self._route_lock:
            nxt = self._next
            return (nxt[1], nxt[2]) if nxt is not None else (self.model_name, self.alpha)

    def _swap(self, model: str | None, alpha: float) -> None:
        """Route the next batches to ``model`` at ``alpha``. Where the engine's weight change is
        slow (a TensorRT refit), the frames keep the current weights until the new ones are
        prepared in the background (:meth:`~ultrares_stream.upscaler.Upscaler.weights_ready`),
        so no frame waits for it; ``status()["pending"]`` says what is being prepared."""
        new = self.pool.get(model, alpha, self.ensemble)
        with self._route_lock:
            if self._next is not None:  # a change still being prepared is superseded
                if self._next[0] is not new:
                    self._next[0].withdraw()
                self.pool.release(self._next[0])
            self._next = (new, model, float(alpha))
            self._switch_when_ready()
            waiting = self._next is not None
        log.info("%s: model %s, alpha %.3g%s", self.name, new.model_name, alpha,
                 " (weights being prepared; frames keep the current ones until then)" if waiting else "")

    def _switch_when_ready(self) -> None:
        """Make the pending upscaler the live one once its weights are ready (hold the route lock)."""
        new, model, alpha = self._next
        try:
            if not new.weights_ready():
                return
        except Exception as exc:  # the preparation failed: stay on the current weights
            log.error("%s: could not switch to model %s at alpha %.3g (%s: %s); keeping model %s at alpha %.3g",
                      self.name, new.model_name, alpha, type(exc).__name__, exc, self.upscaler.model_name, self.alpha)
            old = new
        else:
            old, self.upscaler = self.upscaler, new
            self.model_name, self.alpha = model, alpha
        self._next = None
        self.pool.release(old)  # (the same object when nothing changed: undoes the extra use)
        self._publish_model_info()

    def zoom(self, box: tuple[int, int, int, int], frames: int = 16, reference: int | None = None,
             single: bool = False):
        """A box of a recent frame x4, fused from ``frames`` decoded frames (:func:`.fusion.live.zoom`)."""
        from .fusion.live import zoom

        return zoom(self.history, box, frames, reference, single)

    @property
    def snapshot_index(self) -> int | None:
        """The source frame index of the frame :meth:`snapshot_jpeg` shows (None: no snapshot yet)."""
        return self._jpeg[2] if self._jpeg is not None else None

    def snapshot_jpeg(self, max_rate_s: float = 1.0, quality: int = 80) -> bytes | None:
        """Latest enhanced frame as JPEG, encoded at most once per ``max_rate_s``."""
        now = time.monotonic()
        if self._jpeg is not None and now - self._jpeg[0] < max_rate_s:
            return self._jpeg[1]
        latest = self._latest
        if latest is None:
            return None
        import av

        img = av.VideoFrame.from_ndarray(latest.data, format="yuv420p").to_image()
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality, comment=provenance.LIVE_TITLE.encode())
        self._jpeg = (now, buf.getvalue(), latest.source.index)
        return self._jpeg[1]
