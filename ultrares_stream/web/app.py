"""The HTTP side of UltraRes Stream: the page, the versioned API, metrics and probes.

``create_app(service, metrics)`` builds one FastAPI app. ``ultrares serve`` runs it
next to the cameras (same port as ``/metrics``); ``ultrares web`` runs it alone
(no cameras: the image upscaler only).

Routes: ``/`` (the page), ``/static/...``, ``/metrics`` (Prometheus), ``/healthz``,
``/readyz``, and ``/api/v1/...`` (described by ``/openapi.json``, browsable at ``/docs``).
Every bad request gets a 4xx with ``{"error": "<what to fix>"}``. Who may call what (token,
Host allow-list, same-origin rule) is :mod:`.guard`'s; no answer carries a server file path.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .. import __version__
from ..engine import pick_device
from ..ensemble import check_passes
from ..errors import UserError
from ..metrics import Metrics
from ..models import registry
from ..sizes import PRESETS, is_decimal
from . import api_docs, uploads
from .errors import ApiError, queued
from .guard import AccessPolicy, Guard
from .jobs import JobQueue
from ..config import WEB_ALPHA
from .upscaling import UpscalerCache, upscale_upload
from .clip_zoom import CLIP_ZOOM_WAITING, CLIP_ZOOM_WORKERS, add_clip_zoom_route
from .zoom import ZOOM_WAITING, ZOOM_WORKERS, add_zoom_route

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
API = "/api/v1"
DEFAULT_MAX_UPLOAD_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_PIXELS = 2048 * 2048  # input; x4 makes 8192x8192 at most
DEFAULT_MAX_OUTPUT_PIXELS = 7680 * 4320  # 8K UHD
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and the small form fields
CUSTOM_MODEL = "default"  # the public name of an operator's own checkpoint(s) given as the default


# ----------------------------------------------------------------------------- schemas
#: what ``model`` may be: a registry name, or "default" (the server's default, whatever it is)
MODEL_NAMES = ["default", *sorted(registry.PAIRS), *sorted(set(registry.ENTRIES) - set(registry.PAIRS))]
ModelName = Annotated[str, Field(max_length=200, json_schema_extra={"enum": MODEL_NAMES})]
CameraName = Annotated[str, PathParam(description="the camera's configured name", max_length=200)]


class ApiErrorBody(BaseModel):
    error: str = Field(description="what went wrong and what to change")


class ModelInfo(BaseModel):
    name: str = Field(description="what to send as `model`")
    label: str = Field(description="for display")
    kind: Literal["pair", "single", "custom"]
    architecture: str | None = None
    scale: int | None = None
    available: bool = Field(description="weights present on this server")
    psnr: str | None = Field(None, description="pair: the network at alpha 0 (faithful)")
    gan: str | None = Field(None, description="pair: the network at alpha 1 (detailed)")
    note: str = ""


class ModelList(BaseModel):
    default: str
    models: list[ModelInfo]


class StreamStatus(BaseModel):
    """One camera, as its ``Stream.status()`` reports it (extra fields pass through)."""

    model_config = ConfigDict(extra="allow")
    name: str
    state: str | None = None
    alpha: float | None = None
    model: str | None = None


class StreamList(BaseModel):
    streams: list[StreamStatus]


class StreamPatch(BaseModel):
    """Change a running camera's settings; applied without restarting the stream."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"alpha": 0.3}], "minProperties": 1})
    # Absent = unchanged; an explicit null is refused (the schema says number), so is true/false (strict).
    alpha: float = Field(None, ge=0.0, le=1.0, strict=True,
                                description="0 = faithful (PSNR net), 1 = detailed (GAN net)")
    model: ModelName = Field(None, description="a model name from /api/v1/models")


class ServerInfo(BaseModel):
    version: str
    default_model: str
    max_upload_bytes: int
    max_pixels: int
    max_output_pixels: int
    sizes: dict[str, list[int]] = Field(description="output size presets: name -> [width, height]")
    formats: list[str]
    token_required: bool
    cameras: bool = Field(description="whether this server runs cameras (ultrares serve)")


