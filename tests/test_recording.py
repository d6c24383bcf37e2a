"""Recordings that are evidence: a file output is never truncated or overwritten by a reopen.

Real encoders and files throughout: frames go through a :class:`SinkWorker` into MP4 segments
and HLS playlists, a full disk is a real tmpfs filled up, and every segment is decoded back.
"""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import wait_for
from ultrares_stream.batcher import Enhanced
from ultrares_stream.frame_queue import FrameQueue
from ultrares_stream.recording import (RetentionPolicy, SegmentedOutput, expired, list_segments, segment_folder,
                                       segment_name)
from ultrares_stream.publisher import EncoderSettings, Publisher
from ultrares_stream.sinks import SinkHooks, SinkWorker
from ultrares_stream.sources import Frame
from ultrares_stream.stages import Route

FPS = Fraction(25)


def enhanced(i: int, w: int, h: int, made_by=None, noise: bool = False, t: float | None = None) -> Enhanced:
    rng = np.random.default_rng(i)
    data = (rng.integers(0, 255, (h * 3 // 2, w), dtype=np.uint8) if noise
            else np.full((h * 3 // 2, w), (i * 7) % 255, np.uint8))
    src = Frame(data[:2, :2], 2, 2, i, i / float(FPS) if t is None else t)
    return Enhanced(src, data, w, h, route=Route(made_by) if made_by is not None else None)


def sink_for(out: Path, hooks: SinkHooks, live: bool = True) -> tuple[SinkWorker, FrameQueue]:
    from dataclasses import replace

    from ultrares_stream.sources import Reconnect

    q = FrameQueue(10_000, "block")
    worker = SinkWorker(str(out), EncoderSettings(preset="ultrafast", gop=10), q, name="cam", live=live,
                        reconnect=Reconnect(initial_s=0.05, max_s=0.2), hooks=replace(hooks, fps=lambda: FPS))
    return worker.start(), q


def decode_all(path: Path) -> list[tuple[int, int]]:
    """Every frame's size, decoding the file to its end (raises on a broken file)."""
    with av.open(str(path)) as c:
        return [(f.width, f.height) for f in c.decode(video=0)]


# --- naming and retention: pure functions --------------------------------------------------------

def test_segment_names_sort_by_time_and_never_repeat(tmp_path):
    assert segment_name(0.0, ".mp4") == "1970-01-01T00-00-00.000Z.mp4"
    assert segment_name(1.5, ".mp4") < segment_name(2.25, ".mp4")
    assert segment_folder(tmp_path / "cam.mp4") == tmp_path / "cam"
    clock = iter([100.0, 100.0, 100.0]).__next__  # three opens within one millisecond
    seg = SegmentedOutput(str(tmp_path / "cam.mp4"), live=True, clock=clock)
    paths = []
    for _ in range(3):
        paths.append(Path(seg.next_path()))
        paths[-1].write_bytes(b"x")
    assert len(set(paths)) == 3 and list_segments(tmp_path / "cam.mp4") == sorted(paths)


def test_a_file_cameras_reopen_continues_beside_the_output(tmp_path):
    seg = SegmentedOutput(str(tmp_path / "out.mp4"), live=False)
    first = Path(seg.next_path())
    first.write_bytes(b"x")
    assert first == tmp_path / "out.mp4" and Path(seg.next_path()) == tmp_path / "out.2.mp4"


def test_retention_removes_the_oldest_by_age_and_size_but_never_the_newest():
    segs = [(Path(f"s{i}"), 1000.0 + 100 * i, 10) for i in range(5)]  # mtimes 1000..1400, 10 bytes each
    assert expired(segs, RetentionPolicy(keep_s=250), now=1500.0) == [Path("s0"), Path("s1"), Path("s2")]
    assert expired(segs, RetentionPolicy(max_bytes=25), now=1500.0) == [Path("s0"), Path("s1"), Path("s2")]
    assert expired(segs[-1:], RetentionPolicy(keep_s=1, max_bytes=1), now=1e9) == []


def test_retention_is_applied_as_segments_close(tmp_path):
    seg = SegmentedOutput(str(tmp_path / "cam.mp4"), live=True, policy=RetentionPolicy(max_bytes=25))
    for i in range(5):
        Path(seg.next_path()).write_bytes(b"x" * 10)
        time.sleep(0.002)
    seg.prune()
    assert len(list_segments(tmp_path / "cam.mp4")) == 2


# --- a reopen never truncates -------------------------------------------------------------------

def test_a_resolution_change_starts_a_new_segment_and_keeps_the_first(tmp_path):
    """A resolution change never reopens a path: a new segment starts and the frames before the change stay."""
    out = tmp_path / "cam.mp4"
    worker, q = sink_for(out, SinkHooks(segments=SegmentedOutput(str(out), live=True)))
    for i in range(30):
        q.put(enhanced(i, 64, 48))
    for i in range(30, 55):
        q.put(enhanced(i, 128, 96))
    q.close()
    assert worker.join(30)
    segments = list_segments(out)
    assert len(segments) == 2 and not out.exists()
    assert decode_all(segments[0]) == [(64, 48)] * 30
    assert decode_all(segments[1]) == [(128, 96)] * 25
    assert worker.published == 55


def test_a_restart_never_overwrites_an_earlier_recording(tmp_path):
    out = tmp_path / "cam.mp4"
    for run in range(2):
        worker, q = sink_for(out, SinkHooks(segments=SegmentedOutput(str(out), live=True)))
        for i in range(12):
            q.put(enhanced(i, 64, 48))
        q.close()
        assert worker.join(30)
    assert [len(decode_all(p)) for p in list_segments(out)] == [12, 12]


def test_a_runtime_alpha_change_is_tagged_from_its_first_frame(tmp_path):
    """A file's provenance tags are per segment: frames made by another model view (alpha 0.7)
    go into a new segment that says so."""
    out = tmp_path / "cam.mp4"
    tags = {"a": {"comment": "made at alpha 0"}, "b": {"comment": "made at alpha 0.7"}}
    worker, q = sink_for(out, SinkHooks(metadata=lambda up: tags[up], segments=SegmentedOutput(str(out), live=True)))
    for i in range(20):
        q.put(enhanced(i, 64, 48, made_by="a" if i < 8 else "b"))
    q.close()
    assert worker.join(30)
    found = []
    for p in list_segments(out):
        with av.open(str(p)) as c:
            found.append((c.metadata.get("comment"), sum(1 for _ in c.decode(video=0))))
    assert found == [("made at alpha 0", 8), ("made at alpha 0.7", 12)]


def test_hls_keeps_one_media_sequence_across_a_resolution_change(tmp_path):
    """An HLS output's media sequence goes on across a resolution change: no segment file is overwritten."""
    out = tmp_path / "hls" / "live.m3u8"
    worker, q = sink_for(out, SinkHooks(), live=False)
    for i in range(60):
        q.put(enhanced(i, 64, 48))
    for i in range(60, 120):
        q.put(enhanced(i, 128, 96))
    q.close()
    assert worker.join(30)
    playlist = out.read_text()
    names = [line for line in playlist.splitlines() if line.endswith(".ts")]
    assert "#EXT-X-DISCONTINUITY" in playlist.split(names[0])[1]  # between the two sizes
    assert len(names) == len(set(names)) and all((out.parent / n).exists() for n in names)
    sizes = [decode_all(out.parent / n)[0] for n in names]
    assert sizes[0] == (64, 48) and sizes[-1] == (128, 96)
    assert sum(len(decode_all(out.parent / n)) for n in names) == 120


# --- keyframes by output time ---------------------------------------------------------------------

def test_keyframes_come_by_time_when_frames_are_sparse(tmp_path):
    """A camera whose model keeps up with one frame in 25: the GOP (2 s at 25 fps) counted in
    frames would put keyframes 50 s apart; they must stay 2 s apart in output time."""
    out = tmp_path / "sparse.mp4"
    pub = Publisher(str(out), EncoderSettings(preset="ultrafast", tune=None), live=True).open(64, 48, FPS)
    for i in range(40):
        pub.write(np.full((72, 64), i * 5 % 255, np.uint8), pts=i * 25)  # a frame a second
    pub.close()
    with av.open(str(out)) as c:
        keys = [float(p.pts * p.time_base) for p in c.demux(video=0) if p.size and p.is_keyframe]
    assert len(keys) >= 15 and max(b - a for a, b in zip(keys, keys[1:])) <= 2.0 + 1e-6, keys


def test_keyframes_stay_within_the_gop_at_an_uneven_frame_rate():
    """12 fps in a 25 fps time base: frames 2 or 3 ticks apart; keyframes never more than the
    GOP (50 ticks, 2 s) apart, the frame before it is exceeded taking the keyframe."""
    from ultrares_stream.publisher import keyframe_due

    pts = [round(i * 25 / 12) for i in range(300)]
    keys, last, prev = [], None, None
    for p in pts:
        if keyframe_due(last, p, 50, 0 if prev is None else p - prev):
            keys.append(p)
            last = p
        prev = p
    assert max(b - a for a, b in zip(keys, keys[1:])) <= 50 and len(keys) >= len(pts) * 2 // 25 // 2


# --- a full disk ----------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MB tmpfs (needs root and mount rights; skipped elsewhere)."""
    where = tmp_path / "disk"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", f"ultrares-{uuid.uuid4().hex[:8]}", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_is_a_state_and_recording_resumes_when_space_returns(small_disk):
    """A full disk never truncates what was recorded: the failed segment is cut back
    to its last whole fragment, the state says disk-full, and a new segment starts once there
    is space again; every segment decodes to its end."""
    out = small_disk / "cam.mp4"
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 1_000_000)
    worker, q = sink_for(out, SinkHooks(segments=SegmentedOutput(str(out), live=True)))
    i = 0
    while worker.state != "disk-full" and i < 2000:
        q.put(enhanced(i, 128, 96, noise=True))
        i += 1
        if i % 25 == 0:
            assert wait_for(lambda: q.depth == 0 or worker.state == "disk-full", 30)
    assert wait_for(lambda: worker.state == "disk-full", 30), worker.state
    assert "No space left" in (worker.cause or ""), worker.cause
    before = worker.published
    filler.unlink()
    for j in range(i, i + 30):
        q.put(enhanced(j, 128, 96, noise=True))
    assert wait_for(lambda: worker.state == "running" and worker.published >= before + 20, 30), worker.state
    q.close()
    assert worker.join(30)
    segments = list_segments(out)
    counts = [len(decode_all(p)) for p in segments]  # raises if a segment ends in a broken fragment
    assert len(segments) >= 2 and all(counts)
    lost = worker.published - sum(counts)
    assert 0 <= lost <= 25, (worker.published, counts)  # at most the second that was in flight


def test_an_unwritable_output_says_why(tmp_path):
    """A read-only output is an error state with its cause, never 'starting' forever."""
    ro = tmp_path / "ro"
    ro.mkdir()
    out = ro / "cam.mp4"
    os.chmod(ro, 0o500)
    if os.access(ro, os.W_OK):  # root ignores permissions: a path under a file cannot be created by anyone
        out = tmp_path / "a-file" / "cam.mp4"
        (tmp_path / "a-file").write_bytes(b"")
    try:
        worker, q = sink_for(out, SinkHooks(segments=SegmentedOutput(str(out), live=True)))
        q.put(enhanced(0, 64, 48))
        assert wait_for(lambda: worker.state == "output-error", 20), worker.state
        assert worker.cause and str(out.parent.name) in worker.cause
        q.close()
        worker.stop(5)
    finally:
        os.chmod(ro, 0o700)


# --- end to end: a live MPEG-TS camera over UDP, recorded by a real Stream -------------------------

@pytest.mark.timeout(120)
def test_a_camera_slower_than_it_says_with_a_clock_jump_is_recorded_in_real_time(tmp_path, tiny_model):
    """Recordings are timed by the source: a camera advertising 25 fps and sending 12, with a +1 h
    clock jump, gives a recording that spans the time the camera sent, and no gap exceeds 2 s."""
    import threading

    from conftest import free_port
    from ultrares_stream.batcher import Batcher
    from ultrares_stream.demo.ts_camera import send_ts_camera
    from ultrares_stream.config import CameraConfig, ReconnectConfig
    from ultrares_stream.stream import Stream, UpscalerPool

    port = free_port()
    out = tmp_path / "cam.mp4"
    batcher = Batcher("cpu", max_batch=2, max_wait_ms=5).start()
    pool = UpscalerPool(device="cpu", precision="fp32", engine="eager", tile=0)
    stream = Stream(CameraConfig(name="cam", input=f"udp://127.0.0.1:{port}", output=str(out), model=tiny_model),
                    batcher=batcher, pool=pool, reconnect=ReconnectConfig(timeout_s=5, initial_s=0.2)).start()
    stop, sent = threading.Event(), []
    try:
        time.sleep(1.0)  # the source is listening
        sender = threading.Thread(target=lambda: sent.extend(send_ts_camera(
            f"udp://127.0.0.1:{port}?pkt_size=1316", 8.0, 12.0, jump_at=4.0, stop=stop)), daemon=True)
        sender.start()
        sender.join(60)
        assert wait_for(lambda: stream.frames_out > 0, 30)
        time.sleep(1.0)
    finally:
        stop.set()
        stream.stop(10)
        batcher.stop(5)
    times = []
    for segment in list_segments(out):
        with av.open(str(segment)) as c:
            times += [float(f.time) for f in c.decode(video=0)]
    assert len(times) > 40, len(times)
    steps = [b - a for a, b in zip(times, times[1:])]
    assert max(steps) <= 2.0, max(steps)  # the +1 h jump is bridged
    # the recording spans what the camera sent between the first and last frames recorded: real
    # time within 2 % (plus one frame at each end for the frames the first connection lost)
    span = times[-1] - times[0]
    assert span <= sent[-1] - sent[0] + 0.2, (span, sent[-1] - sent[0])
    assert span >= (sent[-1] - sent[0]) * 0.98 - 1.5, (span, sent[-1] - sent[0])
    assert len(times) < span * 12 * 1.1 + 2  # about 12 frames a second, not 25


def test_a_file_job_whose_writes_stall_loses_no_frame(tmp_path, monkeypatch):
    """A recorded job's output has no receiver to hang: a write that stalls past the watchdog (a
    slow disk, the process paused with SIGSTOP) is waited for, never dropped as a hung connection."""
    from dataclasses import replace

    from ultrares_stream.sources import Reconnect

    send = Publisher.send

    def slow_send(self, data, pts):
        if pts == 20:
            time.sleep(1.0)  # twenty times the watchdog below
        return send(self, data, pts)

    monkeypatch.setattr(Publisher, "send", slow_send)
    out = tmp_path / "job.mp4"
    q = FrameQueue(10_000, "block")
    worker = SinkWorker(str(out), EncoderSettings(preset="ultrafast", gop=10), q, name="job", live=False,
                        reconnect=Reconnect(initial_s=0.05, max_s=0.2, watchdog_s=0.05),
                        hooks=replace(SinkHooks(), fps=lambda: FPS)).start()
    for i in range(40):
        q.put(enhanced(i, 64, 48))
    q.close()
    assert worker.join(30) and worker.error is None, worker.error
    assert worker.reconnects == 0 and len(decode_all(out)) == 40
