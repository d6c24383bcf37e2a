"""Camera URLs: one table of what each scheme means for reading and for publishing, the scheme of
a URL or path, and hiding the secrets a URL carries before it is logged or shown."""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Scheme:
    #: an input here is a live feed: reconnected when it fails, paced by its source, never seeked
    live: bool
    #: the FFmpeg option (microseconds) that bounds a blocked read
    timeout_option: str | None = None
    #: the muxer that publishes a stream here, from a child process; None: not published over it
    publish_format: str | None = None
    #: the publishing muxer takes ``timeout_option`` too, bounding a blocked write (RTSP, RTMP; the
    #: MPEG-TS muxer over a socket does not take it)
    publish_timeout: bool = False


RTSP = Scheme(live=True, timeout_option="timeout", publish_format="rtsp", publish_timeout=True)
RTMP = Scheme(live=True, timeout_option="rw_timeout", publish_format="flv", publish_timeout=True)
HTTP = Scheme(live=True, timeout_option="rw_timeout")  # HLS or a camera's HTTP stream: read only
SOCKET = Scheme(live=True, timeout_option="timeout", publish_format="mpegts")
V4L2 = Scheme(live=True)  # a capture device (v4l2:///dev/video0, or the bare /dev/video0 path)

#: every scheme a camera's input or output may use; anything else before '://' is a typo, not a file
SCHEMES: dict[str, Scheme] = {
    "rtsp": RTSP, "rtsps": RTSP,
    "rtmp": RTMP, "rtmps": RTMP,
    "http": HTTP, "https": HTTP,
    "udp": SOCKET, "tcp": SOCKET, "srt": SOCKET,
    "rtp": Scheme(live=True, timeout_option="timeout"),
    "file": Scheme(live=False),  # a path, as FFmpeg's file protocol
    "v4l2": V4L2,
}

#: query-string keys whose values are secrets (``?user=admin&password=...``, ``?token=...``)
SECRET_QUERY_KEYS = re.compile(r"(?i)^(pass(word|wd)?|pwd|token|access_?token|auth|key|api_?key|secret|sig(nature)?)$")


def scheme_of(url) -> str:
    """The lower-case scheme of a URL, ``"v4l2"`` for a bare ``/dev/video*`` path, ``""`` for a path."""
    text = str(url)
    if "://" in text:
        return urlsplit(text).scheme.lower()
    return "v4l2" if text.startswith("/dev/video") else ""


def scheme(url) -> Scheme | None:
    """The table's row for this URL's scheme; None for a plain path (or an unknown scheme)."""
    return SCHEMES.get(scheme_of(url))


def is_live(url) -> bool:
    """Network URLs and capture devices are live; local files are not (HLS over http counts as live)."""
    row = scheme(url)
    return row is not None and row.live


def mask_url(url) -> str:
    """Hide the secrets of a URL: the password of its user info (``rtsp://admin:***@cam/...``, also
    when the password holds ``/`` or ``@``) and the values of secret query keys (``?password=***``).
    Safe on non-URLs."""
    text = str(url)
    scheme_, sep, rest = text.partition("://")
    if not sep:
        return text
    query_at = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, query_at)  # user info ends at the last '@' before the query
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        rest = f"{user}{':***' if colon else ''}@{rest[at + 1:]}"
        query_at = rest.find("?") if "?" in rest else len(rest)
    if query_at < len(rest) and rest[query_at] == "?":
        head, query = rest[: query_at + 1], rest[query_at + 1:]
        query, hash_, frag = query.partition("#")
        pairs = [(k, v) for k, _, v in (p.partition("=") for p in query.split("&"))]
        query = "&".join(f"{k}=***" if SECRET_QUERY_KEYS.match(k) and v else (f"{k}={v}" if v else k)
                         for k, v in pairs)
        rest = head + query + hash_ + frag
    return f"{scheme_}{sep}{rest}"
