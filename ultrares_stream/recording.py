"""Segmented recording of a live camera's file output, as network video recorders keep it.

A live camera whose output is a file (``recordings/junction-12.mp4``) writes a series of
segments in a folder named after it (``recordings/junction-12/2026-12-07T10-00-00.000Z.mp4``),
each named by the UTC wall-clock time it starts. Every open of the output takes a new
segment, never a path written before: a resolution change, a write error (disk full) or a
service restart closes the current segment and starts another, so nothing already recorded
is truncated. Segments also end after ``segment_s`` seconds, and the oldest are removed by age
(``keep_hours``) and total size (``max_gb``).

A camera reading a file (not live) writes its output path as configured; a reopen continues
in ``NAME.2.mp4``, ``NAME.3.mp4``... beside it, again never over the first part.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

#: segment file names: the UTC start time, sortable as text
STAMP = "%Y-%m-%dT%H-%M-%S"


@dataclass(frozen=True)
class RetentionPolicy:
    """How long segments last and how many are kept (None: no limit)."""

    segment_s: float = 600.0
    keep_s: float | None = None
    max_bytes: int | None = None


def segment_folder(output: str | Path) -> Path:
    """The folder of a live camera's segments: the output path without its suffix."""
    path = Path(output)
    return path.parent / path.stem


def segment_name(start: float, suffix: str) -> str:
    """``2026-12-07T10-00-00.123Z.mp4`` for a segment starting at ``start`` (Unix time)."""
    moment = datetime.fromtimestamp(start, timezone.utc)
    return f"{moment.strftime(STAMP)}.{moment.microsecond // 1000:03d}Z{suffix}"


def unused(path: Path) -> Path:
    """``path``, or ``NAME-2.ext``, ``NAME-3.ext``... the first that does not exist."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def list_segments(output: str | Path) -> list[Path]:
    """A live camera's segments in recording order (oldest first)."""
    folder = segment_folder(output)
    suffix = Path(output).suffix
    return sorted(folder.glob(f"*Z*{suffix}")) if folder.is_dir() else []


def expired(segments: list[tuple[Path, float, int]], policy: RetentionPolicy, now: float) -> list[Path]:
    """Of ``(path, mtime, bytes)`` oldest first, those to remove: older than ``keep_s``, then the
    oldest until the rest fit in ``max_bytes``. The newest (being written) is always kept."""
    old = list(segments[:-1])
    gone = [p for p, mtime, _ in old if policy.keep_s is not None and now - mtime > policy.keep_s]
    if policy.max_bytes is not None:
        total = sum(size for p, _, size in segments if p not in gone)
        for p, _, size in old:
            if total <= policy.max_bytes:
                break
            if p not in gone:
                gone.append(p)
                total -= size
    return gone


class SegmentedOutput:
    """Where each open of a camera's file output writes. ``live``: timestamped segments in a folder;
    else the configured path first, then numbered parts beside it."""

    def __init__(self, output: str, live: bool = True, policy: RetentionPolicy | None = None, clock=time.time):
        self.output = Path(output)
        self.live = live
        self.policy = policy or RetentionPolicy()
        self.clock = clock
        self.paths: list[Path] = []  # every path opened, in order
        self.opened_at: float | None = None  # monotonic time of the last open

    def next_path(self) -> str:
        """A path nobody has written: the next segment."""
        if self.live:
            folder = segment_folder(self.output)
            folder.mkdir(parents=True, exist_ok=True)
            path = unused(folder / segment_name(self.clock(), self.output.suffix))
        elif not self.paths:
            path = self.output
        else:
            path = unused(self.output.with_name(f"{self.output.stem}.{len(self.paths) + 1}{self.output.suffix}"))
        self.paths.append(path)
        self.opened_at = time.monotonic()
        return str(path)

    def due(self) -> bool:
        """The current segment has run its ``segment_s`` (live outputs only)."""
        return self.live and self.opened_at is not None and time.monotonic() - self.opened_at >= self.policy.segment_s

    def discard_last(self) -> None:
        """Remove the last segment: it holds no frame (its open or first write failed, e.g. on a
        full disk), and a retry takes a new one."""
        if self.live and self.paths:
            path = self.paths.pop()
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:  # pragma: no cover - the disk is the problem already
                log.debug("removing the empty segment %s: %s", path, exc)

    def prune(self) -> list[Path]:
        """Remove segments beyond the retention policy; returns what was removed."""
        if not self.live or (self.policy.keep_s is None and self.policy.max_bytes is None):
            return []
        stats = []
        for p in list_segments(self.output):
            try:
                st = p.stat()
            except OSError:
                continue
            stats.append((p, st.st_mtime, st.st_size))
        gone = expired(stats, self.policy, self.clock())
        for p in gone:
            try:
                p.unlink()
                log.info("%s: removed by the retention policy", p)
            except OSError as exc:
                log.warning("%s: could not remove (%s)", p, exc)
        return gone
