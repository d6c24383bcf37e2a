"""The live pipeline against a real RTSP server on 127.0.0.1 (GStreamer, started by the tests):
camera -> queue -> batcher -> encoder -> RTSP push, read back; camera restarts; slow model; hung publisher."""
import os
import signal
import threading
import time
from fractions import Fraction

import av
import pytest

from conftest import wait_for
from ultrares_stream.batcher import Batcher
from ultrares_stream.config import CameraConfig, QueueConfig, ReconnectConfig
from ultrares_stream.metrics import Metrics
from ultrares_stream.recording import list_segments
from ultrares_stream.stream import Stream, UpscalerPool
from ultrares_stream.upscaler import Upscaler

pytestmark = [pytest.mark.rtsp, pytest.mark.timeout(120)]


@pytest.fixture
def pipeline(tiny_model):
    made = []

    def make(input_url, output_url, pool=None, max_batch=4, queue_size=8, timeout_s=5.0, watchdog_s=5.0):
        m = Metrics()
        b = Batcher("cpu", max_batch=max_batch, max_wait_ms=5, metrics=m).start()
        pool = pool or UpscalerPool(device="cpu", precision="fp32", engine="eager", tile=0)
        camera = CameraConfig(name="cam", input=input_url, output=output_url, model=tiny_model,
                              queue=QueueConfig(size=queue_size))
        reconnect = ReconnectConfig(initial_s=0.2, max_s=1.0, timeout_s=timeout_s)
        s = Stream(camera, batcher=b, pool=pool, reconnect=reconnect, metrics=m, watchdog_s=watchdog_s).start()
        made.append((s, b))
        return s, m

    yield make
    for s, b in made:
        s.stop(5)
        b.stop(5)


def read_stream(url, n, timeout=30.0):
    """Decode up to ``n`` frames of a published RTSP stream (in a thread, so a stall cannot hang the test)."""
    got, info = [], {}

    def run():
        with av.open(url, options={"rtsp_transport": "tcp", "timeout": "5000000"}, timeout=10) as c:
            s = c.streams.video[0]
            info["rate"] = s.average_rate or s.guessed_rate
            for f in c.decode(s):
                got.append((f.width, f.height, f.time))
                if len(got) >= n:
                    return

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return got, info


def test_camera_to_published_stream_read_back(rtsp_server, pipeline):
    stream, m = pipeline(rtsp_server.camera_url, rtsp_server.record_url("enhanced"))
    assert stream.first_output.wait(40), stream.status()
    got, info = read_stream(rtsp_server.watch_url("enhanced"), 20)
    assert len(got) == 20, f"read back {len(got)} frames; status {stream.status()}"
    assert {(w, h) for w, h, _ in got} == {(640, 480)}  # 320x240 camera, x2 model
    times = [t for _, _, t in got if t is not None]
    assert len(times) >= 10  # (the first frames read from RTSP may have no time yet)
    steps = [b - a for a, b in zip(times, times[1:])]
    assert all(s > 0 for s in steps), "published timestamps must increase"
    # spacing is a whole number of camera frames (dropped frames leave gaps, never fractions)
    assert all(abs(s * 25 - round(s * 25)) < 0.1 for s in steps)
    assert Fraction(info["rate"]).limit_denominator(1001) == 25
    st = stream.status()
    assert st["output_resolution"] == [640, 480] and st["input_resolution"] == [320, 240]
    assert m.registry.get_sample_value("ultrares_frames_out_total", {"camera": "cam"}) == stream.frames_out
    assert st["latency_p50_s"] is not None and st["latency_p50_s"] > 0


def test_camera_killed_and_restarted_frames_flow_again(rtsp_server, pipeline, tmp_path):
    out = tmp_path / "out.mkv"
    stream, m = pipeline(rtsp_server.camera_url, str(out), timeout_s=2.0)
    assert stream.first_output.wait(40)
    assert wait_for(lambda: stream.frames_out >= 5, 30)
    rtsp_server.stop()
    assert wait_for(lambda: stream.source.state == "reconnecting", 10), "camera loss not noticed"
    assert m.registry.get_sample_value("ultrares_camera_up", {"camera": "cam"}) == 0
    time.sleep(1.5)  # a few failed reconnects while the camera is away
    rtsp_server.start(timeout=30)
    before = stream.frames_out
    assert wait_for(lambda: stream.frames_out >= before + 5, 40), stream.status()
    assert stream.source.reconnects >= 1 and stream.source.state == "running"
    assert m.registry.get_sample_value("ultrares_reconnects_total", {"camera": "cam", "side": "source"}) >= 1
    stream.stop(5)
    times = []
    for segment in list_segments(out):  # a live camera records segments (recording.py)
        with av.open(str(segment)) as c:
            times += [f.time for f in c.decode(video=0)]
    assert len(times) == stream.frames_out
    assert all(b > a for a, b in zip(times, times[1:])), "output timestamps went back after the reconnect"


