"""Flicker: how much the enhanced video changes from frame to frame where the scene stands still.

Protocol (``ultrares eval --task flicker CLIP...``): ``frames`` consecutive frames from the
held-out second half of each clip are the camera input, upscaled one after another as the live
pipeline would. A pixel is *static* between two frames when no channel of the input changed by
``levels`` or more anywhere in its 3x3 neighbourhood. Flicker is the mean absolute change of the
output's Y (BT.601, 0..255) on static pixels, pooled over the frames; the report divides it by
the flicker of MATLAB bicubic x``scale`` of the same frames (1.0 = as steady as bicubic).

A *noisy* variant of a clip (``--noise SIGMA``) stands for a fixed camera with a real sensor:
sensor noise (Gaussian, its standard deviation ``SIGMA`` levels at mid-grey and growing with the
square root of the signal, as photon noise does; one seeded generator) is added to the clip's
frames, which are then encoded as one H.264 stream at a camera bitrate
(:func:`.datasets.h264_roundtrip`, ``NOISY_CONTEXT`` frames before the scored ones so its rate
control has settled) and decoded. Noise changes nearly every input pixel, so the static pixels
are taken from the clean clip (the scene stood still there): flicker then counts what the output
does with the noise, and bicubic passes it on.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.ndimage import maximum_filter

from .scores import rgb_to_y

STATIC_LEVELS = 2
#: frames encoded before the scored ones in a noisy variant (rate control settled, as in the traffic protocol)
NOISY_CONTEXT = 100
#: the noisy variant's sensor noise generator seed
NOISE_SEED = 0
#: the shaking variant's camera path seed
SHAKE_SEED = 1


def static_mask(prev_lr: np.ndarray, lr: np.ndarray, levels: int = STATIC_LEVELS) -> np.ndarray:
    """HxW bool: no channel changed by ``levels`` or more in the pixel's 3x3 neighbourhood."""
    change = np.abs(lr.astype(np.int16) - prev_lr.astype(np.int16)).max(axis=2)
    return maximum_filter(change, size=3, mode="nearest") < levels


@dataclass
class FlickerMeter:
    """Accumulates one method's output changes on static pixels, frame after frame. With a
    shaking camera each output is first moved back onto the scene (``offset`` of :meth:`add`) and
    only the scene inside ``margin`` output pixels of the edge is scored."""

    scale: int
    levels: int = STATIC_LEVELS
    margin: int = 0
    total: float = 0.0
    pixels: int = 0
    _prev: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def add(self, lr: np.ndarray, sr: np.ndarray, offset: tuple[int, int] = (0, 0)) -> None:
        """One output ``sr`` of input ``lr`` (or of a noisy copy of ``lr``: ``lr`` is the scene
        whose stillness decides the static pixels), the camera pointing ``offset`` output pixels
        (y, x) away from the scene's frame (:func:`shake_path`)."""
        y = rgb_to_y(sr)
        m, (oy, ox) = self.margin, offset
        h, w = y.shape
        y = y[m - oy: h - m - oy, m - ox: w - m - ox]  # the scene's pixels, wherever the camera pointed
        if self._prev is not None:
            prev_lr, prev_y = self._prev
            mask = np.kron(static_mask(prev_lr, lr, self.levels), np.ones((self.scale, self.scale), bool))
            mask = mask[m: h - m, m: w - m][: y.shape[0], : y.shape[1]]
            self.total += float(np.abs(y - prev_y)[mask].sum())
            self.pixels += int(mask.sum())
        self._prev = (lr, y)

    @property
    def value(self) -> float:
        """Mean |change| of Y on static pixels (nan when no pixel was static)."""
        return self.total / self.pixels if self.pixels else float("nan")


def clip_frames(path: Path, frames: int, start_fraction: float = 0.5, before: int = 0) -> list[np.ndarray]:
    """``frames`` consecutive RGB frames of a clip, from ``start_fraction`` of its length (or as
    many as there are from there), preceded by up to ``before`` frames."""
    import av

    from .datasets import frame_count

    start = int(frame_count(path) * start_fraction)
    first = max(0, start - before)
    out = []
    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i >= first:
                out.append(frame.to_ndarray(format="rgb24"))
                if len(out) == frames + start - first:
                    break
    return out


def sensor_noise(frames: list[np.ndarray], sigma: float, seed: int = NOISE_SEED) -> list[np.ndarray]:
    """``frames`` with sensor noise: Gaussian, standard deviation ``sigma`` levels at mid-grey
    (128), ``sigma * sqrt((value + 32) / 160)`` elsewhere; rounded and clipped to uint8."""
    rng = np.random.default_rng(seed)
    out = []
    for f in frames:
        x = f.astype(np.float32)
        noise = rng.standard_normal(x.shape, dtype=np.float32) * (sigma * np.sqrt((x + 32.0) / 160.0))
        out.append(np.clip(np.rint(x + noise), 0, 255).astype(np.uint8))
    return out


