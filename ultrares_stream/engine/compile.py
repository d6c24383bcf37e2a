"""torch.compile backend: Inductor kernels, CUDA graphs on CUDA (``reduce-overhead``), fp16 or bf16.

Batches are padded up to a few fixed sizes (:func:`batch_bucket`: 1, 2, 4, 8 ... up to
``max_batch``) so a stream of varying batch sizes compiles, and records CUDA graphs,
a handful of times rather than once per size. Alpha changes copy the new weights into
the live parameters in place: compiled kernels and CUDA graphs read them from the same
memory, so nothing recompiles. fp16 output with NaN/Inf falls back to bf16 (or fp32
where bf16 is unsupported) for that model, logged once.

Shapes are static (the fastest kernels, one CUDA graph each), so every new (batch bucket,
height, width) compiles again and records another graph. An engine compiles at most
``max_shapes`` of them (:data:`MAX_SHAPES`), each once it has recurred (:data:`COMPILE_AFTER`
sightings: a camera's size at once, a web upload's one-off size never); further shapes run eagerly on the same module and
weights, with one line in the log each (:func:`plan_shape`). Torch's recompile limit (8 per
code object, shared by every engine of one architecture, and ``fullgraph=True`` makes hitting it
an error) is raised to what the engines reserved (:func:`reserve_recompiles`); a shape that still
hits it runs eagerly too, never raises.
"""
from __future__ import annotations

import functools
import logging
import threading
from collections import Counter
from collections.abc import Callable

import torch
import torch._dynamo
from torch import nn

from .base import Precision

log = logging.getLogger(__name__)
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
#: compiled shapes per engine (batch buckets x frame sizes: 1/2/4 x 2 camera sizes + slack)
MAX_SHAPES = 8
#: sightings of a shape before it is compiled: a camera's frames recur at once, one-off sizes never
COMPILE_AFTER = 3
_reserved = {"recompiles": 0}


def plan_shape(shape: tuple[int, int, int], compiled: set, eager: set, max_shapes: int,
               seen: int = 1, compile_after: int = 1) -> str:
    """How to run one (batch, height, width), ``seen`` times so far: ``"compiled"`` (compiled
    already, or room for one more once it has recurred ``compile_after`` times), ``"warming"``
    (eager until it recurs: a web upload's one-off size never takes a camera's place) or
    ``"eager"`` (for good: the budget is spent)."""
    if shape in eager:
        return "eager"
    if shape in compiled:
        return "compiled"
    if len(compiled) >= max_shapes:
        return "eager"
    return "compiled" if seen >= compile_after else "warming"


def reserve_recompiles(shapes: int) -> int:
    """Reserve ``shapes`` more compiled graphs in this process; raises torch's per-code-object
    recompile limit to cover every engine's reservation (engines of one architecture share the
    limit: it counts per ``forward``). Returns the limit now in force."""
    import torch._dynamo

    _reserved["recompiles"] += shapes
    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, _reserved["recompiles"] + 1)
    if hasattr(cfg, "accumulated_recompile_limit"):
        cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 4 * cfg.recompile_limit)
    return cfg.recompile_limit


def batch_bucket(n: int, max_batch: int) -> int:
    """The padded batch size for ``n`` frames: the next power of two, capped at ``max_batch``."""
    if n < 1:
        raise ValueError("batch must have at least one frame")
    if n >= max_batch:
        return max_batch
    b = 1
    while b < n:
        b *= 2
    return min(b, max_batch)


