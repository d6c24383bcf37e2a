"""Training data: HR images from folders and frames from videos, served as random crops; and
(LR, HR) pairs of clips encoded as real H.264 streams, served as aligned crops."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from ..images import IMAGE_SUFFIXES
from ..quality.datasets import (
    HELD_OUT_FROM,
    h264_roundtrip,
    modcrop,
    parse_bitrate,
)
from ..sources import VIDEO_SUFFIXES

log = logging.getLogger(__name__)
#: frames skipped at the start of each training stream: the first ones are intra-coded and
#: rate control starts from a guess. The frames after them are kept, including the ramp-up of
#: a camera that has just (re)started.
SETTLE_FRAMES = 8


def load_images(folder: Path) -> list[np.ndarray]:
    """Every image under ``folder`` as HxWx3 uint8 RGB (grayscale expanded)."""
    out = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            with Image.open(path) as im:
                out.append(np.asarray(im.convert("RGB")))
    return out


def training_frames(path: Path, fraction: float = HELD_OUT_FROM) -> list[np.ndarray]:
    """The frames of the first ``fraction`` of a clip, RGB uint8.

    The rest of each clip is held out: the traffic evaluation
    (:func:`~ultrares_stream.quality.datasets.traffic_video_pairs`) scores frames from there only.
    """
    import av

    from ..quality.datasets import frame_count

    keep = max(1, int(frame_count(path) * fraction))
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == keep:
                break
    return frames


def load_video_frames(path: Path, every: int = 10, fraction: float = HELD_OUT_FROM) -> list[np.ndarray]:
    """Every ``every``-th frame from the first ``fraction`` of a clip."""
    return training_frames(path, fraction)[::every]


def encoded_clip_pairs(path: Path, scale: int, bpp_levels: tuple[float, ...], every: int = 4
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(LR, HR) frame pairs from the first half of a clip, LR as a camera stream delivers it.

    The MATLAB-bicubic x1/``scale`` down-scale of every frame is encoded as one H.264 stream
    per bitrate in ``bpp_levels`` (bits per pixel at 25 fps; the same camera-like encoder as the
    traffic evaluation) and decoded back, so LR frames carry real inter-frame (P-frame)
    artefacts, not just those of single intra-coded images. Every ``every``-th frame after the
    encoder settles is kept; HR arrays are shared between bitrates.
    """
    from ..quality.matlab_resize import imresize

    hr = [modcrop(f, 2 * scale) for f in training_frames(path)]
    if len(hr) <= SETTLE_FRAMES:
        return []
    lr_clean = [imresize(f, scale=1 / scale) for f in hr]
    lh, lw = lr_clean[0].shape[:2]
    keep = range(SETTLE_FRAMES, len(hr), every)
    pairs = []
    for bpp in bpp_levels:
        decoded = h264_roundtrip(lr_clean, parse_bitrate(f"{bpp}bpp", lw, lh))
        pairs += [(decoded[i], hr[i]) for i in keep]
    return pairs


def _augment(rng: np.random.Generator, *patches: np.ndarray) -> list[np.ndarray]:
    """The same random horizontal/vertical flip and transpose applied to every patch."""
    flips = rng.random(3) < 0.5
    out = []
    for patch in patches:
        if flips[0]:
            patch = patch[:, ::-1]
        if flips[1]:
            patch = patch[::-1]
        if flips[2]:
            patch = patch.transpose(1, 0, 2)
        out.append(patch)
    return out


def _to_tensor(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0


class _Sampler:
    """Random state of a sampler, saved in checkpoints so a resumed run draws the same batches."""

    rng: np.random.Generator

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


class CropSampler(_Sampler):
    """Random HR crops (flips and 90-degree rotations) from a pool of images, weighted by area."""

    def __init__(self, images: list[np.ndarray], crop: int, seed: int = 0):
        self.images = [im for im in images if im.shape[0] >= crop and im.shape[1] >= crop]
        if not self.images:
            raise UserError(f"no training image is at least {crop}x{crop} pixels")
        area = np.array([im.shape[0] * im.shape[1] for im in self.images], dtype=np.float64)
        self.weights = area / area.sum()
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, n: int) -> torch.Tensor:
        """NCHW float32 in [0, 1]."""
        c = self.crop
        out = np.empty((n, c, c, 3), np.uint8)
        for i in range(n):
            im = self.images[self.rng.choice(len(self.images), p=self.weights)]
            y = self.rng.integers(0, im.shape[0] - c + 1)
            x = self.rng.integers(0, im.shape[1] - c + 1)
            out[i] = _augment(self.rng, im[y:y + c, x:x + c])[0]
        return _to_tensor(out)



class PairSampler(_Sampler):
    """Aligned random crops of (LR, HR) pairs: LR ``crop // scale`` pixels, HR ``crop``, the same
    flips and rotations on both; pairs weighted by area."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]], crop: int, scale: int, seed: int = 0):
        self.lr_crop = crop // scale
        self.pairs = [(lr, hr) for lr, hr in pairs if lr.shape[0] >= self.lr_crop and lr.shape[1] >= self.lr_crop]
        if not self.pairs:
            raise UserError(f"no video frame pair has an LR frame of at least {self.lr_crop}x{self.lr_crop} pixels")
        area = np.array([lr.shape[0] * lr.shape[1] for lr, _ in self.pairs], dtype=np.float64)
        self.weights = area / area.sum()
        self.crop, self.scale = crop, scale
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(LR, HR) NCHW float32 in [0, 1]."""
        c, s = self.lr_crop, self.scale
        lr_out = np.empty((n, c, c, 3), np.uint8)
        hr_out = np.empty((n, c * s, c * s, 3), np.uint8)
        for i in range(n):
            lr, hr = self.pairs[self.rng.choice(len(self.pairs), p=self.weights)]
            y = self.rng.integers(0, lr.shape[0] - c + 1)
            x = self.rng.integers(0, lr.shape[1] - c + 1)
            lr_out[i], hr_out[i] = _augment(self.rng, lr[y:y + c, x:x + c],
                                            hr[y * s:(y + c) * s, x * s:(x + c) * s])
        return _to_tensor(lr_out), _to_tensor(hr_out)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def clips_in(video_dirs: list[Path]) -> list[Path]:
    clips = []
    for d in video_dirs:
        if not d.is_dir():
            raise UserError(f"training video folder not found: {d}")
        clips += sorted(p for p in d.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    return clips


def build_pairs(video_dirs: list[Path], scale: int, bpp_levels: tuple[float, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = []
    for clip in clips_in(video_dirs):
        found = encoded_clip_pairs(clip, scale, bpp_levels)
        log.info("%d H.264 frame pairs from %s (first half, %s bpp)", len(found), clip.name,
                 "/".join(f"{b:g}" for b in bpp_levels))
        pairs += found
    if not pairs:
        raise UserError("no H.264 frame pairs: give --videos folders with clips longer than "
                        f"{2 * (SETTLE_FRAMES + 1)} frames")
    return pairs


def build_pool(image_dirs: list[Path], video_dirs: list[Path], every: int = 10) -> list[np.ndarray]:
    pool: list[np.ndarray] = []
    for d in image_dirs:
        if not d.is_dir():
            raise UserError(f"training image folder not found: {d}")
        imgs = load_images(d)
        log.info("%d images from %s", len(imgs), d)
        pool += imgs
    for clip in clips_in(video_dirs):
        frames = load_video_frames(clip, every)
        log.info("%d frames from %s (first half of the clip)", len(frames), clip.name)
        pool += frames
    if not pool:
        raise UserError("no training data: give --images and/or --videos folders")
    return pool
