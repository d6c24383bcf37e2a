"""Multi-frame fusion of registered low-resolution patches onto the x``scale`` grid of a reference crop.

The forward model of one observed LR pixel: the HR scene blurred by the camera's point-spread
function (here the x1/scale MATLAB-bicubic kernel, the down-scale the evaluation uses), sampled
at the pixel's centre mapped into the reference's HR grid by its registration. All observed
pixels of all frames together make one sparse sampling matrix ``S`` (bilinear weights), so

* **shift-and-add** is ``S^T y / S^T 1``: every LR pixel splatted to its registered HR position,
  normalised (normalised convolution fills the gaps);
* **robust fusion** minimises ``sum_k w_k sum_i rho(S_i B x - y_i) + lam TV(x)`` by preconditioned
  gradient steps with Nesterov momentum (accelerated iterative back-projection): Huber ``rho`` per pixel against the running estimate,
  so pixels the codec or the registration got wrong pull less, and per-frame weights ``w_k``
  from each frame's own residual level and quality (registration residual, I-frame / low QP);
* a mild unsharp mask at the end.

Colour is fused jointly: the three channels share ``S``.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import sparse

from ..quality.matlab_resize import cubic


@dataclass(frozen=True)
class Observation:
    """One frame's LR ``patch`` (HxWx3), its ``warp`` (3x3, reference-crop -> patch pixels) and a
    prior ``weight`` (registration agreement x frame quality; 0 drops the frame)."""

    patch: np.ndarray
    warp: np.ndarray
    weight: float = 1.0


@dataclass(frozen=True)
class FuseSettings:
    """Robust fusion's knobs: iterations, Huber threshold (grey levels), TV weight, step, unsharp
    amount, Nesterov ``momentum`` on the gradient steps (FISTA's schedule: the 64-step solution in
    32 steps), and whether frames are re-weighted by their residual level (``frame_weighting``)."""

    iterations: int = 32
    huber: float = 10.0
    tv: float = 0.02
    step: float = 1.0
    unsharp: float = 0.3
    momentum: bool = True
    frame_weighting: bool = True


def hr_positions(obs: Observation, ref_shape: tuple[int, int], scale: int, pad: float = 2.0):
    """(x, y, values): the HR-grid positions of ``obs``'s LR pixel centres that land within ``pad``
    LR pixels of the reference crop (``ref_shape`` = LR (h, w)), and their RGB values (float)."""
    ph, pw = obs.patch.shape[:2]
    u, v = np.meshgrid(np.arange(pw, dtype=np.float64), np.arange(ph, dtype=np.float64))
    pts = np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    ref = np.linalg.inv(obs.warp) @ pts
    rx, ry = ref[0] / ref[2], ref[1] / ref[2]
    keep = (rx > -pad) & (ry > -pad) & (rx < ref_shape[1] - 1 + pad) & (ry < ref_shape[0] - 1 + pad)
    values = obs.patch.reshape(-1, obs.patch.shape[2]).astype(np.float64)[keep]
    return (rx[keep] + 0.5) * scale - 0.5, (ry[keep] + 0.5) * scale - 0.5, values


def bilinear_matrix(x: np.ndarray, y: np.ndarray, shape: tuple[int, int]) -> sparse.csr_matrix:
    """Sparse ``(len(x), h * w)`` matrix sampling an ``h x w`` image bilinearly at (x, y)
    (positions clamped to the image)."""
    h, w = shape
    x, y = np.clip(x, 0, w - 1.000001), np.clip(y, 0, h - 1.000001)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    rows = np.repeat(np.arange(len(x)), 4)
    cols = np.stack([y0 * w + x0, y0 * w + x0 + 1, (y0 + 1) * w + x0, (y0 + 1) * w + x0 + 1], 1).ravel()
    vals = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], 1).ravel().astype(np.float32)
    return sparse.csr_matrix((vals, (rows, cols)), shape=(len(x), h * w))


def psf_kernel(scale: int) -> np.ndarray:
    """The 1-D point-spread function of a x1/``scale`` MATLAB-bicubic down-scale on the HR grid."""
    taps = np.arange(-2 * scale + 1, 2 * scale, dtype=np.float64)
    k = cubic(taps / scale)
    return (k / k.sum()).astype(np.float32)


def blur(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable convolution with ``kernel`` (mirrored borders); HxWxC float."""
    out = cv2.sepFilter2D(img.astype(np.float32), -1, kernel, kernel, borderType=cv2.BORDER_REFLECT)
    return out.reshape(img.shape)


def tv_gradient(x: np.ndarray, eps: float = 2.0) -> np.ndarray:
    """Gradient of the smoothed total variation ``sum sqrt(|grad x|^2 + eps^2)`` (HxWxC)."""
    gx, gy = np.zeros_like(x), np.zeros_like(x)
    gx[:, :-1] = x[:, 1:] - x[:, :-1]
    gy[:-1] = x[1:] - x[:-1]
    norm = np.sqrt(gx * gx + gy * gy + eps * eps)
    gx /= norm
    gy /= norm
    div = gx + gy
    div[:, 1:] -= gx[:, :-1]
    div[1:] -= gy[:-1]
    return -div


