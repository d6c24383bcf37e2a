"""Temporal stabilisation: keep the enhanced video as steady as the camera.

Frame-by-frame super-resolution invents slightly different detail in every frame, so where
the scene stands still the output shimmers; and because a network's receptive field is wide,
a vehicle passing changes the output on the still road around it too. The stabiliser blends
each new output with the previous (stabilised) output, per pixel, by how still the *input*
is there: the weight comes from the low-resolution difference between this frame and the
*reference* input the held output was made from (largest channel change in a
``window`` x ``window`` neighbourhood). A moving vehicle, whose pixels change by far more than
sensor noise, takes the new output unchanged and is never ghosted; a still pixel keeps its
output. The reference follows the input at the same rate as the output, so a slow change of
light, each frame below the threshold, still adds up and refreshes the output.

The thresholds follow the camera's noise: its *noise level* is the median change, from one
frame to the next, of the pixels that changed at all among those the previous frame held still
(a coded H.264 block of a still wall changes by noise; a skipped one not at all, and counting
those would put the level at zero), averaged slowly over frames. The ``still`` threshold rises
to ``noise`` times that level when that is higher, and ``moving`` in proportion.

Everything stays on the inference device; the per-camera state is the reference LR frame and
the last output (a reference to the tensor, not a copy). It resets on a scene cut (most of the frame changed),
on a size, model or alpha change and when the camera reconnects (:meth:`reset`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class StabiliserSettings:
    """``still``/``moving``: LR change (0..255 levels) up to which a pixel counts as still, and
    from which it counts as moving (linear in between), over a ``window`` x ``window``
    neighbourhood. ``strength``: the weight of the held output on still pixels (below 1, held
    detail fades into new detail). ``cut``: share of moving LR pixels that marks a scene cut.
    ``noise``: ``still`` rises to this many times the camera's noise level (levels), ``moving``
    in proportion; 0 keeps the thresholds fixed."""

    still: float = 2.0
    moving: float = 4.0
    window: int = 3
    strength: float = 1.0
    cut: float = 0.5
    noise: float = 2.0


#: weight of each frame's noise measurement in the camera's running noise level
NOISE_RATE = 0.05
#: fewest changed, held pixels a frame needs to measure the noise level
NOISE_MIN_PIXELS = 64


def frame_noise(lr: torch.Tensor, prev_lr: torch.Tensor, held: torch.Tensor | None) -> float | None:
    """Median change (levels, largest channel) since ``prev_lr`` of the pixels that changed at
    all, among those ``held`` still (N1HW bool; None: all), every other row and column; None
    when fewer than ``NOISE_MIN_PIXELS`` qualify."""
    change = (lr[..., ::2, ::2] - prev_lr[..., ::2, ::2]).abs().amax(1, keepdim=True) * 255.0
    mask = change > 0.5
    if held is not None:
        mask &= held[..., ::2, ::2]
    picked = change[mask]
    return float(picked.median()) if picked.numel() >= NOISE_MIN_PIXELS else None


def noise_thresholds(still: float, moving: float, factor: float, level: float) -> tuple[float, float]:
    """(still, moving) raised for a camera whose noise level is ``level``: ``still`` to
    ``factor * level`` where that is higher, ``moving`` by the same ratio."""
    if still <= 0 or factor * level <= still:
        return still, moving
    ratio = factor * level / still
    return still * ratio, moving * ratio


def stillness(lr: torch.Tensor, ref_lr: torch.Tensor, still: float, moving: float, window: int = 3) -> torch.Tensor:
    """Per-LR-pixel stillness in [0, 1] (N1HW): 1 where every channel of every pixel in the
    ``window`` x ``window`` neighbourhood changed by at most ``still`` levels, 0 from ``moving`` on."""
    change = (lr - ref_lr).abs().amax(1, keepdim=True).mul_(255.0)
    return max_filter(change, window).sub_(moving).div_(still - moving).clamp_(0.0, 1.0)


def max_filter(x: torch.Tensor, window: int) -> torch.Tensor:
    """The ``window`` x ``window`` neighbourhood maximum of a non-negative N1HW map (zeros beyond
    its edges), as the maximum of shifted views along each axis: the values of ``max_pool2d``
    with stride 1, in a third of its time on the CPU."""
    r = window // 2
    if r == 0:
        return x.clone()
    p = F.pad(x, (r, r, r, r))
    h, w = x.shape[-2:]
    rows = p[..., :, 0:w].clone()
    for k in range(1, 2 * r + 1):
        torch.maximum(rows, p[..., :, k:k + w], out=rows)
    out = rows[..., 0:h, :].clone()
    for k in range(1, 2 * r + 1):
        torch.maximum(out, rows[..., k:k + h, :], out=out)
    return out


def blend_(out: torch.Tensor, prev_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``out += weight * (prev_out - out)`` in place, ``weight`` an LR map (N1hw) resampled to the
    output's size by nearest neighbour (each LR pixel's weight over its block of output pixels)."""
    return out.lerp_(prev_out, F.interpolate(weight, size=out.shape[-2:], mode="nearest"))


