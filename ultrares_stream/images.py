"""Image files in and out: PNG, JPEG, WebP, BMP and TIFF, detected from content.

:func:`read_image` turns a file into a :class:`Picture` (float tensors in [0, 1]:
colour planes, plus an alpha plane when the file has one), :func:`upscale_picture`
runs it through an :class:`~ultrares_stream.upscaler.Upscaler`, and
:func:`write_image` writes it back atomically (temporary name in the destination
folder, renamed on success).

* Grayscale stays grayscale: the grey plane goes through the RGB model as three
  equal channels and comes back as BT.601 luma (as Real-ESRGAN does).
* Alpha is kept and upscaled separately, as Real-ESRGAN does: by default the alpha
  plane goes through the model as a grey image in the same batch as the colour
  (``alpha_mode="model"``); ``alpha_mode="bicubic"`` resizes it instead.
* 16-bit PNGs (grey, grey+alpha, RGB, RGBA) are read and written at 16 bits with
  PyAV's PNG codec (Pillow reads 16-bit colour PNGs as 8-bit); processing is in
  float. 16-bit grey TIFFs stay 16-bit through Pillow.
* Admission before any pixel is decoded: the size the header declares is checked against
  ``max_pixels`` (default :data:`MAX_INPUT_PIXELS`) and, in :func:`enhance_image`, the output
  it would make against :data:`MAX_OUTPUT_PIXELS`; files of more than :data:`MAX_FRAMES`
  pages or frames are refused without walking them all (:func:`count_frames`); decoding stops
  at its next read of the file once ``deadline_s`` have passed (:class:`DecodeTimeout`).
* Truncated files are refused, Pillow's ``LOAD_TRUNCATED_IMAGES`` kept off; so are JPEGs whose
  scan data ends before the image does (an end-of-image marker after a cut: libjpeg would
  fill the rest with one flat colour, :func:`jpeg_is_complete`).
"""
from __future__ import annotations

import io
import logging
import os
import struct
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from . import provenance
from .errors import UserError

log = logging.getLogger(__name__)

#: Pillow format name -> the extension written for it
FORMAT_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
SUPPORTED_FORMATS = tuple(FORMAT_SUFFIX)
#: extensions picked up when a folder is given (files named explicitly are taken whatever their name)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".dib", ".tif", ".tiff"})
#: largest output written (pixels): 16384 x 16384
MAX_OUTPUT_PIXELS = 16384 * 16384
#: largest input decoded (pixels, as declared by the header): a 40-megapixel photo, 480 MB as float RGB
MAX_INPUT_PIXELS = 40_000_000
#: most pages (TIFF) or frames (GIF, WebP, APNG) a file may have; only the first is enhanced
MAX_FRAMES = 1000
#: seconds a decode may take before it is stopped (at its next read of the file)
DECODE_DEADLINE_S = 30.0
#: BT.601 luma weights (what Real-ESRGAN's cv2 RGB2GRAY uses)
_LUMA = (0.299, 0.587, 0.114)
_ALPHA_MODES = ("model", "bicubic")


@dataclass
class Picture:
    """An image as float tensors in [0, 1].

    ``colour``: 1xCxHxW, C = 3 (RGB) or 1 (grey). ``alpha``: 1x1xHxW or None.
    ``bits``: 8 or 16 (what the file held and what will be written where the format allows).
    ``format``: the Pillow format name of the source file.
    """

    colour: torch.Tensor
    alpha: torch.Tensor | None = None
    bits: int = 8
    format: str = "PNG"
    icc_profile: bytes | None = field(default=None, repr=False)

    @property
    def grey(self) -> bool:
        return self.colour.shape[1] == 1

    @property
    def width(self) -> int:
        return int(self.colour.shape[-1])

    @property
    def height(self) -> int:
        return int(self.colour.shape[-2])

    def describe(self) -> str:
        kind = "grey" if self.grey else "RGB"
        return f"{self.width}x{self.height} {kind}{'+alpha' if self.alpha is not None else ''} {self.bits}-bit"


# ---------------------------------------------------------------- reading


class DecodeTimeout(UserError):
    """Decoding an image took longer than its deadline and was stopped."""


