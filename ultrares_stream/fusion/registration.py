"""Sub-pixel registration of a frame's patch to a reference crop (OpenCV).

Two steps: a coarse shift by normalised cross-correlation (``cv2.matchTemplate``, the peak
refined to sub-pixel by a parabola through its neighbours), then ``cv2.findTransformECC``
(enhanced correlation coefficient, affine or homography) started from that shift.

Every warp here is a 3x3 matrix that maps *reference-crop* pixel coordinates to *patch*
pixel coordinates (pixel centres at integers), the convention of ``findTransformECC``:
``patch(W(x)) ~ reference(x)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MOTIONS = {"translation": cv2.MOTION_TRANSLATION, "affine": cv2.MOTION_AFFINE,
           "homography": cv2.MOTION_HOMOGRAPHY}
_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 60, 1e-5)


@dataclass(frozen=True)
class Registration:
    """Where a reference crop lies in a patch: ``warp`` (3x3, reference -> patch pixels), the
    RMS grey-level difference after warping (``residual``, 0-255), ECC's correlation (1 = same)."""

    warp: np.ndarray
    residual: float
    correlation: float

    @property
    def shift(self) -> tuple[float, float]:
        """Where the reference crop's origin lands in the patch (x, y)."""
        return float(self.warp[0, 2]), float(self.warp[1, 2])


def grey(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB (or already grey) image, float32 0-255."""
    if img.ndim == 2:
        return img.astype(np.float32)
    return (img[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))


def _parabola(lo: float, mid: float, hi: float) -> float:
    denom = lo - 2.0 * mid + hi
    return 0.0 if abs(denom) < 1e-9 else float(np.clip(0.5 * (lo - hi) / denom, -0.5, 0.5))


def coarse_shift(ref: np.ndarray, patch: np.ndarray) -> tuple[float, float, float]:
    """(x, y, score): the sub-pixel position of ``ref``'s origin in the larger ``patch`` (grey
    float32 arrays) where their normalised cross-correlation peaks, and that peak (-1..1)."""
    ncc = cv2.matchTemplate(patch, ref, cv2.TM_CCOEFF_NORMED)
    _, score, _, (x, y) = cv2.minMaxLoc(ncc)
    dx = _parabola(ncc[y, x - 1], ncc[y, x], ncc[y, x + 1]) if 0 < x < ncc.shape[1] - 1 else 0.0
    dy = _parabola(ncc[y - 1, x], ncc[y, x], ncc[y + 1, x]) if 0 < y < ncc.shape[0] - 1 else 0.0
    return x + dx, y + dy, float(score)


def translation(x: float, y: float) -> np.ndarray:
    """The 3x3 warp of a pure shift."""
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])


def refine(ref: np.ndarray, patch: np.ndarray, init: np.ndarray, motion: str = "affine") -> tuple[np.ndarray, float]:
    """ECC refinement of ``init`` (3x3) on grey float32 images: (warp 3x3, correlation).
    Falls back to ``init`` (correlation nan) where ECC does not converge."""
    kind = MOTIONS[motion]
    start = (init if kind == cv2.MOTION_HOMOGRAPHY else init[:2]).astype(np.float32)
    try:
        cc, warp = cv2.findTransformECC(ref, patch, start, kind, _CRITERIA, None, 1)
    except cv2.error:
        return init, float("nan")
    out = np.eye(3)
    out[: warp.shape[0]] = warp
    return out, float(cc)


def warp_to_reference(patch: np.ndarray, warp: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``patch`` resampled (bilinear) onto the reference crop's ``shape`` (h, w) pixels."""
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpPerspective(patch, warp, (shape[1], shape[0]), flags=flags, borderMode=cv2.BORDER_REPLICATE)


def residual(ref: np.ndarray, patch: np.ndarray, warp: np.ndarray) -> float:
    """RMS difference (grey levels) between ``ref`` and the warped ``patch``, a 1-pixel border left out."""
    diff = warp_to_reference(patch, warp, ref.shape[:2]) - ref
    inner = diff[1:-1, 1:-1] if min(diff.shape[:2]) > 4 else diff
    return float(np.sqrt(np.mean(inner * inner)))


def register(ref: np.ndarray, patch: np.ndarray, motion: str = "affine") -> Registration:
    """Register the reference crop ``ref`` inside ``patch`` (RGB or grey, ``patch`` at least as
    large): NCC for the coarse shift, then ECC with ``motion`` (translation, affine, homography)."""
    r, p = grey(ref), grey(patch)
    if p.shape[0] < r.shape[0] or p.shape[1] < r.shape[1]:
        raise ValueError(f"patch {p.shape[1]}x{p.shape[0]} is smaller than the reference {r.shape[1]}x{r.shape[0]}")
    x, y, _ = coarse_shift(r, p)
    warp, cc = refine(r, p, translation(x, y), motion)
    if not np.isfinite(cc) or _moved_too_far(warp, x, y):
        warp, cc = refine(r, p, translation(x, y), "translation")
    return Registration(warp, residual(r, p, warp), cc)


def _moved_too_far(warp: np.ndarray, x: float, y: float, limit: float = 1.5) -> bool:
    """ECC ran away from the NCC shift, or the warp is no longer a near-similarity."""
    lin = warp[:2, :2]
    return (abs(warp[0, 2] - x) > limit or abs(warp[1, 2] - y) > limit
            or not 0.8 < abs(np.linalg.det(lin)) < 1.25 or abs(warp[2, :2]).max() > 0.01)
