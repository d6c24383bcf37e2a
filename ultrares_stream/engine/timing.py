"""Timing engines on the CPU the way the pipeline runs them: several passes at once, interleaved
rounds. Used by ``auto``'s start-up measurement (:mod:`.select`) and the benchmark (:mod:`.bench`)."""
from __future__ import annotations

import statistics
import threading
import time
from contextlib import contextmanager

import torch

from .base import ThreadPlan


@contextmanager
def torch_threads(n: int):
    """torch's CPU threads set to ``n`` for the block (process-wide), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def wall_in_threads(jobs: list) -> float:
    """Wall seconds for each of ``jobs`` (callables) to run on a thread of its own, all at once
    (the CPU batcher's frame-parallel workers); an error in a job is raised here."""
    errors: list[BaseException] = []

    def work(job) -> None:
        try:
            job()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(job,), name=f"bench-pass-{i}") for i, job in enumerate(jobs)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def concurrent_passes(engine, x: torch.Tensor, callers: int, passes: int) -> float:
    """Wall seconds for ``callers`` threads each running ``passes`` passes of ``engine`` on ``x``
    at once; an error in a pass is raised here."""

    def job() -> None:
        for _ in range(passes):
            engine(x)

    return wall_in_threads([job] * callers)


def time_cpu_engines(engines: dict, plan: ThreadPlan, size: tuple[int, int], rounds: int = 3,
                     passes: int = 2) -> dict[str, float]:
    """Seconds a frame of each engine under ``plan`` (``plan.streams`` passes at once, torch on
    ``plan.threads`` threads), on one random ``size`` frame: one warm-up, then ``rounds`` rounds that
    take the engines in turn (a machine whose speed drifts moves them alike); the median round."""
    x = torch.rand(1, 3, *size)
    samples: dict[str, list[float]] = {name: [] for name in engines}
    with torch_threads(plan.threads), torch.no_grad():
        for name, engine in engines.items():
            concurrent_passes(engine, x, plan.streams, 1)
        for _ in range(rounds):
            for name, engine in engines.items():
                samples[name].append(concurrent_passes(engine, x, plan.streams, passes) / (plan.streams * passes))
    return {name: statistics.median(v) for name, v in samples.items()}
