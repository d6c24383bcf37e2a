"""Upscaling one uploaded image: output size, a small cache of loaded models, and the
decode -> network -> resize -> encode job (run on a worker thread, never the event loop),
the same steps as ``ultrares enhance`` takes for an image file (:mod:`ultrares_stream.images`)."""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .. import images, provenance
from ..images import upscale_picture
from ..sizes import parse_size
from ..upscaler import Upscaler
from . import uploads
from .errors import ApiError

log = logging.getLogger(__name__)


def output_size(width: int, height: int, scale: int, size: str | None) -> tuple[int, int]:
    """The result's (width, height): the network's native ``scale`` when ``size`` is empty,
    else the largest size with the input's aspect ratio that fits inside the ``size`` box."""
    return images.output_size(width, height, scale, size=parse_size(size) if size else None)


class UpscalerCache:
    """One :class:`Upscaler` per model spec (the most recently used ``capacity`` kept), each
    with a lock so that ``set_alpha`` and the forward pass of one job happen together."""

    def __init__(self, device: str = "auto", capacity: int = 2):
        self.device, self.capacity = device, capacity
        self._items: OrderedDict[str, tuple[Upscaler, threading.Lock]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: str) -> tuple[Upscaler, threading.Lock]:
        with self._lock:
            if spec in self._items:
                self._items.move_to_end(spec)
                return self._items[spec]
        upscaler = Upscaler(spec, device=self.device)  # may raise ModelError (a UserError)
        with self._lock:
            item = self._items.setdefault(spec, (upscaler, threading.Lock()))
            self._items.move_to_end(spec)
            while len(self._items) > self.capacity:
                old, _ = self._items.popitem(last=False)
                log.info("unloaded model %s", old)
            return item

    def scale_of(self, spec: str) -> int:
        return self.get(spec)[0].scale


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


def upscale_upload(cache: UpscalerCache, upload: uploads.Upload, spec: str, alpha: float,
                   size: str | None, fmt: str, max_output_pixels: int,
                   cancel: threading.Event | None = None) -> Result:
    """The whole job for one request (blocking; call it from a worker thread). Setting
    ``cancel`` stops it between tiles (:class:`~ultrares_stream.tiling.Cancelled`)."""
    start = time.perf_counter()
    picture = uploads.decode(upload)
    w, h = picture.width, picture.height
    upscaler, lock = cache.get(spec)
    out_w, out_h = output_size(w, h, upscaler.scale, size)
    if out_w * out_h > max_output_pixels:
        raise ApiError(413, f"the result would be {out_w}x{out_h} = {out_w * out_h:,} pixels; the limit is "
                            f"{max_output_pixels:,} (choose a smaller output size)")
    with lock, torch.inference_mode():
        upscaler.set_alpha(alpha)
        result = upscale_picture(picture, upscaler, size=(out_w, out_h), cancel=cancel)
        prov = provenance.for_upscaler(upscaler)
    data, media_type, ext = uploads.encode(result, fmt, prov)
    seconds = time.perf_counter() - start
    log.info("upscaled %s %s -> %dx%d %s with %s at alpha %.2f in %.2f s", picture.describe(), upload.format,
             out_w, out_h, fmt, upscaler.model_name, alpha, seconds)
    return Result(data, media_type, ext, (w, h), (out_w, out_h), upscaler.model_name, alpha, seconds)
