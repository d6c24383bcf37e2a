"""Evaluation pairs (name, LR, HR) as uint8 RGB arrays.

Two protocols:

* **benchmark folders** (:func:`load_pairs`): Set5-style ``HR/`` + ``LR_bicubic/X{s}/{name}x{s}.png``
  (the shipped LR is used: it was made with MATLAB), or a folder of HR images only
  (``Set14/HR``): HR is cropped to a multiple of the scale and LR made with the
  MATLAB-compatible :func:`~ultrares_stream.quality.matlab_resize.imresize`.
* **traffic video** (:func:`traffic_video_pairs`): frames of real camera clips; HR is the
  original frame, LR the x``scale`` MATLAB-bicubic down-scale re-encoded with H.264 at a
  camera-like bitrate and decoded back, as a low-resolution camera stream would deliver it.
"""
from __future__ import annotations

import logging
import re
from collections import deque
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import UserError
from .matlab_resize import imresize

log = logging.getLogger(__name__)

__all__ = ["load_pairs", "traffic_video_pairs", "read_image", "is_video_folder", "parse_bitrate",
           "h264_roundtrip", "is_unencoded", "modcrop", "IMAGE_EXTS", "VIDEO_EXTS", "CONTEXT_FRAMES", "AUTO_BPP"]

Pair = tuple[str, np.ndarray, np.ndarray]

