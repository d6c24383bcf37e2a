"""Network outputs in a child process: a hung receiver blocks only that process.

PyAV holds the interpreter lock while FFmpeg opens a network output and writes its header
(the RTSP ANNOUNCE/SETUP/RECORD handshake): with a receiver that accepts the connection and
then never answers, every thread of the service (HTTP, metrics, the other cameras' decoding)
stood still for the whole socket timeout, at each reconnect (3.1 s measured with PyAV 18.1,
docs/benchmarks.md). So each network output (RTSP, RTMP, SRT, UDP, TCP) runs a plain
:class:`~ultrares_stream.publisher.Publisher` in a child process; the parent sends it packed yuv420p
frames over a pipe and waits for each acknowledgement with the lock released. A child that
does not answer within the timeout is killed: a blocked FFmpeg call cannot be interrupted, a
process can. Files stay in the service's process (a local disk does not hang like this).
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import time
from fractions import Fraction

import numpy as np

from .urls import mask_url

log = logging.getLogger(__name__)

_SPAWN = mp.get_context("spawn")  # no fork: the parent holds threads and torch state


class RemotePublisher:
    """A :class:`~ultrares_stream.publisher.Publisher` in a child process, with the same interface
    as far as :class:`~ultrares_stream.sinks.SinkWorker` uses it."""

    def __init__(self, url: str, settings, *, live: bool = True, timeout_s: float = 5.0, name: str = "camera",
                 metadata: dict[str, str] | None = None):
        self.url, self.settings, self.live, self.timeout_s, self.name = str(url), settings, live, timeout_s, name
        self.metadata = metadata or {}
        self.frames = 0
        self.width = self.height = 0
        self.container = None  # the child process while open (Publisher has its container here)
        self._conn = None

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def _call(self, message, payload: bytes | None = None, timeout: float | None = None):
        """Send a request (and a frame's bytes) and wait for the answer without the interpreter lock."""
        try:
            self._conn.send(message)
            if payload is not None:
                self._conn.send_bytes(payload)
            if not self._conn.poll(self.timeout_s + 1.0 if timeout is None else timeout):
                raise TimeoutError(f"no answer within {self.timeout_s + 1.0:.0f} s")
            kind, detail = self._conn.recv()
        except (OSError, EOFError, TimeoutError) as exc:
            self._kill()
            raise ConnectionError(f"publisher process for {self.masked_url}: {exc or type(exc).__name__}") from None
        if kind == "error":
            raise ConnectionError(detail)
        return detail

    def open(self, width: int, height: int, fps: Fraction):
        parent, child = _SPAWN.Pipe()
        proc = _SPAWN.Process(target=_child_main, name=f"publish-{self.name}", daemon=True,
                              args=(child, self.url, self.settings, self.live, self.timeout_s, self.name,
                                    self.metadata))
        proc.start()
        child.close()
        self._conn, self.container = parent, proc
        fps = Fraction(fps)
        self._call(("open", width, height, fps.numerator, fps.denominator), timeout=self.timeout_s + 30.0)
        self.width, self.height = width, height
        return self

    def send(self, data: np.ndarray, pts: int) -> tuple[float, float]:
        """Encode and mux one packed yuv420p frame in the child; returns (encode_s, mux_s)."""
        data = np.ascontiguousarray(data)
        encode_s, mux_s = self._call(("frame", pts, data.shape), data.data.cast("B"))
        return encode_s, mux_s

    def write(self, data: np.ndarray, pts: int) -> None:
        self.send(data, pts)
        self.frames += 1

    def close(self, flush: bool = True) -> None:
        if self.container is None:
            return
        try:
            self._call(("close", flush), timeout=self.timeout_s + 2.0)
        except ConnectionError as exc:
            log.debug("%s: closing %s: %s", self.name, self.masked_url, exc)
        self._kill()

    def _kill(self) -> None:
        proc, self.container = self.container, None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if proc is not None:
            proc.join(0.5)
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)


def _child_main(conn, url: str, settings, live: bool, timeout_s: float, name: str, metadata: dict) -> None:
    """The child: one Publisher, driven by the parent's requests until "close" or the pipe ends."""
    import signal

    from .publisher import Publisher

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent closes us
    logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s publish-{name}: %(message)s")
    pub = Publisher(url, settings, live=live, timeout_s=timeout_s, name=name, metadata=metadata)
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            try:
                if kind == "open":
                    _, w, h, num, den = message
                    pub.open(w, h, Fraction(num, den))
                    conn.send(("ok", None))
                elif kind == "frame":
                    _, pts, shape = message
                    data = np.frombuffer(conn.recv_bytes(), np.uint8).reshape(shape)
                    t0 = time.perf_counter()
                    packets = pub.encode(data, pts)
                    t1 = time.perf_counter()
                    pub.mux(packets)
                    conn.send(("ok", (t1 - t0, time.perf_counter() - t1)))
                elif kind == "close":
                    pub.close(flush=message[1])
                    conn.send(("ok", None))
                    break
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which reconnects
                conn.send(("error", f"{exc}" or type(exc).__name__))
    finally:
        pub.close(flush=False)
