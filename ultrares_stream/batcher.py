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

Two threads per device: the worker runs the network on batch k+1 while the
finisher converts batch k back to ``yuv420p`` and hands it over, so the
conversion back never delays the next inference. On the CPU, batches run
side by side on worker threads, one per core, each on one torch thread
(:func:`cpu_inference_plan`); the finisher takes them in the order they were
formed.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from .colour import pack_yuv420p, rgb_to_yuv420p, split_yuv420p, yuv420p_to_rgb
from .frame_queue import FrameQueue
from .sources import Frame
from .temporal import Stabiliser, stabilise_batch

if TYPE_CHECKING:
    from .upscaler import FrameUpscaler

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
    made_by: object = None  # the upscaler (model view: model, alpha, passes) that made it: its provenance


class BatchClient(Protocol):
    """What the batcher needs from a camera (a :class:`stream.Stream` is one)."""

    name: str
    queue: FrameQueue

    def route(self) -> tuple[FrameUpscaler, tuple[int, int] | None]:
        """The upscaler to use now and the output size (width, height) or None (model scale)."""

    @property
    def stabiliser(self) -> Stabiliser | None:
        """The camera's temporal stabiliser (:mod:`.temporal`), or None."""

    def deliver(self, out: Enhanced) -> None:
        """Take one enhanced frame (called in decode order, from the worker thread).

        A client may also have an integer ``failed`` attribute: frames lost to inference errors are counted there.
        """


def output_size_for(upscaler, width: int, height: int, size: tuple[int, int] | None) -> tuple[int, int]:
    if size is not None:
        return size
    return width * upscaler.scale, height * upscaler.scale


def upscale_yuv(upscaler, frames: list[np.ndarray] | np.ndarray, width: int, height: int,
                size: tuple[int, int] | None = None, stabilisers: list[Stabiliser | None] | None = None,
                epochs: list[int] | None = None) -> torch.Tensor:
    """Packed yuv420p uint8 frames (same size) -> upscaled NCHW float RGB on the device (even size).

    ``stabilisers``: one per frame (None: none), applied on the device (:mod:`.temporal`);
    ``epochs``: the frames' connection numbers (a reconnect resets the stabiliser).
    """
    rgb, out = upscale_rgb(upscaler, frames, width, height, size)
    if stabilisers and any(stabilisers):
        stabilise_group(upscaler, stabilisers, rgb, out, size, epochs)
    return out


def upscale_rgb(upscaler, frames: list[np.ndarray] | np.ndarray, width: int, height: int,
                size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the frames as NCHW float RGB, their upscale, even size), both on the upscaler's device."""
    arr = np.stack(frames) if isinstance(frames, list) else frames
    device = upscaler.device
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    with torch.inference_mode():
        with _light_ops(device):
            rgb = yuv420p_to_rgb(*split_yuv420p(t, width, height))
        out = upscaler.upscale(rgb, size=output_size_for(upscaler, width, height, size))
        if out.shape[-1] % 2 or out.shape[-2] % 2:  # yuv420p needs even sizes
            out = out[..., : out.shape[-2] - out.shape[-2] % 2, : out.shape[-1] - out.shape[-1] % 2]
    return rgb, out


def stabilise_group(upscaler, stabilisers: list[Stabiliser | None], rgb: torch.Tensor, out: torch.Tensor,
                    size: tuple[int, int] | None, epochs: list[int] | None) -> None:
    """Run each frame's stabiliser over ``out`` in place (frames in decode order, per camera)."""
    key = (id(upscaler), upscaler.alpha, output_size_for(upscaler, rgb.shape[-1], rgb.shape[-2], size))
    with torch.inference_mode(), _light_ops(out.device):
        stabilise_batch(stabilisers, rgb, out, key, epochs)


