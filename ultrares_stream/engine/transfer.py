"""Moving frames through an engine with uint8 on the wire, overlapped on CUDA.

:class:`FramePipe` takes batches of uint8 NHWC RGB frames (what the decoder gives),
and on CUDA

* copies them into pinned (page-locked) host buffers and uploads them on an
  *upload* stream (asynchronous DMA, 1 byte a channel instead of 4),
* converts to float and runs the model on a *compute* stream (conversion on the GPU,
  :func:`colour.uint8_to_float`),
* converts back to uint8 on the GPU (:func:`colour.float_to_uint8`) and downloads on a *download* stream into
  pinned buffers,

so batch k+1 uploads while batch k computes and batch k-1 downloads. Two slots of
buffers alternate; :meth:`FramePipe.submit` returns at once with a handle and
:meth:`FramePipe.result` waits for that batch only. On the CPU the same calls run
synchronously through the same slots (plain host buffers), so the slot logic is one code path.

More batches in flight than slots: before a slot is reused, the batch still holding it is
waited for and its frames are copied out into its handle, so :meth:`FramePipe.result` always
returns that batch's own frames (never a later batch's from the reused buffer).

Not used by the batcher yet (it moves packed yuv420p through :func:`batcher.upscale_yuv`);
``FramePipe`` is the overlapped-transfer building block for the CUDA path (issue 16).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..colour import float_to_uint8, uint8_to_float

log = logging.getLogger(__name__)
Model = Callable[[torch.Tensor], torch.Tensor]  # NCHW float [0, 1] on the device -> NCHW float


@dataclass
class Pending:
    """A submitted batch: pass to :meth:`FramePipe.result`."""

    slot: int
    count: int
    event: Any = None  # torch.cuda.Event on CUDA: its download finished
    value: torch.Tensor | None = None  # its frames, once copied out of the slot


@dataclass
class _Slot:
    host_in: torch.Tensor | None = None
    host_out: torch.Tensor | None = None
    done: Any = None  # torch.cuda.Event: the slot's last download finished
    holder: Pending | None = None  # the batch whose frames are in host_out and not yet copied out


class FramePipe:
    """uint8 NHWC frames -> ``model`` -> uint8 NHWC frames, overlapped on three CUDA streams."""

    def __init__(self, model: Model, device: torch.device | str, slots: int = 2):
        self.model = model
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._slots = [_Slot() for _ in range(max(1, slots))]
        self._next = 0
        if self.cuda:
            self.upload = torch.cuda.Stream(self.device)
            self.compute = torch.cuda.Stream(self.device)
            self.download = torch.cuda.Stream(self.device)

    def submit(self, frames: torch.Tensor | np.ndarray) -> Pending:
        """Start one batch (N, H, W, 3) uint8; returns at once on CUDA."""
        frames = torch.as_tensor(frames)
        if frames.dtype != torch.uint8 or frames.ndim != 4:
            raise ValueError(f"expected uint8 NHWC frames, got {frames.dtype} {tuple(frames.shape)}")
        index = self._next
        self._next = (self._next + 1) % len(self._slots)
        slot = self._slots[index]
        self._evict(slot)
        n = frames.shape[0]
        if not self.cuda:
            with torch.no_grad():
                out = float_to_uint8(self.model(uint8_to_float(frames.to(self.device))))
            slot.host_out = _host(slot.host_out, out.shape, torch.uint8, pinned=False)
            slot.host_out[:n].copy_(out)
            slot.holder = Pending(slot=index, count=n)
            return slot.holder
        slot.host_in = _host(slot.host_in, frames.shape, torch.uint8)
        host_in = slot.host_in[:n]
        host_in.copy_(frames)
        with torch.cuda.stream(self.upload):
            dev_in = host_in.to(self.device, non_blocking=True)
            uploaded = torch.cuda.Event()
            uploaded.record(self.upload)
        with torch.cuda.stream(self.compute), torch.no_grad():
            self.compute.wait_event(uploaded)
            dev_in.record_stream(self.compute)
            dev_out = float_to_uint8(self.model(uint8_to_float(dev_in)))
            computed = torch.cuda.Event()
            computed.record(self.compute)
        slot.host_out = _host(slot.host_out, dev_out.shape, torch.uint8)
        host_out = slot.host_out[:n]
        with torch.cuda.stream(self.download):
            self.download.wait_event(computed)
            dev_out.record_stream(self.download)
            host_out.copy_(dev_out, non_blocking=True)
            slot.done = torch.cuda.Event()
            slot.done.record(self.download)
        slot.holder = Pending(slot=index, count=n, event=slot.done)
        return slot.holder

    def _evict(self, slot: _Slot) -> None:
        """Before reusing ``slot``: wait for its batch and copy that batch's frames into its handle."""
        if slot.done is not None:
            slot.done.synchronize()  # its previous batch has been downloaded
        held, slot.holder = slot.holder, None
        if held is not None and held.value is None:
            held.value = slot.host_out[: held.count].clone()

    def result(self, pending: Pending) -> torch.Tensor:
        """The batch's uint8 NHWC frames on the CPU (a copy the caller owns)."""
        if pending.value is None:
            slot = self._slots[pending.slot]  # still holds it: a reused slot copies its batch out first
            if pending.event is not None:
                pending.event.synchronize()
            pending.value = slot.host_out[: pending.count].clone()
            slot.holder = None
        return pending.value

    def __call__(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        return self.result(self.submit(frames))


def _host(buf: torch.Tensor | None, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype,
          pinned: bool = True) -> torch.Tensor:
    """A host buffer holding at least ``shape`` (reallocated when the frame size changes); pinned for CUDA."""
    shape = tuple(shape)
    if buf is not None and buf.shape[1:] == shape[1:] and buf.shape[0] >= shape[0]:
        return buf
    log.debug("allocating %shost buffer %s", "pinned " if pinned else "", shape)
    buf = torch.empty(shape, dtype=dtype)
    return buf.pin_memory() if pinned else buf
