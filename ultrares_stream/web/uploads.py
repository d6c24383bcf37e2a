"""Uploaded image files: identify the type from the content and refuse oversized and
decompression-bomb images from the header alone, before any work is queued.

Pillow reads only the header in ``Image.open``; the pixel count is checked before
anything is decoded. Decoding and encoding are :mod:`ultrares_stream.images`' (grey,
alpha, 16-bit PNG and ICC profiles kept, as for ``ultrares enhance``); this module turns
their errors into HTTP answers.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from .. import images
from ..errors import UserError
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

    image: Image.Image  # header only
    format: str  # Pillow's name: PNG, JPEG, ...
    data: bytes

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


async def read_bounded(upload, max_bytes: int) -> bytes:
    """The bytes of ``upload`` (a FastAPI ``UploadFile``); 413 when over ``max_bytes``, read no further."""
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(413, f"the upload is over {max_bytes:,} bytes; send a smaller file")
    return data


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
    return Upload(image, image.format or "unknown", data)


def decode(upload: Upload) -> images.Picture:
    """Decode to a :class:`~ultrares_stream.images.Picture` (EXIF orientation applied); 400 if damaged."""
    try:
        return images.read_image(upload.data, name=f"the {upload.format} image", formats=INPUT_FORMATS)
    except UserError as exc:
        raise ApiError(400, f"{exc}; the file may be truncated or damaged, upload it again") from None


def encode(picture: images.Picture, fmt: str, provenance: dict[str, str] | None = None) -> tuple[bytes, str, str]:
    """The result as (file bytes, media type, extension) in output format ``fmt``, with ``provenance``."""
    pil_format, media_type, ext = OUTPUT_FORMATS[fmt]
    return (images.encode_image(picture, pil_format, quality=92, name="the result", provenance=provenance),
            media_type, ext)
