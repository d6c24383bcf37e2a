"""Provenance: every enhanced file says that it was machine-enhanced, by what and how.

Footage and photos used as evidence must not pass for originals. :func:`tags` is what is
written: PNG text chunks, a JPEG comment, EXIF ``ImageDescription``/``Software`` for TIFF and
WebP, and container metadata (``comment``, ``encoder``-independent keys) for video files.
"""
from __future__ import annotations

from importlib import metadata

SOFTWARE = "UltraRes Stream"


def version() -> str:
    try:
        return metadata.version("ultrares-stream")
    except metadata.PackageNotFoundError:
        return "unknown"


def tags(model: str, alpha: float | None, scale: int | float | None = None) -> dict[str, str]:
    """Key/value provenance for an output made by ``model`` at ``alpha`` (None: a single network)."""
    how = f"model {model}" + ("" if alpha is None else f", alpha {alpha:g}")
    factor = "" if scale is None else f"x{scale:g} "
    return {
        "Software": f"{SOFTWARE} {version()}",
        "Comment": f"Machine-enhanced by {SOFTWARE} {version()}: {factor}super-resolution with {how}. "
                   "Detail is synthesised by a neural network; this is not an original recording.",
        "ultrares:model": model,
        "ultrares:alpha": "" if alpha is None else f"{alpha:g}",
    }


def for_upscaler(upscaler) -> dict[str, str]:
    """:func:`tags` for what an :class:`~ultrares_stream.upscaler.Upscaler` is running now."""
    return tags(upscaler.model_name, upscaler.alpha if upscaler.is_pair else None, upscaler.scale)


def video_metadata(prov: dict[str, str]) -> dict[str, str]:
    """Container metadata keys FFmpeg's muxers (MP4/MOV, Matroska, ...) write for :func:`tags`."""
    return {"comment": prov["Comment"], "description": prov["Comment"],
            "ultrares_model": prov["ultrares:model"], "ultrares_alpha": prov["ultrares:alpha"],
            "software": prov["Software"]}
