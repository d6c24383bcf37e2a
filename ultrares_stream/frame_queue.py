"""A bounded per-camera frame queue.

Two policies:

* ``drop_oldest`` (live cameras): a full queue discards its oldest frame to make
  room, so latency stays bounded when inference is slower than the camera; every
  discarded frame is counted.
* ``block`` (files): a full queue makes the producer wait, so no frame is lost.

The consumer (the batcher) can be woken by any of several queues through the
``waker`` callback, called after every put.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
POLICIES = ("drop_oldest", "block")


class QueueClosed(Exception):
    """Raised by ``put`` on a closed queue."""


class FrameQueue(Generic[T]):
    def __init__(self, maxsize: int, policy: str = "drop_oldest",
                 on_drop: Callable[[T], None] | None = None, waker: Callable[[], None] | None = None):
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
        self.maxsize = maxsize
        self.policy = policy
        self.on_drop = on_drop
        self.waker = waker
        self.dropped = 0
        self.put_count = 0
        self._items: deque[tuple[float, T]] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def depth(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Add ``item``. Returns False only when a blocking put timed out (item not added).

        With ``drop_oldest`` this never waits; the oldest frame is discarded when full.
        """
        dropped: T | None = None
        has_dropped = False
        with self._cond:
            if self._closed:
                raise QueueClosed("queue is closed")
            if len(self._items) >= self.maxsize:
                if self.policy == "drop_oldest":
                    _, dropped = self._items.popleft()
                    has_dropped = True
                    self.dropped += 1
                else:
                    end = None if timeout is None else time.monotonic() + timeout
                    while len(self._items) >= self.maxsize and not self._closed:
                        left = None if end is None else end - time.monotonic()
                        if left is not None and left <= 0:
                            return False
                        self._cond.wait(left)
                    if self._closed:
                        raise QueueClosed("queue is closed")
            self._items.append((time.monotonic(), item))
            self.put_count += 1
            self._cond.notify_all()
        if has_dropped and self.on_drop is not None:
            self.on_drop(dropped)  # type: ignore[arg-type]
        if self.waker is not None:
            self.waker()
        return True

    def get(self, timeout: float | None = None) -> T | None:
        """Oldest item, waiting up to ``timeout``; None on timeout or when closed and empty."""
        got = self.get_with_wait(timeout)
        return None if got is None else got[0]

    def get_with_wait(self, timeout: float | None = None) -> tuple[T, float] | None:
        """(item, seconds it waited in the queue), or None on timeout / closed and empty."""
        with self._cond:
            end = None if timeout is None else time.monotonic() + timeout
            while not self._items:
                if self._closed:
                    return None
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            t, item = self._items.popleft()
            self._cond.notify_all()
            return item, time.monotonic() - t

    def get_nowait(self) -> tuple[T, float] | None:
        return self.get_with_wait(0)

    def close(self) -> None:
        """No more puts; waiting producers and consumers wake up. Items left can still be taken."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self.waker is not None:
            self.waker()

    def drained(self) -> bool:
        """Closed and empty: the consumer has everything."""
        with self._cond:
            return self._closed and not self._items