class _Deadline(io.BytesIO):
    """A file's bytes as Pillow reads them: a read after the deadline raises :class:`DecodeTimeout`,
    so a slow decode stops at its next read (Pillow reads compressed data 64 KB at a time, and
    TIFF pages one header at a time). One libtiff or 16-bit PNG decode is a single call, which
    the pixel limit bounds instead."""

    def __init__(self, data: bytes, seconds: float | None, label: str):
        super().__init__(data)
        self.seconds, self.label = seconds, label
        self.until = None if seconds is None else time.monotonic() + seconds

    def read(self, size: int | None = -1) -> bytes:
        if self.until is not None and time.monotonic() > self.until:
            raise DecodeTimeout(f"{self.label}: decoding took longer than {self.seconds:g} s; stopped and refused")
        return super().read(size)


def read_image(source: str | Path | bytes, name: str | None = None,
               formats: tuple[str, ...] = SUPPORTED_FORMATS, max_pixels: int | None = MAX_INPUT_PIXELS,
               deadline_s: float | None = DECODE_DEADLINE_S) -> Picture:
    """Read an image file, or a whole file's bytes; the type comes from the content, not the name.

    Raises :class:`UserError` naming the file (``name`` for bytes) for anything that is not
    a complete image in one of ``formats`` (Pillow names) of at most ``max_pixels`` (declared
    by its header, checked before decoding) and :data:`MAX_FRAMES` frames, decoded within
    ``deadline_s`` seconds (:class:`DecodeTimeout`; None: no deadline).
    """
    label = name or ("image" if isinstance(source, bytes) else str(source))
    _truncated_images_refused()
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(_Deadline(data, deadline_s, label)) as im:
                fmt = _admit(im, data, formats, max_pixels, label)
                if fmt == "PNG" and _png_bit_depth(data) == 16:
                    pic = _read_png16(data, label)
                    pic.icc_profile = im.info.get("icc_profile")
                    return pic
                im.load()
                if fmt == "JPEG" and not jpeg_is_complete(data):
                    raise UserError(f"{label}: the JPEG is truncated (its image data ends before the "
                                    f"{im.width}x{im.height} picture does); refused")
                return _from_pillow(ImageOps.exif_transpose(im), fmt, label)
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{label}: is a folder") from None
    except UnidentifiedImageError:
        raise UserError(f"{label}: not an image in a supported format (or corrupt)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{label}: image is too large (more than {Image.MAX_IMAGE_PIXELS} pixels; "
                        "refused as a possible decompression bomb)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise UserError(f"{label}: cannot decode the image (corrupt or truncated: {exc})") from None


def _truncated_images_refused() -> None:
    """Keep Pillow's ``LOAD_TRUNCATED_IMAGES`` off (it would fill the missing part of a cut file)."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning("Pillow's LOAD_TRUNCATED_IMAGES was turned on in this process; turned off again: "
                    "truncated images are refused")
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def _admit(im: Image.Image, data: bytes, formats: tuple[str, ...], max_pixels: int | None, label: str) -> str:
    """``im``'s format once its header passes: a supported format, at most ``max_pixels`` declared
    and :data:`MAX_FRAMES` frames (counted without walking more). UserError otherwise."""
    fmt = im.format or "?"
    if fmt not in formats:
        raise UserError(f"{label}: {fmt} images are not supported (supported: {', '.join(formats)})")
    w, h = im.size
    if max_pixels and w * h > max_pixels:
        raise UserError(f"{label}: image is {w}x{h} = {w * h:,} pixels, more than the limit of {max_pixels:,}; "
                        "refused before decoding (downscale or crop it first)")
    frames = count_frames(im, data)
    if frames > MAX_FRAMES:
        raise UserError(f"{label}: has more than {MAX_FRAMES} pages or frames; refused (only the first would be "
                        "enhanced: save that one alone)")
    if frames > 1:
        log.warning("%s: has %d frames; only the first is enhanced", label, frames)
    return fmt


def count_frames(im: Image.Image, data: bytes, cap: int = MAX_FRAMES) -> int:
    """Frames (pages) in ``im``, counted up to ``cap + 1`` at most: Pillow's ``n_frames`` walks every
    TIFF page and GIF frame (seconds for 225,000 tiny pages); WebP and APNG declare theirs."""
    if im.format == "GIF":
        return gif_frames(data, cap)
    if im.format != "TIFF":
        return getattr(im, "n_frames", 1)
    count = 1
    try:
        while count <= cap:  # one page header read per step
            im.seek(count)
            count += 1
    except EOFError:
        pass
    im.seek(0)
    return count


def gif_frames(data: bytes, cap: int = MAX_FRAMES) -> int:
    """Image descriptors in a GIF's blocks, counted up to ``cap + 1``."""
    pos, count, end = 13, 0, len(data)
    if end > 10 and data[10] & 0x80:  # global colour table
        pos += 3 << ((data[10] & 7) + 1)
    while pos < end and count <= cap:
        kind = data[pos]
        if kind == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif kind == 0x2C and pos + 10 <= end:  # image: descriptor, local colour table, LZW size, sub-blocks
            count += 1
            flags = data[pos + 9]
            pos += 10 + ((3 << ((flags & 7) + 1)) if flags & 0x80 else 0)
            pos = _skip_sub_blocks(data, pos + 1)
        else:  # trailer, or damage (the decoder will say)
            break
    return max(count, 1)


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    while pos < len(data) and data[pos]:
        pos += data[pos] + 1
    return pos + 1


#: bytes inserted before a JPEG's end marker by :func:`jpeg_is_complete` (no 0xFF: no marker)
_JPEG_FILLER = bytes(range(1, 255)) * 8


def jpeg_is_complete(data: bytes) -> bool:
    """True when the JPEG's scan data covers the whole picture.

    libjpeg fills the blocks after a premature end-of-image marker with zero bits and only warns
    (Pillow ignores the warning), so a cut file that still ends in a marker decodes as a flat
    colour. Bits inserted before the marker are ignored after a complete scan and decoded into
    the missing blocks of an incomplete one: the two decodes (at 1/8 scale: the DC terms,
    which a cut changes) differ exactly when data is missing. Progressive JPEGs: only a cut in
    the last scan that reaches the DC terms shows (later scans refine a complete picture)."""
    end = _jpeg_end(data)
    if end is None:
        return False
    try:
        return _jpeg_thumbnail(data) == _jpeg_thumbnail(data[:end] + _JPEG_FILLER + data[end:])
    except (OSError, SyntaxError, ValueError):
        return False


def _jpeg_thumbnail(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        im.draft(im.mode, ((im.width + 7) // 8, (im.height + 7) // 8))
        im.load()
        return im.tobytes()


def _jpeg_end(data: bytes) -> int | None:
    """Offset of the end-of-image marker after the first image's scans; None when it has none."""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xD9:
            return pos
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
            if marker == 0xDA:  # a scan: entropy-coded data up to the next real marker
                pos = _scan_end(data, pos)
    return pos if data[pos:pos + 2] == b"\xff\xd9" else None


def _scan_end(data: bytes, pos: int) -> int:
    """The first marker at or after ``pos`` that is not a stuffed 0xFF or a restart marker."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return len(data)
        nxt = data[pos + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
            pos += 2
        elif nxt == 0xFF:
            pos += 1
        else:
            return pos


def _from_pillow(im: Image.Image, fmt: str, path: str) -> Picture:
    mode = im.mode
    icc = im.info.get("icc_profile")
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        log.info("%s: converting %s to RGB", path, mode)
        im = im.convert("RGB")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float32)
        if mode == "I" and (arr.min() < 0 or arr.max() > 65535):
            raise UserError(f"{path}: 32-bit integer images are not supported")
        return Picture(_planes(arr[..., None] / 65535.0), None, 16, fmt, icc)
    if mode == "F":
        raise UserError(f"{path}: floating-point images are not supported")
    arr = np.asarray(im)
    if arr.dtype != np.uint8 or mode not in ("L", "LA", "RGB", "RGBA"):
        raise UserError(f"{path}: pixel mode {mode} is not supported")
    if arr.ndim == 2:
        arr = arr[..., None]
    x = _planes(arr.astype(np.float32) / 255.0)
    colour, alpha = (x[:, :-1], x[:, -1:]) if mode in ("LA", "RGBA") else (x, None)
    return Picture(colour, alpha, 8, fmt, icc)


def _planes(hwc: np.ndarray) -> torch.Tensor:
    """HxWxC float array -> 1xCxHxW float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(hwc, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0).contiguous()


# PNG colour type -> (channels, PyAV 16-bit big-endian pixel format)
_PNG16 = {0: (1, "gray16be"), 4: (2, "ya16be"), 2: (3, "rgb48be"), 6: (4, "rgba64be")}


def _png_bit_depth(data: bytes) -> int:
    return data[24] if len(data) >= 26 and data[12:16] == b"IHDR" else 8


def _read_png16(data: bytes, path: str) -> Picture:
    import av

    head = data[:26]
    width, height = struct.unpack(">II", head[16:24])
    colour_type = head[25]
    if colour_type not in _PNG16:
        raise UserError(f"{path}: 16-bit PNG colour type {colour_type} is not supported")
    channels, pix_fmt = _PNG16[colour_type]
    if width * height > Image.MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError("too large")
    try:
        codec = av.CodecContext.create("png", "r")
        frames = codec.decode(av.Packet(data))
    except av.FFmpegError as exc:
        raise UserError(f"{path}: cannot decode the 16-bit PNG (corrupt or truncated: {exc})") from None
    if not frames:
        raise UserError(f"{path}: cannot decode the 16-bit PNG (corrupt or truncated)")
    frame = frames[0]
    if frame.format.name != pix_fmt:
        frame = frame.reformat(format=pix_fmt)
    plane = frame.planes[0]
    rows = np.frombuffer(bytes(plane), dtype=">u2").reshape(height, plane.line_size // 2)
    arr = rows[:, : width * channels].reshape(height, width, channels).astype(np.float32) / 65535.0
    x = _planes(arr)
    colour, alpha = (x[:, :-1], x[:, -1:]) if channels in (2, 4) else (x, None)
    return Picture(colour, alpha, 16, "PNG")


# ---------------------------------------------------------------- upscaling


def output_size(width: int, height: int, model_scale: int, scale: float | None = None,
                size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The output (width, height): the model's own scale, ``scale`` times the input, or
    the largest size fitting inside the ``size`` box with the aspect ratio kept."""
    from .sizes import fit_inside

    if scale is not None and size is not None:
        raise UserError("give either a scale or an output size, not both")
    if size is not None:
        return fit_inside(width, height, size)
    s = model_scale if scale is None else scale
    if not s > 0:
        raise UserError(f"scale must be positive, not {s}")
    return max(1, round(width * s)), max(1, round(height * s))


def upscale_picture(pic: Picture, upscaler, size: tuple[int, int] | None = None,
                    alpha_mode: str = "model", cancel: threading.Event | None = None) -> Picture:
    """Upscale colour (and alpha) with ``upscaler``; ``size`` = final (width, height).
    ``cancel``: see :meth:`~ultrares_stream.upscaler.Upscaler.upscale`."""
    if alpha_mode not in _ALPHA_MODES:
        raise UserError(f"alpha mode must be one of {', '.join(_ALPHA_MODES)}, not {alpha_mode!r}")
    size = size or (pic.width * upscaler.scale, pic.height * upscaler.scale)
    check_output_size(size)
    batch = [_as_rgb(pic.colour)]
    if pic.alpha is not None and alpha_mode == "model":
        batch.append(_as_rgb(pic.alpha))
    out = upscaler.upscale(torch.cat(batch), size=size, cancel=cancel).float().cpu()
    colour = _luma(out[:1]) if pic.grey else out[:1]
    alpha = None
    if pic.alpha is not None:
        if alpha_mode == "model":
            alpha = _luma(out[1:2])
        else:
            alpha = F.interpolate(pic.alpha, size=(size[1], size[0]), mode="bicubic", align_corners=False,
                                  antialias=size[0] < pic.width or size[1] < pic.height).clamp_(0, 1)
    return Picture(colour.contiguous(), alpha, pic.bits, pic.format, pic.icc_profile)


def check_output_size(size: tuple[int, int], label: str | None = None) -> None:
    """UserError when an output of ``size`` would be over :data:`MAX_OUTPUT_PIXELS`."""
    if size[0] * size[1] > MAX_OUTPUT_PIXELS:
        raise UserError(f"{label + ': ' if label else ''}output would be {size[0]}x{size[1]} pixels, more than the "
                        f"limit of {MAX_OUTPUT_PIXELS // 1_000_000} megapixels; choose a smaller --size or --scale")


def _as_rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_LUMA, dtype=rgb.dtype).view(1, 3, 1, 1)
    return (rgb * w).sum(1, keepdim=True).clamp_(0, 1)


# ---------------------------------------------------------------- writing


def format_for_path(path: str | Path) -> str:
    """Pillow format name for an output file name (by extension)."""
    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt not in SUPPORTED_FORMATS:
        raise UserError(f"{path}: cannot tell the output format from {suffix or 'no extension'!r}; "
                        f"use one of {', '.join(sorted(IMAGE_SUFFIXES))}")
    return fmt


def encode_image(pic: Picture, fmt: str, quality: int = 95, name: str = "image",
                 provenance: dict[str, str] | None = None) -> bytes:
    """``pic`` as the bytes of a ``fmt`` (Pillow name) file.

    Formats without alpha (JPEG) drop it, with a warning; formats without 16-bit
    samples (JPEG, WebP, BMP, 16-bit colour TIFF) get 8 bits, with a warning.
    ``provenance`` (:func:`ultrares_stream.provenance.tags`) goes into PNG text chunks, the
    JPEG comment or EXIF (TIFF, WebP); BMP has no place for it.
    """
    if fmt not in SUPPORTED_FORMATS:
        raise UserError(f"{name}: cannot write {fmt} images (supported: {', '.join(SUPPORTED_FORMATS)})")
    alpha = pic.alpha
    if alpha is not None and fmt == "JPEG":
        log.warning("%s: JPEG has no alpha channel; transparency dropped", name)
        alpha = None
    x = pic.colour if alpha is None else torch.cat((pic.colour, alpha), 1)
    hwc = x[0].permute(1, 2, 0).numpy()
    if pic.bits == 16 and fmt == "PNG":
        return png_with_text(_encode_png16(hwc), provenance or {})
    buf = io.BytesIO()
    _pillow_image(hwc, pic.bits, fmt, name).save(buf, format=fmt, **_save_options(fmt, quality, pic),
                                                  **_provenance_options(fmt, provenance))
    return buf.getvalue()


def _provenance_options(fmt: str, prov: dict[str, str] | None) -> dict:
    if not prov:
        return {}
    if fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in prov.items():
            info.add_itxt(key, value)
        return {"pnginfo": info}
    if fmt == "JPEG":
        return {"comment": prov["Comment"].encode()}
    if fmt in ("TIFF", "WEBP"):
        exif = Image.Exif()
        exif[0x010E] = prov["Comment"]  # ImageDescription
        exif[0x0131] = prov["Software"]  # Software
        return {"exif": exif}
    return {}


def png_with_text(png: bytes, items: dict[str, str]) -> bytes:
    """``png`` with a tEXt chunk per item inserted after IHDR (Latin-1 text, as tEXt requires)."""
    import zlib

    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, then IHDR: length, type, 13 bytes, CRC
    chunks = b""
    for key, value in items.items():
        body = b"tEXt" + key.encode("latin-1", "replace") + b"\0" + value.encode("latin-1", "replace")
        chunks += struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    return png[:ihdr_end] + chunks + png[ihdr_end:]


def write_image(pic: Picture, path: str | Path, fmt: str | None = None, quality: int = 95,
                provenance: dict[str, str] | None = None) -> Path:
    """Write ``pic`` to ``path`` (format from ``fmt`` or the extension), atomically
    (:func:`encode_image` says what each format keeps)."""
    path = Path(path)
    data = encode_image(pic, fmt or format_for_path(path), quality, str(path), provenance)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` would race other threads)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _pillow_image(hwc: np.ndarray, bits: int, fmt: str, path: str) -> Image.Image:
    channels = hwc.shape[2]
    if bits == 16 and channels == 1 and fmt == "TIFF":
        return Image.fromarray(np.round(hwc[..., 0] * 65535.0).clip(0, 65535).astype(np.uint16))  # I;16
    if bits == 16:
        log.warning("%s: %s cannot hold %d-channel 16-bit samples here; writing 8 bits", path, fmt, channels)
    arr = np.round(hwc * 255.0).clip(0, 255).astype(np.uint8)
    im = Image.fromarray(arr[..., 0] if channels == 1 else arr)  # L, LA, RGB or RGBA from the shape
    mode = im.mode
    if fmt == "WEBP" and mode in ("L", "LA"):  # WebP has no grey storage
        im = im.convert("RGBA" if mode == "LA" else "RGB")
    elif fmt == "BMP" and mode == "LA":
        im = im.convert("RGBA")
    return im


def _save_options(fmt: str, quality: int, pic: Picture) -> dict:
    opts: dict = {}
    if pic.icc_profile and fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        opts["icc_profile"] = pic.icc_profile
    if fmt in ("JPEG", "WEBP"):
        opts["quality"] = quality
    if fmt == "JPEG":
        opts["subsampling"] = 0  # 4:4:4: keep the colour detail the network restored
    if fmt == "TIFF":
        opts["compression"] = "tiff_deflate"
    return opts


def _encode_png16(hwc: np.ndarray) -> bytes:
    import av

    h, w, channels = hwc.shape
    pix_fmt = {c: f for c, f in _PNG16.values()}[channels]
    frame = av.VideoFrame(w, h, pix_fmt)
    plane = frame.planes[0]
    rows = np.zeros((h, plane.line_size // 2), dtype=">u2")
    rows[:, : w * channels] = np.round(hwc * 65535.0).clip(0, 65535).astype(">u2").reshape(h, w * channels)
    plane.update(rows.tobytes())
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = w, h, pix_fmt
    packets = codec.encode(frame) + codec.encode(None)
    return b"".join(bytes(p) for p in packets)


# ---------------------------------------------------------------- one file


def enhance_image(src: str | Path, dst: str | Path, upscaler, scale: float | None = None,
                  size: tuple[int, int] | None = None, alpha_mode: str = "model",
                  fmt: str | None = None) -> dict:
    """Read ``src``, upscale it, write ``dst`` (format ``fmt``, else from ``dst``'s name).

    Returns what was done: input/output sizes and the output path. The output size is checked
    against :data:`MAX_OUTPUT_PIXELS` from the header's declared size, before decoding.
    """
    declared = declared_size(src)  # (an input over MAX_INPUT_PIXELS: read_image refuses it, saying so)
    if declared is not None and declared[0] * declared[1] <= MAX_INPUT_PIXELS:
        # EXIF rotation keeps the area; a --size box bounds it anyway
        check_output_size(output_size(*declared, upscaler.scale, scale=scale, size=size), str(src))
    pic = read_image(src)
    out_size = output_size(pic.width, pic.height, upscaler.scale, scale=scale, size=size)
    result = upscale_picture(pic, upscaler, size=out_size, alpha_mode=alpha_mode)
    written = write_image(result, dst, fmt=fmt, provenance=provenance.for_upscaler(upscaler))
    return {"input": str(src), "output": str(written), "in_size": (pic.width, pic.height),
            "out_size": out_size, "kind": pic.describe()}


def output_name(src: Path, fmt: str) -> str:
    """``src``'s name, with the extension corrected when it does not match the content."""
    if Image.registered_extensions().get(src.suffix.lower()) == fmt:
        return src.name
    return src.stem + FORMAT_SUFFIX[fmt]


def declared_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) as the file's header declares it, nothing decoded; None when Pillow cannot
    open it (:func:`read_image` then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def detect_format(path: str | Path) -> str | None:
    """Pillow format name from the file's content, or None when Pillow does not recognise it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.format
    except (UnidentifiedImageError, Image.DecompressionBombError):
        return None
    except OSError:
        return None
