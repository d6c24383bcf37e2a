"""Keep freed frame-sized buffers in the process heap instead of handing them back to the OS.

Each upscaled 1280x960 float frame is about 15 MB. When glibc cannot serve a block that
large from the calling thread's arena, it maps fresh pages for it and unmaps them on free, and
the next frame page-faults on memory the kernel has to zero again. This was measured on the
2-core development machine, in one run of 250 frames: the inference thread took 819,000 page
faults, 3,300 per frame, and the pipeline ran 7 % slower. It happened or not depending on
how the thread's arena had been used before (docs/benchmarks.md).

:func:`keep_freed_memory`, called by the CLI before any thread starts, puts every thread on
the main heap (one arena) and raises the mmap and trim thresholds, so the working set of a
video pipeline stays mapped. The resident size then stays at its peak instead of shrinking
between frames. Measured on `ultrares enhance` of the 748-frame CCTV clip: peak RSS 525 MB
instead of 511 MB, and 17.9 instead of 16.6 fps. ``ULTRARES_KEEP_FREED_MEMORY=0`` keeps glibc's
defaults. On a C library other than glibc this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: blocks up to this size come from the heap, and the heap keeps this much free memory mapped
KEEP_BYTES = 1 << 30


def keep_freed_memory(limit: int = KEEP_BYTES) -> bool:
    """Apply the settings (glibc only; call before starting threads). True when they were set."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    # some glibc versions cap the mmap threshold at 32 MB: still above a 1280x960 float frame
    ok = bool(mallopt(_M_MMAP_THRESHOLD, limit) or mallopt(_M_MMAP_THRESHOLD, 32 << 20))
    ok = bool(mallopt(_M_TRIM_THRESHOLD, limit)) and ok
    ok = bool(mallopt(_M_ARENA_MAX, 1)) and ok
    log.debug("glibc malloc: %s", "one arena, freed memory kept" if ok else "settings refused")
    return ok
