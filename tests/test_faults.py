"""Faults stay local (issue 15), with real processes on 127.0.0.1: a receiver frozen with SIGSTOP
stalls neither the other cameras nor the process."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from ultrares_stream.batcher import Batcher
from ultrares_stream.metrics import Metrics
from ultrares_stream.stream import Stream, UpscalerPool

pytestmark = [pytest.mark.faults, pytest.mark.rtsp, pytest.mark.timeout(180)]


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


def _wait(cond, timeout, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def test_a_frozen_receiver_stalls_nothing_else(gst_rtsp, rtsp_server, tiny_model, tmp_path):
    from ultrares_stream.demo.server import RtspServer

    m = Metrics()
    batcher = Batcher("cpu", max_batch=2, max_wait_ms=5, metrics=m).start()
    pool = UpscalerPool(device="cpu", precision="fp32", engine="eager", tile=0)
    streams = []
    try:
        with RtspServer(port=0).start(timeout=30) as receiver:
            hung = Stream("hung", rtsp_server.camera_url, receiver.record_url("out"), batcher=batcher, pool=pool,
                          model=tiny_model, metrics=m, timeout_s=3.0, watchdog_s=3.0, backoff_initial_s=0.2,
                          backoff_max_s=1.0).start()
            local = Stream("local", rtsp_server.camera_url, str(tmp_path / "local.mp4"), batcher=batcher,
                           pool=pool, model=tiny_model, metrics=m, timeout_s=3.0).start()
            streams = [hung, local]
            assert hung.first_output.wait(40) and local.first_output.wait(40)
            os.kill(receiver.pid, signal.SIGSTOP)
            gaps, last = [], (local.frames_out, time.monotonic())
            try:
                with StallProbe() as probe:
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
        assert probe.worst < 0.5, f"a thread was stalled {probe.worst:.2f} s (the interpreter lock was held)"
        assert gaps and max(gaps) < 1.0, f"the local camera stopped for {max(gaps):.2f} s"
        assert len(gaps) > 12 * 25 * 0.5  # it kept most of its 25 fps
    finally:
        for s in streams:
            s.stop(5)
        batcher.stop(5)
