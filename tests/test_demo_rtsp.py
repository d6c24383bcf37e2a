"""Demo camera simulator: the synthetic scene, footage preparation, and the GStreamer RTSP server
(real server process on 127.0.0.1, PyAV as the RTSP client)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from ultrares_stream.demo.scene import (
    camera_video,
    default_camera_video,
    make_scene_video,
    render_scene_frame,
)
from ultrares_stream.demo.server import RtspServer, RtspServerError, gst_rtsp_unavailable
from ultrares_stream.errors import UserError

from conftest import need_data

RTSP_OPTIONS = {"rtsp_transport": "tcp", "timeout": "5000000"}  # FFmpeg: socket timeout in µs


def decode_all(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def read_rtsp(url: str, count: int) -> list[av.VideoFrame]:
    """The first ``count`` decoded frames from an RTSP URL (fewer if the stream ends)."""
    frames = []
    with av.open(url, options=RTSP_OPTIONS, timeout=10) as c:
        for frame in c.decode(video=0):
            frames.append(frame)
            if len(frames) >= count:
                break
    return frames


def stamped(frames: list[av.VideoFrame]) -> list[float]:
    """Frame times in seconds (FFmpeg leaves the very first RTSP frame without a timestamp)."""
    return [f.time for f in frames if f.time is not None]


# --------------------------------------------------------------------------- scene


def test_scene_frames_are_deterministic_and_move():
    a = render_scene_frame(7, 160, 120)
    assert a.shape == (120, 160, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_scene_frame(7, 160, 120))
    later = render_scene_frame(12, 160, 120)
    moved = np.any(a != later, axis=2).mean()
    assert 0.02 < moved < 0.6, f"{moved:.1%} of pixels changed in 5 frames"
    # plates: bright yellow pixels with dark text beside them
    yellow = (a[..., 0] > 200) & (a[..., 1] > 190) & (a[..., 2] < 120)
    assert yellow.sum() > 100


def test_make_scene_video_is_deterministic_h264(tmp_path):
    one = make_scene_video(tmp_path / "a.mp4", width=160, height=120, fps=25, seconds=1)
    two = make_scene_video(tmp_path / "b.mp4", width=160, height=120, fps=25, seconds=1)
    with av.open(str(one)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (160, 120)
        assert stream.average_rate == 25
    first, second = decode_all(one), decode_all(two)
    assert len(first) == 25
    assert all(np.array_equal(x, y) for x, y in zip(first, second, strict=True))
    assert not np.array_equal(first[0], first[-1])


@pytest.mark.parametrize("size", [(161, 120), (32, 32)])
def test_scene_rejects_bad_sizes(tmp_path, size):
    with pytest.raises(UserError, match="scene size"):
        make_scene_video(tmp_path / "x.mp4", width=size[0], height=size[1], seconds=0.2)


def test_camera_video_transcodes_other_codecs_once(tmp_path, monkeypatch):
    monkeypatch.setenv("ULTRARES_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "clip.avi"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(render_scene_frame(i, 96, 64), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    prepared = camera_video(src)
    assert prepared.parent == tmp_path / "cache" / "demo" and prepared.suffix == ".mp4"
    with av.open(str(prepared)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert sum(1 for _ in c.decode(video=0)) == 20
    mtime = prepared.stat().st_mtime_ns
    assert camera_video(src) == prepared and prepared.stat().st_mtime_ns == mtime  # cached
    scene = make_scene_video(tmp_path / "scene.mp4", 96, 64, seconds=0.2)
    assert camera_video(scene) == scene.resolve()  # already H.264 MP4: used as it is
    with pytest.raises(UserError, match="not found"):
        camera_video(tmp_path / "missing.mp4")


def test_default_camera_video_without_shared_data_is_the_scene(tmp_path, monkeypatch):
    monkeypatch.setenv("ULTRARES_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ULTRARES_DATA", str(tmp_path / "no-data"))
    path = default_camera_video()
    assert path.name.startswith("scene-320x240")
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.width, s.height) == ("h264", 320, 240)
    assert default_camera_video() == path


def test_default_camera_video_uses_the_real_clip():
    need_data("video", "cctv-motorway-320x240.avi")
    path = default_camera_video()
    assert path.name.startswith("cctv-motorway-320x240")
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.width, s.height) == ("h264", 320, 240)


# --------------------------------------------------------------------------- RTSP server


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory) -> Path:
    """A 1 s scene, so reading a few dozen frames crosses the loop point."""
    return make_scene_video(tmp_path_factory.mktemp("clip") / "short.mp4", 160, 120, fps=25, seconds=1)


@pytest.fixture
def short_server(gst_rtsp, short_clip):
    srv = RtspServer(port=0, video=short_clip, relay_wait=10).start(timeout=30)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.rtsp
@pytest.mark.timeout(90)
def test_camera_mount_plays_default_video(rtsp_server):
    assert rtsp_server.camera_url == f"rtsp://127.0.0.1:{rtsp_server.port}/cam"
    frames = read_rtsp(rtsp_server.camera_url, 15)
    assert len(frames) == 15
    assert {(f.width, f.height) for f in frames} == {(320, 240)}
    times = stamped(frames)
    assert len(times) >= 14 and all(b > a for a, b in zip(times, times[1:]))


@pytest.mark.rtsp
@pytest.mark.timeout(90)
def test_camera_loops_with_increasing_timestamps(short_server):
    frames = read_rtsp(short_server.camera_url, 45)  # the clip has 25 frames
    assert len(frames) == 45
    assert {(f.width, f.height) for f in frames} == {(160, 120)}
    times = stamped(frames)
    steps = np.diff(times)
    assert np.allclose(steps, 0.04, atol=0.002), steps
    assert times[-1] > 1.5  # well past the end of the 1 s clip
    # the picture after the loop point is the clip's first frame again
    first, after_loop = frames[0].to_ndarray(format="rgb24"), frames[25].to_ndarray(format="rgb24")
    assert np.abs(first.astype(int) - after_loop.astype(int)).mean() < 3


def push_scene(url: str, frames: int, size=(192, 144), fps=25, gop=25) -> None:
    """Publish the scene to ``url`` in real time with PyAV's RTSP muxer (ANNOUNCE/RECORD over TCP)."""
    with av.open(url, "w", format="rtsp", options={"rtsp_transport": "tcp"}, timeout=10) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(gop)}
        start = time.monotonic()
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(render_scene_frame(i, size[0], size[1]), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
            time.sleep(max(0.0, start + (i + 1) / fps - time.monotonic()))
        for packet in stream.encode():
            out.mux(packet)


@pytest.mark.rtsp
@pytest.mark.timeout(90)
def test_pushed_stream_is_relayed_to_watchers(short_server):
    pushed = 50
    got: list[av.VideoFrame] = []
    errors: list[BaseException] = []
    ended = threading.Event()

    def watch():
        try:
            got.extend(read_rtsp(short_server.watch_url("enhanced"), pushed + 10))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            ended.set()

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()  # waits at DESCRIBE until a publisher arrives
    time.sleep(0.3)
    push_scene(short_server.record_url("enhanced"), pushed)
    # the relay ends its readers when the publisher leaves
    assert ended.wait(15), "reader did not finish after the publisher left"
    assert not errors, errors
    assert len(got) == pushed
    assert {(f.width, f.height) for f in got} == {(192, 144)}
    times = stamped(got)
    assert np.allclose(np.diff(times), 0.04, atol=0.005)
    # the camera keeps playing meanwhile
    assert len(read_rtsp(short_server.camera_url, 3)) == 3

    # a publisher that comes back (e.g. after a reconnect) is relayed again, at its new size
    got.clear()
    ended.clear()
    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    time.sleep(0.3)
    push_scene(short_server.record_url("enhanced"), 25, size=(128, 96))
    assert ended.wait(15) and not errors, errors
    assert len(got) == 25 and {(f.width, f.height) for f in got} == {(128, 96)}


@pytest.mark.rtsp
@pytest.mark.timeout(60)
def test_watch_without_publisher_is_not_found(gst_rtsp, short_clip):
    with RtspServer(port=0, video=short_clip, relay_wait=0.5) as srv:
        with pytest.raises(av.HTTPNotFoundError):
            read_rtsp(srv.watch_url("nobody"), 1)
    with pytest.raises(UserError, match="not allowed"):
        srv.watch_url("a/b")


@pytest.mark.rtsp
@pytest.mark.timeout(90)
def test_stop_and_restart_on_the_same_port(short_server):
    port, first_pid = short_server.port, short_server.pid
    assert len(read_rtsp(short_server.camera_url, 3)) == 3
    short_server.stop()
    assert not short_server.running and short_server.pid is None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    short_server.start(timeout=30)
    assert short_server.port == port and short_server.pid != first_pid
    assert len(read_rtsp(short_server.camera_url, 3)) == 3


@pytest.mark.rtsp
@pytest.mark.timeout(60)
def test_hung_server_times_out_readers_and_still_stops(short_server):
    os.kill(short_server.pid, signal.SIGSTOP)  # what watchdog tests do
    started = time.monotonic()
    with pytest.raises((av.FFmpegError, OSError)):  # FFmpeg gives up after its 5 s timeout
        read_rtsp(short_server.camera_url, 1)
    assert time.monotonic() - started < 15
    short_server.stop(timeout=5)
    assert not short_server.running


@pytest.mark.rtsp
@pytest.mark.timeout(60)
def test_start_reports_a_busy_port(gst_rtsp, short_clip):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        srv = RtspServer(port=busy.getsockname()[1], video=short_clip)
        with pytest.raises(RtspServerError, match="cannot listen"):
            srv.start(timeout=20)
        assert not srv.running


def test_missing_gstreamer_is_a_clear_error(tmp_path):
    assert "not found" in gst_rtsp_unavailable(str(tmp_path / "python3"))
    srv = RtspServer(port=0, video=make_scene_video(tmp_path / "s.mp4", 96, 64, seconds=0.2),
                     python=str(tmp_path / "python3"))
    with pytest.raises(RtspServerError, match="python3 not found"):
        srv.start()
    with pytest.raises(UserError, match="reserved"):
        RtspServer(mount="/push")


def test_server_module_has_help():
    proc = subprocess.run([sys.executable, "-m", "ultrares_stream.demo.server", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--port" in proc.stdout and "--video" in proc.stdout


# --------------------------------------------------------------------------- ultrares demo's output


class _Camera:
    def __init__(self):
        self.first_output = threading.Event()


def _console():
    import io

    from rich.console import Console

    return Console(file=io.StringIO(), width=200, color_system=None)


def test_demo_prints_the_watch_url_only_once_the_first_frame_is_published():
    """Until the camera has published, the RTSP server answers the watch URL with 404: the demo
    says "starting" and prints the URL when the first enhanced frame is out."""
    from ultrares_stream.commands.demo import announce_watch_url

    console, camera, url = _console(), _Camera(), "rtsp://127.0.0.1:8554/enhanced"
    waiter = announce_watch_url(console, camera, url, threading.Event())
    time.sleep(0.5)
    assert "starting" in console.file.getvalue() and url not in console.file.getvalue()
    camera.first_output.set()
    waiter.join(5)
    printed = console.file.getvalue()
    assert not waiter.is_alive() and f"ffplay -rtsp_transport tcp {url}" in printed
    assert printed.index("starting") < printed.index(url)


def test_demo_that_stops_before_publishing_never_prints_the_watch_url():
    from ultrares_stream.commands.demo import announce_watch_url

    console, stopped = _console(), threading.Event()
    waiter = announce_watch_url(console, _Camera(), "rtsp://127.0.0.1:8554/enhanced", stopped)
    stopped.set()
    waiter.join(5)
    assert not waiter.is_alive() and "rtsp://" not in console.file.getvalue()
