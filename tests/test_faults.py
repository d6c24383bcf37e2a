"""Faults stay local, with real processes on 127.0.0.1: a receiver frozen with SIGSTOP
stalls neither the other cameras nor the process."""
from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager

import pytest

from conftest import free_port, wait_for
from ultrares_stream.batcher import Batcher
from ultrares_stream.config import CameraConfig, ReconnectConfig
from ultrares_stream.metrics import Metrics
from ultrares_stream.recording import list_segments
from ultrares_stream.stream import Stream, UpscalerPool

pytestmark = [pytest.mark.faults, pytest.mark.rtsp, pytest.mark.timeout(180)]


@contextmanager
def reading(src):
    """Consume ``src.frames()`` in a thread; yields a one-item list: when the last frame came."""
    last = [0.0]

    def read():
        for _ in src.frames():
            last[0] = time.monotonic()

    threading.Thread(target=read, daemon=True).start()
    try:
        yield last
    finally:
        src.stop()


class HttpProbe:
    """A thread that GETs /healthz and /metrics in turn and records each answer's latency."""

    def __init__(self, url: str):
        import httpx

        self.client = httpx.Client(base_url=url, timeout=10)
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        paths = ("/healthz", "/metrics")
        while not self._stop.is_set():
            t = time.monotonic()
            resp = self.client.get(paths[len(self.latencies) % 2])
            self.latencies.append(time.monotonic() - t)
            self.failures += resp.status_code != 200
            time.sleep(0.02)

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(12)
        self.client.close()


class StallProbe:
    """A thread that sleeps 10 ms at a time and records how late it wakes: any call that holds
    the interpreter lock shows up as a late wake-up (what stalled HTTP and /metrics)."""

    def __init__(self):
        self.worst = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            t = time.monotonic()
            time.sleep(0.01)
            self.worst = max(self.worst, time.monotonic() - t - 0.01)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(2)


def test_a_frozen_receiver_stalls_nothing_else(gst_rtsp, rtsp_server, tiny_model, tmp_path):
    from ultrares_stream.demo.server import RtspServer
    from ultrares_stream.service import HttpServer
    from ultrares_stream.web.app import create_app

    m = Metrics()
    http = HttpServer(create_app(metrics=m, default_model=tiny_model, device="cpu"), port=free_port()).start()
    batcher = Batcher("cpu", max_batch=2, max_wait_ms=5, metrics=m).start()
    pool = UpscalerPool(device="cpu", precision="fp32", engine="eager", tile=0)
    streams = []
    try:
        with RtspServer(port=0).start(timeout=30) as receiver:
            hung = Stream(CameraConfig(name="hung", input=rtsp_server.camera_url, output=receiver.record_url("out"),
                                       model=tiny_model), batcher=batcher, pool=pool, metrics=m,
                          reconnect=ReconnectConfig(timeout_s=3.0, initial_s=0.2, max_s=1.0)).start()
            local = Stream(CameraConfig(name="local", input=rtsp_server.camera_url, output=str(tmp_path / "local.mp4"),
                                        model=tiny_model), batcher=batcher, pool=pool, metrics=m,
                           reconnect=ReconnectConfig(timeout_s=3.0), watchdog_s=5.0).start()
            streams = [hung, local]
            assert hung.first_output.wait(40) and local.first_output.wait(40)
            os.kill(receiver.pid, signal.SIGSTOP)
            gaps, last = [], (local.frames_out, time.monotonic())
            try:
                with StallProbe() as probe, HttpProbe(http.url) as web:
                    end = time.monotonic() + 12  # several open/handshake timeouts of the hung output
                    while time.monotonic() < end:
                        time.sleep(0.02)
                        if local.frames_out != last[0]:
                            gaps.append(time.monotonic() - last[1])
                            last = (local.frames_out, time.monotonic())
                reconnects = hung.sink.reconnects
            finally:
                os.kill(receiver.pid, signal.SIGCONT)
        assert reconnects >= 1, "the frozen receiver was not noticed"
        assert probe.worst < 1.5, f"a thread was stalled {probe.worst:.2f} s (the interpreter lock was held)"
        # the bounds catch the stall this guards against (the whole process held for the 5 s socket
        # timeout at each publisher retry) with margins that hold on a 2-core machine at load 10;
        # the 100 ms target is measured by scripts/faults.py hung-receiver, not asserted here
        assert web.failures == 0 and len(web.latencies) > 50 and web.p99() < 2.5, (web.failures, web.p99())
        assert gaps and max(gaps) < 2.5, f"the local camera stopped for {max(gaps):.2f} s"
        assert len(gaps) > 12 * 25 * 0.25, f"{len(gaps)} frames in 12 s: the local camera nearly stopped"
    finally:
        for s in streams:
            s.stop(5)
        batcher.stop(5)
        http.stop()


def test_camera_killed_and_restarted_ten_times_recovers_each_time(gst_rtsp):
    """Recovery = from the restarted camera accepting connections to its first decoded frame.
    Quick retries keep it near the connect time (0.2-0.7 s measured here); the bound below only
    catches a return of exponential backoff (a second or more per outage), not load noise."""
    import statistics

    from ultrares_stream.demo.server import RtspServer
    from ultrares_stream.sources import Source

    with RtspServer(port=0).start(timeout=30) as camera:
        src = Source(camera.camera_url, "cam", live=True, reconnect=ReconnectConfig(timeout_s=2.0, initial_s=0.5))
        with reading(src) as last:
            assert wait_for(lambda: last[0] > 0, 30)
            recoveries = []
            for _ in range(10):
                camera.stop()
                time.sleep(0.5)
                camera.start(timeout=30)
                back = time.monotonic()
                assert wait_for(lambda: last[0] > back, 15), f"no frame within 15 s of restart {len(recoveries) + 1}"
                recoveries.append(last[0] - back)
    assert src.reconnects >= 10
    assert statistics.median(recoveries) < 2.0 and max(recoveries) < 5.0, recoveries


