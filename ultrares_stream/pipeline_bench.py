"""``ultrares bench``: model-alone fps and whole-pipeline fps on the same input, side by side.

*Model alone*: the upscaler on frames already decoded and converted to float RGB
on the device (no decode, colour conversion or encode). *Pipeline*: the live
path for a file: Source (decode) -> FrameQueue (blocking: nothing dropped) ->
Batcher (yuv->rgb, upscale, rgb->yuv) -> SinkWorker (libx264 encode + mux), all
threads running together. The ratio says how well decode and encode hide
behind inference. Per-stage times come from the same Prometheus histograms the
service exports.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .colour import split_yuv420p, yuv420p_to_rgb
from .errors import UserError

log = logging.getLogger(__name__)


def default_input() -> Path:
    """The shared 320x240 CCTV clip when present, else the generated demo scene."""
    from .settings import data_dir

    clip = data_dir() / "video" / "cctv-motorway-320x240.avi"
    if clip.is_file():
        return clip
    from .demo.scene import default_camera_video

    return default_camera_video()


def decode_frames(path: Path, n: int) -> tuple[list, int, int, float]:
    """First ``n`` frames as packed yuv420p arrays, with width, height and fps."""
    from .sources import Source

    src = Source(str(path), "bench", live=False)
    src.max_frames = n
    frames = list(src.frames())
    if not frames:
        raise UserError(f"{path}: no frames could be decoded")
    return [f.data for f in frames], frames[0].width, frames[0].height, float(src.fps)


def _stage_means(metrics, camera: str) -> dict[str, float]:
    out = {}
    reg = metrics.registry
    for stage in ("decode", "queue", "inference", "encode", "publish"):
        labels = {"camera": camera, "stage": stage}
        n = reg.get_sample_value("ultrares_stage_seconds_count", labels) or 0
        s = reg.get_sample_value("ultrares_stage_seconds_sum", labels) or 0.0
        out[stage] = s / n if n else float("nan")
    n = reg.get_sample_value("ultrares_end_to_end_seconds_count", {"camera": camera}) or 0
    s = reg.get_sample_value("ultrares_end_to_end_seconds_sum", {"camera": camera}) or 0.0
    out["end_to_end"] = s / n if n else float("nan")
    return out


def model_alone(upscaler, frames: list, width: int, height: int, batch: int, warmup: int = 1) -> dict:
    """fps of the upscaler on pre-converted RGB tensors already on the device.

    Runs in worker threads like the pipeline's inference workers: on a busy CPU, torch's
    OpenMP team of the main thread was measured 2-3x slower than a worker thread's, which
    would flatter the pipeline. An engine that runs several passes at once on the CPU (OpenVINO
    streams, ``engine.plan``) gets that many threads, taking the batches in turn: its fastest.
    """
    plan = getattr(upscaler.engine, "plan", None)
    callers = plan.streams if plan is not None and upscaler.device.type == "cpu" else 1
    with torch.inference_mode():
        packed = torch.from_numpy(np.stack(frames)).to(upscaler.device)
        rgb = yuv420p_to_rgb(*split_yuv420p(packed, width, height))
    batches = [rgb[i:i + batch] for i in range(0, rgb.shape[0], batch)]
    _in_threads(upscaler, batches[:warmup * callers], callers)
    dt = _in_threads(upscaler, batches, callers)
    return {"frames": len(frames), "seconds": dt, "fps": len(frames) / dt, "ms_per_frame": 1000 * dt / len(frames),
            "callers": callers}


def _in_threads(upscaler, batches: list, callers: int) -> float:
    """Wall seconds for ``callers`` threads to upscale ``batches`` (thread i takes i, i + callers ...)."""
    from .engine.timing import wall_in_threads

    def job(mine: list):
        def run() -> None:
            with torch.inference_mode():
                for b in mine:
                    upscaler.upscale(b)
                _sync(upscaler.device)
        return run

    return wall_in_threads([job(batches[i::callers]) for i in range(callers)])


def pipeline(upscaler, path: Path, n: int, batch: int, max_wait_ms: float = 10.0, preset: str = "auto",
             stabilise=None, threads: int | None = None) -> dict:
    """fps of the whole file pipeline (decode, queue, batcher, encode, mux) on the first ``n`` frames,
    with the temporal stabiliser when ``stabilise`` (a :class:`config.StabiliseConfig`) is given."""
    from .batcher import Batcher
    from .metrics import Metrics
    from .publisher import EncoderSettings
    from .stream import Stream, UpscalerPool

    metrics = Metrics()
    # the service's CPU plan (batcher.cpu_inference_plan), or ``threads`` on one batch at a time
    batcher = Batcher(str(upscaler.device), batch, max_wait_ms, metrics=metrics, threads=threads).start()
    pool = UpscalerPool(factory=lambda model, alpha: upscaler)
    from .config import CameraConfig, EncoderConfig, QueueConfig

    # the service's own live encoder settings (config defaults), with the preset chosen here
    encoder = EncoderSettings.from_config(EncoderConfig(preset=preset), live=True,
                                          cpu_inference=upscaler.device.type == "cpu")
    with tempfile.TemporaryDirectory(prefix="ultrares-bench-") as tmp:
        out = Path(tmp) / "bench.mkv"
        camera = CameraConfig(name="bench", input=str(path), output=str(out), alpha=upscaler.alpha,
                              queue=QueueConfig(size=max(8, 2 * batch)), stabilise=stabilise)
        stream = Stream(camera, batcher=batcher, pool=pool, encoder=encoder, metrics=metrics)
        stream.source.max_frames = n
        t0 = time.perf_counter()
        stream.start()
        stream.wait_finished(3600)
        dt = time.perf_counter() - t0
        batcher.stop()
        frames = stream.frames_out
    if frames < 2:
        raise UserError(f"the pipeline published {frames} frame(s) ({stream.error or 'see the log'})")
    # steady state: first to last frame published (start-up and the final flush excluded, as the
    # model-alone figure excludes warm-up); the wall time including both is reported beside it
    span = stream.last_published_at - stream.first_published_at
    return {"frames": frames, "seconds": dt, "wall_fps": frames / dt, "fps": (frames - 1) / span,
            "encoder_preset": encoder.resolved_preset(), "workers": batcher.workers, "threads": batcher.threads,
            "inference_busy_s": batcher.busy_s, "stages_s": _stage_means(metrics, "bench")}


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_bench(input_path: Path | None = None, frames: int = 40, model: str | None = None, engine: str = "auto",
              device: str = "auto", precision: str = "auto", batch: int = 1, threads: int | None = None,
              preset: str = "auto") -> dict:
    """Both measurements on the same frames; returns a dict (see :func:`format_report`)."""
    from .upscaler import Upscaler

    path = Path(input_path) if input_path else default_input()
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if frames < 2:
        raise UserError("--frames must be at least 2")
    up = Upscaler(model, device=device, precision=precision, engine=engine, tile=0)
    alone_threads = threads or torch.get_num_threads()
    if up.device.type == "cpu":  # the model alone on every core (or --threads); the pipeline its own plan
        from .batcher import cpu_cores

        alone_threads = threads or cpu_cores()
    torch.set_num_threads(alone_threads)
    data, w, h, fps = decode_frames(path, frames)
    # warm up (oneDNN/cuDNN pick kernels on the first calls), then time the model alone before and
    # after the pipeline and keep the faster run: the stricter comparison for the pipeline
    from .config import StabiliseConfig

    first = model_alone(up, data, w, h, batch, warmup=3)
    pipe = pipeline(up, path, len(data), batch, preset=preset, threads=threads)
    stabilised = pipeline(up, path, len(data), batch, preset=preset, stabilise=StabiliseConfig(), threads=threads)
    torch.set_num_threads(alone_threads)
    second = model_alone(up, data, w, h, batch, warmup=0)
    alone = max(first, second, key=lambda a: a["fps"])
    return {"input": str(path), "width": w, "height": h, "input_fps": fps, "model": up.model_name,
            "engine": up.engine.name, "device": str(up.device), "precision": up.precision, "batch": batch,
            "torch_threads": alone_threads, "pipeline_workers": pipe["workers"], "pipeline_threads": pipe["threads"],
            "cpus": os.cpu_count(), "encoder_preset": pipe["encoder_preset"],
            "model_alone": alone,
            "pipeline": pipe, "ratio": pipe["fps"] / alone["fps"],
            "pipeline_stabilised": stabilised, "stabiliser_cost": 1 - stabilised["fps"] / pipe["fps"],
            "output": [w * up.scale, h * up.scale]}


def format_report(r: dict):
    """A rich table: the two fps side by side, then per-stage times."""
    from rich.table import Table

    t = Table(title=f"ultrares bench: {Path(r['input']).name} {r['width']}x{r['height']} -> "
                    f"{r['output'][0]}x{r['output'][1]}, {r['model']} ({r['engine']}, {r['device']}, "
                    f"{r['precision']}), batch {r['batch']}, model alone on {r['torch_threads']} torch thread(s), "
                    + (f"pipeline {r['pipeline_workers']} batch(es) at once on {r['pipeline_threads']} each, "
                       if r["pipeline_threads"] else "") +
                    f"libx264 {r['encoder_preset']}")
    t.add_column("measure")
    t.add_column("frames", justify="right")
    t.add_column("fps", justify="right")
    t.add_column("ms/frame", justify="right")
    a, p = r["model_alone"], r["pipeline"]
    t.add_row("model alone", str(a["frames"]), f"{a['fps']:.2f}", f"{a['ms_per_frame']:.1f}")
    t.add_row("whole pipeline (steady state)", str(p["frames"]), f"{p['fps']:.2f}", f"{1000 / p['fps']:.1f}")
    t.add_row("whole pipeline (wall, with start-up)", str(p["frames"]), f"{p['wall_fps']:.2f}",
              f"{1000 / p['wall_fps']:.1f}")
    t.add_row("pipeline / model", "", f"{100 * r['ratio']:.1f} %", "")
    st = r["pipeline_stabilised"]
    t.add_row("whole pipeline with the stabiliser (steady state)", str(st["frames"]), f"{st['fps']:.2f}",
              f"{1000 / st['fps']:.1f}")
    t.add_row("stabiliser cost (fps)", "", f"{100 * r['stabiliser_cost']:.1f} %", "")
    s = Table(title="pipeline stages (mean per frame; inference is per batch)")
    s.add_column("stage")
    s.add_column("ms", justify="right")
    for k, v in p["stages_s"].items():
        s.add_row(k, f"{1000 * v:.1f}")
    return t, s
