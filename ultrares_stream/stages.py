"""The device stages: what happens to a batch of frames between a camera's frame queue and its
encoder, one small object per step, run by the :class:`~ultrares_stream.batcher.Batcher`.

A :class:`Stage` has one method, ``process(batch) -> batch``, and declares ``ordered``: whether
it must see each camera's frames in decode order (it keeps per-camera state from one frame to
the next, like the temporal stabiliser). The batcher runs stages that may run out of order on
parallel workers and the first ordered stage and all after it on its finisher thread, which
takes batches in the order they were formed (:func:`split_point`). A new stage is a class here
(or anywhere) and one entry in :data:`DEVICE_STAGES`, the list the builder (:mod:`.pipeline`) uses.

Pixel work happens once, on the device: packed ``yuv420p`` uint8 frames are moved as bytes (1.5
bytes per pixel, the least to transfer), converted to RGB float there (:class:`ToRGB`), upscaled
(:class:`Upscale`), stabilised (:class:`Stabilise`), converted back to ``yuv420p`` uint8 there
and only then copied back for the encoder (:class:`ToYUV`). See docs/pipeline.md.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from .colour import pack_yuv420p, rgb_to_yuv420p, split_yuv420p, yuv420p_to_rgb
from .sources import Frame
from .temporal import Stabiliser, stabilise_batch


@dataclass(frozen=True)
class Route:
    """Where a camera's frames go now: the upscaler (a model view: model, alpha, passes) and the
    output size (width, height; None: the model's scale). Frames carry the route they were
    given, so what made a frame (its provenance) follows it to the file or stream."""

    upscaler: Any
    size: tuple[int, int] | None = None

    @property
    def model(self) -> str:
        return str(self.upscaler.model_name)

    @property
    def alpha(self) -> float | None:
        return self.upscaler.alpha if self.upscaler.is_pair else None

    @property
    def ensemble(self) -> int:
        return self.upscaler.ensemble


@dataclass
class Item:
    """One frame of a batch: the camera it came from (a :class:`~.batcher.BatchClient`), the
    frame, and how long it waited in the queue."""

    client: Any
    frame: Frame
    wait: float = 0.0


@dataclass
class DeviceBatch:
    """Frames of one size and one route on their way through the device stages. The stages fill
    ``rgb`` (the input as NCHW float RGB), ``out`` (the output, NCHW float RGB, even size) and
    ``packed`` (the output as packed yuv420p uint8 in host memory). ``done``: the CUDA event
    that ends the device work queued so far (None on the CPU: done when the call returns)."""

    items: list[Item]
    route: Route
    width: int
    height: int
    rgb: torch.Tensor | None = None
    out: torch.Tensor | None = None
    packed: np.ndarray | None = None
    done: Any = None
    extra: dict = field(default_factory=dict)  # what a stage leaves for a later one

    @property
    def device(self) -> torch.device:
        return self.route.upscaler.device

    @property
    def output_size(self) -> tuple[int, int]:
        return output_size_for(self.route.upscaler, self.width, self.height, self.route.size)


class Stage(Protocol):
    """One step of the device path."""

    name: str
    ordered: bool  # must see each camera's frames in decode order (keeps per-camera state)

    def process(self, batch: DeviceBatch) -> DeviceBatch:
        """Do this stage's work on ``batch`` and return it."""


def output_size_for(upscaler, width: int, height: int, size: tuple[int, int] | None) -> tuple[int, int]:
    if size is not None:
        return size
    return width * upscaler.scale, height * upscaler.scale


@contextmanager
def light_ops(device: torch.device):
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


class ToRGB:
    """Packed yuv420p uint8 frames (moved to the device as bytes) -> NCHW float RGB there."""

    name, ordered = "to_rgb", False

    def process(self, batch: DeviceBatch) -> DeviceBatch:
        frames = [item.frame.data for item in batch.items]
        arr = np.stack(frames) if len(frames) > 1 else frames[0][None]
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if batch.device.type == "cuda":
            t = t.pin_memory().to(batch.device, non_blocking=True)
        with torch.inference_mode(), light_ops(batch.device):
            batch.rgb = yuv420p_to_rgb(*split_yuv420p(t, batch.width, batch.height))
        return batch


class Upscale:
    """The network (its engine, self-ensemble and tiling: :mod:`.upscaler`); the output cropped to
    an even size, as yuv420p needs."""

    name, ordered = "upscale", False

    def process(self, batch: DeviceBatch) -> DeviceBatch:
        with torch.inference_mode():
            out = batch.route.upscaler.upscale(batch.rgb, size=batch.output_size)
            if out.shape[-1] % 2 or out.shape[-2] % 2:
                out = out[..., : out.shape[-2] - out.shape[-2] % 2, : out.shape[-1] - out.shape[-1] % 2]
        batch.out = out
        return batch


class Stabilise:
    """Each camera's temporal stabiliser (:mod:`.temporal`) over its frames, in decode order;
    frames of cameras without one pass unchanged."""

    name, ordered = "stabilise", True

    def process(self, batch: DeviceBatch) -> DeviceBatch:
        stabilisers: list[Stabiliser | None] = [item.client.stabiliser for item in batch.items]
        if any(stabilisers):
            up = batch.route.upscaler
            key = (id(up), up.alpha, output_size_for(up, batch.width, batch.height, batch.route.size))
            with torch.inference_mode(), light_ops(batch.out.device):
                stabilise_batch(stabilisers, batch.rgb, batch.out, key, [item.frame.epoch for item in batch.items])
        return batch


class ToYUV:
    """NCHW float RGB (on the device) -> packed yuv420p uint8 (N, H*3/2, W) in host memory.

    On CUDA the conversion and the download run on a side stream that waits only for
    ``batch.done`` (the event that ends the batch's device work; None: all work queued so far),
    so they are not queued behind the next batch the worker has launched meanwhile."""

    name, ordered = "to_yuv", False

    def process(self, batch: DeviceBatch) -> DeviceBatch:
        batch.packed = to_packed_yuv(batch.out, after=batch.done)
        return batch


#: the device path of every camera, recorded file and benchmark, in order (:func:`.pipeline.build`);
#: a new stage is one more entry here. Pipelines that share this tuple share batches across cameras.
DEVICE_STAGES: tuple[Stage, ...] = (ToRGB(), Upscale(), Stabilise(), ToYUV())


def split_point(stages: Sequence[Stage], parallel: bool) -> int:
    """How many of ``stages`` the inference workers run; the finisher runs the rest, batch after
    batch in the order they were formed. With parallel workers: the stages before the first
    ordered one. With one worker (it sees batches in order): all but the last, so the last
    (the download) overlaps the next batch's inference."""
    if parallel:
        return next((i for i, s in enumerate(stages) if s.ordered), len(stages))
    return max(0, len(stages) - 1)


def run_stages(stages: Sequence[Stage], batch: DeviceBatch) -> DeviceBatch:
    """``batch`` through ``stages`` in order, in inference mode (no autograd bookkeeping; a stage
    may change the batch's tensors in place)."""
    with torch.inference_mode():
        for stage in stages:
            batch = stage.process(batch)
    return batch


def to_packed_yuv(out: torch.Tensor, after=None) -> np.ndarray:
    """See :class:`ToYUV`."""
    if out.device.type != "cuda":
        with torch.inference_mode(), light_ops(out.device):
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


class _Alone:
    """A batch client of one frame sequence: no queue, an optional stabiliser (:func:`enhance_frames`)."""

    def __init__(self, stabiliser: Stabiliser | None):
        self.name, self.stabiliser = "frames", stabiliser


def enhance_frames(upscaler, frames: Sequence[np.ndarray], width: int, height: int,
                   size: tuple[int, int] | None = None, stabiliser: Stabiliser | None = None,
                   stages: Sequence[Stage] | None = None) -> np.ndarray:
    """Packed yuv420p uint8 frames (same size, one camera, in order) through ``stages`` -> packed
    yuv420p uint8 (N, H'*3/2, W'): the device path without the batcher (tests, tools)."""
    stages = DEVICE_STAGES if stages is None else stages
    client = _Alone(stabiliser)
    items = [Item(client, Frame(f, width, height, i, None)) for i, f in enumerate(frames)]
    return run_stages(stages, DeviceBatch(items, Route(upscaler, size), width, height)).packed