class SlowUpscaler(Upscaler):
    """A real model made deliberately slow (0.25 s per batch)."""

    def upscale(self, x, size=None):
        time.sleep(0.25)
        return super().upscale(x, size)


def test_slow_model_keeps_queue_at_its_bound_and_counts_drops(rtsp_server, pipeline, tiny_model, tmp_path, caplog):
    pool = UpscalerPool(factory=lambda model, alpha: SlowUpscaler(model, alpha=alpha, device="cpu",
                                                                  precision="fp32", engine="eager", tile=0))
    stream, m = pipeline(rtsp_server.camera_url, str(tmp_path / "slow.mkv"), pool=pool, max_batch=1, queue_size=3)
    assert stream.first_output.wait(40)
    depths = []
    t_end = time.monotonic() + 3
    while time.monotonic() < t_end:
        depths.append(m.registry.get_sample_value("ultrares_queue_depth", {"camera": "cam"}))
        time.sleep(0.02)
    assert max(depths) == 3 and all(d <= 3 for d in depths)
    assert m.registry.get_sample_value("ultrares_queue_capacity", {"camera": "cam"}) == 3
    drops = m.registry.get_sample_value("ultrares_frames_dropped_total", {"camera": "cam"})
    fin = m.registry.get_sample_value("ultrares_frames_in_total", {"camera": "cam"})
    fout = m.registry.get_sample_value("ultrares_frames_out_total", {"camera": "cam"})
    assert drops > 0 and drops == stream.source_drops()
    ratio = m.registry.get_sample_value("ultrares_drop_ratio", {"camera": "cam"})
    assert 0.5 < ratio < 1  # about 4 of the camera's 25 fps get through
    assert fout < fin / 2  # 25 fps camera, about 4 fps model
    falling = [r for r in caplog.records if "falling behind" in r.getMessage()]
    assert len(falling) == 1, "a camera falling behind is said once (then at most every 30 s)"
    in_flight = fin - fout - drops
    assert 0 <= in_flight <= 3 + 1 + stream.out_queue.maxsize
    # publishing a sixth of what it receives: degraded, with its cause, once the window is full
    assert wait_for(lambda: stream.state == "degraded", 20), stream.status()
    assert "min_publish_share" in stream.status()["cause"]


def test_hung_publisher_is_detected_and_reconnected(gst_rtsp, rtsp_server, pipeline):
    from ultrares_stream.demo.server import RtspServer

    with RtspServer(port=0).start(timeout=30) as target:
        stream, m = pipeline(rtsp_server.camera_url, target.record_url("out"), timeout_s=3.0, watchdog_s=3.0)
        assert stream.first_output.wait(40)
        os.kill(target.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            detected = wait_for(lambda: stream.sink.reconnects >= 1 or stream.sink.state == "hung", 15)
            took = time.monotonic() - t0
        finally:
            os.kill(target.pid, signal.SIGCONT)
        assert detected, "a hung RTSP server was not noticed"
        assert took < 3.0 + 4.0
        before = stream.frames_out
        assert wait_for(lambda: stream.frames_out > before + 5 and stream.sink.state == "running", 30), \
            stream.status()
        assert stream.sink.reconnects >= 1
        assert m.registry.get_sample_value("ultrares_reconnects_total", {"camera": "cam", "side": "sink"}) >= 1


def test_a_slow_open_is_not_reported_as_a_hung_receiver(gst_rtsp, rtsp_server, pipeline, caplog, monkeypatch):
    """Opening an output and its first write (the publisher process's start and the RTSP
    handshake, slow on a loaded machine) have their own timeout: taking longer than watchdog_s
    is not 'not responding', and no publish error or reconnect is counted for it. The slow start
    is injected around the real publisher process and a real receiver."""
    from ultrares_stream import sinks
    from ultrares_stream.demo.server import RtspServer

    class SlowStart(sinks.RemotePublisher):
        def open(self, *args, **kwargs):
            time.sleep(2.5)
            return super().open(*args, **kwargs)

        def send(self, data, pts):
            if self.frames == 0:
                time.sleep(2.5)
            return super().send(data, pts)

    monkeypatch.setattr(sinks, "RemotePublisher", SlowStart)
    with RtspServer(port=0).start(timeout=30) as target:
        stream, m = pipeline(rtsp_server.camera_url, target.record_url("out"), timeout_s=8.0, watchdog_s=1.5)
        assert stream.first_output.wait(60), stream.status()
        assert wait_for(lambda: stream.frames_out >= 10, 30)
        warned = [r.getMessage() for r in caplog.records if "not responding" in r.getMessage()]
        errors = m.registry.get_sample_value("ultrares_errors_total", {"camera": "cam", "stage": "publish"})
        reconnects = stream.sink.reconnects
        stream.stop(5)  # before the receiver goes
    assert not warned and reconnects == 0 and not errors, (warned, reconnects, errors)