IMAGE_EXTS = {".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_EXTS = {".mp4", ".avi", ".mkv", ".mov", ".ts", ".m4v", ".webm", ".flv", ".mpg", ".mpeg"}

#: frames in the LR stream up to and including the scored one (4 s at 25 fps), so that it is a
#: P-frame of an encoder whose rate control has settled, as in a camera that has been running.
#: Measured at the default bitrate: the scored LR frame is 1.4-5 dB (PSNR against the clean
#: down-scale) worse after 8 frames than after 100, and changes by under 0.5 dB from 100 to 200.
CONTEXT_FRAMES = 100
#: "auto" bitrate: bits per pixel per frame at 25 fps (0.1 ~ a camera sub-stream: 320x180 -> 144 kbit/s)
AUTO_BPP = 0.1
AUTO_MIN_BITRATE = 32_000
ENCODE_FPS = 25


def read_image(path: Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB (grayscale expanded to 3 channels, alpha dropped)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from exc


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def videos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTS)


def is_video_folder(path: Path) -> bool:
    """A video file, or a folder holding video files and no images."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() in VIDEO_EXTS
    return path.is_dir() and bool(videos_in(path)) and not _images_in(path) and not (path / "HR").is_dir()


def modcrop(img: np.ndarray, multiple: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % multiple, : w - w % multiple]


def _check_scale(scale: int) -> int:
    if not isinstance(scale, int) or scale < 1:
        raise UserError(f"scale must be a positive integer, got {scale!r}")
    return scale


def load_pairs(folder: Path, scale: int) -> list[Pair]:
    """(name, LR uint8, HR uint8) for every image of a benchmark folder, sorted by name.

    Set5 layout (``HR/`` and ``LR_bicubic/X{scale}/{name}x{scale}.png``): the shipped LR, HR
    cropped to LR x scale. Otherwise the HR images (in ``HR/`` or the folder itself) cropped
    to a multiple of ``scale``, LR made by MATLAB-compatible bicubic down-scaling.
    """
    folder = Path(folder)
    scale = _check_scale(scale)
    if not folder.is_dir():
        raise UserError(f"dataset folder not found: {folder}")
    hr_dir = folder / "HR" if (folder / "HR").is_dir() else folder
    hr_files = _images_in(hr_dir)
    if not hr_files:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in {hr_dir}")
    lr_dir = folder / "LR_bicubic" / f"X{scale}"
    pairs: list[Pair] = []
    if lr_dir.is_dir():
        log.info("%s: %d images, shipped LR from %s", folder.name, len(hr_files), lr_dir)
        for hr_path in hr_files:
            lr_path = next((p for p in _images_in(lr_dir) if p.stem == f"{hr_path.stem}x{scale}"), None)
            if lr_path is None:
                raise UserError(f"{lr_dir} has no LR image for {hr_path.name} (expected {hr_path.stem}x{scale}.png)")
            lr, hr = read_image(lr_path), read_image(hr_path)
            lh, lw = lr.shape[:2]
            if hr.shape[0] < lh * scale or hr.shape[1] < lw * scale or hr.shape[0] - lh * scale >= scale \
                    or hr.shape[1] - lw * scale >= scale:
                raise UserError(f"{lr_path.name} is {lw}x{lh} but {hr_path.name} is {hr.shape[1]}x{hr.shape[0]}: "
                                f"not an x{scale} pair")
            pairs.append((hr_path.stem, lr, hr[: lh * scale, : lw * scale]))
    else:
        log.info("%s: %d HR images, LR by MATLAB bicubic x1/%d", folder.name, len(hr_files), scale)
        for hr_path in hr_files:
            hr = modcrop(read_image(hr_path), scale)
            if hr.shape[0] < scale or hr.shape[1] < scale:
                raise UserError(f"{hr_path} is smaller than the scale {scale}")
            pairs.append((hr_path.stem, imresize(hr, scale=1 / scale), hr))
    return pairs


def parse_bitrate(bitrate: str | int, width: int, height: int, fps: float = ENCODE_FPS) -> int:
    """Bits per second from ``"auto"``, ``"200k"``, ``"1.5M"``, ``"150000"`` or ``"0.15bpp"``."""
    text = str(bitrate).strip().lower()
    if text == "auto":
        return max(AUTO_MIN_BITRATE, int(round(AUTO_BPP * width * height * fps)))
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(bpp|k|m)?(?:bit/s|bps|b)?", text)
    if not m:
        raise UserError(f"bad bitrate {bitrate!r}: use auto, a number of bit/s such as 200k or 1.5M, "
                        f"or bits per pixel such as 0.1bpp")
    value, unit = float(m.group(1)), m.group(2)
    if unit == "bpp":
        bps = value * width * height * fps
    else:
        bps = value * {"k": 1e3, "m": 1e6, None: 1.0}[unit]
    if bps < 1000:
        raise UserError(f"bitrate {bitrate!r} is below 1 kbit/s for {width}x{height}")
    return int(round(bps))


def h264_roundtrip(frames: list[np.ndarray], bitrate: int, quantisers: list | None = None) -> list[np.ndarray]:
    """Encode RGB frames as one H.264 stream (libx264, camera-like settings) and return
    every decoded frame as RGB uint8, in order; ``quantisers``: a list that gets each decoded
    frame's :class:`~ultrares_stream.fusion.codec.QuantiserMap`."""
    import av

    from ..fusion.codec import DECODER_OPTIONS, quantisers as frame_quantisers

    h, w = frames[0].shape[:2]
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = w, h, "yuv420p"
    codec.time_base = Fraction(1, ENCODE_FPS)
    codec.framerate = Fraction(ENCODE_FPS, 1)
    codec.bit_rate = bitrate
    # cameras: low-latency encoder, no B-frames, one thread for reproducible output
    codec.options = {"preset": "veryfast", "tune": "zerolatency", "threads": "1",
                     "maxrate": str(bitrate), "bufsize": str(bitrate)}
    codec.open()
    decoder = av.CodecContext.create("h264", "r")
    if quantisers is not None:
        decoder.options = DECODER_OPTIONS
    decoded = []
    for i, rgb in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
        vf.pts = i
        for pkt in codec.encode(vf):
            decoded += decoder.decode(pkt)
    for pkt in codec.encode(None):
        decoded += decoder.decode(pkt)
    decoded += decoder.decode(None)
    if len(decoded) != len(frames):
        raise RuntimeError(f"H.264 round trip returned {len(decoded)} frames for {len(frames)}")
    if quantisers is not None:
        quantisers += [frame_quantisers(f, "h264") for f in decoded]
    return [f.to_ndarray(format="rgb24") for f in decoded]


def frame_count(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        if s.frames:
            return int(s.frames)
        if s.duration and s.average_rate:
            return int(float(s.duration * s.time_base) * float(s.average_rate))
        return sum(1 for _ in c.decode(video=0))


#: Traffic clips: ``ultrares train`` takes frames from the first half, evaluation scores the second half.
HELD_OUT_FROM = 0.5


def _clip_segments(path: Path, frames_per_clip: int, context: int, start_fraction: float = HELD_OUT_FROM):
    """Yield (index, [up to ``context`` frames ending at index]) at evenly spaced positions of the
    clip's held-out part (from ``start_fraction`` of its length on: ``ultrares train`` uses only the
    part before). A short clip gives the frames it has before the scored one."""
    import av

    n = frame_count(path)
    if n < 1:
        raise UserError(f"{path} has no video frames")
    first = min(int(n * start_fraction), n - 1)
    span = n - 1 - first
    targets = sorted({first + int(round(span * (k + 0.5) / frames_per_clip)) for k in range(frames_per_clip)}
                     if span > 0 else {first})
    window: deque[np.ndarray] = deque(maxlen=context)
    pending = list(targets)
    try:
        with av.open(str(path)) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if i <= pending[0] - context:
                    continue  # decoded (P-frames need it) but not needed as pixels
                window.append(frame.to_ndarray(format="rgb24"))
                if i == pending[0]:
                    yield i, list(window)
                    pending.pop(0)
                    if not pending:
                        return
    except av.FFmpegError as exc:
        raise UserError(f"cannot decode {path}: {exc}") from exc
    if pending:
        log.warning("%s: ended before frames %s (header said %d frames)", path.name, pending, n)


def traffic_video_pairs(video_dir: Path, scale: int = 4, frames_per_clip: int = 4,
                        bitrate: str = "auto", history: int = 0) -> list[Pair]:
    """Frames of traffic clips: (``clip#frame``, LR uint8, HR uint8), clips in name order.

    HR is the decoded original frame cropped so that LR is even-sized (H.264 4:2:0). LR is
    the MATLAB-bicubic x1/``scale`` down-scale of the frame and of up to ``CONTEXT_FRAMES - 1``
    frames before it (4 s; short clips give what they have), encoded as one H.264 stream
    (libx264, veryfast, zerolatency, CBR-like at ``bitrate``) and decoded back: the scored frame
    is a P-frame of a settled encoder, like a low-resolution camera stream that has been running.
    ``bitrate``: ``auto`` (``AUTO_BPP`` bits per pixel at 25 fps, at least 32 kbit/s), bit/s
    (``200k``), bits per pixel (``0.15bpp``), or ``none`` (no H.264: the clean down-scale).
    ``history`` > 0: LR is the scored frame and the ``history`` LR frames before it, stacked
    (T x H x W x 3, oldest first), for methods that use earlier frames (the temporal stabiliser).
    """
    video_dir = Path(video_dir)
    scale = _check_scale(scale)
    if frames_per_clip < 1:
        raise UserError(f"frames per clip must be >= 1, got {frames_per_clip}")
    if video_dir.is_file():
        clips = [video_dir]
    elif video_dir.is_dir():
        clips = videos_in(video_dir)
    else:
        raise UserError(f"video folder not found: {video_dir}")
    if not clips:
        raise UserError(f"no video files ({', '.join(sorted(VIDEO_EXTS))}) in {video_dir}")
    encode = not is_unencoded(bitrate)
    pairs: list[Pair] = []
    for clip in clips:
        rate, short = None, []
        for index, frames in _clip_segments(clip, frames_per_clip, CONTEXT_FRAMES if encode else 1 + history):
            if encode and len(frames) < CONTEXT_FRAMES:
                short.append(len(frames))
            hr_frames = [modcrop(f, 2 * scale) for f in frames]
            hh, hw = hr_frames[-1].shape[:2]
            if hh < 2 * scale or hw < 2 * scale:
                raise UserError(f"{clip.name} frames ({hw}x{hh}) are too small for x{scale}")
            lw, lh = hw // scale, hh // scale
            keep = hr_frames if encode else hr_frames[-1 - history:]
            lrs = [imresize(f, scale=1 / scale) for f in keep]
            if encode:
                rate = parse_bitrate(bitrate, lw, lh)
                lrs = h264_roundtrip(lrs, rate)
            lr = np.stack(lrs[-1 - history:]) if history else lrs[-1]
            pairs.append((f"{clip.stem}#{index}", lr, hr_frames[-1]))
        if short:
            span = f"{min(short)}" if min(short) == max(short) else f"{min(short)}-{max(short)}"
            log.warning("%s is short: %d scored frame(s) had only %s frames of LR stream up to them, not %d; "
                        "the encoder had not settled", clip.name, len(short), span, CONTEXT_FRAMES)
        log.info("%s: %d frames, LR %dx%d %s", clip.name, sum(1 for p in pairs if p[0].startswith(clip.stem + "#")),
                 lw, lh, f"at {rate / 1000:.0f} kbit/s H.264" if encode else "not re-encoded")
    return pairs


def is_unencoded(bitrate: str | int) -> bool:
    """``bitrate`` ``none``: the traffic protocol without the H.264 round trip (the clean
    down-scale), to separate up-scaling from the repair of compression artefacts."""
    return str(bitrate).strip().lower() == "none"


def describe_bitrate(bitrate: str, lr_width: int, lr_height: int) -> str:
    """Human-readable bitrate for reports, e.g. ``"144 kbit/s (0.10 bpp at 25 fps)"``."""
    bps = parse_bitrate(bitrate, lr_width, lr_height)
    return f"{bps / 1000:.0f} kbit/s ({bps / (lr_width * lr_height * ENCODE_FPS):.2f} bpp at {ENCODE_FPS} fps)"

