"""Uploaded image files: identify the type from the content, refuse oversized and
decompression-bomb images from the header alone, decode, and encode the result.

Pillow reads only the header in ``Image.open``; the pixel count is checked before
``load()`` decodes anything.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ApiError

#: Pillow decoders tried on uploads (the type comes from the bytes, never the file name).
INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
#: output format name -> (Pillow format, media type, file extension)
OUTPUT_FORMATS = {
    "png": ("PNG", "image/png", "png"),
    "jpeg": ("JPEG", "image/jpeg", "jpg"),
    "webp": ("WEBP", "image/webp", "webp"),
}


@dataclass
class Upload:
    """An identified, not yet decoded, image."""

    image: Image.Image
    format: str  # Pillow's name: PNG, JPEG, ...

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def identify(data: bytes, max_pixels: int) -> Upload:
    """Open ``data`` as an image from its header; 415 if it is not one we read, 413 if too many pixels."""
    if not data:
        raise ApiError(400, "the uploaded file is empty; choose an image file (PNG, JPEG, WebP, BMP, TIFF, GIF)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own, lower limit
        try:
            image = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
        except Image.DecompressionBombError as exc:
            raise ApiError(413, f"image has too many pixels ({exc}); the limit is {max_pixels:,}") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            raise ApiError(415, "the upload is not a PNG, JPEG, WebP, BMP, TIFF or GIF image (judged from its "
                                "content, not its name or type); choose an image file") from None
    w, h = image.size
    if w < 1 or h < 1:
        raise ApiError(400, f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ApiError(413, f"image is {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,} pixels "
                            "(downscale it or crop it first)")
    return Upload(image, image.format or "unknown")


def decode(upload: Upload) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode to (RGB HxWx3 uint8, alpha HxW uint8 or None), EXIF orientation applied; 400 if damaged."""
    try:
        image = upload.image
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ApiError(400, f"the {upload.format} image could not be decoded ({_describe(exc)}); "
                            "the file may be truncated or damaged, upload it again") from None
    alpha = None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        if alpha.min() == 255:
            alpha = None
        rgb = rgba.convert("RGB")
    else:
        rgb = image.convert("RGB")
    return np.asarray(rgb), alpha


def encode(rgb: np.ndarray, fmt: str, alpha: np.ndarray | None = None) -> tuple[bytes, str, str]:
    """HxWx3 uint8 (+ optional HxW alpha) -> (file bytes, media type, extension)."""
    pil_format, media_type, ext = OUTPUT_FORMATS[fmt]
    image = Image.fromarray(rgb, "RGB")
    if alpha is not None and fmt != "jpeg":
        image.putalpha(Image.fromarray(alpha, "L"))
    buf = io.BytesIO()
    options = {"PNG": {"compress_level": 6}, "JPEG": {"quality": 92, "subsampling": 0},
               "WEBP": {"quality": 92, "method": 4}}[pil_format]
    image.save(buf, pil_format, **options)
    return buf.getvalue(), media_type, ext


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return text[:160]
