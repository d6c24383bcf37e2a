"""``POST /api/v1/zoom``: a box of an uploaded clip at a time, x4, fused from the frames around it
(what ``ultrares zoom CLIP --at T --box X,Y,W,H`` writes: :func:`~ultrares_stream.fusion.clip.clip_crop`),
or with ``method=single`` that one frame's bicubic x4 for comparison, as a PNG with its provenance.

The upload is bounded as an image upload is: its bytes (413), then its frames' pixels from the
container's header before anything is decoded (413). It is written to a private temporary folder
for the decoder and removed once the crop is made. Clip zooms run on their own job queue (one worker
at a lower CPU priority, two waiting), never behind a camera's zoom or an image upscale.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, File, Form, UploadFile
from fastapi.responses import Response

from .. import provenance
from ..errors import FieldError, UserError
from . import uploads
from .errors import ApiError, queued
from .zoom import ZoomUnreadable, low_priority, png_response, unreadable

CLIP_ZOOM_WORKERS, CLIP_ZOOM_WAITING = 1, 2
#: the latest time a request may name (s): bounds the decoder's seek
MAX_AT_S = 1_000_000.0


@dataclass(frozen=True)
class ClipRequest:
    """What to zoom into: ``box`` (the clip's pixels) of the frame nearest ``at`` s, ``frames``
    fused around it, or (``single``) that frame's bicubic x4."""

    at: float
    box: tuple[int, int, int, int]
    frames: int
    single: bool


def api_error(exc: UserError, shown=lambda text: text) -> ApiError:
    """The shared clip code's UserError as an answer: a field of the request (``at``, ``box``) out of
    range is 422 naming it, anything else about the clip 400; ``shown`` rewrites the message (hides
    server paths)."""
    if isinstance(exc, FieldError):
        return ApiError(422, shown(f"{exc.field} {exc.detail}"))
    return ApiError(400, shown(str(exc)))


def clip_name(filename: str | None) -> str:
    """The upload's file name, safe as a file name in a folder of ours (never a path)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename or "").name)[-80:].lstrip(".")
    return name or "clip"


def check_pixels(path: Path, max_pixels: int) -> None:
    """413 when the clip's frames have more than ``max_pixels`` pixels (read from the container's
    header); a file the decoder cannot open passes, for :func:`clip_crop` to say what is wrong."""
    import av

    try:
        with av.open(str(path)) as container:
            video = container.streams.video
            w, h = (video[0].codec_context.width, video[0].codec_context.height) if video else (0, 0)
    except (av.FFmpegError, OSError, ValueError):
        return
    if w * h > max_pixels:
        raise ApiError(413, f"the clip's frames are {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,} "
                            "pixels (scale the clip down or cut out the region first)")


def run_clip_zoom(data: bytes, name: str, request: ClipRequest, max_pixels: int):
    """The job (a worker thread): the upload into a temporary folder, then :func:`clip_crop` on it.
    Errors are ApiErrors naming the clip by its upload's name; the folder is always removed."""
    from ..fusion.clip import clip_crop

    low_priority()
    with tempfile.TemporaryDirectory(prefix="ultrares-clip-") as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        check_pixels(path, max_pixels)
        try:
            return clip_crop(path, request.at, request.box, request.frames, request.single)
        except ApiError:
            raise
        except UserError as exc:
            raise api_error(exc, lambda text: text.replace(str(path), name).replace(folder, "")) from None


def single_tags(box: tuple[int, int, int, int], at: float, name: str) -> dict[str, str]:
    """Provenance of one frame's bicubic x4 of ``box`` (the frame at ``at`` s of clip ``name``)."""
    from ..fusion.live import SINGLE_METHOD

    where = ",".join(map(str, box))
    return {
        "Software": f"{provenance.SOFTWARE} {provenance.version()}",
        "Comment": f"One frame of {name}, box {where} of the frame at {at:.3f} s resized x4 by bicubic "
                   "interpolation: no enhancement, no fusion.",
        "ultrares:model": "bicubic", "ultrares:alpha": "", "ultrares:ensemble": "1",
        "ultrares:method": SINGLE_METHOD, "ultrares:frames": "1 of 1", "ultrares:timestamps": f"{at:.3f}",
        "ultrares:reference": f"{at:.3f}", "ultrares:box": where, "ultrares:verdict": "single frame",
    }


def clip_response(name: str, made, request: ClipRequest) -> Response:
    """The crop (:class:`~ultrares_stream.fusion.clip.ClipCrop`) as PNG with its provenance."""
    from ..fusion.evidence import tags

    prov = tags(made.crop) if made.crop is not None else single_tags(request.box, made.time, name)
    x, y, w, h = request.box
    stem = Path(name).stem[:60] or "clip"
    method = "single" if made.crop is None else "fused"
    return png_response(made.image, prov, made.crop, made.seconds, {
        "Content-Disposition": f'inline; filename="{stem}-zoom-{made.time:.3f}s-{x}_{y}_{w}_{h}-{method}.png"'})


def parse_request(at: float, box: str, frames: int, method: str) -> ClipRequest:
    from ..fusion.clip import parse_box

    try:
        return ClipRequest(at, parse_box(box), frames, method == "single")
    except UserError as exc:
        raise api_error(exc) from None


def add_clip_zoom_route(app: FastAPI, ctx, errors: dict) -> None:
    """Register ``POST /api/v1/zoom``; ``ctx`` is the app's context (``limits``, ``clip_zooms``)."""

    @app.post("/api/v1/zoom", tags=["clips"], response_class=Response,
              summary="Zoom into a box of an uploaded clip at a time: x4, fused from the frames around it (PNG)",
              responses={**errors, 200: {"content": {"image/png": {}}, "description": "the x4 crop with its "
                                         "provenance (PNG text chunks and X-Ultrares-* headers)"},
                         422: {"model": ZoomUnreadable}})
    async def clip_zoom(
        clip: Annotated[UploadFile, File(description="a video file (any container and codec FFmpeg decodes)")],
        at: Annotated[float, Form(ge=0.0, le=MAX_AT_S, allow_inf_nan=False,
                                  description="seconds from the start; the frame nearest it is the reference")],
        box: Annotated[str, Form(max_length=100, description="X,Y,W,H in the clip's pixels of that frame, "
                                                             "e.g. 412,280,40,16")],
        frames: Annotated[int, Form(ge=1, le=64, description="frames fused, centred on the reference "
                                                              "(fewer at the clip's ends)")] = 16,
        method: Annotated[Literal["fused", "single"], Form(description="fused: multi-frame fusion; single: the "
                                                           "reference frame's bicubic x4 (for comparison)")] = "fused",
    ) -> Response:
        request = parse_request(at, box, frames, method)
        data = await uploads.read_bounded(clip, ctx.limits.max_upload_bytes)
        if not data:
            raise ApiError(400, "the uploaded clip is empty; choose a video file")
        name = clip_name(clip.filename)
        job = partial(run_clip_zoom, data, name, request, ctx.limits.max_pixels)
        made = await queued(ctx.clip_zooms, job, timeout=ctx.limits.request_timeout, busy="other clip zooms",
                            slow=("the zoom", "try a smaller box or fewer frames"))
        if made.crop is not None and made.crop.verdict == "unreadable":
            return unreadable(made.crop)
        return clip_response(name, made, request)
