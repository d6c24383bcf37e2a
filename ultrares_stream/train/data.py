"""Training data: HR images from folders and frames from videos, served as random crops."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from ..quality.datasets import HELD_OUT_FROM

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".ts"}


def load_images(folder: Path) -> list[np.ndarray]:
    """Every image under ``folder`` as HxWx3 uint8 RGB (grayscale expanded)."""
    out = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            with Image.open(path) as im:
                out.append(np.asarray(im.convert("RGB")))
    return out


def load_video_frames(path: Path, every: int = 10, fraction: float = HELD_OUT_FROM) -> list[np.ndarray]:
    """Every ``every``-th frame from the first ``fraction`` of a clip.

    The rest of each clip is held out: the traffic evaluation
    (:func:`~ultrares_stream.quality.datasets.traffic_video_pairs`) scores frames from there only.
    """
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    keep = frames[: max(1, int(len(frames) * fraction))]
    return keep[::every]


class CropSampler:
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
            patch = im[y:y + c, x:x + c]
            if self.rng.random() < 0.5:
                patch = patch[:, ::-1]
            if self.rng.random() < 0.5:
                patch = patch[::-1]
            if self.rng.random() < 0.5:
                patch = patch.transpose(1, 0, 2)
            out[i] = patch
        return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255.0

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def build_pool(image_dirs: list[Path], video_dirs: list[Path], every: int = 10) -> list[np.ndarray]:
    pool: list[np.ndarray] = []
    for d in image_dirs:
        if not d.is_dir():
            raise UserError(f"training image folder not found: {d}")
        imgs = load_images(d)
        log.info("%d images from %s", len(imgs), d)
        pool += imgs
    for d in video_dirs:
        if not d.is_dir():
            raise UserError(f"training video folder not found: {d}")
        for clip in sorted(p for p in d.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
            frames = load_video_frames(clip, every)
            log.info("%d frames from %s (first half of the clip)", len(frames), clip.name)
            pool += frames
    if not pool:
        raise UserError("no training data: give --images and/or --videos folders")
    return pool
