"""The demo RTSP server, run as a subprocess: a looping camera plus push/relay mounts.

GStreamer's RTSP server comes from Debian (``python3-gi``), so the server itself is the
standalone script ``rtsp_server.py`` run by ``/usr/bin/python3``; this module prepares the
video (H.264 MP4, cached), starts/stops that process and knows its URLs::

    with RtspServer(port=8554) as srv:
        srv.camera_url         # rtsp://127.0.0.1:8554/cam: the clip in an endless loop
        srv.record_url("out")  # rtsp://127.0.0.1:8554/push/out: push here (ANNOUNCE/RECORD)
        srv.watch_url("out")   # rtsp://127.0.0.1:8554/out: plays what is pushed to /push/out

Run one by hand: ``python -m ultrares_stream.demo.server --port 8554``.
"""
from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

from ultrares_stream.errors import UserError

log = logging.getLogger(__name__)

SCRIPT = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"
_CHECK = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
          "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
          "assert Gst.ElementFactory.find('rtph264pay') and Gst.ElementFactory.find('h264parse')")
APT_HINT = ("install the Debian packages python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base "
            "gstreamer1.0-plugins-good gstreamer1.0-plugins-bad (scripts/setup.sh does)")


class RtspServerError(UserError):
    """The demo RTSP server could not start (message includes the end of its log)."""


def gst_rtsp_unavailable(python: str = SYSTEM_PYTHON) -> str | None:
    """Why the GStreamer RTSP server cannot run here, or None when it can."""
    if not os.access(python, os.X_OK):
        return f"{python} not found; {APT_HINT}"
    try:
        proc = subprocess.run([python, "-c", _CHECK], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} cannot check GStreamer: {exc}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return f"{python} cannot load GStreamer's RTSP server ({last}); {APT_HINT}"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _stop_at_exit(ref: weakref.ref) -> None:
    srv = ref()
    if srv is not None:
        srv.stop()


class RtspServer:
    """A local RTSP server process: ``camera_url`` loops ``video`` (default:
    ``default_camera_video()``) as H.264/RTP; clients push to ``record_url(name)`` and others
    watch it at ``watch_url(name)``. ``port=0`` picks a free port. Usable as a context manager."""

    def __init__(self, port: int = 8554, host: str = "127.0.0.1", video: Path | None = None,
                 mount: str = "/cam", threads: int = 8, relay_wait: float = 3.0,
                 python: str = SYSTEM_PYTHON) -> None:
        if not 0 <= int(port) <= 65535:
            raise UserError(f"RTSP port must be 0..65535, got {port}")
        self.port = int(port)
        self.host = host
        self.video = Path(video) if video is not None else None
        self.mount = "/" + mount.strip("/")
        if self.mount == "/" or self.mount.startswith("/push"):
            raise UserError(f"camera mount {mount!r} is reserved; use a name such as /cam")
        self.threads = threads
        self.relay_wait = relay_wait
        self.python = python
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self._log_file = None
        atexit.register(_stop_at_exit, weakref.ref(self))

    # URLs -----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"rtsp://{host}:{self.port}"

    @property
    def camera_url(self) -> str:
        return self.base_url + self.mount

    def record_url(self, name: str) -> str:
        return f"{self.base_url}/push/{self._check_name(name)}"

    def watch_url(self, name: str) -> str:
        return f"{self.base_url}/{self._check_name(name)}"

    def _check_name(self, name: str) -> str:
        ok = name and all(c.isalnum() or c in "_.-" for c in name) and name.isascii()
        if not ok or "/" + name == self.mount or name == "push":
            raise UserError(f"stream name {name!r} is not allowed: use letters, digits, '_', '.', '-' "
                            f"(not 'push' or the camera mount {self.mount})")
        return name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # lifecycle --------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> "RtspServer":
        """Start the server process and wait until it accepts connections."""
        if self.running:
            return self
        from ultrares_stream.demo.scene import camera_video, default_camera_video

        video = camera_video(self.video) if self.video is not None else default_camera_video()
        if not os.access(self.python, os.X_OK):
            raise RtspServerError(f"cannot start the demo RTSP server: {self.python} not found; {APT_HINT}")
        if self.port == 0:
            self.port = free_port(self.host)
        log_dir = Path(tempfile.gettempdir()) / "ultrares-rtsp"
        log_dir.mkdir(exist_ok=True)
        self.log_path = log_dir / f"{self.host.replace(':', '_')}-{self.port}.log"  # one per port, reused
        self._log_file = open(self.log_path, "wb")  # a file, not a pipe: a full pipe would block it
        cmd = [self.python, str(SCRIPT), "--video", str(video), "--host", self.host, "--port", str(self.port),
               "--mount", self.mount, "--threads", str(self.threads), "--relay-wait", str(self.relay_wait),
               "--parent-pid", str(os.getpid())]
        log.info("starting RTSP server on %s (camera plays %s, log %s)", self.base_url, video, self.log_path)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                tail = self.log_tail()
                self._close_log()
                self.proc = None
                raise RtspServerError(f"demo RTSP server on {self.base_url} exited with code {code}: {tail}")
            if b"LISTENING" in self.log_path.read_bytes() and self._accepts():
                break
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise RtspServerError(f"demo RTSP server on {self.base_url} did not listen within {timeout:g} s: {tail}")
            time.sleep(0.05)
        log.info("RTSP server ready: camera %s (pid %d)", self.camera_url, self.proc.pid)
        return self

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server process (also when it is hung or SIGSTOPped)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.send_signal(signal.SIGCONT)  # a stopped process must run to handle SIGTERM
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("RTSP server pid %d ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait(timeout)
            except ProcessLookupError:
                pass
            log.info("RTSP server on %s stopped", self.base_url)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = 8) -> str:
        """The last lines of the server's log, on one line."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(empty log)"

    def __enter__(self) -> "RtspServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RtspServer({self.base_url}, pid={self.pid}, running={self.running})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ultrares_stream.demo.server",
        description="Run the demo RTSP server: a simulated traffic camera, push mounts and relay mounts.")
    parser.add_argument("--port", type=int, default=8554, help="RTSP port (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--video", type=Path, default=None,
                        help="video the camera plays in a loop (default: the shared CCTV clip, else the synthetic scene)")
    parser.add_argument("--mount", default="/cam", help="camera mount (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    srv = RtspServer(port=args.port, host=args.host, video=args.video, mount=args.mount)
    try:
        srv.start()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"camera:  {srv.camera_url}\npush to: {srv.base_url}/push/NAME\nwatch:   {srv.base_url}/NAME\n"
          f"log:     {srv.log_path}\n(Ctrl-C to stop)", flush=True)
    try:
        while srv.running:
            time.sleep(0.5)
        print(f"error: the RTSP server stopped unexpectedly: {srv.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        srv.stop()


if __name__ == "__main__":
    sys.exit(main())
