"""Sources: URL masking, timeouts and transport options, backoff, file decoding, dead/hung cameras."""
import socket
import threading
import time

import pytest

from ultrares_stream.config import ReconnectConfig
from ultrares_stream.errors import UserError
from ultrares_stream.metrics import Metrics
from ultrares_stream.sources import Source, backoff_delay, open_args
from ultrares_stream.urls import is_live, mask_url


@pytest.mark.parametrize("url, masked", [
    ("rtsp://admin:s3cret@10.0.0.5:554/stream1", "rtsp://admin:***@10.0.0.5:554/stream1"),
    ("rtsp://user:p%40ss@cam/x?a=1", "rtsp://user:***@cam/x?a=1"),
    ("rtsp://10.0.0.5/stream", "rtsp://10.0.0.5/stream"),
    ("/videos/clip.mp4", "/videos/clip.mp4"),
    ("rtmp://u:pw@host/live/key", "rtmp://u:***@host/live/key"),
    ("rtsp://admin:s3cret/x@cam/live", "rtsp://admin:***@cam/live"),  # '/' in the password
    ("rtsp://admin:s3@cret@cam/live", "rtsp://admin:***@cam/live"),  # '@' in the password
    ("rtsp://cam/x?user=admin&password=s3cret&ch=1", "rtsp://cam/x?user=admin&password=***&ch=1"),
    ("rtsp://cam/x?pwd=s3cret#t", "rtsp://cam/x?pwd=***#t"),
    ("https://cam/live.m3u8?token=s3cret", "https://cam/live.m3u8?token=***"),
])
def test_mask_url(url, masked):
    assert mask_url(url) == masked
    assert "s3cret" not in mask_url(url) and "p%40ss" not in mask_url(url)


def test_is_live():
    assert is_live("rtsp://cam/1") and is_live("http://x/live.m3u8") and is_live("/dev/video0")
    assert not is_live("/tmp/clip.mp4") and not is_live("clip.mkv")


def test_open_args_always_set_timeouts_in_microseconds():
    a = open_args("rtsp://cam/1", "tcp", 5)
    # RTSP reads get half the budget each: FFmpeg's demuxer fails on the second timed-out read
    assert a["options"]["timeout"] == "2500000" and a["options"]["rtsp_transport"] == "tcp"
    assert "stimeout" not in a["options"]
    assert open_args("rtsp://cam/1", "udp", 2)["options"]["rtsp_transport"] == "udp"
    assert open_args("http://cam/x.m3u8", "tcp", 3)["options"]["rw_timeout"] == "3000000"
    assert open_args("rtmp://cam/live", "tcp", 3)["options"]["rw_timeout"] == "3000000"
    assert open_args("/dev/video0")["format"] == "v4l2"
    assert open_args("rtsp://cam/1")["timeout"] == (5.0, 2.5)  # PyAV's own interrupt timeout too (open, read)
    assert open_args("rtmp://cam/live", "tcp", 3)["timeout"] == (3.0, 3.0)
    with pytest.raises(UserError):
        open_args("rtsp://cam/1", "sctp")


def test_backoff_grows_exponentially_with_jitter_and_cap():
    mid = [backoff_delay(a, 0.5, 8.0, rand=0.5) for a in range(1, 8)]
    assert mid == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff_delay(3, 0.5, 8.0, jitter=0.25, rand=0.0) == pytest.approx(1.5)
    assert backoff_delay(3, 0.5, 8.0, jitter=0.25, rand=1.0) == pytest.approx(2.5)
    assert all(backoff_delay(a, 0.5, 8.0) <= 8.0 for a in range(1, 100))


def test_file_source_decodes_every_frame_with_increasing_times(tmp_path, make_clip):
    clip = make_clip(tmp_path / "c.mp4", frames=12, w=48, h=32)
    m = Metrics()
    src = Source(str(clip), "f", metrics=m)
    frames = list(src.frames())
    assert len(frames) == 12 and src.state == "finished" and src.hardware_decoding is False
    assert [f.index for f in frames] == list(range(12))
    times = [f.time_s for f in frames]
    assert all(b > a for a, b in zip(times, times[1:]))
    assert times[1] - times[0] == pytest.approx(0.1, abs=1e-3)
    assert frames[0].data.shape == (48, 48) and (frames[0].width, frames[0].height) == (48, 32)
    assert m.registry.get_sample_value("ultrares_frames_in_total", {"camera": "f"}) == 12
    assert float(src.fps) == 10


