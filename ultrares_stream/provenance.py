"""Provenance: every enhanced file says that it was machine-enhanced, by what and how.

Footage and photos used as evidence must not pass for originals. :func:`tags` is what is
written: PNG text chunks, a JPEG comment, EXIF ``ImageDescription``/``Software`` for TIFF and
WebP, and container metadata (``comment``, ``encoder``-independent keys) for video files.
"""
from __future__ import annotations

from importlib import metadata

SOFTWARE = "UltraRes Stream"
#: the name a live output (RTSP session, MPEG-TS service) and a snapshot carry
LIVE_TITLE = "Machine-enhanced video (UltraRes Stream super-resolution, not an original recording)"


def version() -> str:
    try:
        return metadata.version("ultrares-stream")
    except metadata.PackageNotFoundError:
        return "unknown"


def tags(model: str, alpha: float | None, scale: int | float | None = None, ensemble: int = 1) -> dict[str, str]:
    """Key/value provenance for an output made by ``model`` at ``alpha`` (None: a single network),
    with ``ensemble`` forward passes averaged per frame."""
    how = (f"model {model}" + ("" if alpha is None else f", alpha {alpha:g}")
           + ("" if ensemble == 1 else f", self-ensemble of {ensemble} orientations"))
    factor = "" if scale is None else f"x{scale:g} "
    return {
        "Software": f"{SOFTWARE} {version()}",
        "Comment": f"Machine-enhanced by {SOFTWARE} {version()}: {factor}super-resolution with {how}. "
                   "Detail is synthesised by a neural network; this is not an original recording.",
        "ultrares:model": model,
        "ultrares:alpha": "" if alpha is None else f"{alpha:g}",
        "ultrares:ensemble": str(ensemble),
    }


def for_upscaler(upscaler) -> dict[str, str]:
    """:func:`tags` for what an :class:`~ultrares_stream.upscaler.Upscaler` is running now."""
    return tags(upscaler.model_name, upscaler.alpha if upscaler.is_pair else None, upscaler.scale,
                upscaler.ensemble)


def video_metadata(prov: dict[str, str]) -> dict[str, str]:
    """Container metadata keys FFmpeg's muxers (MP4/MOV, Matroska, ...) write for :func:`tags`."""
    return {"comment": prov["Comment"], "description": prov["Comment"],
            "ultrares_model": prov["ultrares:model"], "ultrares_alpha": prov["ultrares:alpha"],
            "ultrares_ensemble": prov["ultrares:ensemble"],
            "software": prov["Software"],
            # what live containers carry: the RTSP session name (SDP s=), the MPEG-TS service of HLS segments
            "title": LIVE_TITLE, "service_provider": SOFTWARE, "service_name": LIVE_TITLE}
