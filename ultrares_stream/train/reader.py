"""A small plate reader (CRNN + CTC) for the plate-aware training loss, trained on synthetic plates.

``ultrares train --plate-loss W`` adds ``W`` x the CTC loss of this reader on the plates of the
synthetic plate images (:mod:`.plate_images`) as the generator upscales them: the generator is pushed
to draw characters a reader can tell apart, not only to be close to the HR pixels on average.
The reader is this project's own, trained here on synthetic plates only (``ultrares train
--stage reader``), so it is independent of the OCR that scores plate readability in
``ultrares eval --task plates`` (RapidOCR's PP-OCR recogniser) and of the evaluation photos.

Input: a plate crop as NCHW float RGB in [0, 1], any size; it is resized (differentiably) to
:data:`HEIGHT` x :data:`WIDTH` grey. Output: per-column log-probabilities over the blank and
:data:`CHARSET`.
"""
from __future__ import annotations

import logging
import string
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..colour import uint8_to_float

log = logging.getLogger(__name__)

CHARSET = string.ascii_uppercase + string.digits
HEIGHT, WIDTH = 32, 128


class PlateReader(nn.Module):
    """Conv feature columns -> bidirectional GRU -> blank + 36 classes per column (32 columns)."""

    def __init__(self, width: int = 64):
        super().__init__()

        def block(cin, cout, pool):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                    nn.MaxPool2d(pool)]

        self.features = nn.Sequential(*block(1, width // 2, 2), *block(width // 2, width, 2),
                                      *block(width, 2 * width, (2, 1)), *block(2 * width, 2 * width, (2, 1)))
        self.rnn = nn.GRU(2 * width, width, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * width, len(CHARSET) + 1)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, T, classes) log-probabilities; T = WIDTH / 4 columns."""
        x = self.features(to_reader_input(crops)).mean(dim=2).transpose(1, 2)  # (N, T, C)
        return F.log_softmax(self.head(self.rnn(x)[0]), dim=-1)


def to_reader_input(crops: torch.Tensor) -> torch.Tensor:
    """NCHW RGB [0, 1] -> (N, 1, HEIGHT, WIDTH) grey, centred (bilinear, differentiable)."""
    grey = (crops * torch.tensor([0.299, 0.587, 0.114], device=crops.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if grey.shape[-2:] != (HEIGHT, WIDTH):
        grey = F.interpolate(grey, size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False, antialias=True)
    return grey - 0.5


def encode_texts(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """CTC targets (concatenated class indices, 1-based) and their lengths."""
    idx = [CHARSET.index(c) + 1 for t in texts for c in t]
    return torch.tensor(idx, dtype=torch.long), torch.tensor([len(t) for t in texts], dtype=torch.long)


def ctc_loss(log_probs: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """Mean CTC loss of the reader's ``(N, T, classes)`` output against ``texts``."""
    targets, lengths = encode_texts(texts)
    n, t, _ = log_probs.shape
    return F.ctc_loss(log_probs.transpose(0, 1).float(), targets, torch.full((n,), t, dtype=torch.long), lengths,
                      blank=0, reduction="mean", zero_infinity=True)


def decode(log_probs: torch.Tensor) -> list[str]:
    """Greedy CTC decoding: best class per column, repeats merged, blanks dropped."""
    out = []
    for row in log_probs.argmax(-1).tolist():
        chars, prev = [], 0
        for k in row:
            if k != prev and k != 0:
                chars.append(CHARSET[k - 1])
            prev = k
        out.append("".join(chars))
    return out


def plate_crops(images: torch.Tensor, boxes: list[tuple[int, int, int, int]], scale: int = 1,
                alter=None) -> torch.Tensor:
    """The plate boxes (in LR pixels when ``scale`` > 1) cut from an NCHW batch, one per image,
    each passed through ``alter`` when given (a 1CHW -> 1CHW function) and resized to the
    reader's input (so crops of any size stack)."""
    crops = []
    for img, (x, y, w, h) in zip(images, boxes):
        crop = img[:, y * scale:(y + h) * scale, x * scale:(x + w) * scale].unsqueeze(0)
        if alter is not None:
            crop = alter(crop)
        crops.append(F.interpolate(crop, size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False, antialias=True))
    return torch.cat(crops)


