"""Typed configuration of ``ultrares serve`` (pydantic), loaded from YAML.

Errors name the field: ``cameras[1].alpha: Input should be less than or equal to 1``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .admission import DEFAULT_MAX_OUTPUT_PIXELS, path_clash, size_over_limit
from .errors import UserError
from .recording import RetentionPolicy
from .sizes import parse_size, parse_size_range
from .urls import SCHEMES

#: default alpha, chosen from the plate score, PSNR and flicker (docs/model_card.md, "Defaults"):
#: cameras, recorded footage and the CLI get the faithful end, which reads plates best and adds
#: the most PSNR; the web page's slider starts a little towards detail, for people looking at a photo
DEFAULT_ALPHA = 0.0
WEB_ALPHA = 0.25
#: libx264 settings of recorded jobs (``ultrares enhance clip.mp4``): at CRF 18 ``faster`` writes files of
#: the size ``medium`` does, 0.18 dB below it against the enhanced frames (44.2 against 44.4 dB), with
#: 1.5x less encoder CPU, which on a CPU is most of a compact job (docs/benchmarks.md)
RECORDED_PRESET = "faster"
RECORDED_CRF = 18


#: input frame sizes (MIN:OPT:MAX) a TensorRT engine is built for unless configured
DEFAULT_ENGINE_SHAPE = "480x270:960x540:1280x720"  # covers 704x576 (PAL/D1) and 1280x720 cameras


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Strict):
    """The HTTP side of ``ultrares serve``: where it listens and who may use it (docs/operations.md,
    "Security"). The API token comes from ``ULTRARES_API_TOKEN`` / ``ULTRARES_API_TOKEN_FILE`` when
    either is set, else from ``api_token`` / ``api_token_file``."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    api_token: str | None = Field(None, min_length=1, description=(
        "when set, every endpoint but /healthz and /readyz needs 'Authorization: Bearer TOKEN'"))
    api_token_file: str | None = Field(None, min_length=1, description=(
        "file holding the token (a mounted Kubernetes Secret, a compose secret); a trailing newline is ignored"))
    metrics_public: bool = Field(False, description=(
        "serve /metrics without the token (for a Prometheus on a trusted scraping network)"))
    allowed_hosts: list[str] = Field(default_factory=list, description=(
        "host names accepted in the Host header besides localhost, IP addresses and the bind host; "
        "'.example.com' accepts the domain and its subdomains, '*' any name"))

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for name in v:
            if not re.fullmatch(r"\*|\.?[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[?[0-9A-Fa-f:.]+\]?", name):
                raise ValueError(f"{name!r} is not a host name (use e.g. cameras.example.com, .example.com or *)")
        return [name.lower().strip("[]") for name in v]

    @model_validator(mode="after")
    def _one_token_source(self) -> ServerConfig:
        if self.api_token is not None and self.api_token_file is not None:
            raise ValueError("set api_token or api_token_file, not both")
        return self

    def resolve_token(self, environ: dict[str, str] | None = None) -> str | None:
        """The API token, or None: the environment first (``ULTRARES_API_TOKEN``, or the file named
        by ``ULTRARES_API_TOKEN_FILE``), else this config. Raises UserError naming the setting."""
        import os

        env = os.environ if environ is None else environ
        value, path = env.get("ULTRARES_API_TOKEN") or None, env.get("ULTRARES_API_TOKEN_FILE") or None
        if value and path:
            raise UserError("set ULTRARES_API_TOKEN or ULTRARES_API_TOKEN_FILE, not both")
        if value:
            return value.strip()
        if path:
            return self.read_token_file(path, "ULTRARES_API_TOKEN_FILE")
        if self.api_token_file:
            return self.read_token_file(self.api_token_file, "server.api_token_file")
        return self.api_token.strip() if self.api_token else None

    @staticmethod
    def read_token_file(path: str, setting: str) -> str:
        """The token in ``path`` (surrounding whitespace and the trailing newline removed)."""
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
            raise UserError(f"{setting}: cannot read the API token file {path} ({reason})") from None
        if not token:
            raise UserError(f"{setting}: the API token file {path} is empty")
        if any(c.isspace() for c in token):
            raise UserError(f"{setting}: the API token in {path} contains whitespace; put the token alone in it")
        return token