# ----------------------------------------------------------------------------- the app
@dataclass(frozen=True)
class _Limits:
    """What one upscale request may ask: upload bytes, input and output pixels, seconds of work."""

    max_upload_bytes: int
    max_pixels: int
    max_output_pixels: int
    request_timeout: float


class _Context:
    """Everything the routes share (kept on ``app.state.ultrares``)."""

    def __init__(self, service, metrics: Metrics, api_token: str | None, limits: _Limits, default_model: str,
                 device: str, workers: int, queue_size: int):
        self.service, self.metrics, self.api_token = service, metrics, api_token
        self.limits, self.default_model = limits, default_model
        self.upscalers = UpscalerCache(device, pool=getattr(service, "pool", None))  # one pool per process
        self.jobs = JobQueue(workers, queue_size)
        self.zooms = JobQueue(ZOOM_WORKERS, ZOOM_WAITING)  # zooms never wait behind an upscale
        self.clip_zooms = JobQueue(CLIP_ZOOM_WORKERS, CLIP_ZOOM_WAITING)  # nor a camera's behind a clip's
        self._custom_info: ModelInfo | None = None

    # -- models
    @property
    def custom_default(self) -> bool:
        """The default is the operator's own checkpoint(s), not a registry name."""
        return self.default_model not in registry.PAIRS and self.default_model not in registry.ENTRIES

    def public_name(self, spec: str) -> str:
        """The name clients see: server file paths never leave the server (the operator's default
        checkpoint(s) are ``default``, any other checkpoint its file name)."""
        if spec == self.default_model and self.custom_default:
            return CUSTOM_MODEL
        if "/" not in spec and "\\" not in spec:
            return spec  # a registry name, or a stream's model named by its file stems
        return "+".join(Path(p).name for p in spec.split("+"))

    def label(self, spec: str) -> str:
        if spec == self.default_model and self.custom_default:
            return " + ".join(Path(p).name for p in spec.split("+"))
        return spec

    def model_names(self) -> set[str]:
        return set(registry.PAIRS) | set(registry.ENTRIES) | {self.default_model, CUSTOM_MODEL}

    def check_model(self, name: str | None) -> str:
        """The model spec to use for a request's ``model`` field: a registry name or this
        server's default (never an arbitrary path from a client)."""
        spec = (name or "").strip() or self.default_model
        if spec == CUSTOM_MODEL:
            spec = self.default_model
        if spec not in self.model_names():
            known = ", ".join(sorted(registry.PAIRS)) + ", " + ", ".join(sorted(registry.ENTRIES))
            raise ApiError(400, f"unknown model {spec!r}; choose one of: {known} (see GET {API}/models)")
        if not self.model_available(spec):
            members = registry.PAIRS.get(spec, (spec,))
            fix = ("the shipped weights are missing from this installation" if registry.ENTRIES[members[0]].url is None
                   else f"the operator can run `ultrares models --fetch {spec}`")
            raise ApiError(409, f"model {spec!r} is not available on this server ({fix}); "
                                f"choose an available one from GET {API}/models")
        return spec

    def model_available(self, spec: str) -> bool:
        members = registry.PAIRS.get(spec, (spec,) if spec in registry.ENTRIES else None)
        if members is None:
            return True  # the operator's own checkpoint(s)
        return all(registry.local_path(registry.ENTRIES[m]) is not None for m in members)

    def models(self) -> ModelList:
        out = []
        for name, (a, b) in registry.PAIRS.items():
            e = registry.ENTRIES[a]
            out.append(ModelInfo(name=name, label=name, kind="pair", architecture=e.arch, scale=e.scale, psnr=a, gan=b,
                                 available=self.model_available(name),
                                 note=f"alpha 0 = {a}, alpha 1 = {b}"))
        for e in registry.ENTRIES.values():
            out.append(ModelInfo(name=e.name, label=e.name, kind="single", architecture=e.arch, scale=e.scale,
                                 available=self.model_available(e.name), note=e.note))
        if self.custom_default:
            out.insert(0, self._custom_model_info())
        return ModelList(default=self.public_name(self.default_model), models=out)

    def _custom_model_info(self) -> ModelInfo:
        if self._custom_info is None:
            info = ModelInfo(name=CUSTOM_MODEL, label=self.label(self.default_model), kind="custom", available=True,
                             note="this server's own checkpoint(s)")
            try:
                from ..models.checkpoint import infer_arch

                resolved = registry.resolve(self.default_model, download=False)
                arch = infer_arch(resolved.psnr, self.default_model)
                info.architecture, info.scale = arch.arch, arch.scale
                if resolved.is_pair:
                    a, b = self.default_model.split("+", 1)
                    info.psnr, info.gan = Path(a).name, Path(b).name
            except UserError as exc:
                info.available, info.note = False, "the server's checkpoint could not be read (see its log)"
                log.error("default model: %s", exc)
            self._custom_info = info
        return self._custom_info

    # -- cameras
    def stream(self, name: str):
        cameras = getattr(self.service, "cameras", None) or {}
        if name not in cameras:
            known = ", ".join(sorted(cameras)) or "none (this server runs no cameras)"
            raise ApiError(404, f"no camera named {name!r}; cameras: {known}")
        return cameras[name]

    def stream_status(self, stream) -> StreamStatus:
        try:
            status = dict(stream.status())
        except Exception as exc:  # a camera failing must not take the API down
            log.exception("status of camera %s failed", stream.name)
            status = {"state": "error", "error": f"{exc.__class__.__name__}: {exc}"}
        status["name"] = stream.name
        return StreamStatus(**self.public_status(status))

    def public_status(self, status: dict) -> dict:
        """A camera's status without server paths: file inputs/outputs by file name, models by
        their public name, paths in messages by file name."""
        out = {}
        for key, value in status.items():
            if key in ("input", "output") and isinstance(value, str) and "://" not in value:
                value = Path(value).name
            elif key == "model" and isinstance(value, str):
                value = self.public_name(value)
            else:
                value = self._public_value(value)
            out[key] = value
        return out

    def _public_value(self, value):
        if isinstance(value, dict):
            return self.public_status(value)
        if isinstance(value, list):
            return [self._public_value(v) for v in value]
        return hide_paths(value) if isinstance(value, str) else value


