"""A bounded job queue for inference requests: a few worker threads, a fixed number
of waiting slots, and a clear "busy" answer instead of an unbounded backlog.

Async callers ``await queue.run(fn, timeout=...)``; the event loop never runs the
work itself. When every slot is taken, :class:`QueueFull` carries a Retry-After
estimate from the recent job durations. A job that runs past its time limit is told to
stop through its cancel event, so that it gives its worker back instead of finishing
for a client that has already been answered.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from ..tiling import Cancelled

log = logging.getLogger(__name__)
T = TypeVar("T")


class QueueFull(Exception):
    """Every worker is busy and every waiting slot is taken."""

    def __init__(self, retry_after: int):
        super().__init__(f"busy; retry in {retry_after} s")
        self.retry_after = retry_after


class JobTimeout(Exception):
    """A job did not finish within its time limit."""

    def __init__(self, seconds: float, retry_after: int):
        super().__init__(f"did not finish within {seconds:g} s")
        self.seconds = seconds
        self.retry_after = retry_after


class JobQueue:
    """``workers`` threads run jobs; at most ``workers + waiting`` jobs are admitted at once."""

    def __init__(self, workers: int = 1, waiting: int = 4):
        if workers < 1 or waiting < 0:
            raise ValueError("workers must be >= 1 and waiting >= 0")
        self.workers, self.capacity = workers, workers + waiting
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ultrares-web-job")
        self._lock = threading.Lock()
        self._admitted = 0
        self._mean_seconds = 2.0  # running mean of job durations, for Retry-After

    @property
    def admitted(self) -> int:
        """Jobs running or waiting right now."""
        return self._admitted

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead divided among the workers."""
        ahead = max(1, self._admitted - self.workers + 1)
        return max(1, round(self._mean_seconds * ahead / self.workers))

    def _admit(self) -> None:
        with self._lock:
            if self._admitted >= self.capacity:
                raise QueueFull(self.retry_after())
            self._admitted += 1

    def _release(self, seconds: float | None) -> None:
        with self._lock:
            self._admitted -= 1
            if seconds is not None:
                self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * seconds

    async def run(self, fn: Callable[[], T], timeout: float | None = None,
                  cancel: threading.Event | None = None) -> T:
        """Run ``fn`` on a worker thread. Raises :class:`QueueFull` at once when full and
        :class:`JobTimeout` when it takes longer than ``timeout`` seconds. A job not yet
        started is dropped; for one already running ``cancel`` is set, which ``fn`` should
        watch (:class:`~ultrares_stream.tiling.Cancelled`); until it stops it holds its slot."""
        self._admit()

        def job() -> T:
            start = time.perf_counter()
            try:
                return fn()
            except Cancelled:
                log.info("timed-out job stopped after %.1f s; its worker is free", time.perf_counter() - start)
                raise
            finally:
                self._release(time.perf_counter() - start)

        try:
            future = self._pool.submit(job)
        except RuntimeError:  # pool shut down
            self._release(None)
            raise
        # cancelled before it started (timeout, client gone): give its slot back
        future.add_done_callback(lambda f: self._release(None) if f.cancelled() else None)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            future.cancel()
            if cancel is not None:
                cancel.set()
            log.warning("job timed out after %.1f s (%d admitted)", timeout, self._admitted)
            raise JobTimeout(timeout or 0.0, self.retry_after()) from None

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
