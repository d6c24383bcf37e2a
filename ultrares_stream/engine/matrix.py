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

import copy
import logging
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import UserError
from .base import ThreadPlan, pick_device, pick_precision
from .cache import EngineCache, ShapeRange
from .timing import concurrent_passes, torch_threads

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


def _shipped(name: str) -> Callable[[], nn.Module]:
    """The network of registry model ``name`` as its checkpoint describes it, with random weights."""

    def build() -> nn.Module:
        from ..models.archs import detect
        from ..models.registry import resolve

        return detect(resolve(name).psnr, name).build()

    return build


#: model name -> its network (the shipped pairs' architectures, read from their checkpoints; ``RRDB``
#: is ESRGAN's; the wide pair's 64 feat / 16 conv is also ``realesr-animevideov3``'s)
MODELS: dict[str, Callable[[], nn.Module]] = {
    name: _shipped(name) for name in ("ultrares-compact-x4", "ultrares-wide-x4", "ultrares-traffic-x4")}
MODELS["RRDB"] = _rrdb
SIZES = ((480, 270), (960, 540))
#: the CPU matrix (``ultrares bench --matrix`` on a CPU): the CPU's pairs on the 320x240 camera
CPU_MODELS = ("ultrares-compact-x4", "ultrares-wide-x4", "ultrares-traffic-x4")
CPU_SIZES = ((320, 240),)


def cases(models=tuple(MODELS), sizes=SIZES) -> tuple[BenchCase, ...]:
    """One :class:`BenchCase` per model and input size (``KeyError`` names an unknown model)."""
    return tuple(BenchCase(m, MODELS[m], w, h) for m in models for w, h in sizes)


CASES = cases(("ultrares-compact-x4", "ultrares-wide-x4", "RRDB"))
CPU_CASES = cases(CPU_MODELS, CPU_SIZES)


def run_cpu_matrix(engines: list[str], batches=(1,), *, precision: str = "auto", cases: tuple[BenchCase, ...] = CPU_CASES,
                   rounds: int = 5, passes: int = 3, threads: int | None = None,
                   cache: EngineCache | None = None) -> list[dict]:
    """The CPU engines side by side: per case, every engine is built (``engines``: the names of
    ``select.CPU_CANDIDATES`` or of ``make_engine``, each optionally with its own precision:
    ``openvino/int8``, ``eager-channels-last/bf16``), then each batch size is timed in ``rounds``
    interleaved rounds (engine after engine, so a machine whose speed drifts moves them alike) of
    ``passes`` passes per caller, ``plan.streams`` callers at once (the pipeline's CPU plan,
    ``threads``: ``inference.threads``). One row per (case, engine, batch), as :func:`run_matrix`,
    with ``fps`` the median round and ``fps_rounds`` every round."""
    from .openvino import cpu_model_name

    prec = pick_precision(precision, torch.device("cpu"))
    plan = ThreadPlan.for_pipeline(threads)
    rows: list[dict] = []
    for case in cases:
        built, failed = _cpu_engines(engines, case, prec, plan, cache)
        base = {"model": case.name, "input": f"{case.width}x{case.height}", "device": cpu_model_name(),
                "output": f"{case.width * case.scale}x{case.height * case.scale}", "plan": plan.describe()}
        rows += [{**base, "engine": n, "precision": prec, "batch": b, "error": e} for n, e in failed.items()
                 for b in batches]
        for b in batches:
            x = torch.rand(b, 3, case.height, case.width)
            times = _interleaved(built, x, plan, rounds, passes)
            for name, walls in times.items():
                fps = sorted(b * passes * plan.streams / w for w in walls)
                rows.append({**base, "engine": name, "precision": built[name].precision, "batch": b,
                             "fps": round(statistics.median(fps), 2), "fps_rounds": [round(f, 2) for f in fps],
                             "latency_ms_p50": round(1000 * statistics.median(walls) / passes, 2),
                             "latency_ms_p95": round(1000 * max(walls) / passes, 2)})
                log.info("bench %s", rows[-1])
    return rows


