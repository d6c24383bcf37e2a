"""What the service admits: paths no two writers share, and frames whose cost fits a budget.

* :func:`target_key` / :func:`path_clash`: the identity of a camera's input or output (a file
  by its resolved path, symlinks followed, or its inode when it exists, so hard links count
  too; a network URL normalised: scheme and host in lower case, default port filled in,
  credentials dropped) and the first camera whose output is another camera's output, or any
  enabled camera's input (a file camera writing over its own input). ``ServiceConfig``
  refuses both, naming the field (``cameras[1].output: same file as cameras[0].output (...)``).
* :func:`admit_output_size`: a camera's output frame size from its input size, refused with a
  :class:`UserError` naming ``cameras[i].output_size`` when it is over the camera's
  ``max_output_pixels`` (default :data:`DEFAULT_MAX_OUTPUT_PIXELS`, 3840x2160). The config
  checks an ``output_size`` it is given; without one the size depends on the input's, known
  only once the camera is read, so the stream calls this when it learns it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import UserError
from .sizes import fit_inside, parse_size
from .urls import mask_url, scheme_of

#: largest output frame a camera is admitted with, in pixels (4k UHD), unless configured
DEFAULT_MAX_OUTPUT_PIXELS = 3840 * 2160
_DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "rtmps": 443, "http": 80, "https": 443}


@dataclass(frozen=True)
class Target:
    """A camera input or output: ``key`` compares equal for the same file or stream; ``shown``
    says which (the resolved path, or the normalised URL with its secrets masked)."""

    key: str
    shown: str


def target_key(target: str) -> Target:
    """The identity of a camera input or output (a path, a ``file://`` URL, or a network URL)."""
    text = str(target)
    scheme = scheme_of(text)
    if scheme in ("", "file", "v4l2"):
        return file_target(urlsplit(text).path if "://" in text else text)
    parts = urlsplit(text)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:  # a port that is not a number: compare it as written
        port = parts.netloc.rpartition("@")[2].rpartition(":")[2]
    path = re.sub("/+", "/", parts.path).rstrip("/") or "/"
    url = f"{scheme}://{host}{f':{port}' if port else ''}{path}{f'?{parts.query}' if parts.query else ''}"
    return Target(f"url:{url}", mask_url(url))


def file_target(path: str | Path) -> Target:
    """A file's identity: its inode when it exists (hard links and symlinks alike), else its
    resolved path (symlinked folders followed)."""
    resolved = Path(os.path.expanduser(str(path))).resolve()
    try:
        st = resolved.stat()
    except OSError:
        return Target(f"path:{resolved}", str(resolved))
    return Target(f"inode:{st.st_dev}:{st.st_ino}", str(resolved))


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when paths ``a`` and ``b`` name one file (after links), existing or not."""
    return file_target(a).key == file_target(b).key


def path_clash(cameras: list[tuple[int, str, str]]) -> str | None:
    """The first clash among enabled cameras given as ``(index, input, output)``, as
    ``cameras[j].output: same file as cameras[i].output (/abs/path)``; None when there is none.

    An output may be no other camera's output and no camera's input file (nor its own input
    stream: a feedback loop). The message names the later field."""
    seen: dict[str, str] = {}  # key -> the field that holds it
    readers: dict[str, list[int]] = {}  # key -> the cameras reading it
    for i, src, _ in cameras:
        readers.setdefault(target_key(src).key, []).append(i)
    for i, _, dst in cameras:
        out = target_key(dst)
        what = "URL" if out.key.startswith("url:") else "file"
        if out.key in seen:
            return f"cameras[{i}].output: same {what} as {seen[out.key]} ({out.shown})"
        hit = [j for j in readers.get(out.key, ()) if what == "file" or j == i]
        if hit:
            return f"cameras[{i}].output: same {what} as cameras[{hit[0]}].input ({out.shown})"
        seen[out.key] = f"cameras[{i}].output"
    return None


def admit_output_size(name: str, in_w: int, in_h: int, scale: int, output_size, limits,
                      index: int | None = None) -> tuple[int, int]:
    """The (even) output size of camera ``name`` for ``in_w`` x ``in_h`` input: ``scale`` times it,
    or fitted inside ``output_size`` (``"4k"``, ``"1920x1080"`` or a (w, h) box); UserError when
    it is over ``limits`` (pixels a frame, or anything with a ``max_output_pixels``: a resolved
    ``CameraConfig``, ``Defaults``; None or 0: no limit). ``index`` (the camera's place in
    ``cameras``) makes the message name ``cameras[index].output_size``."""
    if output_size:
        box = parse_size(output_size) if isinstance(output_size, str) else tuple(output_size)
        w, h = fit_inside(in_w, in_h, box, even=True)
    else:
        w, h = in_w * scale, in_h * scale
        w, h = max(2, w - w % 2), max(2, h - h % 2)
    limit = getattr(limits, "max_output_pixels", limits)
    if limit and w * h > limit:
        field = f"cameras[{index}].output_size" if index is not None else f"output_size of camera {name!r}"
        how = f"fitted inside {output_size}" if output_size else f"x{scale} of its {in_w}x{in_h} input"
        raise UserError(f"{field}: camera {name!r} would output {w}x{h} ({how}) = {w * h / 1e6:.1f} megapixels a "
                        f"frame, over the limit of {limit / 1e6:.1f} (max_output_pixels); set {suggest(limit)} "
                        "for this camera, or raise max_output_pixels if the host can afford it")
    return w, h


def size_over_limit(output_size: str | None, limit: int | None) -> str | None:
    """Why a configured ``output_size`` box is over ``limit`` pixels, or None (the frame fitted
    inside the box is never larger than the box)."""
    if not output_size or not limit:
        return None
    w, h = parse_size(output_size)
    if w * h <= limit:
        return None
    named = f"{output_size} = " if output_size.strip().lower() != f"{w}x{h}" else ""
    return (f"{named}{w}x{h} is {w * h / 1e6:.1f} megapixels a frame, over the limit of "
            f"{limit / 1e6:.1f} (max_output_pixels); use a smaller size, e.g. {suggest(limit)}, "
            "or raise max_output_pixels")


def suggest(limit: int) -> str:
    """The largest preset output size within ``limit`` pixels, as config text."""
    from .sizes import PRESETS

    fitting = [name for name, (w, h) in sorted(PRESETS.items(), key=lambda kv: -kv[1][0]) if w * h <= limit]
    return f"output_size: {fitting[0]}" if fitting else "a smaller output_size (WIDTHxHEIGHT)"
