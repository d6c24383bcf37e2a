"""``POST /api/v1/streams/{name}/zoom``: a box of a live camera's recent frame, x4, fused from the
frames the camera holds (:mod:`ultrares_stream.fusion.live`), as a PNG with its provenance.

Zooms run on their own small job queue (one worker thread at a lower CPU priority, a few waiting
slots; more get 429), never on the event loop and never behind an image upscale, so a zoom
answers within a second and the cameras keep their frame rate.
"""
from __future__ import annotations

import logging
import os
import threading
from functools import partial
from typing import Annotated, Literal

import numpy as np
from fastapi import FastAPI
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from .errors import ApiError, queued

log = logging.getLogger(__name__)

#: one zoom at a time, two waiting; a zoom slower than this is answered 503
ZOOM_WORKERS, ZOOM_WAITING, ZOOM_TIMEOUT_S = 1, 2, 10.0
#: how much lower the zoom worker's CPU priority is than the cameras' (nice levels, Linux)
ZOOM_NICE = 10
_niced = threading.local()

Coordinate = Annotated[int, Field(ge=-100_000, le=100_000)]
CameraName = Annotated[str, PathParam(description="the camera's configured name", max_length=200)]


class ZoomRequest(BaseModel):
    """What to zoom into: a box in the camera's decoded pixels of one recent frame."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"box": [412, 280, 40, 16], "frames": 16}]})
    box: list[Coordinate] = Field(min_length=4, max_length=4, description="x, y, width, height in the camera's "
                                  "decoded (input) pixels of the reference frame")
    frames: int = Field(16, ge=1, le=64, description="frames fused, centred on the reference "
                        "where the camera holds frames after it")
    reference: int | None = Field(None, ge=0, description="the reference frame's index (a snapshot's "
                                  "X-Ultrares-Frame-Index); default: the latest frame")
    method: Literal["fused", "single"] = Field("fused", description="fused: multi-frame fusion; single: the "
                                               "reference frame's bicubic x4 (for comparison)")


class ZoomUnreadable(BaseModel):
    """A zoom refused: the error, and for an unreadable fused crop its verdict and reasons."""

    model_config = ConfigDict(extra="allow")
    error: str = Field(description="what went wrong and what to change")
    verdict: str | None = Field(None, description="`unreadable` when fusion cannot make the box readable")
    reasons: list[str] = Field(default_factory=list, description="why it is unreadable")
    frames: str | None = Field(None, description="frames that agreed, `USED of DECODED`")
    rejected: list[str] = Field(default_factory=list, description="each rejected frame: time and reason")


def low_priority() -> None:
    """Lower this thread's CPU priority by :data:`ZOOM_NICE` (once per thread; Linux only, else nothing)."""
    if getattr(_niced, "done", False):
        return
    _niced.done = True
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + ZOOM_NICE))
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed: run at the normal priority
        log.debug("zoom worker keeps its priority (%s)", exc)


def run_zoom(stream, request: ZoomRequest):
    """The job: lower this worker's priority, then the camera's zoom (blocking)."""
    low_priority()
    return stream.zoom(tuple(request.box), request.frames, request.reference, request.method == "single")


def add_zoom_route(app: FastAPI, ctx, errors: dict) -> None:
    """Register the zoom route; ``ctx`` is the app's context (``stream(name)``, ``zooms``)."""

    @app.post("/api/v1/streams/{name}/zoom", tags=["cameras"], response_class=Response,
              summary="Zoom into a box of a camera's recent frame: x4, fused from its last frames (PNG)",
              responses={**errors, 200: {"content": {"image/png": {}}, "description": "the x4 crop with its "
                                         "provenance (PNG text chunks and X-Ultrares-* headers)"},
                         422: {"model": ZoomUnreadable}})
    async def zoom(name: CameraName, request: ZoomRequest) -> Response:
        stream = ctx.stream(name)
        if not callable(getattr(stream, "zoom", None)):
            raise ApiError(409, f"camera {name!r} keeps no frames to zoom into")
        from ..fusion.live import ZoomError

        try:
            result = await queued(ctx.zooms, partial(run_zoom, stream, request), timeout=ZOOM_TIMEOUT_S,
                                  busy="other zooms", slow=("the zoom", "try a smaller box or fewer frames"))
        except ZoomError as exc:
            status = 422 if exc.kind == "box" else 409
            raise ApiError(status, str(exc), {"Retry-After": "1"} if status == 409 else None) from None
        if result.verdict == "unreadable":
            return unreadable(result.crop)
        return zoom_response(name, result)


def unreadable(crop) -> JSONResponse:
    """422: the fused crop's ``unreadable`` verdict, its reason, frames and quantiser, instead of an image."""
    from ..fusion.evidence import tags

    rejected = [f"{f.time:.3f} s: {f.rejected}" for f in crop.frames if f.weight <= 0]
    return JSONResponse({"error": f"unreadable: {crop.reason}", "verdict": "unreadable", "reasons": [crop.reason],
                         "frames": f"{len(crop.used)} of {len(crop.frames)}", "rejected": rejected,
                         "quantiser": tags(crop)["ultrares:quantiser"]},
                        status_code=422, headers={"Cache-Control": "no-store"})


def _header(text: str) -> str:
    """``text`` safe for an HTTP header (latin-1, one line)."""
    return " ".join(text.split()).encode("latin-1", "replace").decode("latin-1")


def zoom_response(name: str, result) -> Response:
    """A camera's zoom (:class:`~ultrares_stream.fusion.live.Zoom`) as its PNG answer."""
    x, y, bw, bh = result.tags["ultrares:box"].split(",")
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60] or "camera"
    method = "fused" if result.crop is not None else "single"
    return png_response(result.image, result.tags, result.crop, result.seconds, {
        "Content-Disposition": f'inline; filename="{stem}-zoom-{result.reference.index}-{x}_{y}_{bw}_{bh}-{method}.png"',
        "X-Ultrares-Reference-Index": str(result.reference.index)})


def png_response(image: np.ndarray, prov: dict[str, str], crop, seconds: float, headers: dict[str, str]) -> Response:
    """A zoom's x4 ``image`` as PNG with its provenance ``prov`` (text chunks and X-Ultrares-*
    headers); ``crop``: the fused crop (None for a single frame), for its residuals."""
    from ..fusion.live import png

    h, w = image.shape[:2]
    _, _, bw, bh = prov["ultrares:box"].split(",")
    residuals = [f.residual for f in crop.used] if crop is not None else []
    return Response(png(image, prov), media_type="image/png", headers={
        **headers, "X-Ultrares-Model": prov["ultrares:model"], "X-Ultrares-Method": _header(prov["ultrares:method"]),
        "X-Ultrares-Frames": prov["ultrares:frames"], "X-Ultrares-Verdict": _header(prov["ultrares:verdict"]),
        "X-Ultrares-Box": prov["ultrares:box"], "X-Ultrares-Reference-Time": prov["ultrares:reference"],
        "X-Ultrares-Residual": f"{np.median(residuals):.2f}" if residuals else "",
        "X-Ultrares-Input-Size": f"{bw}x{bh}", "X-Ultrares-Output-Size": f"{w}x{h}",
        "X-Ultrares-Seconds": f"{seconds:.3f}", "X-Ultrares-Comment": _header(prov["Comment"]),
        "X-Ultrares-Quantiser": _header(prov.get("ultrares:quantiser", "")),
        "Cache-Control": "no-store",
    })