class CompiledEngine:
    name = "compile"
    slow_weights = False
    concurrent_passes = False

    def __init__(self, net: nn.Module, device: torch.device, precision: Precision, *,
                 max_batch: int = 8, mode: str | None = None, max_shapes: int = MAX_SHAPES,
                 compile_after: int = COMPILE_AFTER):
        self.device = torch.device(device)
        self.max_shapes = max(0, int(max_shapes))
        self.compile_after = max(1, int(compile_after))
        self.seen: Counter[tuple[int, int, int]] = Counter()
        self.compiled_shapes: set[tuple[int, int, int]] = set()
        self.eager_shapes: set[tuple[int, int, int]] = set()
        reserve_recompiles(self.max_shapes)
        self.precision: Precision = precision
        self.max_batch = max(1, int(max_batch))
        self.mode = mode if mode is not None else ("reduce-overhead" if self.device.type == "cuda" else None)
        self.net = net.eval().to(self.device)
        for p in self.net.parameters():
            p.requires_grad_(False)
        # CPU bf16 runs under autocast on fp32 weights (as eager does); CUDA casts the weights.
        self._autocast = self.device.type == "cpu" and precision == "bf16"
        self._channels_last = self._autocast
        self._lock = threading.Lock()
        self._fell_back = False
        self._set_dtype(precision)

    def _set_dtype(self, precision: Precision) -> None:
        self.precision = precision
        if self.device.type == "cuda":
            self.net = self.net.to(_DTYPES[precision])
        if self._channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._compiled = torch.compile(self.net, mode=self.mode, dynamic=False, fullgraph=True)
        self.compiled_shapes.clear()
        self.eager_shapes.clear()
        log.info("torch.compile engine: mode %s, %s on %s, batch buckets up to %d",
                 self.mode or "default", precision, self.device, self.max_batch)

    def prepare_weights(self, state_dict: dict[str, torch.Tensor]) -> Callable[[], None]:
        """Nothing slow to prepare: the commit copies the weights in (:meth:`load_weights`)."""
        return functools.partial(self.load_weights, state_dict)

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy new weights into the live parameters (same storage: no recompile), between two batches."""
        with self._lock, torch.no_grad():
            params = self.net.state_dict()
            for key, value in state_dict.items():
                params[key].copy_(value.to(params[key].device, params[key].dtype))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            out = self._run(x)
            if self.device.type == "cuda" and self.precision == "fp16" and not torch.isfinite(out).all():
                self._fall_back()
                out = self._run(x)
            return out

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for start in range(0, x.shape[0], self.max_batch):
            chunk = x[start:start + self.max_batch]
            n = chunk.shape[0]
            size = batch_bucket(n, self.max_batch)
            if size > n:
                chunk = torch.cat([chunk, chunk[-1:].expand(size - n, *chunk.shape[1:])])
            if self.device.type == "cuda":
                chunk = chunk.to(_DTYPES[self.precision])
            elif self._channels_last:
                chunk = chunk.contiguous(memory_format=torch.channels_last)
            out = self._forward(chunk)
            # CUDA graph outputs are overwritten by the next replay: always take a copy.
            outs.append(out[:n].to(torch.float32, copy=True))
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _forward(self, chunk: torch.Tensor) -> torch.Tensor:
        """The compiled module for this shape, or the same module eagerly (see :func:`plan_shape`)."""
        shape = (chunk.shape[0], chunk.shape[2], chunk.shape[3])
        self.seen[shape] += 1
        plan = plan_shape(shape, self.compiled_shapes, self.eager_shapes, self.max_shapes, self.seen[shape],
                          self.compile_after)
        if plan == "warming":
            return self._call(self.net, chunk)
        if plan == "compiled":
            try:
                out = self._call(self._compiled, chunk)
                self.compiled_shapes.add(shape)
                return out
            except torch._dynamo.exc.FailOnRecompileLimitHit:
                why = "torch's recompile limit is reached"
        else:
            why = f"this engine has compiled its {self.max_shapes} shapes"
        if shape not in self.eager_shapes:
            self.eager_shapes.add(shape)
            log.warning("torch.compile: batch %d of %dx%d runs eagerly (%s; compiled: %s)", shape[0], shape[2],
                        shape[1], why, ", ".join(f"{b}x{w}x{h}" for b, h, w in sorted(self.compiled_shapes)) or "none")
        return self._call(self.net, chunk)

    def _call(self, fn, chunk: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda" and fn is self._compiled:
            torch.compiler.cudagraph_mark_step_begin()
        if self._autocast:
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
                return fn(chunk)
        return fn(chunk)

    def _fall_back(self) -> None:
        target: Precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        if not self._fell_back:
            log.warning("fp16 output has NaN/Inf for this model; running it in %s from now on", target)
            self._fell_back = True
        self._set_dtype(target)
