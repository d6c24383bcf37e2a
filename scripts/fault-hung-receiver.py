#!/usr/bin/env python3
"""Measure what a frozen RTSP receiver does to the rest of `ultrares serve` (issue 15, defect 1).

Starts a GStreamer RTSP server as the camera, a second one as the receiver of camera "hung",
and `ultrares serve` with two cameras reading the same feed: "hung" publishes to the receiver,
"local" records to a file. After a warm-up the receiver is frozen with SIGSTOP for --seconds;
/healthz is probed every 50 ms all along. Prints HTTP latency percentiles and the local
camera's fps before and during the freeze.

    .venv/bin/python scripts/fault-hung-receiver.py [--seconds 15] [--model ultrares-compact-x4]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--model", default="ultrares-compact-x4")
    args = ap.parse_args()
    from ultrares_stream.demo.server import RtspServer, free_port

    with RtspServer(port=0).start(timeout=30) as camera, RtspServer(port=0).start(timeout=30) as receiver, \
            tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        cfg = Path(tmp) / "cams.yaml"
        cfg.write_text(f"server: {{port: {port}}}\ninference: {{device: cpu}}\nreconnect: {{timeout_s: 3}}\n"
                       f"defaults: {{model: {args.model}}}\ncameras:\n"
                       f"  - {{name: hung, input: '{camera.camera_url}', output: '{receiver.record_url('out')}'}}\n"
                       f"  - {{name: local, input: '{camera.camera_url}', output: '{Path(tmp) / 'local.mp4'}'}}\n")
        serve = subprocess.Popen([sys.executable, "-m", "ultrares_stream.cli", "serve", "--config", str(cfg)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"

        def probe():
            t = time.perf_counter()
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=10).read()
            except OSError:
                return None
            return time.perf_counter() - t

        def local_frames():
            with urllib.request.urlopen(f"{base}/api/v1/streams", timeout=10) as r:
                data = json.load(r)
            items = data["streams"] if isinstance(data, dict) else data
            return next(s["frames_out"] for s in items if s["name"] == "local")

        try:
            end = time.monotonic() + 90
            while time.monotonic() < end and (probe() is None or local_frames() < 25):
                time.sleep(0.5)
            phases = {}
            for phase in ("before", "frozen"):
                if phase == "frozen":
                    os.kill(receiver.pid, signal.SIGSTOP)
                lat, f0, t0 = [], local_frames(), time.monotonic()
                while time.monotonic() - t0 < args.seconds:
                    d = probe()
                    if d is not None:
                        lat.append(d)
                    time.sleep(0.05)
                phases[phase] = (lat, (local_frames() - f0) / (time.monotonic() - t0))
            os.kill(receiver.pid, signal.SIGCONT)
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(30)
    for phase, (lat, fps) in phases.items():
        q = statistics.quantiles(lat, n=100)
        print(f"{phase:7s}: /healthz p50 {1000 * q[49]:.1f} ms, p99 {1000 * q[98]:.1f} ms, max {1000 * max(lat):.1f} ms "
              f"({len(lat)} probes); local camera {fps:.1f} fps")
    print(f"local camera kept {100 * phases['frozen'][1] / phases['before'][1]:.0f} % of its fps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