def shake_path(frames: int, amplitude: float, scale: int, seed: int = SHAKE_SEED) -> list[tuple[int, int]]:
    """Where a shaking camera points in each frame (output pixels, y and x; ``scale`` per input
    pixel): a random walk whose steps and extent are up to ``amplitude`` input pixels."""
    rng, reach = np.random.default_rng(seed), int(round(amplitude * scale))
    at, out = np.zeros(2, int), []
    for _ in range(frames):
        at = np.clip(at + rng.integers(-reach, reach + 1, 2), -reach, reach)
        out.append((int(at[0]), int(at[1])))
    return out


def shaken(frames: list[np.ndarray], offsets: list[tuple[int, int]], scale: int) -> list[np.ndarray]:
    """``frames`` as the camera of ``offsets`` sees them: each moved by minus its offset (in input
    pixels, cubic convolution); what comes in at an edge wraps round (scored outside the margin)."""
    import torch

    from ..temporal import shifted

    out = []
    for f, (oy, ox) in zip(frames, offsets):
        x = torch.from_numpy(f).permute(2, 0, 1)[None].float()
        out.append(shifted(x, -oy / scale, -ox / scale)[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy())
    return out


def noisy_clip_frames(path: Path, frames: int, sigma: float, bitrate: str = "auto",
                      shake: list[tuple[int, int]] | None = None, scale: int = 4) -> tuple[list, list]:
    """(scene, camera): ``frames`` clean frames of the clip (as :func:`clip_frames`) and the same
    frames as a noisy camera delivers them (:func:`sensor_noise`, then one H.264 stream at
    ``bitrate`` with ``NOISY_CONTEXT`` frames before them, decoded); ``shake``: the camera's
    offsets of the scored frames (:func:`shake_path`, output pixels at ``scale``; still before them)."""
    from .datasets import h264_roundtrip, parse_bitrate

    run = clip_frames(path, frames, before=NOISY_CONTEXT)
    if shake is not None:
        run = run[:-frames] + shaken(run[-frames:], shake, scale)
    h, w = run[0].shape[:2]
    camera = h264_roundtrip(sensor_noise(run, sigma), parse_bitrate(bitrate, w, h))
    scene = clip_frames(path, frames) if shake is not None else run[-frames:]
    return scene, camera[-frames:]


def measure(frames: Iterable[np.ndarray], methods: dict[str, Callable[[np.ndarray], np.ndarray]],
            scale: int, levels: int = STATIC_LEVELS, scene: list[np.ndarray] | None = None,
            shake: list[tuple[int, int]] | None = None) -> dict[str, float]:
    """Flicker of every method (LR uint8 -> SR uint8, called on the frames in order) on ``frames``;
    ``scene``: the clean frames that decide which pixels are static (default ``frames``);
    ``shake``: where the camera pointed in each frame (:func:`shake_path`)."""
    margin = max((max(abs(a), abs(b)) for a, b in shake), default=0) + 3 * scale if shake else 0
    meters = {name: FlickerMeter(scale, levels, margin) for name in methods}
    for k, (lr, still) in enumerate(zip(frames, scene or frames)):
        for name, fn in methods.items():
            meters[name].add(still, fn(lr), shake[k] if shake else (0, 0))
    return {name: m.value for name, m in meters.items()}


def upscaler_methods(upscaler, label: str, settings) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """``{label: plain, label + " stabilised": stabilised}`` for one upscaler, and, when
    ``settings`` follow the noise level, ``label + " stabilised, fixed thresholds"`` (``noise=0``)
    and, when they register camera shake, ``label + " stabilised, no shake registration"``
    (``shake=0``) beside it; the stabilised ones reuse the network output the plain one just made (call them in
    that order on each frame)."""
    import dataclasses

    import torch

    from ..temporal import Stabiliser
    from .evaluate import to_image, to_input

    last: dict[str, torch.Tensor] = {}

    def plain(lr: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = to_input(lr, upscaler.device)
            last["lr"], last["out"] = x, upscaler.upscale(x).float()
            return to_image(last["out"])

    def stabilised(stab: Stabiliser, copy: bool) -> Callable[[np.ndarray], np.ndarray]:
        def run(lr: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return to_image(stab(last["lr"], last["out"].clone() if copy else last["out"]))
        return run

    methods = {label: plain}
    if settings.noise > 0:
        methods[f"{label} stabilised, fixed thresholds"] = stabilised(
            Stabiliser(dataclasses.replace(settings, noise=0.0)), copy=True)
    if settings.shake > 0:
        methods[f"{label} stabilised, no shake registration"] = stabilised(
            Stabiliser(dataclasses.replace(settings, shake=0.0)), copy=True)
    methods[f"{label} stabilised"] = stabilised(Stabiliser(settings), copy=False)
    return methods