def test_missing_and_corrupt_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        Source(str(tmp_path / "nope.mp4"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(UserError, match="bad.mp4"):
        list(Source(str(bad)).frames())


def test_hung_camera_is_detected_within_timeout_and_retried():
    """A server that accepts the connection and then says nothing: noticed within the timeout, then retried."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    port = lsock.getsockname()[1]
    conns = []
    stop = threading.Event()

    def accept():
        lsock.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(lsock.accept()[0])  # never answers
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    m = Metrics()
    src = Source(f"rtsp://admin:pw@127.0.0.1:{port}/cam", "hung",
                 reconnect=ReconnectConfig(timeout_s=1.0, initial_s=0.1, max_s=0.2), metrics=m)
    assert src.live
    t = threading.Thread(target=lambda: list(src.frames()), daemon=True)
    t0 = time.monotonic()
    t.start()
    try:
        while src.reconnects < 2 and time.monotonic() - t0 < 15:
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
    finally:
        src.stop()
        t.join(10)
        stop.set()
        lsock.close()
        for c in conns:
            c.close()
    assert src.reconnects >= 2, "the hung camera was not retried"
    assert elapsed < 2 * 1.0 + 2 * 0.25 + 3.0  # two attempts at about the 1 s timeout each
    assert len(conns) >= 2  # it really reconnected
    assert not t.is_alive()
    assert m.registry.get_sample_value("ultrares_reconnects_total", {"camera": "hung", "side": "source"}) >= 2
    assert m.registry.get_sample_value("ultrares_camera_up", {"camera": "hung"}) == 0


def test_logs_never_show_the_password(caplog):
    src = Source("rtsp://admin:topsecret@127.0.0.1:9/cam", "cam",
                 reconnect=ReconnectConfig(timeout_s=0.5, initial_s=0.05))
    caplog.set_level("DEBUG")
    t = threading.Thread(target=lambda: list(src.frames()), daemon=True)
    t.start()
    time.sleep(1.0)
    src.stop()
    t.join(5)
    assert "admin:***@" in caplog.text
    assert "topsecret" not in caplog.text


def test_frame_clock_bridges_backward_steps_and_keeps_the_sources_spacing():
    from fractions import Fraction

    from ultrares_stream.sources import FrameClock

    c = FrameClock(Fraction(25))
    assert [c.time(t) for t in (1.0, 1.04, 1.08)] == [1.0, 1.04, 1.08]
    assert c.time(1.0) == pytest.approx(1.12)  # went backwards: bridged by one frame
    assert c.time(1.08) == pytest.approx(1.20)  # and the source's spacing is kept from there
    assert c.time(5.0) == pytest.approx(5.12)  # a file's gap (an outage in the recording) is kept
    assert c.bridges == 1
    avi = FrameClock(Fraction(25), synthetic=True)
    assert [round(avi.time(t), 3) for t in (0.04, 0.16, 0.24)] == [0.0, 0.04, 0.08]


def test_frame_clock_a_missing_first_time_does_not_switch_to_the_nominal_rate():
    """RTSP's first decoded frame often has no time: the camera's own (RTP) times must still be
    used for the rest of the connection. A camera advertising 25 fps and sending 12."""
    from fractions import Fraction

    from ultrares_stream.sources import FrameClock

    c = FrameClock(Fraction(25))
    rtp = [None] + [5000.0 + i / 12 for i in range(1, 25)]
    received = [100.0 + i / 12 for i in range(25)]
    times = [c.time(t, r) for t, r in zip(rtp, received)]
    assert times[-1] - times[0] == pytest.approx(24 / 12, abs=1e-6)  # 2 s of video, not 24 frames at 25


def test_frame_clock_bridges_a_live_clock_jump_but_keeps_a_stall():
    from fractions import Fraction

    from ultrares_stream.sources import FrameClock

    c = FrameClock(Fraction(25))
    assert [c.time(t, r) for t, r in ((10.0, 0.0), (10.04, 0.04))] == [10.0, 10.04]
    assert c.time(3610.08, 0.08) == pytest.approx(10.08)  # +1 h on the camera's clock: bridged
    assert c.time(3610.12, 0.12) == pytest.approx(10.12)
    assert c.time(3613.12, 3.12) == pytest.approx(13.12)  # 3 s without frames, seen on both clocks: kept
    assert c.time(3613.16, 3.125) == pytest.approx(13.16)  # a burst after a network stall: source times
    assert c.time(3600.0, 3.2) == pytest.approx(13.235)  # backwards: bridged by the time that passed
    assert c.bridges == 2


def test_nvdec_is_picked_only_for_cuda_models_with_a_working_decoder():
    from ultrares_stream.sources import pick_hwaccel

    works, broken = (lambda kind: None), (lambda kind: "no device")
    assert pick_hwaccel("cuda", probe=works) == "cuda"
    assert pick_hwaccel("cuda:1", probe=works) == "cuda"
    assert pick_hwaccel("cuda", probe=broken) is None  # software, with a warning
    assert pick_hwaccel("cuda", "off", probe=works) is None
    assert pick_hwaccel("cpu", probe=works) is None


def test_hwaccel_problem_says_why_hardware_decoding_is_unusable():
    import torch

    from ultrares_stream.sources import hwaccel_problem

    assert hwaccel_problem("no-such-device") == "this FFmpeg build has no no-such-device device"
    if not torch.cuda.is_available():  # a real attempt to create the NVDEC context fails here
        assert hwaccel_problem("cuda")


@pytest.mark.gpu
def test_nvdec_decodes_the_same_frames_as_software(tmp_path, make_clip):
    import numpy as np

    from ultrares_stream.sources import hwaccel_problem

    problem = hwaccel_problem("cuda")
    if problem:
        pytest.skip(f"NVDEC not usable here: {problem}")
    clip = make_clip(tmp_path / "c.mp4", frames=30, w=320, h=240)
    soft = list(Source(str(clip), "soft").frames())
    nvdec = Source(str(clip), "nvdec", hwaccel="cuda")
    hard = list(nvdec.frames())
    assert nvdec.hardware_decoding is True, "FFmpeg fell back to software decoding"
    assert len(hard) == len(soft) == 30
    for a, b in zip(soft, hard):
        assert b.data.shape == a.data.shape and (b.width, b.height) == (a.width, a.height)
        assert np.abs(a.data.astype(int) - b.data.astype(int)).max() <= 2  # NV12 -> yuv420p rounding


def test_file_frames_carry_the_copied_streams_packets(tmp_path, make_clip):
    import av

    from ultrares_stream.sources import stream_fps

    clip = make_clip(tmp_path / "a.mp4", frames=12, fps=10, audio=True)
    with av.open(str(clip)) as c:
        audio = sum(1 for p in c.demux(audio=0) if p.dts is not None)
        assert stream_fps(c.streams.video[0]) == 10
    src = Source(str(clip), "f", copy=[1])
    frames = list(src.frames())
    try:
        assert len(frames) == 12 and src.fps == 10
        assert [s.type for s in src.copied_streams] == ["audio"]
        assert sum(len(f.packets) for f in frames) == audio > 0  # every audio packet, each once
        assert all(p.stream.index == 1 for f in frames for p in f.packets)
    finally:
        src.close()
    assert all(not f.packets for f in Source(str(clip), "g").frames())  # nothing copied unless asked


def test_reconnect_backoff_grows_from_where_the_quick_retries_end():
    """After the quick retries the waits grow exponentially from there, not straight to reconnect.max_s."""
    from ultrares_stream.config import ReconnectConfig
    from ultrares_stream.sources import QUICK_RETRY_S, Source

    src = Source("rtsp://127.0.0.1:9/cam", "cam", live=True, reconnect=ReconnectConfig(initial_s=0.5, max_s=30))
    quick = [src._reconnect_delay(t) for t in (0.0, QUICK_RETRY_S / 2, QUICK_RETRY_S - 0.1)]
    slow = [src._reconnect_delay(QUICK_RETRY_S + i) for i in range(8)]
    assert all(0.375 <= d <= 0.625 for d in quick)
    assert 0.75 <= slow[0] <= 1.25 and 1.5 <= slow[1] <= 2.5  # 1 s, 2 s, ... with jitter
    assert all(b > a * 1.1 for a, b in zip(slow[:5], slow[1:6])) and max(slow) <= 30


def test_an_ended_hls_playlist_is_a_finished_source_not_a_looping_camera(tmp_path):
    """A camera pointed at an HLS playlist that has ended (#EXT-X-ENDLIST) ends once, with its
    cause; it is never replayed in a loop."""
    import functools
    import http.server

    import av
    import numpy as np

    from ultrares_stream.sources import Source

    c = av.open(str(tmp_path / "vod.m3u8"), "w", format="hls", options={"hls_time": "1", "hls_list_size": "0"})
    s = c.add_stream("libx264", rate=25)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    for i in range(50):
        frame = av.VideoFrame.from_ndarray(np.full((72, 64), i * 5, np.uint8), format="yuv420p")
        frame.pts = i
        c.mux(s.encode(frame))
    c.mux(s.encode(None))
    c.close()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        src = Source(f"http://127.0.0.1:{server.server_address[1]}/vod.m3u8", "cam", live=True,
                     reconnect=ReconnectConfig(timeout_s=3, initial_s=0.1))
        got = []
        t = threading.Thread(target=lambda: got.extend(src.frames()), daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive(), "the finished playlist was replayed"
        assert src.state == "ended" and "has ended" in src.cause and src.reconnects == 0
    finally:
        server.shutdown()
