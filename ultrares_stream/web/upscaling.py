"""Upscaling one uploaded image: output size, the models (the process's
:class:`~ultrares_stream.upscaler.UpscalerPool`, shared with the cameras under ``serve``), and the
decode -> network -> resize -> encode job (run on a worker thread, never the event loop),
the same steps as ``ultrares enhance`` takes for an image file (:mod:`ultrares_stream.images`)."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import torch

from .. import images, provenance
from ..images import upscale_picture
from ..sizes import parse_size
from ..upscaler import Upscaler, UpscalerPool
from . import uploads
from .errors import ApiError

log = logging.getLogger(__name__)


def output_size(width: int, height: int, scale: int, size: str | None) -> tuple[int, int]:
    """The result's (width, height): the network's native ``scale`` when ``size`` is empty,
    else the largest size with the input's aspect ratio that fits inside the ``size`` box."""
    return images.output_size(width, height, scale, size=parse_size(size) if size else None)


class UpscalerCache:
    """The web page's models: views of the process's :class:`UpscalerPool` (``pool``; under
    ``serve`` the service's, so the page and the cameras share one engine and one copy of the
    weights per model; alone, a pool of its own keeping the ``capacity`` last models loaded).

    A request at some alpha gets that model's view at it: the forward passes swap the weights
    in place between passes, so a web request never changes a camera's alpha, and no model is
    loaded twice."""

    def __init__(self, device: str = "auto", capacity: int = 2, pool: UpscalerPool | None = None):
        self.pool = pool if pool is not None else UpscalerPool(device=device, keep_idle=capacity)

    def get(self, spec: str) -> Upscaler:
        """``spec``'s upscaler (loaded on first use; may raise ModelError, a UserError)."""
        return self.pool.upscaler(spec)

    def view(self, spec: str, alpha: float, ensemble: int = 1) -> Upscaler:
        """``spec`` at ``alpha`` with ``ensemble`` passes a frame, until :meth:`release`."""
        return self.pool.get(spec, alpha, ensemble)

    def release(self, view: Upscaler) -> None:
        self.pool.release(view)

    def scale_of(self, spec: str) -> int:
        return self.get(spec).scale


@dataclass
class Result:
    data: bytes
    media_type: str
    extension: str
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    model: str
    alpha: float
    seconds: float
    ensemble: int = 1


def upscale_upload(cache: UpscalerCache, upload: uploads.Upload, spec: str, alpha: float,
                   size: str | None, fmt: str, max_output_pixels: int,
                   cancel: threading.Event | None = None, ensemble: int = 1) -> Result:
    """The whole job for one request (blocking; call it from a worker thread). Setting
    ``cancel`` stops it between tiles (:class:`~ultrares_stream.tiling.Cancelled`).
    ``ensemble``: self-ensemble passes (1, 2, 4 or 8)."""
    start = time.perf_counter()
    picture = uploads.decode(upload)
    w, h = picture.width, picture.height
    out_w, out_h = output_size(w, h, cache.scale_of(spec), size)
    if out_w * out_h > max_output_pixels:
        raise ApiError(413, f"the result would be {out_w}x{out_h} = {out_w * out_h:,} pixels; the limit is "
                            f"{max_output_pixels:,} (choose a smaller output size)")
    upscaler = cache.view(spec, alpha, ensemble)
    try:
        with torch.inference_mode():
            result = upscale_picture(picture, upscaler, size=(out_w, out_h), cancel=cancel)
        prov = provenance.for_upscaler(upscaler)
    finally:
        cache.release(upscaler)
    data, media_type, ext = uploads.encode(result, fmt, prov)
    seconds = time.perf_counter() - start
    log.info("upscaled %s %s -> %dx%d %s with %s at alpha %.2f in %.2f s", picture.describe(), upload.format,
             out_w, out_h, fmt, upscaler.model_name, alpha, seconds)
    return Result(data, media_type, ext, (w, h), (out_w, out_h), upscaler.model_name, alpha, seconds, ensemble)
