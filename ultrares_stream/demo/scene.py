"""The demo camera's footage: a synthetic traffic scene, or a real clip from the shared data.

``make_scene_video`` renders a road seen from above with vehicles driving along three lanes, each
carrying a number plate with plate-like text, and encodes it as H.264 MP4 with PyAV. The scene is
a pure function of the frame index (fixed seed, bundled bitmap font), so the same arguments
give the same frames. ``default_camera_video`` picks what ``RtspServer`` plays by default.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import string
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ultrares_stream.errors import UserError
from ultrares_stream.settings import cache_dir, data_dir

log = logging.getLogger(__name__)

SCENE_VERSION = 1  # bump when the drawing changes, so cached scene videos are regenerated
DEFAULT_CLIP = "cctv-motorway-320x240.avi"
SEED = 20240611
ASPHALT = (78, 80, 84)
VERGE = (64, 112, 56)
MARKING = (232, 232, 224)
PLATE = (236, 224, 80)  # yellow rear plate
PLATE_TEXT = (16, 16, 16)
BODY_COLOURS = [(200, 30, 36), (30, 70, 170), (230, 230, 235), (20, 22, 26), (120, 124, 130),
                (20, 120, 70), (240, 160, 20), (110, 40, 120)]
LANES = 3


@dataclass(frozen=True)
class Vehicle:
    lane: int  # 0 = top lane
    speed: float  # in frame widths per second; lanes 0-1 drive right, lane 2 drives left
    length: float  # fraction of the frame width
    phase: float  # where it starts, fraction of the track
    colour: tuple[int, int, int]
    plate: str


def plate_text(rng: random.Random) -> str:
    """UK-style plate text, e.g. ``AB12 CDE``."""
    letters = string.ascii_uppercase.replace("I", "").replace("Q", "")
    return (rng.choice(letters) + rng.choice(letters) + f"{rng.randrange(10, 75):02d} "
            + "".join(rng.choice(letters) for _ in range(3)))


def scene_vehicles(seed: int = SEED, per_lane: int = 2) -> list[Vehicle]:
    """The scene's vehicles, fixed by ``seed``."""
    rng = random.Random(seed)
    vehicles = []
    for lane in range(LANES):
        speed = rng.uniform(0.22, 0.4) * (1 if lane < 2 else -1)  # one speed per lane: no overlaps
        for k in range(per_lane):
            vehicles.append(Vehicle(
                lane=lane,
                speed=speed,
                length=rng.uniform(0.24, 0.3),
                phase=(k + rng.uniform(0.0, 0.4)) / per_lane,
                colour=rng.choice(BODY_COLOURS),
                plate=plate_text(rng),
            ))
    return vehicles


@lru_cache(maxsize=64)
def _plate_image(text: str, width: int, height: int) -> Image.Image:
    """Plate with black text, drawn with Pillow's bundled bitmap font and resized to the plate."""
    font = ImageFont.load_default_imagefont()
    left, top, right, bottom = font.getbbox(text)
    img = Image.new("RGB", (right - left + 4, bottom - top + 4), PLATE)
    ImageDraw.Draw(img).text((2 - left, 2 - top), text, font=font, fill=PLATE_TEXT)
    return img.resize((max(width, 1), max(height, 1)), Image.Resampling.LANCZOS)