def create_app(service=None, metrics: Metrics | None = None, *, api_token: str | None = None,
               allowed_hosts: Iterable[str] | None = None, metrics_public: bool = False,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS, default_model: str | None = None,
               device: str = "auto", workers: int = 1, queue_size: int = 4,
               request_timeout: float = 120.0) -> FastAPI:
    """Build the app. ``service`` (optional) provides the cameras (``cameras``, ``ready()``,
    ``healthy()``); ``metrics`` defaults to ``service.metrics`` or a fresh :class:`Metrics`.
    ``api_token``: when set, every endpoint but ``/healthz``, ``/readyz`` and the page's static
    files needs ``Authorization: Bearer <token>`` (``/metrics`` too unless ``metrics_public``).
    ``allowed_hosts``: Host names accepted besides localhost and IP addresses (None: no Host check;
    the commands always pass the bind host and ``server.allowed_hosts``). See :mod:`.guard`.
    At most ``workers`` upscales run at once and ``queue_size`` wait; more get 429."""
    if metrics is None:
        metrics = getattr(service, "metrics", None) or Metrics()
    limits = _Limits(max_upload_bytes, max_pixels, max_output_pixels, request_timeout)
    ctx = _Context(service, metrics, api_token or None, limits,
                   default_model or registry.default_model(pick_device(device).type), device, workers, queue_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        ctx.jobs.shutdown()
        ctx.zooms.shutdown()
        ctx.clip_zooms.shutdown()

    app = FastAPI(
        title="UltraRes Stream", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Super-resolution for traffic-camera video and images. Upscale an image, list models, "
                    "watch and steer the live cameras. Errors are JSON: `{\"error\": \"...\"}`.",
    )
    app.state.ultrares = ctx
    api_docs.install(app, {"type": "http", "scheme": "bearer"} if ctx.api_token else None)

    def count_refused(path: str) -> None:
        if path == f"{API}/upscale":
            metrics.web_upscales.labels("413").inc()

    app.add_middleware(UploadLimit, max_bytes=max_upload_bytes + FORM_OVERHEAD_BYTES, on_refused=count_refused)
    app.add_middleware(Guard, policy=AccessPolicy.build(ctx.api_token, allowed_hosts, metrics_public))
    app.add_middleware(NoSniff)
    _install_error_handlers(app, on_invalid_upscale=lambda: metrics.web_upscales.labels("422").inc())
    _add_page_and_probes(app, ctx)
    _add_info_routes(app, ctx)
    _add_upscale_route(app, ctx)
    _add_stream_routes(app, ctx)
    add_clip_zoom_route(app, ctx, ERROR_RESPONSES)
    log.debug("web app ready (model %s, token %s)", ctx.default_model, "on" if api_token else "off")
    return app


#: error answers the API documents (their body is ``ApiErrorBody``)
ERROR_RESPONSES = {code: {"model": ApiErrorBody} for code in (400, 401, 404, 409, 413, 415, 422, 429, 503)}
#: an absolute file path (not a URL's path: no ':', '/' or word character before it; not this API's)
_ABS_PATH = re.compile(r"""(?<![\w:/.~-])/(?!(?:api|static|docs|docs-assets)/)(?:[^\s'"/,;()\[\]]+/)+([^\s'"/,;()\[\]]+)""")


def hide_paths(text: str) -> str:
    """``text`` with every absolute file path cut to its file name (for answers to clients)."""
    return _ABS_PATH.sub(lambda m: m.group(1), text)


def _add_page_and_probes(app: FastAPI, ctx: _Context) -> None:
    """The page, its static files, /metrics and the health probes (not part of the API schema)."""
    service = ctx.service

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache",
                                                                  "Content-Security-Policy": PAGE_CSP})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/metrics", include_in_schema=False)
    def metrics_endpoint() -> Response:
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        ok = True if service is None else bool(service.healthy())
        return JSONResponse({"status": "ok" if ok else "unhealthy"}, status_code=200 if ok else 503)

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        ok = True if service is None else bool(service.ready())
        return JSONResponse({"status": "ready" if ok else "not ready"}, status_code=200 if ok else 503)