def _cpu_engines(names: list[str], case: BenchCase, precision: str, plan: ThreadPlan,
                 cache: EngineCache | None) -> tuple[dict, dict[str, str]]:
    """(name -> engine with the case's random weights, name -> why it could not be built)."""
    from .select import CPU_CANDIDATES, make_engine

    built, failed = {}, {}
    for name in names:
        torch.manual_seed(0)
        net = case.build()
        backend, _, own = name.partition("/")  # an engine's own precision: openvino/int8
        try:
            prec = pick_precision(own, torch.device("cpu")) if own else precision
            if backend in CPU_CANDIDATES:
                engine = CPU_CANDIDATES[backend][1](net, prec, plan, cache)
            else:
                engine = make_engine(backend, net, torch.device("cpu"), prec, cache=cache,
                                     threads=None if plan.streams > 1 else plan.threads)
            engine.load_weights(net.state_dict())
            built[name] = engine
        except Exception as exc:  # any backend failure: a row that says why
            log.warning("bench: %s on %s not available: %s", name, case.name, exc)
            failed[name] = f"{exc.__class__.__name__}: {exc}"
    return built, failed


def _interleaved(engines: dict, x: torch.Tensor, plan: ThreadPlan, rounds: int, passes: int) -> dict[str, list[float]]:
    """Wall seconds of each round per engine (one warm-up pass per caller first)."""
    walls: dict[str, list[float]] = {name: [] for name in engines}
    with torch_threads(plan.threads), torch.no_grad():
        for engine in engines.values():
            concurrent_passes(engine, x, plan.streams, 1)
        for _ in range(rounds):
            for name, engine in engines.items():
                walls[name].append(concurrent_passes(engine, x, plan.streams, passes))
    return walls


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


#: the networks whose OpenVINO output is compared with eager fp32 (:func:`agreement`): every
#: shipped architecture, with real weights where the registry has them (RRDBNet: random weights)
AGREEMENT_MODELS = ("ultrares-compact-x4", "ultrares-wide-x4", "ultrares-traffic-x4", "realesr-animevideov3",
                    "rlfn-x4", "span-ch28-x4", "RRDB")


def real_frames(n_per_clip: int = 1, size: tuple[int, int] = (160, 120)) -> list[torch.Tensor]:
    """The first ``n_per_clip`` frames of each clip in the shared data's ``video/`` folder (PyAV),
    centre-cropped to ``size`` (width, height), as 1x3xHxW float tensors in [0, 1]."""
    import av

    from ..settings import data_dir

    frames = []
    for clip in sorted((data_dir() / "video").glob("*.*")):
        with av.open(str(clip)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i >= n_per_clip:
                    break
                rgb = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).float() / 255
                top, left = (rgb.shape[1] - size[1]) // 2, (rgb.shape[2] - size[0]) // 2
                frames.append(rgb[None, :, top:top + size[1], left:left + size[0]].contiguous())
    if not frames:
        raise UserError(f"no clips in {data_dir() / 'video'}")
    return frames


def agreement(models=AGREEMENT_MODELS, frames: list[torch.Tensor] | None = None,
              precisions=("fp32",)) -> list[dict]:
    """PSNR (dB, outputs clamped to [0, 1]) of the OpenVINO engine against eager fp32 per network,
    precision and frame: ``min_db`` / ``mean_db`` over the frames."""
    from .select import make_engine

    frames = frames if frames is not None else real_frames()
    rows = []
    for name in models:
        torch.manual_seed(0)
        net = _agreement_net(name).eval()
        with torch.no_grad():
            want = [net(x).clamp(0, 1) for x in frames]
        for prec in precisions:
            engine = make_engine("openvino", copy.deepcopy(net), torch.device("cpu"), prec)
            engine.load_weights(net.state_dict())
            dbs = [_psnr(engine(x).clamp(0, 1), w) for x, w in zip(frames, want)]
            rows.append({"model": name, "arch": type(net).__name__, "precision": prec, "frames": len(frames),
                         "min_db": round(min(dbs), 2), "mean_db": round(sum(dbs) / len(dbs), 2)})
            log.info("agreement %s", rows[-1])
    return rows


def _agreement_net(name: str) -> nn.Module:
    """A registry model with its real weights (its PSNR network), else :data:`MODELS`' (random weights)."""
    from ..models.checkpoint import build_model
    from ..models.registry import ENTRIES, PAIRS, resolve

    if name in ENTRIES or name in PAIRS:
        return build_model(resolve(name).psnr, name)
    return MODELS[name]()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    import math

    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1 / mse)


if __name__ == "__main__":  # python -m ultrares_stream.engine.matrix [fp32,bf16]: the agreement table
    import json
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    precs = tuple(sys.argv[1].split(",")) if len(sys.argv) > 1 else ("fp32",)
    print(json.dumps(agreement(precisions=precs), indent=1))
