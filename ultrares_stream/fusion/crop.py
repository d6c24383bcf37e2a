"""Fuse a marked box over a run of frames: track, weigh and reject frames, fuse, judge.

:func:`fuse_box` is what ``ultrares zoom`` and the evaluation call: frames (RGB uint8, LR),
their timestamps, the reference frame's index and the box in its pixels in; a
:class:`~.evidence.FusedCrop` out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import learned
from .codec import QuantiserMap, box_quantiser
from .evidence import FrameUse, FusedCrop, judge
from .fuse import FuseSettings, Observation, build_problem, robust_fuse
from .tracking import Tracked, track

METHOD = "NCC + ECC affine registration, robust shift-and-add with Huber back-projection, TV, unsharp"
LEARNED = "; learned refinement (ultrares-fusion-x4)"


@dataclass(frozen=True)
class FusionSettings:
    """How a box is fused: output ``scale``, the margin fused around the box, the tracker's
    ``search`` radius and patch ``pad`` (LR pixels), when a frame is rejected (ECC correlation
    under ``min_correlation``, residual over ``max_residual_ratio`` x the median), the extra
    weight of I-frames, the robust fusion's own settings, and whether the learned refinement
    (:mod:`.learned`) corrects the fusion where its weights are installed."""

    scale: int = 4
    margin: int = 8
    search: int = 24
    pad: int = 3
    min_correlation: float = 0.7
    max_residual_ratio: float = 3.0
    keyframe_weight: float = 1.0
    fuse: FuseSettings = field(default_factory=FuseSettings)
    learned: bool = True


def frame_uses(tracked: list[Tracked], times: list[float], quality: list[float],
               settings: FusionSettings) -> list[FrameUse]:
    """Each frame's weight, 0 with a reason where it is lost or disagrees with the reference."""
    residuals = [t.registration.residual for t in tracked if t.registration is not None and t.registration.residual > 0]
    median = float(np.median(residuals)) if residuals else 0.0
    out = []
    for t, when, q in zip(tracked, times, quality):
        reg = t.registration
        if t.patch is None or reg is None:
            out.append(FrameUse(when, float("nan"), float("nan"), 0.0, "lost (out of the frame)"))
        elif not reg.correlation >= settings.min_correlation:
            out.append(FrameUse(when, reg.residual, reg.correlation, 0.0, f"disagrees (correlation {reg.correlation:.2f})"))
        elif reg.residual > max(2.0, settings.max_residual_ratio * median):
            out.append(FrameUse(when, reg.residual, reg.correlation, 0.0, f"residual {reg.residual:.1f}"))
        else:
            out.append(FrameUse(when, reg.residual, reg.correlation, q))
    return out


def fuse_tracked(ref_shape: tuple[int, int], tracked: list[Tracked], uses: list[FrameUse],
                 settings: FusionSettings) -> np.ndarray:
    """The fused x``scale`` picture of the whole reference crop, HxWx3 float (not clipped)."""
    obs = [Observation(t.patch, t.registration.warp, u.weight) for t, u in zip(tracked, uses) if u.weight > 0]
    return robust_fuse(build_problem(obs, ref_shape, settings.scale), settings.scale, settings.fuse)


def frame_box(t: Tracked, box: tuple[int, int, int, int], crop: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Where a tracked frame shows ``box`` (marked in the reference, whose crop is ``crop``), to the pixel."""
    shift = t.registration.shift
    return (int(round(t.origin[0] + shift[0])) + box[0] - crop[0], int(round(t.origin[1] + shift[1])) + box[1] - crop[1],
            box[2], box[3])


def fuse_box(frames: list[np.ndarray], times: list[float], ref_index: int, box: tuple[int, int, int, int],
             settings: FusionSettings = FusionSettings(), keyframes: list[bool] | None = None,
             quantisers: list[QuantiserMap | None] | None = None) -> FusedCrop:
    """Fuse ``box`` (x, y, w, h in ``frames[ref_index]``'s pixels) over ``frames``; ``quantisers``:
    each frame's (:mod:`.codec`), for the verdict."""
    keyframes = keyframes or [False] * len(frames)
    ref, (cx, cy, cw, ch), tracked = track(frames, ref_index, box, settings.margin, settings.search, settings.pad)
    quality = [settings.keyframe_weight if key else 1.0 for key in keyframes]
    uses = frame_uses(tracked, times, quality, settings)
    fused = classical = fuse_tracked(ref.shape[:2], tracked, uses, settings)
    refiner, method = learned.refiner() if settings.learned else None, METHOD
    if refiner is not None:
        stack = learned.registered_stack(tracked, learned.stack_order(ref_index, times, uses), fused, settings.scale)
        fused, method = refiner.refine(stack, fused), METHOD + LEARNED
    s = settings.scale
    x0, y0 = (box[0] - cx) * s, (box[1] - cy) * s

    def cut(picture: np.ndarray) -> np.ndarray:
        return np.clip(np.round(picture[y0: y0 + box[3] * s, x0: x0 + box[2] * s]), 0, 255).astype(np.uint8)

    coding = None
    if quantisers:
        coding = box_quantiser([(q, frame_box(t, box, (cx, cy, cw, ch)))
                                for q, t, u in zip(quantisers, tracked, uses) if u.weight > 0])
    verdict, reason = judge(box, uses, coding)
    return FusedCrop(cut(fused), box, (cx, cy, cw, ch), s, method, times[ref_index], uses, verdict, reason, coding,
                     cut(classical) if refiner is not None else None)