def _add_info_routes(app: FastAPI, ctx: _Context) -> None:
    """GET /info (limits and options) and GET /models."""

    @app.get(f"{API}/info", response_model=ServerInfo, tags=["server"], summary="Limits and options of this server")
    def info() -> ServerInfo:
        return ServerInfo(version=__version__, default_model=ctx.public_name(ctx.default_model),
                          max_upload_bytes=ctx.limits.max_upload_bytes, max_pixels=ctx.limits.max_pixels,
                          max_output_pixels=ctx.limits.max_output_pixels, sizes={k: list(v) for k, v in PRESETS.items()},
                          formats=list(uploads.OUTPUT_FORMATS), token_required=ctx.api_token is not None,
                          cameras=ctx.service is not None)

    @app.get(f"{API}/models", response_model=ModelList, tags=["models"], summary="Models this server knows")
    def models() -> ModelList:
        return ctx.models()


def _add_upscale_route(app: FastAPI, ctx: _Context) -> None:
    """POST /upscale: one image through the job queue (:func:`_upscale`), counted by its answer's status."""
    metrics = ctx.metrics

    @app.post(
        f"{API}/upscale", tags=["images"], summary="Upscale one image", response_class=Response,
        responses={200: {"description": "the upscaled image",
                         "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}, **ERROR_RESPONSES},
    )
    async def upscale(
        image: Annotated[UploadFile, File(description="PNG, JPEG, WebP, BMP, TIFF or GIF (type judged from content)")],
        model: Annotated[ModelName, Form(description="model name (GET /api/v1/models); "
                                                "default: the server's")] = "default",
        alpha: Annotated[float, Form(ge=0.0, le=1.0, description="0 = faithful, 1 = detailed (pairs only)")] = WEB_ALPHA,
        size: Annotated[str, Form(max_length=20, description="output box: 720p, 1080p, 1440p, 4k or "
                                                             "WIDTHxHEIGHT (aspect ratio kept); empty = "
                                                             "the network's scale")] = "",
        format: Annotated[Literal["png", "jpeg", "webp"], Form(description="output format")] = "png",
        ensemble: Annotated[int, Form(description="self-ensemble: 1 pass, or 2, 4 or 8 orientations averaged "
                                                  "(more faithful, that many times the work)")] = 1,
    ) -> Response:
        started = time.perf_counter()
        try:
            response = await _upscale(ctx, image, model, alpha, size, format, ensemble)
        except Exception as exc:  # counted by the status its handler answers with, then re-raised
            metrics.web_upscales.labels(str(getattr(exc, "status", 400 if isinstance(exc, UserError) else 500))).inc()
            raise
        metrics.web_upscales.labels("200").inc()
        metrics.web_upscale_seconds.observe(time.perf_counter() - started)
        return response


async def _upscale(ctx: _Context, image: UploadFile, model: str, alpha: float, size: str, format: str,
                   ensemble: int) -> Response:
    """Read, check and upscale one upload on the job queue; the image response, or ApiError/UserError."""
    check_passes(ensemble)  # a bad count is a 400 before the upload is read
    limits = ctx.limits
    data = await uploads.read_bounded(image, limits.max_upload_bytes)
    spec = ctx.check_model(model)
    if size.strip():
        from ..sizes import parse_size

        parse_size(size)  # a bad size is a 400 before any work is queued
    upload = uploads.identify(data, limits.max_pixels)
    cancel = threading.Event()
    job = partial(upscale_upload, ctx.upscalers, upload, spec, alpha, size.strip() or None, format,
                  limits.max_output_pixels, cancel, ensemble)
    result = await queued(ctx.jobs, job, timeout=limits.request_timeout, cancel=cancel, busy="other images",
                          slow=("upscaling", "try a smaller image or output size"))
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(image.filename or "image").stem)[:80] or "image"
    (w, h), (ow, oh) = result.input_size, result.output_size
    return Response(result.data, media_type=result.media_type, headers={
        "Content-Disposition": f'inline; filename="{stem}-ultrares-{ow}x{oh}.{result.extension}"',
        "X-Ultrares-Model": ctx.public_name(spec), "X-Ultrares-Alpha": f"{result.alpha:g}",
        "X-Ultrares-Ensemble": str(result.ensemble),
        "X-Ultrares-Input-Size": f"{w}x{h}", "X-Ultrares-Output-Size": f"{ow}x{oh}",
        "X-Ultrares-Seconds": f"{result.seconds:.3f}", "Cache-Control": "no-store",
    })


def _add_stream_routes(app: FastAPI, ctx: _Context) -> None:
    """The cameras: list, one camera's stats, PATCH its alpha/model, its latest frame, zooms."""
    errors = ERROR_RESPONSES

    @app.get(f"{API}/streams", response_model=StreamList, tags=["cameras"], summary="Every camera and its stats")
    def streams() -> StreamList:
        cameras = getattr(ctx.service, "cameras", None) or {}
        return StreamList(streams=[ctx.stream_status(s) for s in cameras.values()])

    @app.get(f"{API}/streams/{{name}}", response_model=StreamStatus, tags=["cameras"], responses=errors,
             summary="One camera's stats")
    def stream(name: CameraName) -> StreamStatus:
        return ctx.stream_status(ctx.stream(name))

    @app.patch(f"{API}/streams/{{name}}", response_model=StreamStatus, tags=["cameras"], responses=errors,
               summary="Change a camera's alpha and/or model while it runs")
    def patch_stream(name: CameraName, patch: StreamPatch) -> StreamStatus:
        cam = ctx.stream(name)
        if patch.alpha is None and patch.model is None:
            raise ApiError(422, 'nothing to change: send {"alpha": 0..1} and/or {"model": "<name>"}')
        if patch.model is not None:
            spec = ctx.check_model(patch.model)
            cam.set_model(spec)  # the stream reports it back as it likes; paths stay server-side
            log.info("camera %s: model set to %s", name, spec)
        if patch.alpha is not None:
            cam.set_alpha(patch.alpha)
            log.info("camera %s: alpha set to %.2f", name, patch.alpha)
        return ctx.stream_status(cam)

    @app.get(f"{API}/streams/{{name}}/snapshot.jpg", tags=["cameras"], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}, "description": "latest enhanced frame"}, **errors},
             summary="Latest enhanced frame of a camera (JPEG, for a live preview)")
    def snapshot(name: CameraName) -> Response:
        cam = ctx.stream(name)
        jpeg = cam.snapshot_jpeg()
        if not jpeg:
            raise ApiError(404, f"camera {name!r} has not produced a frame yet; try again shortly",
                           {"Retry-After": "1"})
        index = getattr(cam, "snapshot_index", None)  # the frame a zoom's "reference" names
        headers = {"Cache-Control": "no-store", **({"X-Ultrares-Frame-Index": str(index)} if index is not None else {})}
        return Response(jpeg, media_type="image/jpeg", headers=headers)

    add_zoom_route(app, ctx, errors)


