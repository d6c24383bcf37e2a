"""MATLAB-compatible ``imresize`` (bicubic, antialiased when shrinking).

The super-resolution benchmarks (Set5, Set14, ...) and their published numbers
were made with MATLAB's ``imresize(img, 1/4, 'bicubic')``. OpenCV's and PIL's
bicubic differ from it (kernel parameter, no antialiasing, other border rules),
which moves PSNR by tenths of a dB, so the evaluation protocol needs this one.

MATLAB's algorithm, per dimension:

* the cubic convolution kernel with a = -0.5 (Keys), support 4;
* when shrinking by ``scale`` < 1 the kernel is stretched to ``h(x) = scale * k(scale * x)``
  (support ``4 / scale``): this is the antialiasing;
* output pixel ``x`` (1-based) samples the input at ``u = x / scale + 0.5 * (1 - 1 / scale)``;
* the weights of each output pixel are normalised to sum to 1;
* out-of-range taps are mirrored (symmetric padding, the edge pixel repeated);
* dimensions are resized one after the other, the one with the smaller scale first
  (rows first on a tie); for ``uint8`` images each pass is rounded and saturated to
  ``uint8`` (MATLAB's ``imresizemex`` returns the input's class).

Here each dimension's resampling is a sparse ``out x in`` weight matrix (a few taps per
row), so a resize is two sparse-dense matrix products.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import sparse

__all__ = ["imresize", "cubic", "resize_weights"]


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``bicubic``)."""
    ax = np.abs(np.asarray(x, dtype=np.float64))
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


@lru_cache(maxsize=64)
def resize_weights(in_len: int, out_len: int, scale: float, antialias: bool = True) -> sparse.csr_matrix:
    """The sparse ``(out_len, in_len)`` matrix that resamples one dimension like MATLAB.

    Mirrored taps landing on the same input pixel are summed. ``.toarray()`` for a dense view."""
    kernel_width = 4.0
    if scale < 1 and antialias:
        kernel_width /= scale

        def kernel(d):
            return scale * cubic(scale * d)
    else:
        kernel = cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based input positions
    w = kernel(u[:, None] - idx)
    w /= w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    cols = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    rows = np.repeat(np.arange(out_len), taps)
    keep = w.ravel() != 0
    m = sparse.csr_matrix((w.ravel()[keep], (rows[keep], cols.ravel()[keep])), shape=(out_len, in_len))
    m.sum_duplicates()
    return m


def _output_shape(h: int, w: int, scale: float | None, size: tuple[int, int] | None):
    if (scale is None) == (size is None):
        raise ValueError("imresize: give exactly one of scale or size")
    if size is not None:
        oh, ow = int(size[0]), int(size[1])
        if oh <= 0 or ow <= 0:
            raise ValueError(f"imresize: output size must be positive, got {size}")
        return (oh, ow), (oh / h, ow / w)
    s = float(scale)
    if not s > 0:
        raise ValueError(f"imresize: scale must be positive, got {scale}")
    # MATLAB: ceil(in * scale); the product is rounded first so 1/3 * 300 is 100, not 101.
    return (math.ceil(round(h * s, 9)), math.ceil(round(w * s, 9))), (s, s)


def imresize(img: np.ndarray, scale: float | None = None, size: tuple[int, int] | None = None,
             antialias: bool = True) -> np.ndarray:
    """Resize like MATLAB ``imresize(img, scale)`` / ``imresize(img, [rows cols])``, bicubic.

    ``img``: HW or HWC, ``uint8`` or float. ``size`` is ``(rows, cols)`` = (height, width).
    ``uint8`` in -> ``uint8`` out (rounded and saturated after each pass, as MATLAB does);
    float in -> float64 out, in the input's range (not clipped: bicubic overshoots).
    """
    arr = np.asarray(img)
    if arr.ndim not in (2, 3):
        raise ValueError(f"imresize: expected an HW or HWC image, got shape {arr.shape}")
    is_u8 = arr.dtype == np.uint8
    if not (is_u8 or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"imresize: expected uint8 or float pixels, got {arr.dtype}")
    h, w = arr.shape[:2]
    (oh, ow), (sh, sw) = _output_shape(h, w, scale, size)
    x = arr.astype(np.float64)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[:, :, None]
    order = (0, 1) if sh <= sw else (1, 0)  # smaller scale first; rows first on a tie
    for dim in order:
        m = resize_weights(x.shape[dim], (oh, ow)[dim], (sh, sw)[dim], antialias)
        moved = np.moveaxis(x, dim, 0)  # the resized axis first, the others flattened
        rest = moved.shape[1:]
        x = np.moveaxis((m @ moved.reshape(moved.shape[0], -1)).reshape(m.shape[0], *rest), 0, dim)
        if is_u8:
            x = np.clip(np.floor(x + 0.5), 0, 255)  # MATLAB rounds halves up (away from 0)
    if squeeze:
        x = x[:, :, 0]
    return x.astype(np.uint8) if is_u8 else np.ascontiguousarray(x)