def unsharp(img: np.ndarray, amount: float, sigma: float = 1.5) -> np.ndarray:
    """``img + amount * (img - gaussian(img))``."""
    if amount <= 0:
        return img
    soft = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return img + amount * (img - soft.reshape(img.shape))


@dataclass
class Problem:
    """All frames' observed LR pixels as one linear problem on the HR grid of ``shape``:
    ``values`` (n x 3), sampling matrix ``S`` (n x h*w), per-pixel frame ``index``, frame weights."""

    shape: tuple[int, int]
    S: sparse.csr_matrix
    values: np.ndarray
    index: np.ndarray
    frame_weights: np.ndarray


def build_problem(observations: list[Observation], ref_shape: tuple[int, int], scale: int) -> Problem:
    """The :class:`Problem` of ``observations`` on the x``scale`` grid of the LR ``ref_shape`` crop."""
    xs, ys, vals, idx = [], [], [], []
    for k, obs in enumerate(observations):
        if obs.weight <= 0:
            continue
        x, y, v = hr_positions(obs, ref_shape, scale)
        xs.append(x), ys.append(y), vals.append(v), idx.append(np.full(len(x), k))
    if not xs:
        raise ValueError("no frame to fuse")
    shape = (ref_shape[0] * scale, ref_shape[1] * scale)
    x, y = np.concatenate(xs), np.concatenate(ys)
    weights = np.array([max(0.0, o.weight) for o in observations])
    return Problem(shape, bilinear_matrix(x, y, shape), np.concatenate(vals).astype(np.float32), np.concatenate(idx),
                   weights)


def shift_and_add(problem: Problem, sigma: float = 1.0) -> np.ndarray:
    """Normalised splat of every observed pixel onto the HR grid (Gaussian normalised convolution
    of ``sigma`` HR pixels fills the gaps): an estimate of the *blurred* HR scene, HxWx3 float."""
    h, w = problem.shape
    wt = problem.frame_weights[problem.index]
    num = (problem.S.T @ (problem.values * wt[:, None])).reshape(h, w, -1)
    den = (problem.S.T @ wt).reshape(h, w, 1)
    num = cv2.GaussianBlur(num.astype(np.float32), (0, 0), sigma).reshape(num.shape)
    den = cv2.GaussianBlur(den.astype(np.float32), (0, 0), sigma).reshape(den.shape)
    return num / np.maximum(den, 1e-6)


def robust_fuse(problem: Problem, scale: int, settings: FuseSettings = FuseSettings(),
                start: np.ndarray | None = None) -> np.ndarray:
    """Robust multi-frame super-resolution (module docstring): HxWx3 float, 0-255 range, not clipped."""
    h, w = problem.shape
    kernel = psf_kernel(scale)
    x = (shift_and_add(problem) if start is None else start).astype(np.float32)
    y, t = x, 1.0  # Nesterov's extrapolated point and step counter (FISTA's schedule)
    frame_w = problem.frame_weights.copy()
    for it in range(settings.iterations):
        r = problem.S @ blur(y, kernel).reshape(h * w, -1) - problem.values
        mag = np.abs(r).mean(axis=1)
        if settings.frame_weighting and it % 8 == 0:
            frame_w = problem.frame_weights * frame_noise_weights(mag, problem.index, len(frame_w))
        wt = (frame_w[problem.index] * np.minimum(1.0, settings.huber / np.maximum(mag, 1e-6))).astype(np.float32)
        grad = blur((problem.S.T @ (r * wt[:, None])).reshape(h, w, -1), kernel)
        precond = blur((problem.S.T @ wt).reshape(h, w, 1), kernel) + 1e-3
        step = y - settings.step * grad / precond - np.float32(settings.tv * settings.huber) * tv_gradient(y)
        if settings.momentum:
            t_next = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
            y = step + np.float32((t - 1.0) / t_next) * (step - x)
            t = t_next
        else:
            y = step
        x = step
    return unsharp(x, settings.unsharp)


def frame_noise_weights(mag: np.ndarray, index: np.ndarray, frames: int) -> np.ndarray:
    """Per-frame weights ``1 / max(s_k, floor)^2`` normalised to a mean of 1, with ``s_k`` the
    median absolute residual of frame ``k``'s pixels: frames the codec or the registration got
    wrong (ghosts, blocking, a smeared P-frame) count less."""
    s = np.ones(frames)
    for k in range(frames):
        mine = mag[index == k]
        if mine.size:
            s[k] = np.median(mine)
    floor = max(1.0, float(np.median(s)) * 0.5)
    out = 1.0 / np.maximum(s, floor) ** 2
    return out / out[out > 0].mean()
