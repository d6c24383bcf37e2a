"""The gate of one engine shared by several views of a model (:meth:`~ultrares_stream.upscaler.Upscaler.at`).

Every forward pass holds a *key*, the alpha whose weights it needs in the engine. Passes of the key
running now go through together (the CPU batcher's frame-parallel workers), where the engine
allows concurrent passes; a pass of another key waits until they are done, and its ``swap`` puts
its weights in before it runs. Passes are admitted in arrival order, so a pass of another key is
never starved by a stream of passes of the current one.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager


class PassGate:
    """Admits forward passes to one engine, in arrival order, one key at a time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.active = 0  # passes running now (all of key ``running``)
        self.running: Hashable = None  # the key of the passes admitted last
        self.tickets = 0  # passes that have arrived (admitted, waiting or given up)
        self._admit = 0  # the ticket whose turn it is
        self._turns_over: set[int] = set()  # tickets done with their turn, or given up waiting for it

    @contextmanager
    def passing(self, key: Hashable, swap: Callable[[Hashable], None], concurrent: bool = True) -> Iterator[None]:
        """Run one pass of ``key``: beside the others of that key (when the engine allows
        ``concurrent`` passes), or, once they are done, after ``swap(key)`` has put its weights in."""
        with self._cond:
            ticket = self.tickets
            self.tickets += 1
            try:
                while ticket != self._admit or (self.active and (self.running != key or not concurrent)):
                    self._cond.wait()
                swap(key)
                self.running = key
                self.active += 1
            finally:  # admitted, failed or interrupted while waiting: this ticket's turn is over
                self._turns_over.add(ticket)
                self._next_ticket()
        try:
            yield
        finally:
            with self._cond:
                self.active -= 1
                self._cond.notify_all()

    def _next_ticket(self) -> None:
        """Move the turn past every ticket whose turn is over (under the condition's lock)."""
        while self._admit in self._turns_over:
            self._turns_over.discard(self._admit)
            self._admit += 1
        self._cond.notify_all()

    @property
    def busy(self) -> bool:
        """A forward pass is running."""
        return self.active > 0