# ----------------------------------------------------------------------------- errors and limits
def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI, on_invalid_upscale: Callable[[], None] | None = None) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        if exc.status >= 500 or exc.status == 429:
            log.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        return _error(400, hide_paths(str(exc)))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"field": ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")),
                     "message": str(e.get("msg", ""))} for e in exc.errors()]
        text = "; ".join(f"{p['field'] or 'request'}: {p['message']}" for p in problems) or "invalid request"
        if request.url.path == f"{API}/upscale" and on_invalid_upscale is not None:
            on_invalid_upscale()  # a malformed upscale request is an upscale refused: counted
        return _error(422, text, problems=problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such page or endpoint: {request.url.path} (the API is under {API}, see /docs)"
        if exc.status_code == 405:  # one path, several routes (GET and PATCH): list them all
            methods = sorted({m for route in request.app.router.routes
                              if route.matches(request.scope)[0] != Match.NONE for m in getattr(route, "methods", ())})
            headers["Allow"] = ", ".join(methods)
            message = f"{request.method} is not allowed on {request.url.path}; use {' or '.join(methods)}"
        return _error(exc.status_code, message, headers or None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, f"internal error ({exc.__class__.__name__}); the server log has the details")


#: the page loads only its own script, styles, the images it makes and the clip chosen (blob:/data: URLs)
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


class NoSniff:
    """``X-Content-Type-Options: nosniff`` on every response: a browser must not run an upload's
    bytes as something other than the media type they were sent with."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, send_with_header)


class UploadLimit:
    """Refuse request bodies over ``max_bytes`` (413) without reading them: by Content-Length
    when given, else by counting the bytes as they arrive. ``on_refused(path)`` is called for
    each refusal (the upload metrics count them)."""

    def __init__(self, app, max_bytes: int, on_refused: Callable[[str], None] | None = None):
        self.app, self.max_bytes = app, max_bytes
        self.on_refused = on_refused or (lambda path: None)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        message = f"the request body is over {self.max_bytes:,} bytes; send a smaller file"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not is_decimal(length) or int(length) > self.max_bytes):
            if is_decimal(length):
                self.on_refused(scope["path"])
            response = _error(413, message) if is_decimal(length) else _error(400, "bad Content-Length header")
            return await response(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:  # FastAPI passes HTTPException through body parsing
                    self.on_refused(scope["path"])
                    raise HTTPException(413, message)
            return msg

        await self.app(scope, limited_receive, send)
