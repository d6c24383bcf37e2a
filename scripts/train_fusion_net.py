#!/usr/bin/env python
"""Train a small learned multi-frame fusion network on synthetic passes over synthetic plates.

Data: ``ultrares_stream.train.plate_images`` draws plates (never the AGPL ``plates/us`` photos, which are
for evaluation only); each picture is seen in a 16-frame synthetic pass (``fusion.synthetic``:
sub-pixel shifts, +-3 % zoom), shrunk x1/4 with MATLAB bicubic, encoded with libx264 at a
random camera bitrate (lossless, 0.3 or 0.1 bit/pixel) and decoded. The box around one plate is
tracked and registered as ``ultrares zoom`` does; the network's input is the registered stack
(every frame bicubic x4 and warped onto the reference's HR grid: 16 x 3 channels) plus the
classical robust fusion (3 channels); it predicts a correction of the classical fusion. Loss: L1
against the picture. One thread (``torch.set_num_threads(1)``): it runs beside other work.

    nohup nice -n 10 .venv/bin/python scripts/train_fusion_net.py --out runs/fusion-net \
        > runs/fusion-net.out 2>&1 &

Checkpoints (``fusion-net.pt``: weights, optimiser, step) every ``--checkpoint-minutes``;
``--resume`` continues from one. Log: ``OUT/train.log``. Stop with ``kill PID`` (SIGTERM writes a
checkpoint first); pause / resume with ``kill -STOP PID`` / ``kill -CONT PID``.
"""
from __future__ import annotations

import argparse
import logging
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from ultrares_stream.fusion import learned
from ultrares_stream.fusion.crop import FusionSettings, frame_uses, fuse_tracked
from ultrares_stream.fusion.synthetic import random_motions, render
from ultrares_stream.fusion.tracking import track
from ultrares_stream.quality.datasets import h264_roundtrip, parse_bitrate
from ultrares_stream.train.plate_images import plate_image

SCALE, PICTURE = 4, 256
BITRATES = ("lossless", "0.3bpp", "0.1bpp")
LR_CROP = (12, 28)  # LR (h, w) of the box the network sees: 48x112 HR

log = logging.getLogger("train_fusion_net")


def registered_stack(frames, box, settings: FusionSettings):
    """(stack 16 x 3 x H x W, classical fusion 3 x H x W) on the box's HR grid, 0-1 floats: what
    ``fusion.crop.fuse_box`` gives the network, cut to the box."""
    s = settings.scale
    ref, (cx, cy, cw, ch), tracked = track(frames, 0, box, settings.margin, settings.search, settings.pad)
    times = [k / 25 for k in range(len(frames))]
    uses = frame_uses(tracked, times, [1.0] * len(frames), settings)
    fused = fuse_tracked(ref.shape[:2], tracked, uses, settings)
    stack = learned.registered_stack(tracked, learned.stack_order(0, times, uses), fused, s)
    x0, y0 = (box[0] - cx) * s, (box[1] - cy) * s
    cut = (slice(y0, y0 + box[3] * s), slice(x0, x0 + box[2] * s))
    return stack[:, cut[0], cut[1]].transpose(0, 3, 1, 2) / 255.0, fused[cut].transpose(2, 0, 1) / 255.0


def sample(rng: np.random.Generator):
    """One training example: (stack, fused, target) for a plate of a fresh synthetic picture."""
    while True:
        labels: list = []
        picture = plate_image(rng, PICTURE, labels)
        (x, y, w, h), _ = labels[int(rng.integers(len(labels)))]
        bx = int(np.clip((x + w / 2) / SCALE - LR_CROP[1] / 2, 8, PICTURE / SCALE - LR_CROP[1] - 8))
        by = int(np.clip((y + h / 2) / SCALE - LR_CROP[0] / 2, 8, PICTURE / SCALE - LR_CROP[0] - 8))
        motions = random_motions(rng, (x + w / 2, y + h / 2), SCALE)
        frames = [render(picture, m, SCALE) for m in motions]
        bitrate = BITRATES[int(rng.integers(len(BITRATES)))]
        if bitrate != "lossless":
            frames = h264_roundtrip(frames, parse_bitrate(bitrate, *frames[0].shape[1::-1]))
        box = (bx, by, LR_CROP[1], LR_CROP[0])
        try:
            stack, fused = registered_stack(frames, box, FusionSettings(margin=4, search=8))
        except (ValueError, np.linalg.LinAlgError, cv2.error) as exc:  # a degenerate pass: draw another
            log.warning("sample skipped: %s", exc)
            continue
        target = picture[by * SCALE: (by + LR_CROP[0]) * SCALE, bx * SCALE: (bx + LR_CROP[1]) * SCALE]
        return stack.reshape(-1, *stack.shape[2:]), fused, target.transpose(2, 0, 1) / 255.0


def batch(rng, size: int):
    parts = [sample(rng) for _ in range(size)]
    return [torch.from_numpy(np.stack(p)).float() for p in zip(*parts)]


def save(path: Path, net, opt, step: int) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": net.state_dict(), "optimiser": opt.state_dict(), "step": step}, tmp)
    tmp.replace(path)


def export(checkpoint: Path, to: Path = learned.WEIGHTS) -> None:
    """The checkpoint's weights alone, as the safetensors file the package ships."""
    from safetensors.torch import save_file

    state = torch.load(checkpoint)
    save_file({k: v.contiguous() for k, v in state["model"].items()}, str(to),
              metadata={"step": str(state["step"]), "trained_by": "scripts/train_fusion_net.py"})
    log.info("exported step %d to %s", state["step"], to)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/fusion-net"))
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export", action="store_true", help="write OUT/fusion-net.pt's weights to the package and stop")
    args = p.parse_args()
    if args.export:
        return export(args.out / "fusion-net.pt") or 0
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=args.out / "train.log", level=logging.INFO, format="%(asctime)s %(message)s")
    net = learned.fusion_net()
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    ckpt, step = args.out / "fusion-net.pt", 0
    if args.resume and ckpt.is_file():
        state = torch.load(ckpt)
        net.load_state_dict(state["model"]), opt.load_state_dict(state["optimiser"])
        step = state["step"]
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    rng = np.random.default_rng([args.seed, step])
    last_save, losses, base = time.monotonic(), [], []
    while step < args.steps and not stop:
        stack, fused, target = batch(rng, args.batch)
        loss = (net(stack, fused) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        losses.append(loss.item())
        base.append((fused - target).abs().mean().item())
        if step % 25 == 0:
            log.info("step %d  L1 %.4f  (classical fusion %.4f)", step, np.mean(losses), np.mean(base))
            losses, base = [], []
        if time.monotonic() - last_save > 60 * args.checkpoint_minutes:
            save(ckpt, net, opt, step)
            last_save = time.monotonic()
    save(ckpt, net, opt, step)
    log.info("stopped at step %d; checkpoint %s", step, ckpt)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
