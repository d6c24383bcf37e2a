"""Cross-camera batching: one inference worker per device (the role of DeepStream's nvstreammux).

The worker waits for the first frame in any attached camera's queue, then keeps
collecting (round-robin over cameras, so one busy camera cannot starve the
others) until it has ``max_batch`` frames or ``max_wait_ms`` have passed since
the first one. Frames are grouped by input size, upscaler (model and alpha) and
output size; each group runs as one batch. Results go back to their own camera
in the order they were decoded.

Pixel work happens once, on the device: packed ``yuv420p`` uint8 frames are
moved as bytes (1.5 bytes per pixel, the least to transfer), converted to RGB
float there (:func:`colour.yuv420p_to_rgb`), upscaled, converted back to
``yuv420p`` uint8 there (:func:`colour.rgb_to_yuv420p`) and only then copied
back for the encoder, which takes ``yuv420p`` as is. See docs/pipeline.md.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .colour import rgb_to_yuv420p, yuv420p_to_rgb
from .frame_queue import FrameQueue
from .sources import Frame

log = logging.getLogger(__name__)


@dataclass
class Enhanced:
    """An upscaled frame, packed yuv420p, with the input frame it came from."""

    source: Frame
    data: np.ndarray
    width: int
    height: int
    queue_s: float = 0.0
    inference_s: float = 0.0
    batch_size: int = 1


class BatchClient(Protocol):
    """What the batcher needs from a camera (a :class:`stream.Stream` is one)."""

    name: str
    queue: FrameQueue

    def route(self) -> tuple[object, tuple[int, int] | None]:
        """The upscaler to use now and the output size (width, height) or None (model scale)."""

    def deliver(self, out: Enhanced) -> None:
        """Take one enhanced frame (called in decode order, from the worker thread).

        A client may also have an integer ``failed`` attribute: frames lost to inference errors are counted there.
        """


def split_yuv420p(packed: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, ...]:
    """(N, H*3/2, W) packed uint8 -> Y (N,H,W), U (N,H/2,W/2), V (N,H/2,W/2) (views, no copy)."""
    n = packed.shape[0]
    flat = packed.reshape(n, -1)
    ys, cs = width * height, (width // 2) * (height // 2)
    y = flat[:, :ys].reshape(n, height, width)
    u = flat[:, ys:ys + cs].reshape(n, height // 2, width // 2)
    v = flat[:, ys + cs:ys + 2 * cs].reshape(n, height // 2, width // 2)
    return y, u, v


def pack_yuv420p(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_yuv420p`: planes -> (N, H*3/2, W) packed uint8."""
    n, h, w = y.shape
    return torch.cat((y.reshape(n, -1), u.reshape(n, -1), v.reshape(n, -1)), 1).reshape(n, h * 3 // 2, w)


def output_size_for(upscaler, width: int, height: int, size: tuple[int, int] | None) -> tuple[int, int]:
    if size is not None:
        return size
    return width * upscaler.scale, height * upscaler.scale


def enhance_batch(upscaler, frames: list[np.ndarray] | np.ndarray, width: int, height: int,
                  size: tuple[int, int] | None = None) -> np.ndarray:
    """Packed yuv420p uint8 frames (same size) -> upscaled packed yuv420p uint8 (N, H'*3/2, W').

    The only pixel conversions of the pipeline, done on the upscaler's device.
    """
    arr = np.stack(frames) if isinstance(frames, list) else frames
    device = upscaler.device
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    with torch.inference_mode():
        rgb = yuv420p_to_rgb(*split_yuv420p(t, width, height))
        out_w, out_h = output_size_for(upscaler, width, height, size)
        out = upscaler.upscale(rgb, size=(out_w, out_h))
        if out.shape[-1] % 2 or out.shape[-2] % 2:  # yuv420p needs even sizes
            out = out[..., : out.shape[-2] - out.shape[-2] % 2, : out.shape[-1] - out.shape[-1] % 2]
        packed = pack_yuv420p(*rgb_to_yuv420p(out))
    return packed.cpu().numpy()


class Batcher:
    """One worker thread running batches for every attached camera on one device."""

    def __init__(self, device: str = "cpu", max_batch: int = 4, max_wait_ms: float = 10.0, metrics=None):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.device = str(device)
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.metrics = metrics
        self.batches = 0
        self.frames = 0
        self.errors = 0
        self.busy_s = 0.0  # time spent in inference
        self._clients: dict[str, BatchClient] = {}
        self._cond = threading.Condition()
        self._pending = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rr = 0
        self.on_error: Callable[[str, BaseException], None] | None = None

    # --- wiring -------------------------------------------------------------
    def attach(self, client: BatchClient) -> None:
        with self._cond:
            self._clients[client.name] = client
            client.queue.waker = self.wake
            self._cond.notify_all()

    def detach(self, name: str) -> None:
        with self._cond:
            self._clients.pop(name, None)

    def wake(self) -> None:
        with self._cond:
            self._pending += 1
            self._cond.notify_all()

    def start(self) -> Batcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"batcher-{self.device}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- the worker ---------------------------------------------------------
    def _has_items(self) -> bool:
        return any(c.queue.depth for c in list(self._clients.values()))

    def _collect(self, limit: int, out: list) -> None:
        """Round-robin: one frame per camera per pass until ``limit`` or all queues are empty."""
        clients = list(self._clients.values())
        if not clients:
            return
        took = True
        while len(out) < limit and took:
            took = False
            for i in range(len(clients)):
                c = clients[(self._rr + i) % len(clients)]
                if len(out) >= limit:
                    break
                got = c.queue.get_nowait()
                if got is not None:
                    out.append((c, got[0], got[1]))
                    took = True
            self._rr = (self._rr + 1) % max(1, len(clients))

    def _run(self) -> None:
        log.info("inference worker on %s: max_batch %d, max_wait %.0f ms", self.device, self.max_batch,
                 self.max_wait_s * 1000)
        while not self._stop.is_set():
            with self._cond:
                while not self._stop.is_set() and not self._has_items():
                    self._pending = 0
                    self._cond.wait(0.1)
            if self._stop.is_set():
                break
            batch: list = []
            first = time.monotonic()
            self._collect(self.max_batch, batch)
            deadline = first + self.max_wait_s
            while len(batch) < self.max_batch and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                with self._cond:
                    if not self._has_items():
                        self._cond.wait(left)
                self._collect(self.max_batch, batch)
            if batch:
                self.run_batch(batch)
        log.info("inference worker on %s stopped after %d batches, %d frames", self.device, self.batches,
                 self.frames)

    def run_batch(self, batch: list) -> None:
        """Group ``(client, frame, queue_wait)`` items, run each group, deliver in order."""
        groups: dict[tuple, list] = {}
        routes: dict[str, tuple] = {}
        for client, frame, wait in batch:
            if client.name not in routes:
                routes[client.name] = client.route()
            upscaler, size = routes[client.name]
            key = (id(upscaler), frame.width, frame.height, size)
            groups.setdefault(key, []).append((client, frame, wait, upscaler, size))
        results: list[tuple] = []
        for items in groups.values():
            _, frame0, _, upscaler, size = items[0]
            t0 = time.perf_counter()
            try:
                out = enhance_batch(upscaler, [f.data for _, f, *_ in items], frame0.width, frame0.height, size)
            except Exception as exc:  # an inference error loses this group, never the worker
                self.errors += 1
                log.exception("inference failed for a batch of %d frame(s)", len(items))
                for client, *_ in items:
                    if hasattr(client, "failed"):
                        client.failed += 1
                    if self.metrics is not None:
                        self.metrics.errors.labels(client.name, "inference").inc()
                    if self.on_error is not None:
                        self.on_error(client.name, exc)
                continue
            dt = time.perf_counter() - t0
            self.busy_s += dt
            self.batches += 1
            self.frames += len(items)
            if self.metrics is not None:
                self.metrics.batch_size.labels(self.device).observe(len(items))
                self.metrics.inference_seconds.labels(self.device).observe(dt)
                if upscaler.device.type == "cuda":
                    self.metrics.update_gpu_memory()
            oh, ow = out.shape[1] * 2 // 3, out.shape[2]
            for (client, frame, wait, _, _), data in zip(items, out):
                results.append((client, Enhanced(frame, data, ow, oh, wait, dt, len(items))))
                if self.metrics is not None:
                    self.metrics.observe_stage(client.name, "queue", wait)
                    self.metrics.observe_stage(client.name, "inference", dt)
        results.sort(key=lambda r: (r[0].name, r[1].source.index))
        for client, enhanced in results:
            try:
                client.deliver(enhanced)
            except Exception:
                log.exception("%s: could not hand over an enhanced frame", client.name)