class InferenceConfig(_Strict):
    device: str = "auto"
    engine: Literal["auto", "tensorrt", "compile", "openvino", "eager"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = "auto"
    max_batch: int | None = Field(None, ge=1, le=64, description=(
        "frames per inference batch, across cameras; default 1 on the CPU (batching is slower per "
        "frame there, docs/benchmarks.md) and 4 on CUDA"))

    max_wait_ms: float = Field(10.0, ge=0, le=1000)
    tile: int | None = Field(None, ge=0)
    hw_decode: Literal["auto", "off"] = Field("auto", description=(
        "auto: decode cameras with NVDEC when the model runs on CUDA and an NVDEC decoder can be "
        "created here (else, and for codecs NVDEC lacks, in software); off: always software"))
    threads: int | None = Field(None, ge=1, le=1024, description=(
        "network on the CPU: run one batch at a time on this many torch threads; default one "
        "single-threaded batch per core, side by side (faster: docs/benchmarks.md)"))
    engine_shape: str = Field(DEFAULT_ENGINE_SHAPE, description=(
        "input frame sizes a TensorRT engine is built for: WxH, or MIN:OPT:MAX for a range; frames "
        "outside it run on the eager engine (logged once)"))

    @field_validator("engine_shape")
    @classmethod
    def _check_engine_shape(cls, v: str) -> str:
        try:
            parse_size_range(v)
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return v

    def batch_for(self, device_type: str) -> int:
        from .batcher import default_max_batch

        return self.max_batch or default_max_batch(device_type)

    def engine_shapes(self, device_type: str):
        """The :class:`~ultrares_stream.engine.cache.ShapeRange` engines are built for: batches
        1..max_batch, frame sizes from ``engine_shape``."""
        from .engine.cache import ShapeRange

        batch = self.batch_for(device_type)
        return ShapeRange.parse(self.engine_shape, (1, min(4, batch), batch))


class QueueConfig(_Strict):
    size: int = Field(8, ge=1, le=1024)
    policy: Literal["auto", "drop_oldest", "block"] = Field(
        "auto", description="auto: drop_oldest for live sources, block for files")


class EncoderConfig(_Strict):
    codec: str = "libx264"
    preset: str = Field("auto", description="encoder preset; auto: ultrafast when inference runs on the CPU "
                                            "(every encoder cycle is taken from the model), else veryfast")
    crf: int | None = Field(23, ge=0, le=51)
    bitrate: str | None = Field(None, description="e.g. 4M; overrides crf")
    gop: int | None = Field(None, ge=1, description="keyframe interval in frames; default 2 s of video")


class ReconnectConfig(_Strict):
    initial_s: float = Field(0.5, gt=0)
    max_s: float = Field(30.0, gt=0)
    timeout_s: float = Field(5.0, gt=0, le=60, description="read/connect timeout of a source")


class StabiliseConfig(_Strict):
    """Temporal stabiliser of a camera's enhanced video (:mod:`ultrares_stream.temporal`)."""

    enabled: bool = True
    still: float = Field(2.0, ge=0, le=255, description="LR change (levels) up to which a pixel is still")
    moving: float = Field(4.0, gt=0, le=255, description="LR change (levels) from which a pixel is moving")
    window: int = Field(3, ge=1, le=15, description="neighbourhood (LR pixels, odd) whose largest change counts")
    strength: float = Field(1.0, ge=0, le=1, description="weight of the held output on still pixels; below 1 "
                                                         "held detail fades into new detail")
    cut: float = Field(0.5, gt=0, le=1, description="share of moving pixels that marks a scene cut")
    noise: float = Field(2.0, ge=0, le=20, description="still rises to this many times the camera's measured "
                                                       "noise level (moving in proportion); 0: fixed thresholds")
    shake: float = Field(2.0, ge=0, le=16, description="largest camera shake (LR pixels) registered away before "
                                                       "still pixels are found; 0: no registration")

    @model_validator(mode="after")
    def _order(self) -> StabiliseConfig:
        if self.moving <= self.still:
            raise ValueError(f"moving ({self.moving}) must be above still ({self.still})")
        if self.window % 2 == 0:
            raise ValueError(f"window must be odd, not {self.window}")
        return self

    def settings(self):
        """The stabiliser's settings, or None when disabled."""
        from .temporal import StabiliserSettings

        if not self.enabled:
            return None
        return StabiliserSettings(still=self.still, moving=self.moving, window=self.window, strength=self.strength,
                                  cut=self.cut, noise=self.noise, shake=self.shake)


class RecordingConfig(_Strict):
    """A live camera's file output: a series of segments (:mod:`ultrares_stream.recording`)."""

    segment_s: float = Field(600.0, ge=1, le=86400, description="a new segment at least this often (seconds)")
    keep_hours: float | None = Field(None, gt=0, description="remove segments older than this; default: keep all")
    max_gb: float | None = Field(None, gt=0, description="remove the oldest segments beyond this total; default: "
                                                         "no limit")

    def policy(self) -> RetentionPolicy:
        return RetentionPolicy(segment_s=self.segment_s,
                               keep_s=None if self.keep_hours is None else self.keep_hours * 3600,
                               max_bytes=None if self.max_gb is None else int(self.max_gb * 1e9))


class CameraConfig(_Strict):
    name: str
    input: str
    output: str
    model: str | None = None
    alpha: float | None = Field(None, ge=0, le=1)
    output_size: str | None = Field(None, description="720p, 1080p, 1440p, 4k or WxH; default: model scale")
    ensemble: Literal[1, 2, 4, 8] = Field(1, description="self-ensemble: network passes a frame over flips and "
                                                         "transposes, averaged (GPU hosts; that many times the work)")
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    queue: QueueConfig = QueueConfig()
    encoder: EncoderConfig | None = None
    stabilise: StabiliseConfig | None = Field(None, description="default: defaults.stabilise")
    max_output_pixels: int | None = Field(None, ge=0, description="default: defaults.max_output_pixels")
    recording: RecordingConfig | None = Field(None, description="default: defaults.recording")
    min_publish_share: float = Field(0.5, ge=0, le=1, description=(
        "a live camera that publishes less than this share of the frames it receives (over 10 s) is "
        "'degraded' in the API and /readyz"))
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", v):
            raise ValueError("use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit")
        return v

    @field_validator("input", "output")
    @classmethod
    def _url(cls, v: str) -> str:
        scheme, sep, _ = v.partition("://")
        if sep and scheme.lower() not in SCHEMES:
            raise ValueError(f"unknown URL scheme {scheme!r} (use {', '.join(sorted(SCHEMES))} or a file path)")
        return v

    @field_validator("output_size")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parse_size(v)
            except UserError as exc:
                raise ValueError(str(exc)) from None
        return v


class Defaults(_Strict):
    model: str | None = Field(None, description="default: the device's pair (ultrares-compact-x4 on the CPU, "
                                                "ultrares-traffic-x4 on CUDA; docs/model_card.md)")
    alpha: float = Field(DEFAULT_ALPHA, ge=0, le=1, description="0 faithful ... 1 detailed (docs/model_card.md)")
    output_size: str | None = None
    encoder: EncoderConfig = EncoderConfig()
    stabilise: StabiliseConfig = StabiliseConfig()
    max_output_pixels: int = Field(DEFAULT_MAX_OUTPUT_PIXELS, ge=0, description=(
        "largest output frame a camera is admitted with, in pixels (default 3840x2160; 0: no limit): a "
        "camera over it is refused, naming its output_size (admission.admit_output_size)"))
    recording: RecordingConfig = RecordingConfig()


class ServiceConfig(_Strict):
    server: ServerConfig = ServerConfig()
    inference: InferenceConfig = InferenceConfig()
    reconnect: ReconnectConfig = ReconnectConfig()
    defaults: Defaults = Defaults()
    cameras: list[CameraConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> ServiceConfig:
        seen: set[str] = set()
        for i, cam in enumerate(self.cameras):
            if cam.name in seen:
                raise ValueError(f"cameras[{i}].name: duplicate camera name {cam.name!r}")
            seen.add(cam.name)
        return self

    @model_validator(mode="after")
    def _admitted(self) -> ServiceConfig:
        """No output written by two cameras or over an input file; no output_size over the budget."""
        clash = path_clash([(i, c.input, c.output) for i, c in enumerate(self.cameras) if c.enabled])
        if clash:
            raise ValueError(clash)
        for i, cam in enumerate(self.cameras):
            why = size_over_limit(cam.output_size or self.defaults.output_size, self.camera_max_output_pixels(cam))
            if why:
                raise ValueError(f"cameras[{i}].output_size: {why}")
        return self

    def camera_max_output_pixels(self, cam: CameraConfig) -> int:
        return self.defaults.max_output_pixels if cam.max_output_pixels is None else cam.max_output_pixels

    def camera_model(self, cam: CameraConfig) -> str | None:
        """The camera's model, or None: the inference device's default pair."""
        return cam.model or self.defaults.model

    def camera_alpha(self, cam: CameraConfig) -> float:
        return self.defaults.alpha if cam.alpha is None else cam.alpha

    def camera_encoder(self, cam: CameraConfig) -> EncoderConfig:
        return cam.encoder or self.defaults.encoder

    def camera_stabilise(self, cam: CameraConfig):
        return (cam.stabilise or self.defaults.stabilise).settings()

    def resolved_camera(self, cam: CameraConfig) -> CameraConfig:
        """``cam`` with the defaults filled in (model, alpha, output size, encoder, stabiliser): what a
        :class:`~ultrares_stream.stream.Stream` is built from."""
        return cam.model_copy(update={"model": self.camera_model(cam), "alpha": self.camera_alpha(cam),
                                      "output_size": cam.output_size or self.defaults.output_size,
                                      "encoder": self.camera_encoder(cam),
                                      "stabilise": cam.stabilise or self.defaults.stabilise,
                                      "max_output_pixels": self.camera_max_output_pixels(cam),
                                      "recording": cam.recording or self.defaults.recording})


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "config"


def parse_config(data: object, source: str = "config") -> ServiceConfig:
    try:
        return ServiceConfig.model_validate(data if data is not None else {})
    except ValidationError as exc:
        lines = [f"{source}: {_field_path(e['loc'])}: {e['msg']}" if e["loc"] or not e["msg"].startswith("Value error")
                 else f"{source}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
        raise UserError("invalid configuration\n  " + "\n  ".join(lines)) from None


def load_config(path: str | Path) -> ServiceConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"{path}: cannot read config ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, str(path))