def test_a_frozen_camera_is_marked_down_within_its_timeout(gst_rtsp):
    """SIGSTOP of the camera (TCP open, no data): down within timeout_s + 1 s of the freeze,
    three times over, each time back up after SIGCONT."""
    from ultrares_stream.demo.server import RtspServer
    from ultrares_stream.metrics import Metrics
    from ultrares_stream.sources import Source

    m = Metrics()
    timeout_s = 2.0
    with RtspServer(port=0).start(timeout=30) as camera:
        src = Source(camera.camera_url, "cam", live=True, reconnect=ReconnectConfig(timeout_s=timeout_s, initial_s=0.2),
                     metrics=m)
        with reading(src) as last:
            downs = []
            for _ in range(3):
                assert wait_for(lambda: src.connected.is_set() and time.monotonic() - last[0] < 0.2, 30)
                os.kill(camera.pid, signal.SIGSTOP)
                frozen = time.monotonic()
                try:
                    assert wait_for(lambda: not src.connected.is_set(), timeout_s + 5)
                    downs.append(time.monotonic() - frozen)
                    assert m.up.labels("cam")._value.get() == 0
                finally:
                    os.kill(camera.pid, signal.SIGCONT)
    # the target is timeout_s + 1 s (measured 1.99 s with timeout_s 2 on an idle machine); the bound
    # leaves a loaded CI machine half a second more, still short of the bug's 2 x timeout_s (4 s)
    assert max(downs) <= timeout_s + 1.5, downs


def test_sigkill_of_serve_loses_at_most_a_gop(gst_rtsp, rtsp_server, tiny_model, tmp_path):
    """A real ``ultrares serve`` recording a camera to MP4, killed with SIGKILL: the file plays, with
    every frame published up to the last keyframe (GOP here: 10 frames)."""
    import json
    import subprocess
    import sys
    import urllib.request

    import av

    port = free_port()
    out = tmp_path / "rec.mp4"
    cfg = tmp_path / "cams.yaml"
    cfg.write_text(f"server: {{port: {port}}}\ninference: {{device: cpu, engine: eager, precision: fp32}}\n"
                   f"defaults: {{model: '{tiny_model}', encoder: {{gop: 10}}}}\n"
                   f"cameras:\n  - {{name: cam, input: '{rtsp_server.camera_url}', output: '{out}'}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "ultrares_stream.cli", "serve", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def published():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/streams", timeout=2) as r:
                data = json.load(r)
        except OSError:
            return 0
        items = data["streams"] if isinstance(data, dict) else data
        return items[0]["frames_out"] if items else 0

    try:
        assert wait_for(lambda: published() >= 60, 90, step=0.2), "serve published no frames"
        done = published()
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    frames = 0
    for segment in list_segments(out):  # a live camera records segments (recording.py)
        with av.open(str(segment)) as c:
            frames += sum(1 for _ in c.decode(video=0))
    assert frames >= done - 10 - 3, (frames, done)  # one GOP, and frames between the query and the kill


# --- bad inputs: a clear one-line error, a non-zero exit, no traceback, no hang ----------------

def _cli(*args, timeout=120):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ultrares_stream.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc


def _video(path, w, h, frames=3):
    import av
    import numpy as np

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for _ in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(np.zeros((h, w, 3), np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


@pytest.mark.parametrize("case, message", [
    ("tiny", "too small"),
    ("huge", "limited to 8192 pixels a side"),
    ("damaged-header", "not a readable video"),
    ("zeros", "not a readable video"),
    ("fifo", "not a regular file"),
])
def test_bad_video_inputs_are_refused_in_one_line(tmp_path, tiny_model, case, message):
    small = _video(tmp_path / "small.mp4", 32, 32)
    src = tmp_path / f"{case}.mp4"
    if case == "tiny":
        _video(src, 2, 2)
    elif case == "huge":
        _video(src, 4200, 16, frames=1)  # x2: 8400 pixels wide
    elif case == "damaged-header":
        data = small.read_bytes()
        src.write_bytes(data[:40] + bytes(200) + data[240:])
    elif case == "zeros":
        src.write_bytes(bytes(5000))
    else:
        os.mkfifo(src)
    proc = _cli("enhance", src, "-o", tmp_path / "out.mp4", "--model", tiny_model, timeout=60)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("size", ["²x²", "١٠٠x١٠٠", "0x0"])
def test_sizes_outside_ascii_digits_are_refused(tmp_path, size):
    proc = _cli("enhance", tmp_path / "x.png", "-o", tmp_path / "y.png", "--size", size)
    assert proc.returncode != 0 and "output size" in proc.stderr


def test_config_typos_and_empty_configs(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras:\n  - {name: a, input: 'htp://cam/x', output: out.mp4}\n")
    proc = _cli("serve", "--config", bad, "--check")
    assert proc.returncode != 0 and "cameras[0].input" in proc.stderr and "htp" in proc.stderr
    empty = tmp_path / "empty.yaml"
    empty.write_text("cameras: []\n")
    proc = _cli("serve", "--config", empty, "--check")  # refused by --check as serve refuses it
    assert proc.returncode != 0 and "no enabled cameras" in proc.stderr