def render_scene_frame(index: int, width: int = 320, height: int = 240, fps: float = 25,
                       vehicles: list[Vehicle] | None = None,
                       plates: list[tuple[int, int, int, int, str]] | None = None) -> np.ndarray:
    """Frame ``index`` of the scene as an HxWx3 uint8 RGB array (pure function of its arguments).

    ``plates``, when given, receives ``(x, y, w, h, text)`` of every plate wholly in the frame
    (ground truth for the plate-readability evaluation).
    """
    if width < 64 or height < 48:
        raise UserError(f"scene size {width}x{height} is too small (at least 64x48)")
    vehicles = scene_vehicles() if vehicles is None else vehicles
    t = index / fps
    img = Image.new("RGB", (width, height), VERGE)
    draw = ImageDraw.Draw(img)
    road_top, road_bottom = round(height * 0.18), round(height * 0.82)
    lane_h = (road_bottom - road_top) / LANES
    draw.rectangle([0, road_top, width, road_bottom], fill=ASPHALT)
    for y in (road_top + 2, road_bottom - 3):
        draw.rectangle([0, y, width, y + 1], fill=MARKING)
    dash = max(width // 16, 4)
    for lane in range(1, LANES):  # dashed lane markings
        y = round(road_top + lane * lane_h)
        for x in range(0, width, 2 * dash):
            draw.rectangle([x, y - 1, x + dash, y], fill=MARKING)
    for v in vehicles:
        length = round(v.length * width)
        car_h = round(lane_h * 0.62)
        track = width + length
        x = (v.phase * track + v.speed * width * t) % track - length
        y = round(road_top + v.lane * lane_h + (lane_h - car_h) / 2)
        x0, x1 = round(x), round(x) + length
        draw.rounded_rectangle([x0, y, x1, y + car_h], radius=max(car_h // 5, 1), fill=v.colour,
                               outline=(10, 10, 10))
        # windscreen towards the direction of travel, roof in between
        shade = tuple(max(c - 50, 0) for c in v.colour)
        ws = length // 5
        wx = x1 - 2 * ws if v.speed > 0 else x0 + ws
        draw.rectangle([wx, y + 3, wx + ws, y + car_h - 3], fill=(40, 60, 80))
        draw.rectangle([x0 + length // 3, y + 4, x1 - length // 3, y + car_h - 4], fill=shade)
        # number plate on the rear, rotated into view so the text reads left to right
        plate_w, plate_h = round(length * 0.62), max(round(car_h * 0.32), 5)
        plate = _plate_image(v.plate, plate_w, plate_h)
        px = x0 + (length - plate_w) // 2
        py = y + car_h - plate_h - 2 if v.lane < 2 else y + 2
        img.paste(plate, (px, py))
        if plates is not None and 0 <= px and px + plate_w <= width:
            plates.append((px, py, plate_w, plate_h, v.plate))
    return np.asarray(img)


def _h264_stream(container, width: int, height: int, fps: int, crf: int = 23):
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    # no B-frames (decode order = display order) and a key frame every 2 s so readers join quickly
    stream.options = {"crf": str(crf), "preset": "veryfast", "bf": "0", "g": str(2 * fps),
                      "keyint_min": str(fps), "sc_threshold": "0"}
    return stream


def make_scene_video(path: Path, width: int = 320, height: int = 240, fps: int = 25, seconds: float = 8) -> Path:
    """Write the synthetic traffic scene to ``path`` as H.264 MP4 and return ``path``."""
    path = Path(path)
    if width % 2 or height % 2:
        raise UserError(f"scene size must be even for H.264, got {width}x{height}")
    if fps <= 0 or seconds <= 0:
        raise UserError(f"scene needs fps > 0 and seconds > 0, got fps={fps} seconds={seconds}")
    frames = max(round(fps * seconds), 1)
    vehicles = scene_vehicles()
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as out:
        stream = _h264_stream(out, width, height, int(fps))
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(render_scene_frame(i, width, height, fps, vehicles), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    log.info("scene video %s: %dx%d, %d frames at %d fps", path, width, height, frames, fps)
    return path


def is_camera_ready(path: Path) -> bool:
    """True when the RTSP camera can play ``path`` as it is: H.264 video in MP4/MOV/MKV."""
    try:
        with av.open(str(path)) as c:
            fmt = c.format.name
            video = c.streams.video
            return bool(video) and video[0].codec_context.name == "h264" and (
                "mp4" in fmt or "matroska" in fmt or "mov" in fmt)
    except (av.FFmpegError, OSError):
        return False


def transcode_for_camera(src: Path, dst: Path) -> Path:
    """Re-encode the first video stream of ``src`` as H.264 MP4 at ``dst`` (frames re-timed at
    the stream's frame rate; audio dropped). Written to a temporary name, then renamed."""
    try:
        inp = av.open(str(src))
    except (av.FFmpegError, OSError) as exc:
        raise UserError(f"cannot open video {src}: {exc}") from exc
    with inp:
        if not inp.streams.video:
            raise UserError(f"no video stream in {src}")
        vin = inp.streams.video[0]
        fps = round(float(vin.average_rate or vin.guessed_rate or 25)) or 25
        width, height = vin.codec_context.width // 2 * 2, vin.codec_context.height // 2 * 2
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=dst.parent)
        os.close(fd)
        count = 0
        try:
            with av.open(tmp, "w", format="mp4") as out:
                stream = _h264_stream(out, width, height, fps)
                for frame in inp.decode(vin):
                    frame = frame.reformat(width=width, height=height, format="yuv420p")
                    frame.pts, frame.time_base = count, Fraction(1, fps)
                    count += 1
                    for packet in stream.encode(frame):
                        out.mux(packet)
                for packet in stream.encode():
                    out.mux(packet)
            if count == 0:
                raise UserError(f"no decodable video frames in {src}")
            os.replace(tmp, dst)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    log.info("transcoded %s -> %s (%d frames, %dx%d at %d fps, H.264)", src, dst, count, width, height, fps)
    return dst


def camera_video(path: Path) -> Path:
    """``path`` itself when the camera can play it, else a cached H.264 MP4 copy of it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"video not found: {path}")
    if is_camera_ready(path):
        return path.resolve()
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    dst = cache_dir() / "demo" / f"{path.stem}-{key}.mp4"
    if not dst.exists():
        log.info("preparing %s for the demo camera (one-off H.264 transcode to %s)", path, dst)
        transcode_for_camera(path, dst)
    return dst


def default_camera_video() -> Path:
    """The real 320x240 CCTV clip from the shared data (as cached H.264 MP4) when present,
    otherwise the generated scene (320x240, 25 fps, 8 s), cached likewise."""
    clip = data_dir() / "video" / DEFAULT_CLIP
    if clip.is_file():
        return camera_video(clip)
    dst = cache_dir() / "demo" / f"scene-320x240-25fps-v{SCENE_VERSION}.mp4"
    if not dst.exists():
        log.info("no shared clip at %s; generating the synthetic traffic scene at %s", clip, dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=dst.parent)
        os.close(fd)
        try:
            make_scene_video(Path(tmp))
            os.replace(tmp, dst)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return dst
