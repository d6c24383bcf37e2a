"""The live service: many cameras, one inference worker per device, metrics and HTTP.

``Service(config)`` builds a :class:`stream.Stream` per enabled camera of a
:class:`config.ServiceConfig`, sharing one :class:`batcher.Batcher` and one
:class:`upscaler.UpscalerPool` (the web page uses it too). :class:`HttpServer` serves the web app
(``ultrares_stream.web.app.create_app``: ``/metrics``, ``/healthz``,
``/readyz``, ``/api/v1/streams`` ...) with uvicorn in a background thread;
:func:`check_exposure` refuses to serve it beyond loopback without an API token.
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
from .web.guard import is_loopback

log = logging.getLogger(__name__)

#: camera states that make the service not ready (/readyz 503)
NOT_READY = frozenset({"degraded", "failed", "ended", "output-error", "disk-full"})


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
        """Every camera has published at least once (file inputs: or finished), and none is degraded
        (publishing under its ``min_publish_share``) or failed."""
        return bool(self.cameras) and all((s.first_output.is_set() or s.finished) and s.state not in NOT_READY
                                          for s in self.cameras.values())

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
    """The web app for ``service`` (:func:`ultrares_stream.web.app.create_app`), with the Host
    allow-list and ``/metrics`` setting of its ``server`` config."""
    server = service.config.server
    return create_app(service=service, metrics=service.metrics, api_token=api_token,
                      allowed_hosts=[*server.allowed_hosts, server.host], metrics_public=server.metrics_public,
                      default_model=service.config.defaults.model, device=str(service.device))


def check_exposure(host: str, token: str | None, insecure: bool, how: str) -> None:
    """Refuse (UserError, one line) to serve HTTP on ``host`` beyond loopback without an API token,
    unless ``insecure``; then warn loudly. ``how``: how this command is given a token."""
    if token or is_loopback(host):
        return
    where = host or "every interface"
    if not insecure:
        raise UserError(f"refusing to serve HTTP on {where} without an API token: {how}; or bind 127.0.0.1; "
                        f"or pass --insecure to serve it to the network unprotected")
    log.warning("INSECURE: HTTP on %s with NO API token (--insecure): anyone who can reach this port can "
                "watch the cameras' frames, change their settings and upload images", where)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


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
        """Where a client on this machine reaches the server (a wildcard bind: loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://{_url_host(host)}:{self.port}"

    @property
    def bind_url(self) -> str:
        """The address actually listened on (``http://0.0.0.0:8080`` for every interface)."""
        return f"http://{_url_host(self.host or '0.0.0.0')}:{self.port}"

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
        log.info("HTTP listening on %s%s", self.bind_url, self.scope())
        return self

    def scope(self) -> str:
        """Who can reach the server, for the startup log."""
        if is_loopback(self.host):
            return " (this machine only)"
        if self.host in ("0.0.0.0", "::", ""):
            return f" (every interface; from this machine: {self.url})"
        return " (reachable from the network)"

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)


def describe(service: Service) -> list[str]:
    """One line per camera for the console (URLs masked)."""
    return [f"{n}: {mask_url(s.input_url)} -> {mask_url(s.output_url)}" for n, s in service.cameras.items()]
