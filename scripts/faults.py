#!/usr/bin/env python3
"""Faults against a real `ultrares serve`, for operators and benchmarks.

    .venv/bin/python scripts/faults.py hung-receiver [--seconds 12]
        two cameras on one feed, one publishing over RTSP to a receiver frozen with SIGSTOP:
        /healthz latency and the other camera's fps before and during the freeze.
    .venv/bin/python scripts/faults.py soak [--minutes 60] [--cameras 4]
        many cameras, random faults (camera server killed and restarted, receiver frozen and
        thawed) until the time is up; a summary table per camera at the end, and the memory of
        the service (its process and its publisher children) over the run: a leak shows as a slope.

    .venv/bin/python scripts/faults.py timing [--seconds 75] [--fps 12]
        a camera sending MPEG-TS over UDP at 12 fps while declaring 25, its clock set forward by
        an hour half way, recorded by `ultrares serve` to MP4 segments: the recording's duration
        against the time the camera sent, the largest gap between frames, and the largest
        distance between keyframes (output time).

hung-receiver and soak start GStreamer RTSP servers (the demo camera); every scenario runs
`ultrares serve` on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from ultrares_stream.demo.server import RtspServer, free_port


class Service:
    """`ultrares serve` in a child process on a free port, with probes of its HTTP API."""

    def __init__(self, cameras: list[tuple[str, str, str]], model: str, folder: Path):
        self.port = free_port()
        cfg = folder / "cams.yaml"
        lines = [f"server: {{port: {self.port}}}", "inference: {device: cpu}", "reconnect: {timeout_s: 3}",
                 f"defaults: {{model: {model}}}", "cameras:"]
        lines += [f"  - {{name: {n}, input: '{i}', output: '{o}'}}" for n, i, o in cameras]
        cfg.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([sys.executable, "-m", "ultrares_stream.cli", "serve", "--config", str(cfg)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"

    def healthz_s(self) -> float | None:
        t = time.perf_counter()
        try:
            urllib.request.urlopen(f"{self.base}/healthz", timeout=10).read()
        except OSError:
            return None
        return time.perf_counter() - t

    def streams(self) -> dict[str, dict]:
        try:
            with urllib.request.urlopen(f"{self.base}/api/v1/streams", timeout=10) as r:
                data = json.load(r)
        except OSError:
            return {}
        return {s["name"]: s for s in (data["streams"] if isinstance(data, dict) else data)}

    def wait_running(self, frames: int = 25, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = self.streams()
            if got and all(s["frames_out"] >= frames for s in got.values()):
                return
            time.sleep(0.5)
        raise SystemExit("the service did not start publishing")

    def rss_mib(self) -> float:
        """Resident memory of the service and its direct children (the network publishers), MiB."""
        pids = [self.proc.pid]
        try:
            pids += [int(p) for p in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()]
        except OSError:
            pass
        total = 0
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        return total / 1024

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def memory_trend(samples: list[tuple[float, float]], settle_s: float = 120.0) -> str:
    """First / last / largest RSS after ``settle_s`` (models loaded, queues full) and the
    least-squares slope in MiB per hour."""
    kept = [(t, m) for t, m in samples if t >= settle_s] or samples
    if len(kept) < 2:
        return "n/a"
    slope = statistics.linear_regression([t for t, _ in kept], [m for _, m in kept]).slope
    every_5_min = {int(t // 300): m for t, m in kept}  # the last sample of each 5 minutes
    return (f"{kept[0][1]:.0f} MiB at {kept[0][0] / 60:.1f} min, {kept[-1][1]:.0f} MiB at {kept[-1][0] / 60:.1f} min, "
            f"max {max(m for _, m in kept):.0f} MiB; slope {3600 * slope:+.1f} MiB/h; by 5 minutes: "
            + ", ".join(f"{m:.0f}" for m in every_5_min.values()))


def percentiles(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    q = statistics.quantiles(values, n=100)
    return f"p50 {1000 * q[49]:.1f} ms, p99 {1000 * q[98]:.1f} ms, max {1000 * max(values):.1f} ms"


def hung_receiver(args) -> int:
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        camera = stack.enter_context(RtspServer(port=0).start(timeout=30))
        receiver = stack.enter_context(RtspServer(port=0).start(timeout=30))
        svc = Service([("hung", camera.camera_url, receiver.record_url("out")),
                       ("local", camera.camera_url, str(Path(tmp) / "local.mp4"))], args.model, Path(tmp))
        try:
            svc.wait_running()
            phases = {}
            for phase in ("before", "frozen"):
                if phase == "frozen":
                    os.kill(receiver.pid, signal.SIGSTOP)
                lat, f0, t0 = [], svc.streams()["local"]["frames_out"], time.monotonic()
                while time.monotonic() - t0 < args.seconds:
                    d = svc.healthz_s()
                    if d is not None:
                        lat.append(d)
                    time.sleep(0.05)
                phases[phase] = (lat, (svc.streams()["local"]["frames_out"] - f0) / (time.monotonic() - t0))
            os.kill(receiver.pid, signal.SIGCONT)
        finally:
            svc.stop()
    for phase, (lat, fps) in phases.items():
        print(f"{phase:7s}: /healthz {percentiles(lat)} ({len(lat)} probes); local camera {fps:.1f} fps")
    print(f"local camera kept {100 * phases['frozen'][1] / phases['before'][1]:.0f} % of its fps")
    return 0


def soak(args) -> int:
    rng = random.Random(args.seed)
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        cameras = [stack.enter_context(RtspServer(port=0).start(timeout=30)) for _ in range(args.cameras)]
        receiver = stack.enter_context(RtspServer(port=0).start(timeout=30))
        svc = Service([(f"cam{i}", c.camera_url, receiver.record_url(f"cam{i}") if i == 0 else
                        str(Path(tmp) / f"cam{i}.mkv")) for i, c in enumerate(cameras)], args.model, Path(tmp))
        faults: list[str] = []
        lat: list[float] = []
        memory: list[tuple[float, float]] = []
        try:
            svc.wait_running(frames=5)
            start = time.monotonic()
            next_sample = start
            end = start + 60 * args.minutes
            next_fault = time.monotonic() + rng.uniform(5, 20)
            while time.monotonic() < end:
                d = svc.healthz_s()
                if d is not None:
                    lat.append(d)
                if time.monotonic() >= next_sample:
                    memory.append((time.monotonic() - start, svc.rss_mib()))
                    next_sample += 15
                if time.monotonic() >= next_fault:
                    kind = rng.choice(["camera-restart", "receiver-freeze"])
                    if kind == "camera-restart":
                        cam = rng.randrange(len(cameras))
                        cameras[cam].stop()
                        time.sleep(rng.uniform(0.5, 5))
                        cameras[cam].start(timeout=30)
                        faults.append(f"cam{cam} restarted")
                    else:
                        os.kill(receiver.pid, signal.SIGSTOP)
                        time.sleep(rng.uniform(2, 10))
                        os.kill(receiver.pid, signal.SIGCONT)
                        faults.append("receiver frozen")
                    next_fault = time.monotonic() + rng.uniform(10, 40)
                time.sleep(0.2)
            final = svc.streams()
        finally:
            svc.stop()
    print(f"soak: {args.minutes:g} min, {len(faults)} faults ({', '.join(sorted(set(faults)))})")
    print(f"/healthz: {percentiles(lat)} ({len(lat)} probes)")
    print(f"memory (service + publishers): {memory_trend(memory)} ({len(memory)} samples)")
    print(f"{'camera':8s} {'state':16s} {'in':>7s} {'out':>7s} {'drops':>6s} {'reconnects':>10s} {'pub. reconn.':>12s}")
    for name, s in final.items():
        print(f"{name:8s} {s['state']:16s} {s['frames_in']:7d} {s['frames_out']:7d} {s['drops']:6d} "
              f"{s['reconnects']:10d} {s['publisher_reconnects']:12d}")
    return 0


def timing(args) -> int:
    import threading

    import av

    from ultrares_stream.demo.ts_camera import send_ts_camera
    from ultrares_stream.recording import list_segments

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ultrares-timing-") as tmp:
        out = Path(tmp) / "cam.mp4"
        svc = Service([("cam", f"udp://127.0.0.1:{port}", str(out))], args.model, Path(tmp))
        try:
            time.sleep(8.0)  # the service starts and its source listens
            sent = send_ts_camera(f"udp://127.0.0.1:{port}?pkt_size=1316", args.seconds, args.fps,
                                  jump_at=args.seconds / 2, size=(320, 240), stop=threading.Event())
            time.sleep(5.0)  # the frames in flight are published
        finally:
            svc.proc.send_signal(signal.SIGTERM)
            svc.proc.wait(60)
        times, keys = [], []
        for segment in list_segments(out):
            with av.open(str(segment)) as c:
                for packet in c.demux(video=0):
                    if packet.pts is not None and packet.size:
                        times.append(float(packet.pts * packet.time_base))
                        if packet.is_keyframe:
                            keys.append(times[-1])
    times.sort()
    span, sent_span = times[-1] - times[0], sent[-1] - sent[0]
    gaps = [b - a for a, b in zip(times, times[1:])]
    print(f"camera sent {len(sent)} frames over {sent_span:.1f} s (declaring 25 fps, clock +1 h at "
          f"{args.seconds / 2:.0f} s); recorded {len(times)} frames spanning {span:.1f} s "
          f"({100 * (span / sent_span - 1):+.1f} % of the time sent)")
    print(f"largest gap between frames {max(gaps):.2f} s; largest distance between keyframes "
          f"{max(b - a for a, b in zip(keys, keys[1:])) if len(keys) > 1 else float('nan'):.2f} s")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="ultrares-compact-x4")
    sub = ap.add_subparsers(dest="what", required=True)
    h = sub.add_parser("hung-receiver")
    h.add_argument("--seconds", type=float, default=12.0)
    h.set_defaults(func=hung_receiver)
    s = sub.add_parser("soak")
    s.add_argument("--minutes", type=float, default=60.0)
    s.add_argument("--cameras", type=int, default=4)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=soak)
    t = sub.add_parser("timing")
    t.add_argument("--seconds", type=float, default=75.0)
    t.add_argument("--fps", type=float, default=12.0)
    t.set_defaults(func=timing)
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