def to_packed_yuv(out: torch.Tensor, after=None) -> np.ndarray:
    """NCHW float RGB (on the device) -> packed yuv420p uint8 (N, H*3/2, W) in host memory.

    On CUDA the conversion and the download run on a side stream that waits only for ``after``
    (the CUDA event that ends ``out``'s batch; None: all work queued so far), so they are not
    queued behind the next batch the worker has launched meanwhile on the default stream.
    """
    if out.device.type != "cuda":
        with torch.inference_mode(), _light_ops(out.device):
            return pack_yuv420p(*rgb_to_yuv420p(out)).numpy()
    side = _side_stream(out.device)
    if after is not None:
        side.wait_event(after)
    else:
        side.wait_stream(torch.cuda.current_stream(out.device))
    with torch.inference_mode(), torch.cuda.stream(side):
        out.record_stream(side)  # the caching allocator must not hand out's memory to the next batch early
        packed = pack_yuv420p(*rgb_to_yuv420p(out))
        host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
        host.copy_(packed, non_blocking=True)
    side.synchronize()
    return host.numpy()


_SIDE_STREAMS: dict[torch.device, object] = {}


def _side_stream(device: torch.device):
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    return _SIDE_STREAMS[device]


class DeviceClock:
    """Times device work without waiting for it: on CUDA, events recorded on the current stream
    (a launch returns before the work is done, so wall time would measure the launch); the
    elapsed time is read later, waiting only for the end event. On the CPU, wall time."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def elapsed_s(self, start, end) -> float:
        if not self.cuda:
            return end - start
        end.synchronize()
        return start.elapsed_time(end) / 1000.0


def enhance_batch(upscaler, frames: list[np.ndarray] | np.ndarray, width: int, height: int,
                  size: tuple[int, int] | None = None, stabiliser: Stabiliser | None = None) -> np.ndarray:
    """Packed yuv420p uint8 frames (same size, one camera, in order) -> upscaled packed yuv420p
    uint8 (N, H'*3/2, W'), stabilised by ``stabiliser`` when given.

    The only pixel conversions of the pipeline, done on the upscaler's device.
    """
    stabilisers = [stabiliser] * len(frames) if stabiliser is not None else None
    return to_packed_yuv(upscale_yuv(upscaler, frames, width, height, size, stabilisers))


def default_max_batch(device_type: str) -> int:
    """Frames per batch when not configured: 1 on the CPU, where a batch is slower per frame than
    single frames (docs/benchmarks.md), 4 on a GPU."""
    return 1 if device_type == "cpu" else 4


def cpu_cores() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pipeline_threads(threads: int | None, device_type: str, concurrent_passes: bool) -> int | None:
    """The ``threads`` to give a :class:`Batcher`: as asked; unset on a CPU whose engine runs one
    pass at a time (torch.compile), every core for its one batch, since frame-parallel workers
    would only queue at the engine; else None (:func:`cpu_inference_plan` decides)."""
    if threads is None and device_type == "cpu" and not concurrent_passes:
        return cpu_cores()
    return threads


def cpu_inference_plan(threads: int | None = None) -> tuple[int, int]:
    """(batches at once, torch threads each) for the network of a video pipeline on the CPU.

    ``threads`` set (``inference.threads``, ``--threads``): one batch at a time on that many
    threads. Unset: one batch per core, each on one thread (frame-parallel). One multi-threaded
    batch is an OpenMP team that waits, at every layer, for whichever thread decode or encode
    took the core from; single-threaded batches side by side never wait for each other, and the
    I/O fills the gaps. Measured on the 2-core development machine (docs/benchmarks.md): the
    compact net's live pipeline 11.0 fps one batch at a time on 1 thread, 13.5 on 2 threads, 18.0
    with two single-threaded batches side by side; the model alone 24.6 fps on 2 threads.
    """
    if threads:
        return 1, threads
    return cpu_cores(), 1


@contextmanager
def _light_ops(device: torch.device):
    """On the CPU, run cheap element-wise work on one thread (this thread only).

    Each multi-threaded torch op is an OpenMP fork/join; on a small, busy CPU every join
    waits for a time slice of the other cores (measured: a 320x240 yuv->rgb conversion took
    44-84 ms on 2 threads of the shared 2-core machine, 0.2 ms on one). The network's
    convolutions keep every thread (when a batch runs on several: ``inference.threads``).
    """
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


class Batcher:
    """One thread forming batches for every attached camera on one device, and running them.

    ``workers`` > 1 (CPU): that many batches run at once, each on one torch thread, on worker
    threads; results still reach each camera in decode order (the finisher takes them in the
    order they were formed, and runs the temporal stabilisers there, frame after frame).
    """

    def __init__(self, device: str = "cpu", max_batch: int = 4, max_wait_ms: float = 10.0, metrics=None,
                 threads: int | None = None, workers: int | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.device = str(device)
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.metrics = metrics
        self.workers, self.threads = 1, threads  # on a GPU: one batch at a time, launched from this thread
        if torch.device(self.device).type == "cpu":  # batches at once and torch threads each
            self.workers, self.threads = cpu_inference_plan(threads) if workers is None else (workers, threads or 1)
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: list[Future] = []  # the workers' batches not finished yet
        self._last_route: dict[str, object] = {}  # camera -> the upscaler of its last batch
        self.batches = 0
        self.frames = 0
        self.errors = 0
        self._error_lock = threading.Lock()  # _failed runs on the workers and the finisher
        self.busy_s = 0.0  # time spent in inference
        self._clients: dict[str, BatchClient] = {}
        self._cond = threading.Condition()
        self._pending = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rr = 0
        # batches waiting for yuv conversion (or, with workers, their futures in the order formed)
        self._finish_q: queue.Queue = queue.Queue(maxsize=self.workers + 1)
        self._finisher: threading.Thread | None = None
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
            self._last_route.pop(name, None)

    def wake(self) -> None:
        with self._cond:
            self._pending += 1
            self._cond.notify_all()

    def start(self) -> Batcher:
        if self._thread is None:
            if self.workers > 1:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"inference-{self.device}")
            self._finisher = threading.Thread(target=self._finish_loop, name=f"finisher-{self.device}", daemon=True)
            self._finisher.start()
            self._thread = threading.Thread(target=self._run, name=f"batcher-{self.device}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        if self._finisher is not None and self._finisher.is_alive():
            try:
                self._finish_q.put(None, timeout=timeout)
            except queue.Full:
                pass
            self._finisher.join(timeout)

    @property
    def alive(self) -> bool:
        return (self._thread is not None and self._thread.is_alive()
                and self._finisher is not None and self._finisher.is_alive())

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
        threads = ""
        if torch.device(self.device).type == "cpu":
            torch.set_num_threads(self.threads)
            threads = f", {torch.get_num_threads()} torch thread(s)"
        if self.workers > 1:
            threads = f", {self.workers} batches at once on 1 torch thread each"
        log.info("inference worker on %s: max_batch %d, max_wait %.0f ms%s", self.device, self.max_batch,
                 self.max_wait_s * 1000, threads)
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
        """Group ``(client, frame, queue_wait)`` items and run each group on the model (here, or
        on a worker thread); the finisher thread converts the results back to yuv420p and
        delivers them in order."""
        groups: dict[tuple, list] = {}
        routes: dict[str, tuple] = {}
        for client, frame, wait in batch:
            if client.name not in routes:
                routes[client.name] = client.route()
            upscaler, size = routes[client.name]
            key = (id(upscaler), frame.width, frame.height, size)
            groups.setdefault(key, []).append((client, frame, wait, upscaler, size))
        if self._pool is not None:
            self._finish_q.put(self._submit(list(groups.values()), routes))
            return
        done = self._infer(list(groups.values()), False)
        if done:
            self._finish_q.put(done)
            if self._finisher is None or not self._finisher.is_alive():
                self._finish_all()  # no finisher thread (run_batch called directly): finish inline

    def _submit(self, groups: list[list], routes: dict[str, tuple]) -> Future:
        """Hand the groups to a worker. When a camera's upscaler changed (an alpha or model
        change), the batches still running finish first, so its passes never alternate between
        the old and the new weights."""
        changed = any(self._last_route.get(name) is not up for name, (up, _) in routes.items())
        self._last_route.update({name: up for name, (up, _) in routes.items()})
        if changed:
            futures_wait(self._in_flight)
        self._in_flight = [f for f in self._in_flight if not f.done()]
        future = self._pool.submit(self._infer, groups, True)
        self._in_flight.append(future)
        return future

    def _infer(self, groups: list[list], defer_stabilisers: bool) -> list[tuple]:
        """Run the groups: ``(items, output, clock, start, end, rgb)`` each; ``rgb`` (the input)
        when the stabilisers are left to the finisher (frame-parallel workers), else None."""
        done: list[tuple] = []
        for items in groups:
            _, frame0, _, upscaler, size = items[0]
            clock = DeviceClock(upscaler.device)
            t0 = clock.mark()
            frames = [f.data for _, f, *_ in items]
            try:
                if defer_stabilisers:
                    rgb, out = upscale_rgb(upscaler, frames, frame0.width, frame0.height, size)
                else:
                    rgb, out = None, upscale_yuv(upscaler, frames, frame0.width, frame0.height, size,
                                                 [c.stabiliser for c, *_ in items], [f.epoch for _, f, *_ in items])
            except Exception as exc:  # an inference error loses this group, never the worker
                self._failed(items, exc)
                continue
            done.append((items, out, clock, t0, clock.mark(), rgb))
        return done

    def _count(self, items: list, dt: float, device: torch.device) -> None:
        self.busy_s += dt
        self.batches += 1
        self.frames += len(items)
        if self.metrics is not None:
            self.metrics.batch_size.labels(self.device).observe(len(items))
            self.metrics.inference_seconds.labels(self.device).observe(dt)
            if device.type == "cuda":
                self.metrics.update_gpu_memory()

    def _failed(self, items: list, exc: BaseException) -> None:
        log.error("inference failed for a batch of %d frame(s): %s: %s", len(items), type(exc).__name__, exc)
        with self._error_lock:
            self.errors += 1
            for client, *_ in items:
                if hasattr(client, "failed"):
                    client.failed += 1
        for client, *_ in items:
            if self.metrics is not None:
                self.metrics.errors.labels(client.name, "inference").inc()
            if self.on_error is not None:
                self.on_error(client.name, exc)

    def _finish_all(self) -> None:
        while True:
            try:
                done = self._finish_q.get_nowait()
            except queue.Empty:
                return
            if done is not None:
                self._finish(done)

    def _finish_loop(self) -> None:
        """Thread: convert finished batches to yuv420p and deliver them, overlapping the next batch."""
        while True:
            done = self._finish_q.get()
            if done is None:
                return
            if isinstance(done, Future):  # a worker's batch: wait for it, in the order formed
                try:
                    done = done.result()
                except Exception:  # noqa: BLE001 - never lose the finisher (every camera would stall)
                    log.exception("inference worker on %s: a batch failed outside its error handling", self.device)
                    continue
            self._finish(done)

    def _finish(self, done: list) -> None:
        results: list[tuple] = []
        for items, out, clock, start, end, rgb in done:
            try:
                dt = clock.elapsed_s(start, end)  # the batch's own device time (waits for its end on CUDA)
                t0 = time.perf_counter()  # from here: the conversion back and the download only
                stabilisers = [c.stabiliser for c, *_ in items]
                if rgb is not None and any(stabilisers):
                    upscaler, size = items[0][3], items[0][4]
                    stabilise_group(upscaler, stabilisers, rgb, out, size, [f.epoch for _, f, *_ in items])
                packed = to_packed_yuv(out, after=end if clock.cuda else None)
            except Exception as exc:  # noqa: BLE001
                self._failed(items, exc)
                continue
            self._count(items, dt, out.device)
            per_frame = dt + (time.perf_counter() - t0)
            oh, ow = packed.shape[1] * 2 // 3, packed.shape[2]
            for (client, frame, wait, upscaler, _), data in zip(items, packed):
                results.append((client, Enhanced(frame, data, ow, oh, wait, per_frame, len(items), upscaler)))
                if self.metrics is not None:
                    self.metrics.observe_stage(client.name, "queue", wait)
                    self.metrics.observe_stage(client.name, "inference", per_frame)
        results.sort(key=lambda r: (r[0].name, r[1].source.index))
        for client, enhanced in results:
            try:
                client.deliver(enhanced)
            except Exception:
                log.exception("%s: could not hand over an enhanced frame", client.name)