class Stabiliser:
    """One camera's stabiliser: call it on each (LR, output) pair in decode order."""

    def __init__(self, settings: StabiliserSettings | None = None):
        self.settings = settings or StabiliserSettings()
        self._prev_lr: torch.Tensor | None = None
        self._prev_out: torch.Tensor | None = None
        self._key: tuple | None = None
        self._reset = False
        self._last_lr: torch.Tensor | None = None  # the previous input as it came (noise level)
        self._held: torch.Tensor | None = None  # LR pixels the previous frame held fully still
        self.noise: float | None = None  # the camera's noise level (levels), once measured
        self.resets = 0  # how many times the state was dropped (for tests and metrics)

    def reset(self) -> None:
        """Forget the previous frame (thread-safe: takes effect on the next frame)."""
        self._reset = True

    def __call__(self, lr: torch.Tensor, out: torch.Tensor, key: tuple = ()) -> torch.Tensor:
        """Stabilise ``out`` (1CHW, the network's output for ``lr``) in place and return it.
        ``key`` names what made it (model, alpha, output size): a new key starts afresh."""
        s = self.settings
        ref_lr, prev_out, raw, held = self._prev_lr, self._prev_out, lr, None
        fresh = (self._reset or ref_lr is None or key != self._key or ref_lr.shape != lr.shape
                 or prev_out.shape != out.shape)
        if not fresh:
            weight = stillness(lr, ref_lr, *self.thresholds(lr), s.window)
            if float((weight < 0.5).float().mean()) > s.cut:  # a scene cut: nothing to carry over
                fresh = True
            else:
                held = weight >= 1.0
                weight.mul_(s.strength)
                blend_(out, prev_out, weight)
                lr = torch.lerp(lr, ref_lr, weight)  # the input the blended output stands for
        if fresh and ref_lr is not None:
            self.resets += 1
        self._reset = False
        self._prev_lr, self._prev_out, self._key = lr, out, key
        self._last_lr, self._held = raw, held
        return out

    def thresholds(self, lr: torch.Tensor) -> tuple[float, float]:
        """This frame's (still, moving): the settings' raised for the camera's noise level, which
        ``lr`` updates (against the previous input, on the pixels it held still)."""
        s, last = self.settings, self._last_lr
        if s.noise <= 0:
            return s.still, s.moving
        if last is not None and last.shape == lr.shape:
            level = frame_noise(lr, last, self._held)
            if level is not None:
                self.noise = level if self.noise is None else self.noise + NOISE_RATE * (level - self.noise)
        return noise_thresholds(s.still, s.moving, s.noise, self.noise or 0.0)


def stabilise_batch(stabilisers: list[Stabiliser | None], lr: torch.Tensor, out: torch.Tensor,
                    key: tuple, epochs: list[int] | None = None) -> torch.Tensor:
    """Apply each frame's stabiliser (None: leave it) in batch order; frames of one camera in
    one batch are in decode order, so each sees the one before it. ``epochs``: each frame's
    connection number (a reconnect starts afresh)."""
    for i, stab in enumerate(stabilisers):
        if stab is not None:
            stab(lr[i:i + 1], out[i:i + 1], (*key, epochs[i] if epochs else 0))
    return out
