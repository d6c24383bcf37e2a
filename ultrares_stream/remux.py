"""Stream-copy a recorded job's Matroska partial file into the container the user asked for.

A recorded job writes Matroska while it runs (:mod:`.recorded`): a file cut short by a crash
still plays, and, unlike fragmented MP4, it keeps the timing of copied audio against video.
At the end the packets are copied, not re-encoded, into the output container. Two things are
undone on the way:

* Matroska has no negative timestamps, so FFmpeg shifts every stream forward when one starts
  below zero (AAC priming: the first audio packet at -1024 samples). :func:`muxer_shift`
  finds that shift by comparing a copied stream's first timestamp with the input's; MP4/MOV
  take negative times (edit lists), so the shift is taken back off.
* Matroska counts in milliseconds. Video goes back to ticks of ``1/fps`` (the sink's own
  time base; its timestamps are whole ticks, so rounding restores them) and audio to ticks of
  its sample rate.

Matroska stores no decode times either: the demuxer infers them for reordered (B-) frames, and
where the video starts long after another stream (an input whose first seconds of video are
lost) it gets them wrong (missing, or out of order), which MP4, MOV and MPEG-TS refuse. Such a
stream's decode times are rebuilt from its presentation times (:func:`dts_from_pts`).
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import av.bitstream

#: packets demuxed at most to find each stream's first timestamp
FIRST_PTS_PACKETS = 2000
#: muxers that take H.264/HEVC only as Annex B start codes (Matroska stores length prefixes)
ANNEX_B_MUXERS = {"avi", "mpegts"}
#: the bitstream filter that turns each codec's length-prefixed packets into Annex B
TO_ANNEX_B = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}


def first_times(path: str | Path, limit: int = FIRST_PTS_PACKETS) -> dict[int, float]:
    """Seconds of the first timestamped packet of each stream of ``path`` (stream index -> s),
    looking at the first ``limit`` packets."""
    found: dict[int, float] = {}
    with av.open(str(path), timeout=30) as c:
        wanted = len(c.streams)
        try:
            for i, packet in enumerate(c.demux()):
                if packet.pts is not None and packet.stream.index not in found:
                    found[packet.stream.index] = float(packet.pts * packet.stream.time_base)
                if len(found) == wanted or i >= limit:
                    break
        except av.error.FFmpegError:  # a damaged or truncated input: what was found before the damage
            pass
    return found


def dts_from_pts(pts: list[int]) -> list[int]:
    """Decode times for packets whose presentation times are ``pts`` (in decode order): the
    presentation times sorted, shifted back by the deepest reordering, so they increase and no
    packet is decoded after it is shown."""
    order = sorted(pts)
    delay = max(0, *(o - p for o, p in zip(order, pts, strict=True)))
    return [o - delay for o in order]


def rebuilt_dts(path: str | Path) -> dict[int, list[int]]:
    """For each video stream of ``path`` whose demuxed decode times are missing, out of order or
    after the presentation time: decode times for its packets, in order (:func:`dts_from_pts`)."""
    pts: dict[int, list[int]] = {}
    last: dict[int, int] = {}
    broken: set[int] = set()
    with av.open(str(path), timeout=30) as c:
        if not c.streams.video:
            return {}
        for packet in c.demux(*c.streams.video):
            if packet.size == 0:
                continue
            index = packet.stream.index
            if packet.pts is None:  # nothing to rebuild from
                return {}
            pts.setdefault(index, []).append(packet.pts)
            if packet.dts is None or packet.dts > packet.pts or packet.dts <= last.get(index, packet.dts - 1):
                broken.add(index)
            if packet.dts is not None:
                last[index] = packet.dts
    return {index: dts_from_pts(pts[index]) for index in broken}


def muxer_shift(partial: dict[int, float], source: dict[int, float], copied: list[int]) -> float:
    """Seconds the Matroska muxer added to every timestamp of the partial file, in whole ms.

    ``partial``/``source``: :func:`first_times` of the partial file and of the input;
    ``copied``: the input stream indices copied, in order (partial stream ``k + 1`` is
    ``copied[k]``, after the video). 0 when no copied stream shows it."""
    for k, index in enumerate(copied):
        if k + 1 in partial and index in source:
            return round((partial[k + 1] - source[index]) * 1000) / 1000
    return 0.0


def output_time_base(stream, fps: Fraction) -> Fraction | None:
    """The time base a copied ``stream`` gets in the output: ``1/fps`` for video, one sample for
    audio, None (the muxer's choice) for the rest."""
    if stream.type == "video":
        return 1 / Fraction(fps)
    if stream.type == "audio" and stream.codec_context.sample_rate:
        return Fraction(1, stream.codec_context.sample_rate)
    return None


def annex_b_filter(stream, fmt: str) -> str | None:
    """The bitstream filter ``stream``'s packets need to go into muxer ``fmt``, or None."""
    return TO_ANNEX_B.get(stream.codec_context.name) if fmt in ANNEX_B_MUXERS else None


def shift_packet(packet, shift_s: float) -> None:
    """Take ``shift_s`` seconds off ``packet``'s timestamps (in its own time base)."""
    ticks = round(shift_s / packet.time_base)
    if packet.pts is not None:
        packet.pts -= ticks
    if packet.dts is not None:
        packet.dts -= ticks


def remux(partial: str | Path, dst: str | Path, fmt: str, options: dict[str, str], metadata: dict[str, str],
          fps: Fraction, shift_s: float = 0.0) -> int:
    """Copy every packet of ``partial`` into ``dst`` (muxer ``fmt`` with ``options``), with
    container tags ``metadata``, ``shift_s`` seconds earlier; returns the packets copied."""
    copied = 0
    dts = {index: iter(times) for index, times in rebuilt_dts(partial).items()}
    with av.open(str(partial), timeout=30) as inp, av.open(str(dst), "w", format=fmt, options=options) as out:
        out.metadata.update(metadata)
        streams, filters = {}, {}
        for s in inp.streams:
            o = out.add_stream_from_template(s)
            tb = output_time_base(s, fps)
            if tb is not None:
                o.time_base = tb
            streams[s.index] = o
            name = annex_b_filter(s, fmt)
            if name is not None:
                filters[s.index] = av.bitstream.BitStreamFilterContext(name, s, o)
        for packet in inp.demux():
            if packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            index = packet.stream.index
            if index in dts:
                packet.dts = next(dts[index])
            shift_packet(packet, shift_s)
            copied += _mux(out, streams[index], filters[index].filter(packet) if index in filters else [packet])
        for index, bsf in filters.items():  # what a filter still holds at the end of the input
            copied += _mux(out, streams[index], bsf.filter(None))
    return copied


def _mux(out, stream, packets) -> int:
    for p in packets:
        p.stream = stream
        out.mux(p)
    return len(packets)
