"""The live service: many cameras, one inference worker per device, metrics and HTTP.

``Service(config)`` builds a :class:`stream.Stream` per enabled camera of a
:class:`config.ServiceConfig`, sharing one :class:`batcher.Batcher` and one
:class:`upscaler.UpscalerPool` (the web page uses it too). :class:`HttpServer` serves the web app
(``ultrares_stream.web.app.create_app``: ``/metrics``, ``/healthz``,
``/readyz``, ``/api/v1/streams`` ...) with uvicorn in a background thread.
"""
from __future__ import annotations

import logging
import threading
import time

from .batcher import Batcher, pipeline_threads
from .config import ServiceConfig
from .errors import UserError
from .metrics import Metrics
from .sources import pick_hwaccel
from .urls import mask_url
from .stream import Stream, UpscalerPool
from .web.app import create_app

log = logging.getLogger(__name__)


class Service:
    """Every configured camera, wired and running. Implements the Service contract (docs/architecture.md)."""

    def __init__(self, config: ServiceConfig, metrics: Metrics | None = None, pool: UpscalerPool | None = None,
                 watchdog_s: float | None = None):
        from .engine import pick_device

        self.config = config
        self.metrics = metrics or Metrics()
        inf = config.inference
        self.device = pick_device(inf.device)
        self.pool = pool or UpscalerPool.from_config(inf, self.device)
        concurrent = inf.engine != "compile"  # the CPU's engines: eager passes run side by side, compiled ones not
        self.batcher = Batcher(str(self.device), inf.batch_for(self.device.type), inf.max_wait_ms, metrics=self.metrics,
                               threads=pipeline_threads(inf.threads, self.device.type, concurrent))
        self.cameras: dict[str, Stream] = {}
        hwaccel = pick_hwaccel(str(self.device), inf.hw_decode)
        log.info("camera decoding: %s", "NVDEC (cuda), software fallback" if hwaccel else "software")
        for cam in config.cameras:
            if not cam.enabled:
                log.info("%s: disabled in the config; skipped", cam.name)
                continue
            self.cameras[cam.name] = Stream(config.resolved_camera(cam), batcher=self.batcher, pool=self.pool,
                                            reconnect=config.reconnect, metrics=self.metrics, hwaccel=hwaccel,
                                            watchdog_s=watchdog_s)
        self.started_at: float | None = None
        self._stopped = threading.Event()

    def start(self) -> Service:
        self.started_at = time.monotonic()
        self.batcher.start()
        for s in self.cameras.values():
            s.start()
        log.info("serving %d camera(s) on %s", len(self.cameras), self.device)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful: stop reading, finish queued frames, flush and close every output."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        threads = [threading.Thread(target=s.stop, args=(timeout,), daemon=True) for s in self.cameras.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout + 2)
        self.batcher.stop(timeout)
        log.info("service stopped")

    def ready(self) -> bool:
        """Every camera has published at least once (file inputs: or finished)."""
        return bool(self.cameras) and all(s.first_output.is_set() or s.finished for s in self.cameras.values())

    def healthy(self) -> bool:
        """The inference worker and every camera's publisher thread are alive."""
        if self._stopped.is_set() or not self.batcher.alive:
            return False
        return all(s.sink.alive or s.finished for s in self.cameras.values())

    def status(self) -> dict:
        return {"device": str(self.device), "batches": self.batcher.batches, "frames": self.batcher.frames,
                "cameras": {n: s.status() for n, s in self.cameras.items()}}

    def wait(self, duration: float | None = None, stop_event: threading.Event | None = None) -> None:
        """Block until ``duration`` passed, ``stop_event`` is set, or every (file) camera finished."""
        end = None if duration is None else time.monotonic() + duration
        stop_event = stop_event or threading.Event()
        while not stop_event.is_set():
            if end is not None and time.monotonic() >= end:
                return
            if self.cameras and all(s.finished for s in self.cameras.values()):
                return
            stop_event.wait(0.2)


def make_app(service: Service, api_token: str | None = None):
    """The web app for ``service`` (:func:`ultrares_stream.web.app.create_app`)."""
    return create_app(service=service, metrics=service.metrics, api_token=api_token,
                      default_model=service.config.defaults.model, device=str(service.device))


class HttpServer:
    """uvicorn in a background thread; ``stop()`` shuts it down."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 8080):
        import uvicorn

        self.host, self.port = host, port
        from .web import slow_clients

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                                    lifespan="on", http=slow_clients.protocol()))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 15.0) -> HttpServer:
        self._thread = threading.Thread(target=self.server.run, name="http", daemon=True)
        self._thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise UserError(f"cannot serve HTTP on {self.host}:{self.port} (port in use?)")
            if time.monotonic() > end:
                raise UserError(f"HTTP server on {self.host}:{self.port} did not start within {timeout:g} s")
            time.sleep(0.05)
        log.info("HTTP on %s (metrics at %s/metrics)", self.url, self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)


def describe(service: Service) -> list[str]:
    """One line per camera for the console (URLs masked)."""
    return [f"{n}: {mask_url(s.input_url)} -> {mask_url(s.output_url)}" for n, s in service.cameras.items()]
