"""Image quality metrics as the super-resolution literature computes them (MATLAB protocol).

* Y channel of ITU-R BT.601 (``rgb2ycbcr``): ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``
  with R, G, B in [0, 255]; for ``uint8`` images MATLAB returns ``uint8``, so Y is rounded.
* ``shave`` pixels cut from every border (the scale factor, by convention).
* PSNR with peak 255; SSIM as Wang et al.'s ``ssim.m``: Gaussian window 11x11, sigma 1.5,
  K1 = 0.01, K2 = 0.03, population statistics, only windows fully inside the image.
* A sharpness figure: mean gradient magnitude of the Y channel relative to the reference
  (1.0 = as much fine detail as the original; bicubic is well below 1).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["rgb_to_y", "psnr_y", "ssim_y", "gradient_energy", "sharpness_y", "shave_border"]

_Y_COEFFS = np.array([65.481, 128.553, 24.966]) / 255.0


def rgb_to_y(img_uint8_hwc: np.ndarray) -> np.ndarray:
    """BT.601 luma in [16, 235] as float64, matching MATLAB ``rgb2ycbcr`` (its first channel).

    ``uint8`` RGB (HWC) or grayscale (HW, treated as R = G = B): the result is rounded to
    integers, as MATLAB's ``uint8`` output is. Float input is taken as [0, 255] and not rounded.
    """
    img = np.asarray(img_uint8_hwc)
    if img.ndim == 2:
        img = img[:, :, None].repeat(3, axis=2)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"rgb_to_y: expected an HxWx3 RGB image, got shape {img.shape}")
    y = 16.0 + img[:, :, :3].astype(np.float64) @ _Y_COEFFS
    if img.dtype == np.uint8:
        y = np.floor(y + 0.5)  # MATLAB's uint8 conversion rounds halves up
    return y


def shave_border(img: np.ndarray, shave: int) -> np.ndarray:
    if shave < 0:
        raise ValueError(f"shave must be >= 0, got {shave}")
    if shave == 0:
        return img
    if img.shape[0] <= 2 * shave or img.shape[1] <= 2 * shave:
        raise ValueError(f"image {img.shape[1]}x{img.shape[0]} is too small to shave {shave} pixels")
    return img[shave:-shave, shave:-shave]


def _pair_y(sr: np.ndarray, hr: np.ndarray, shave: int) -> tuple[np.ndarray, np.ndarray]:
    sr, hr = np.asarray(sr), np.asarray(hr)
    for name, a in (("SR", sr), ("HR", hr)):
        if a.dtype != np.uint8:
            raise ValueError(f"{name} image must be uint8 (quantise before scoring), got {a.dtype}")
    if sr.shape[:2] != hr.shape[:2]:
        raise ValueError(f"SR {sr.shape[1]}x{sr.shape[0]} and HR {hr.shape[1]}x{hr.shape[0]} differ in size")
    return shave_border(rgb_to_y(sr), shave), shave_border(rgb_to_y(hr), shave)


def psnr_y(sr_uint8: np.ndarray, hr_uint8: np.ndarray, shave: int) -> float:
    """PSNR (dB, peak 255) on the Y channel with ``shave`` border pixels removed; ``inf`` if identical."""
    a, b = _pair_y(sr_uint8, hr_uint8, shave)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0 ** 2 / mse)


def ssim_y(sr_uint8: np.ndarray, hr_uint8: np.ndarray, shave: int) -> float:
    """MATLAB-style SSIM on the Y channel (1.0 for identical images)."""
    from skimage.metrics import structural_similarity

    a, b = _pair_y(sr_uint8, hr_uint8, shave)
    if min(a.shape) < 11:
        raise ValueError(f"image {a.shape[1]}x{a.shape[0]} (after shaving) is smaller than the 11x11 SSIM window")
    return float(structural_similarity(a, b, data_range=255.0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, K1=0.01, K2=0.03))


def gradient_energy(y: np.ndarray) -> float:
    """Mean gradient magnitude (central differences) of a single-channel float image."""
    gy, gx = np.gradient(np.asarray(y, dtype=np.float64))
    return float(np.mean(np.hypot(gx, gy)))


def sharpness_y(sr_uint8: np.ndarray, hr_uint8: np.ndarray, shave: int) -> float:
    """Mean Y gradient magnitude of SR relative to HR (1.0 = as detailed as the original)."""
    a, b = _pair_y(sr_uint8, hr_uint8, shave)
    ref = gradient_energy(b)
    return gradient_energy(a) / ref if ref > 0 else math.nan
