"""Engine benchmark matrix: fps and latency per backend, model and batch size, in one run.

The cases (random-initialised weights: speed does not depend on them) are every model of
:data:`MODELS` at every size of :data:`SIZES` (:func:`cases`):

* ``ultrares-compact-x4`` (SRVGGNetCompact 32 feat / 6 conv), ``ultrares-wide-x4`` (64 / 16),
  ``RRDB`` (ESRGAN x4, 23 blocks)
* 480x270 -> 1920x1080 and 960x540 -> 3840x2160

Each backend is built once per case (for the largest batch), warmed up, then every
batch size is timed; a backend that is not available here gets a row with ``error``.
"""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import UserError
from .base import pick_device, pick_precision
from .cache import EngineCache, ShapeRange

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchCase:
    name: str
    build: Callable[[], nn.Module]
    width: int
    height: int
    scale: int = 4


def _rrdb() -> nn.Module:
    from ..models.archs import RRDBNet

    return RRDBNet(num_feat=64, num_block=23, num_grow_ch=32, scale=4)


def _compact() -> nn.Module:
    from ..models.archs import SRVGGNetCompact

    return SRVGGNetCompact(num_feat=32, num_conv=6, upscale=4, act_type="prelu")


def _wide() -> nn.Module:
    from ..models.archs import SRVGGNetCompact

    return SRVGGNetCompact(num_feat=64, num_conv=16, upscale=4, act_type="prelu")


#: model name -> its network (the shipped pairs' architectures; ``RRDB`` is ESRGAN's)
MODELS: dict[str, Callable[[], nn.Module]] = {"ultrares-compact-x4": _compact, "ultrares-wide-x4": _wide,
                                              "RRDB": _rrdb}
SIZES = ((480, 270), (960, 540))


def cases(models=tuple(MODELS), sizes=SIZES) -> tuple[BenchCase, ...]:
    """One :class:`BenchCase` per model and input size (``KeyError`` names an unknown model)."""
    return tuple(BenchCase(m, MODELS[m], w, h) for m in models for w, h in sizes)


CASES = cases()


def run_matrix(engines: list[str], batches=(1, 4, 8), device: str = "cuda", *, precision: str = "auto",
               cases: tuple[BenchCase, ...] = CASES, warmup: int = 3, iters: int = 10,
               cache: EngineCache | None = None) -> list[dict]:
    """One row per (case, backend, batch): ``model``, ``engine``, ``batch``, ``input``, ``output``,
    ``precision``, ``device``, ``fps`` (frames/s), ``latency_ms_p50`` / ``_p95`` (per batch),
    or ``error`` when the backend could not run."""
    from .select import make_engine

    dev = pick_device(device)
    prec = pick_precision(precision, dev)
    batches = tuple(sorted(set(int(b) for b in batches)))
    if not batches or batches[0] < 1:
        raise UserError("batch sizes must be positive integers")
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    rows: list[dict] = []
    for case in cases:
        shapes = ShapeRange.for_frames(case.width, case.height, max_batch=batches[-1],
                                       opt_batch=batches[len(batches) // 2])
        for name in engines:
            base = {"model": case.name, "engine": name, "input": f"{case.width}x{case.height}",
                    "output": f"{case.width * case.scale}x{case.height * case.scale}",
                    "precision": prec, "device": gpu}
            try:
                torch.manual_seed(0)
                net = case.build()
                engine = make_engine(name, net, dev, prec, shapes=shapes, cache=cache, max_batch=batches[-1])
                engine.load_weights(net.state_dict())
                base["engine"] = engine.name
                base["precision"] = engine.precision
            except Exception as exc:
                log.warning("bench: %s on %s not available: %s", name, case.name, exc)
                rows += [{**base, "batch": b, "error": str(exc)} for b in batches]
                continue
            for b in batches:
                rows.append({**base, "batch": b, **_time(engine, b, case, dev, warmup, iters)})
                log.info("bench %s", rows[-1])
            del engine, net
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _time(engine, batch: int, case: BenchCase, device: torch.device, warmup: int, iters: int) -> dict:
    x = torch.rand(batch, 3, case.height, case.width, device=device)
    try:
        for _ in range(warmup):
            engine(x)
        _sync(device)
        lat = []
        t_all = time.perf_counter()
        for _ in range(iters):
            t0 = time.perf_counter()
            engine(x)
            _sync(device)
            lat.append(time.perf_counter() - t0)
        total = time.perf_counter() - t_all
    except Exception as exc:  # e.g. out of memory at a large batch: report it, keep going
        return {"error": f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}"}
    lat.sort()
    return {"fps": round(batch * iters / total, 2), "latency_ms_p50": round(statistics.median(lat) * 1e3, 2),
            "latency_ms_p95": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))] * 1e3, 2)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_table(rows: list[dict]) -> str:
    """Markdown table of :func:`run_matrix` rows, backends side by side per model and batch."""
    lines = ["| model | input -> output | batch | engine | precision | fps | p50 ms | p95 ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: (r["model"], r["batch"], r["engine"])):
        if "error" in r:
            cells = ["-", "-", f"n/a: {r['error'][:60]}"]
        else:
            cells = [f"{r['fps']:.1f}", f"{r['latency_ms_p50']:.1f}", f"{r['latency_ms_p95']:.1f}"]
        lines.append(f"| {r['model']} | {r['input']} -> {r['output']} | {r['batch']} | {r['engine']} | "
                     f"{r['precision']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
