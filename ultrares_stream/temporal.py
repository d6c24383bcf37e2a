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

A camera that shakes moves every pixel: when more pixels move than usual, the whole picture's
shift since the reference is measured (phase correlation, refined by Gauss-Newton to a quarter
of an LR pixel) and the reference and the held output are moved by it before the still pixels
are found (:func:`camera_shift`; ``shake`` LR pixels at most).

Everything stays on the inference device (the shake check reads a few numbers back); the
per-camera state is the reference LR frame and the last output (a reference to the tensor, not
a copy). It resets on a scene cut (most of the frame changed), on a size, model or alpha change
and when the camera reconnects (:meth:`reset`).
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
    in proportion; 0 keeps the thresholds fixed. ``shake``: the largest camera shake (LR pixels)
    registered away before the still pixels are found; 0 turns registration off."""

    still: float = 2.0
    moving: float = 4.0
    window: int = 3
    strength: float = 1.0
    cut: float = 0.5
    noise: float = 2.0
    shake: float = 2.0


#: share of moving LR pixels from which a frame is checked for camera shake (and 1.5x the usual
#: share plus 0.02; about 2.5 ms at 320x240: at twice the usual share plus 0.05 busy traffic trips
#: it about half as often, but shaking cameras flickered 0.82-1.07x bicubic instead of 0.76-0.99x)
SHAKE_CHECK = 0.05
#: smallest shift (LR pixels) taken as the camera's: moving traffic biases the estimate of a
#: still camera by a quarter of a pixel (motorway-overpass), and smaller shakes are left to the
#: thresholds
SHAKE_MIN = 0.5
#: weight of each frame in the camera's running share of moving pixels
SHARE_RATE = 0.05
#: weakest phase-correlation peak (0-1) taken as the camera's own motion
SHAKE_PEAK = 0.1
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


def camera_shift(lr: torch.Tensor, ref_lr: torch.Tensor, scale: int, limit: float) -> tuple[int, int] | None:
    """How far the whole picture moved from ``ref_lr`` to ``lr`` (1CHW), in output pixels (``scale``
    per LR pixel) as (dy, dx), by phase correlation of their mean channel (Hann-windowed), the
    peak refined by a parabola and then by :func:`refine_shift`; None where no peak stands out
    (``SHAKE_PEAK``) or it lies beyond ``limit`` LR pixels."""
    a, b = lr.mean(1)[0].float(), ref_lr.mean(1)[0].float()
    h, w = a.shape
    window = torch.outer(torch.hann_window(h, device=a.device), torch.hann_window(w, device=a.device))
    fa, fb = torch.fft.rfft2((a - a.mean()) * window), torch.fft.rfft2((b - b.mean()) * window)
    cross = fa * fb.conj()
    corr = torch.fft.irfft2(cross / cross.abs().clamp_min(1e-12), s=(h, w))
    peak = int(corr.argmax())
    py, px = divmod(peak, w)
    top = float(corr[py, px])
    if top < SHAKE_PEAK:
        return None

    def refine(lo: float, mid: float, hi: float) -> float:
        den = lo - 2 * mid + hi
        return 0.0 if den >= 0 else max(-0.5, min(0.5, 0.5 * (lo - hi) / den))

    dy = (py + h // 2) % h - h // 2 + refine(float(corr[py - 1, px]), top, float(corr[(py + 1) % h, px]))
    dx = (px + w // 2) % w - w // 2 + refine(float(corr[py, px - 1]), top, float(corr[py, (px + 1) % w]))
    if max(abs(dy), abs(dx)) > limit:
        return None
    dy, dx = refine_shift(a, b, dy, dx)
    return round(dy * scale), round(dx * scale)


def refine_shift(a: torch.Tensor, b: torch.Tensor, dy: float, dx: float, steps: int = 2) -> tuple[float, float]:
    """(dy, dx) refined by Gauss-Newton (Lucas-Kanade) steps: the shift of ``b`` that best matches
    ``a`` (HW), inside a border that the shift cannot reach."""
    m = int(max(abs(dy), abs(dx))) + 3
    target = a[m:-m, m:-m]
    for _ in range(steps):
        moved = shifted(b[None, None], dy, dx)[0, 0]
        gy, gx = torch.gradient(moved)
        gy, gx, r = gy[m:-m, m:-m], gx[m:-m, m:-m], target - moved[m:-m, m:-m]
        gram = torch.tensor([[float((gy * gy).sum()), float((gy * gx).sum())],
                             [float((gy * gx).sum()), float((gx * gx).sum())]], dtype=torch.float64)
        rhs = torch.tensor([float((gy * r).sum()), float((gx * r).sum())], dtype=torch.float64)
        if torch.linalg.det(gram).abs() < 1e-9:
            break
        step = torch.linalg.solve(gram, rhs)
        # content moved by d sits at x - d: a positive gradient step means the shift is smaller
        dy, dx = dy - float(step[0]), dx - float(step[1])
    return dy, dx


def shifted(x: torch.Tensor, dy: float, dx: float) -> torch.Tensor:
    """``x`` (NCHW) with its content moved by (dy, dx) pixels, fractions by cubic convolution
    (Keys, a = -0.5, one axis after the other); what moves in at an edge wraps round (callers
    give it no weight)."""
    return _shift_axis(_shift_axis(x, dy, -2), dx, -1)


def _keys(t: float) -> float:
    t = abs(t)
    if t <= 1:
        return 1.5 * t ** 3 - 2.5 * t ** 2 + 1
    return -0.5 * t ** 3 + 2.5 * t ** 2 - 4 * t + 2 if t < 2 else 0.0


def _shift_axis(x: torch.Tensor, d: float, dim: int) -> torch.Tensor:
    n = int(d // 1)
    f = d - n
    if not f:
        return torch.roll(x, n, dim) if n else x
    u = 1.0 - f  # the sample lies u past the tap below it
    out = None
    for m, w in ((-1, _keys(u + 1)), (0, _keys(u)), (1, _keys(1 - u)), (2, _keys(2 - u))):
        term = torch.roll(x, n + 1 - m, dim)
        out = term.mul(w) if out is None else out.add_(term, alpha=w)
    return out


def clear_edges_(weight: torch.Tensor, dy: float, dx: float) -> torch.Tensor:
    """Zero ``weight`` (N1HW) in the bands a shift of (dy, dx) pixels brought in from beyond the edge."""
    by, bx = int(abs(dy)) + 3, int(abs(dx)) + 3  # the shift and the cubic's reach
    if dy > 0:
        weight[..., :by, :] = 0
    elif dy < 0:
        weight[..., -by:, :] = 0
    if dx > 0:
        weight[..., :, :bx] = 0
    elif dx < 0:
        weight[..., :, -bx:] = 0
    return weight


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
        self.shakes = 0  # frames whose held state was moved to follow the camera
        self._usual_share = 0.0  # running share of moving LR pixels (after any shake is registered)

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
            level = self.noise
            self._measure_noise(lr, self._last_lr, self._held)
            weight = stillness(lr, ref_lr, *self.thresholds(), s.window)
            share = float((weight < 0.5).float().mean())
            if s.shake > 0 and share > max(SHAKE_CHECK, 1.5 * self._usual_share + 0.02):  # the camera may have moved
                moved = self._follow_shake(lr, ref_lr, prev_out, out.shape[-1] // lr.shape[-1], level, share)
                if moved is not None:
                    ref_lr, prev_out, weight, share = moved
            if share > s.cut:  # a scene cut: nothing to carry over
                fresh = True
            else:
                self._usual_share += SHARE_RATE * (share - self._usual_share)
                held = weight >= 1.0
                weight.mul_(s.strength)
                blend_(out, prev_out, weight)
                lr = torch.lerp(lr, ref_lr, weight)  # the input the blended output stands for
        if fresh and self._prev_lr is not None:
            self.resets += 1
        self._reset = False
        self._prev_lr, self._prev_out, self._key = lr, out, key
        self._last_lr, self._held = raw, held
        return out

    def _follow_shake(self, lr, ref_lr, prev_out, scale: int, level: float | None, share: float):
        """Where the camera shook (:func:`camera_shift`, at least ``SHAKE_MIN`` LR pixels): the
        state moved onto ``lr`` (reference, previous output, stillness, moving share), with the noise
        level measured again against the moved previous input (``level``: the one before this
        frame); None, and the state as it was, where the move leaves no fewer pixels moving than ``share``."""
        shift = camera_shift(lr, ref_lr, scale, self.settings.shake)
        if shift is None or max(abs(shift[0]), abs(shift[1])) < SHAKE_MIN * scale:
            return None
        dy, dx = shift[0] / scale, shift[1] / scale
        kept = self.noise, self._held
        last = self._last_lr
        self.noise = level
        held = torch.roll(self._held, (round(dy), round(dx)), (-2, -1)) if self._held is not None else None
        self._measure_noise(lr, shifted(last, dy, dx) if last is not None and last.shape == lr.shape else None, held)
        ref_lr = shifted(ref_lr, dy, dx)
        weight = clear_edges_(stillness(lr, ref_lr, *self.thresholds(), self.settings.window), dy, dx)
        moved_share = float((weight < 0.5).float().mean())
        if moved_share >= share:
            self.noise, self._held = kept
            return None
        self.shakes += 1
        self._held = held
        return ref_lr, torch.roll(prev_out, shift, (-2, -1)), weight, moved_share

    def thresholds(self) -> tuple[float, float]:
        """This frame's (still, moving): the settings' raised for the camera's noise level."""
        s = self.settings
        if s.noise <= 0:
            return s.still, s.moving
        return noise_thresholds(s.still, s.moving, s.noise, self.noise or 0.0)

    def _measure_noise(self, lr: torch.Tensor, last: torch.Tensor | None, held: torch.Tensor | None) -> None:
        """Update the camera's noise level from ``lr`` against the previous input ``last``, on the
        pixels ``held`` still in the previous frame."""
        if self.settings.noise <= 0 or last is None or last.shape != lr.shape:
            return
        level = frame_noise(lr, last, held)
        if level is not None:
            self.noise = level if self.noise is None else self.noise + NOISE_RATE * (level - self.noise)


def stabilise_batch(stabilisers: list[Stabiliser | None], lr: torch.Tensor, out: torch.Tensor,
                    key: tuple, epochs: list[int] | None = None) -> torch.Tensor:
    """Apply each frame's stabiliser (None: leave it) in batch order; frames of one camera in
    one batch are in decode order, so each sees the one before it. ``epochs``: each frame's
    connection number (a reconnect starts afresh)."""
    for i, stab in enumerate(stabilisers):
        if stab is not None:
            stab(lr[i:i + 1], out[i:i + 1], (*key, epochs[i] if epochs else 0))
    return out
