"""The weights in an engine shared by the alpha views of one model.

Which alpha's weights are in the engine; swapping another alpha's in between two passes (a copy
into the live parameters, admitted by the :class:`~ultrares_stream.pass_gate.PassGate`); and, on
an engine whose weight changes are slow (``engine.slow_weights``: a TensorRT refit, an OpenVINO
compile), preparing them on one worker thread off the frame path first
(``engine.prepare_weights`` -> commit), the last :data:`~ultrares_stream.models.pair.WEIGHT_SETS`
commits kept so that going back to an alpha is a swap.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .engine import Engine
from .models.pair import WEIGHT_SETS, ModelPair

Commit = Callable[[], None]


class EngineWeights:
    """Which of ``model``'s weights are in ``engine``, and the prepared commits of others."""

    def __init__(self, engine: Engine, model: ModelPair):
        self.engine, self.model = engine, model
        self.alpha: float | None = None  # whose weights are in the engine; None: none yet
        self.swaps = 0  # swaps from one alpha's weights to another's
        self.last_swap_s = 0.0
        self._commits: OrderedDict[float, Commit] = OrderedDict()
        self._pending: dict[float, Future] = {}
        self._lock = threading.Lock()  # the commits and the preparations
        self._worker: ThreadPoolExecutor | None = None

    def key_for(self, alpha: float) -> float | None:
        """The weights a pass at ``alpha`` needs (its key at the gate): ``alpha``'s, or for a single
        network the ones in the engine, as every alpha has them (all its views pass as one)."""
        return alpha if self.model.is_pair else self.alpha

    def needs_prepare(self, alpha: float) -> bool:
        """``alpha``'s weights must be prepared on the worker thread before its passes."""
        return self.engine.slow_weights and self.model.is_pair and self.alpha != alpha

    def ready(self, alpha: float) -> bool:
        """Whether a pass at ``alpha`` starts at once; on a slow-weights engine the first call starts
        preparing ``alpha``'s weights. Raises what the preparation raised."""
        return not self.needs_prepare(alpha) or self.commit_for(alpha, wait=False) is not None

    def withdraw(self, alpha: float) -> None:
        """Drop ``alpha``'s preparation if it has not started."""
        with self._lock:
            future = self._pending.get(alpha)
            if future is not None and future.cancel():
                del self._pending[alpha]

    def commit_for(self, alpha: float, wait: bool) -> Commit | None:
        """The prepared commit of ``alpha``'s weights: from the last :data:`WEIGHT_SETS` ones, else
        prepared on the worker thread (None while that runs and ``wait`` is false)."""
        with self._lock:
            commit = self._commits.get(alpha)
            if commit is not None:
                self._commits.move_to_end(alpha)
                return commit
            future = self._pending.get(alpha)
            if future is None:
                future = self._pending[alpha] = self._worker_thread().submit(self.engine.prepare_weights,
                                                                             self.model.weights_at(alpha))
        if not wait and not future.done():
            return None
        if future.cancelled():  # withdrawn by a superseded alpha change that had asked for it first
            self._forget(alpha, future)
            return self.commit_for(alpha, wait)
        try:
            commit = future.result()
        finally:
            self._forget(alpha, future)
        with self._lock:
            self._commits[alpha] = commit
            while len(self._commits) > WEIGHT_SETS:
                self._commits.popitem(last=False)
        return commit

    def _forget(self, alpha: float, future: Future) -> None:
        with self._lock:
            if self._pending.get(alpha) is future:
                del self._pending[alpha]

    def _worker_thread(self) -> ThreadPoolExecutor:
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="weights")
        return self._worker

    def swap_in(self, alpha: float) -> None:
        """Put ``alpha``'s weights in the engine (no pass is running: the gate admitted this): a copy
        into the live parameters, or on a slow-weights engine the commit prepared for it."""
        if self.alpha == alpha or (self.alpha is not None and not self.model.is_pair):
            return
        t0 = time.perf_counter()
        if self.engine.slow_weights:
            self.commit_for(alpha, wait=True)()
        else:
            self.engine.load_weights(self.model.weights_at(alpha))
        if self.alpha is not None:
            self.swaps += 1
            self.last_swap_s = time.perf_counter() - t0
        self.alpha = alpha
