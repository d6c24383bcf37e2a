"""Cross-camera batching: one inference worker per device (the role of DeepStream's nvstreammux).

The worker waits for the first frame in any attached camera's queue, then keeps
collecting (round-robin over cameras, so one busy camera cannot starve the
others) until it has ``max_batch`` frames or ``max_wait_ms`` have passed since
the first one. Frames are grouped by input size, route (model view and output size)
and stage list; each group runs through the device stages (:mod:`.stages`) as one batch.
Results go back to their own camera in the order they were decoded.

Two threads per device: the worker runs the network on batch k+1 while the finisher
runs the last stages of batch k (the conversion back to ``yuv420p`` and the download)
and hands it over. On the CPU, batches run side by side on worker threads, one per core,
each on one torch thread (:func:`cpu_inference_plan`); the finisher takes them in the
order they were formed, so the stages that must see a camera's frames in order (the
stabiliser) run there (:func:`stages.split_point`). This module knows no stage by name.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .frame_queue import FrameQueue
from .sources import Frame
from .stages import DeviceBatch, DeviceClock, Item, Route, Stage, run_stages, split_point
from .temporal import Stabiliser

log = logging.getLogger(__name__)


@dataclass
class Enhanced:
    """An upscaled frame, packed yuv420p, with the input frame it came from and the route
    (model view, output size) that made it."""

    source: Frame
    data: np.ndarray
    width: int
    height: int
    queue_s: float = 0.0
    inference_s: float = 0.0
    batch_size: int = 1
    route: Route | None = None

    @property
    def made_by(self):
        """The upscaler (model view: model, alpha, passes) that made the frame: its provenance."""
        return self.route.upscaler if self.route is not None else None


class BatchClient(Protocol):
    """What the batcher needs from a camera or a recorded job (:class:`.pipeline.Pipeline`)."""

    name: str
    queue: FrameQueue
    stages: Sequence[Stage]  # the device stages its frames go through (:data:`.stages.DEVICE_STAGES`)

    def route(self) -> Route:
        """The upscaler to use now and the output size (None: model scale)."""

    @property
    def stabiliser(self) -> Stabiliser | None:
        """The camera's temporal stabiliser (:mod:`.temporal`), or None."""

    def deliver(self, out: Enhanced) -> None:
        """Take one enhanced frame (called in decode order, from the worker thread).

        A client may also have an integer ``failed`` attribute: frames lost to inference errors are counted there.
        """


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
        """Group ``(client, frame, queue_wait)`` items by size, route and stage list and run each
        group's stages (the workers' share here or on a worker thread); the finisher thread runs
        the rest and delivers the frames in order."""
        groups: dict[tuple, DeviceBatch] = {}
        routes: dict[str, Route] = {}
        for client, frame, wait in batch:
            if client.name not in routes:
                routes[client.name] = client.route()
            route = routes[client.name]
            stages = client.stages
            key = (id(route.upscaler), frame.width, frame.height, route.size, id(stages))
            if key not in groups:
                groups[key] = DeviceBatch([], route, frame.width, frame.height, extra={"stages": stages})
            groups[key].items.append(Item(client, frame, wait))
        if self._pool is not None:
            self._finish_q.put(self._submit(list(groups.values()), routes))
            return
        done = self._infer(list(groups.values()))
        if done:
            self._finish_q.put(done)
            if self._finisher is None or not self._finisher.is_alive():
                self._finish_all()  # no finisher thread (run_batch called directly): finish inline

    def _submit(self, groups: list[DeviceBatch], routes: dict[str, Route]) -> Future:
        """Hand the groups to a worker. When a camera's upscaler changed (an alpha or model
        change), the batches still running finish first, so its passes never alternate between
        the old and the new weights."""
        changed = any(self._last_route.get(name) is not r.upscaler for name, r in routes.items())
        self._last_route.update({name: r.upscaler for name, r in routes.items()})
        if changed:
            futures_wait(self._in_flight)
        self._in_flight = [f for f in self._in_flight if not f.done()]
        future = self._pool.submit(self._infer, groups)
        self._in_flight.append(future)
        return future

    def _infer(self, groups: list[DeviceBatch]) -> list[tuple]:
        """Run the workers' share of each group's stages: ``(batch, clock, start, end)`` each."""
        done: list[tuple] = []
        for batch in groups:
            stages = batch.extra["stages"]
            clock = DeviceClock(batch.device)
            t0 = clock.mark()
            try:
                batch = run_stages(stages[:split_point(stages, self._pool is not None)], batch)
            except Exception as exc:  # an inference error loses this group, never the worker
                self._failed(batch.items, exc)
                continue
            end = clock.mark()
            batch.done = end if clock.cuda else None
            done.append((batch, clock, t0, end))
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

    def _failed(self, items: list[Item], exc: BaseException) -> None:
        log.error("inference failed for a batch of %d frame(s): %s: %s", len(items), type(exc).__name__, exc)
        with self._error_lock:
            self.errors += 1
            for item in items:
                if hasattr(item.client, "failed"):
                    item.client.failed += 1
        for item in items:
            if self.metrics is not None:
                self.metrics.errors.labels(item.client.name, "inference").inc()
            if self.on_error is not None:
                self.on_error(item.client.name, exc)

    def _finish_all(self) -> None:
        while True:
            try:
                done = self._finish_q.get_nowait()
            except queue.Empty:
                return
            if done is not None:
                self._finish(done)

    def _finish_loop(self) -> None:
        """Thread: run the finisher's stages of each batch and deliver it, overlapping the next batch."""
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

    def _finish(self, done: list[tuple]) -> None:
        results: list[tuple] = []
        for batch, clock, start, end in done:
            stages = batch.extra["stages"]
            try:
                dt = clock.elapsed_s(start, end)  # the batch's own device time (waits for its end on CUDA)
                t0 = time.perf_counter()  # from here: the finisher's stages only
                batch = run_stages(stages[split_point(stages, self._pool is not None):], batch)
            except Exception as exc:  # noqa: BLE001
                self._failed(batch.items, exc)
                continue
            self._count(batch.items, dt, batch.device)
            per_frame = dt + (time.perf_counter() - t0)
            oh, ow = batch.packed.shape[1] * 2 // 3, batch.packed.shape[2]
            for item, data in zip(batch.items, batch.packed):
                results.append((item.client, Enhanced(item.frame, data, ow, oh, item.wait, per_frame,
                                                      len(batch.items), batch.route)))
                if self.metrics is not None:
                    self.metrics.observe_stage(item.client.name, "queue", item.wait)
                    self.metrics.observe_stage(item.client.name, "inference", per_frame)
        results.sort(key=lambda r: (r[0].name, r[1].source.index))
        for client, enhanced in results:
            try:
                client.deliver(enhanced)
            except Exception:
                log.exception("%s: could not hand over an enhanced frame", client.name)
