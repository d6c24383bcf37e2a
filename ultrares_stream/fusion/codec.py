"""What the camera's encoder did to a region: the quantiser (QP) of the blocks under a box.

A decoder opened with :data:`DECODER_OPTIONS` attaches each frame's quantisers to it (FFmpeg's
``VIDEO_ENC_PARAMS`` side data: the frame's base QP and each block's offset); H.264, VP9 and
MPEG-4 decoders give them, HEVC's does not. The scale differs by codec, so a rule that reads
them (:func:`.evidence.judge`) is written per codec. :func:`quantisers` reads one frame's into a
:class:`QuantiserMap` (a few kB a frame) that outlives the decoded picture.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

#: decoder options that make FFmpeg export each frame's quantisers
DECODER_OPTIONS = {"export_side_data": "venc_params"}

_B_FRAME = 3  # AVPictureType AV_PICTURE_TYPE_B (PyAV's PictureType.B)
# AVVideoEncParams: nb_blocks (uint32, padded), blocks_offset, block_size (size_t), type, qp (int32)
_HEADER = struct.Struct("=I4xQQii")


@dataclass(frozen=True)
class QuantiserMap:
    """One frame's quantisers: ``codec`` (the decoder's name) and ``blocks``, an N x 5 int32
    array of each block's x, y, width, height (pixels) and QP."""

    codec: str
    blocks: np.ndarray

    def over(self, box: tuple[int, int, int, int]) -> float | None:
        """Mean QP of the blocks under ``box`` (x, y, w, h pixels), weighted by how much of the box
        each covers; None where no block covers it."""
        x, y, w, h = box
        b = self.blocks
        ox = np.clip(np.minimum(b[:, 0] + b[:, 2], x + w) - np.maximum(b[:, 0], x), 0, None)
        oy = np.clip(np.minimum(b[:, 1] + b[:, 3], y + h) - np.maximum(b[:, 1], y), 0, None)
        area = (ox * oy).astype(np.float64)
        total = area.sum()
        return float((area * b[:, 4]).sum() / total) if total > 0 else None


def parse(buffer: bytes, codec: str) -> QuantiserMap | None:
    """A ``VIDEO_ENC_PARAMS`` side-data buffer as a :class:`QuantiserMap` (None: no blocks)."""
    if len(buffer) < _HEADER.size:
        return None
    count, offset, size, _kind, base = _HEADER.unpack_from(buffer, 0)
    if count == 0 or size < 20 or offset + count * size > len(buffer):
        return None
    raw = np.frombuffer(buffer, np.uint8, count * size, offset).reshape(count, size)
    blocks = np.ascontiguousarray(raw[:, :20]).view(np.int32).reshape(count, 5).copy()
    blocks[:, 4] += base
    return QuantiserMap(codec, blocks)


def quantisers(frame, codec: str) -> QuantiserMap | None:
    """The quantisers a PyAV ``VideoFrame`` carries (decoded with :data:`DECODER_OPTIONS`), or None.
    B-frames give None: most of their blocks are skipped, and a skipped block reports the QP the
    decoder last used rather than one of its own."""
    if frame.pict_type == _B_FRAME:
        return None
    for data in getattr(frame, "side_data", ()):
        if data.type.name == "VIDEO_ENC_PARAMS":
            return parse(bytes(data), codec)
    return None


def box_quantiser(views: list[tuple[QuantiserMap | None, tuple[int, int, int, int]]]) -> tuple[str, float] | None:
    """(codec, median over the frames of the mean QP under the box) for ``(frame's quantisers, the
    box where that frame shows it)`` pairs (None: a frame without them, such as a B-frame), where
    the frames that have them share one codec; None otherwise."""
    known = [(m.codec, q) for m, box in views if m is not None and (q := m.over(box)) is not None]
    if not known or len({c for c, _ in known}) != 1:
        return None
    return known[0][0], float(np.median([q for _, q in known]))