class PlateCropSampler:
    """HR crops of ``crop`` pixels around one whole synthetic plate each, with the plate's box
    in the crop and its registration. The box is aligned to ``scale`` so it maps onto the LR."""

    def __init__(self, labelled: list[tuple[np.ndarray, list]], crop: int, scale: int, seed: int = 0):
        self.items = [(img, box, text) for img, labels in labelled for box, text in labels
                      if box[2] <= crop - 2 * scale and box[3] <= crop - 2 * scale and 0 < len(text)]
        from ..errors import UserError

        if any(img.shape[0] < crop or img.shape[1] < crop for img, *_ in self.items):
            raise UserError(f"crops of {crop} pixels are larger than the synthetic plate images")
        if not self.items:
            raise UserError(f"no synthetic plate fits a {crop}-pixel crop")
        self.crop, self.scale = crop, scale
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> tuple[torch.Tensor, list[tuple[int, int, int, int]], list[str]]:
        """(NCHW float HR crops, plate boxes in LR pixels, registrations)."""
        c, s = self.crop, self.scale
        out = np.empty((n, c, c, 3), np.uint8)
        boxes, texts = [], []
        for i in range(n):
            img, (x, y, w, h), text = self.items[int(self.rng.integers(len(self.items)))]
            # LR-aligned box, then a crop origin (multiple of scale) that keeps all of it inside
            x0, y0 = x // s * s, y // s * s
            x1, y1 = -(-(x + w) // s) * s, -(-(y + h) // s) * s
            ox = int(self.rng.integers(max(0, x1 - c) // s, min(x0, img.shape[1] - c) // s + 1)) * s
            oy = int(self.rng.integers(max(0, y1 - c) // s, min(y0, img.shape[0] - c) // s + 1)) * s
            out[i] = img[oy:oy + c, ox:ox + c]
            boxes.append(((x0 - ox) // s, (y0 - oy) // s, (x1 - x0) // s, (y1 - y0) // s))
            texts.append(text)
        return uint8_to_float(torch.from_numpy(out)), boxes, texts

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def train_reader(out: Path, steps: int = 3000, images: int = 3000, batch: int = 64, seed: int = 0,
                 scale: int = 4) -> dict:
    """Train a :class:`PlateReader` on HR crops of synthetic plates, a share of them degraded as
    the generator's output would be (down x``scale`` and back, blurred), and save it to ``out``.
    Returns {"steps", "minutes", "accuracy"} (exact-string accuracy on held-out synthetic plates)."""
    from ..models.checkpoint import save_checkpoint
    from .degradations import bicubic_down, gaussian_blur
    from .plate_images import labelled_plate_images

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train = PlateCropSampler(labelled_plate_images(images, seed=seed + 100), 256, scale, seed)
    held = PlateCropSampler(labelled_plate_images(200, seed=seed + 999), 256, scale, seed + 1)
    net = PlateReader()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    t0 = time.monotonic()
    for step in range(steps):
        hr, boxes, texts = train.batch(batch)

        def soften(crop: torch.Tensor) -> torch.Tensor:  # what an upscaler sees and gives back, half the time
            if rng.random() >= 0.5:
                return crop
            crop = F.interpolate(bicubic_down(crop, scale), scale_factor=scale, mode="bicubic", align_corners=False)
            return gaussian_blur(crop.clamp(0, 1), float(rng.uniform(0.3, 1.0)))

        net.train()
        loss = ctc_loss(net(plate_crops(hr, boxes, scale, soften)), texts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 500 == 0:
            log.info("reader step %d: CTC %.3f, held-out accuracy %.2f", step + 1, loss.item(), accuracy(net, held, scale))
    acc = accuracy(net, held, scale)
    save_checkpoint(net.state_dict(), out, {"kind": "plate-reader", "steps": str(steps)})
    return {"steps": steps, "minutes": (time.monotonic() - t0) / 60, "accuracy": acc}


@torch.no_grad()
def accuracy(net: PlateReader, sampler: PlateCropSampler, scale: int, n: int = 256) -> float:
    """Share of ``n`` plates (sharp HR crops) read exactly."""
    net.eval()
    hr, boxes, texts = sampler.batch(n)
    reads = decode(net(plate_crops(hr, boxes, scale)))
    return sum(r == t for r, t in zip(reads, texts)) / n


def load_reader(path: Path) -> PlateReader:
    from ..models.checkpoint import read_checkpoint

    net = PlateReader()
    net.load_state_dict(read_checkpoint(path), strict=True)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net
