#!/usr/bin/env python3
"""Does the temporal stabiliser, set to average rather than hold, add PSNR on traffic video?
(docs/experiments.md, "Several frames, temporal filtering"; docs/models/ultrares-traffic-x4.md).

    .venv/bin/python scripts/stabiliser_sweep.py [--model ultrares-traffic-x4] [--history 16]

The traffic protocol of ``ultrares eval`` (MATLAB bicubic x1/4, H.264 at 0.1 bit per pixel, 4
scored frames per clip of ``$ULTRARES_DATA/video``, held-out halves), each scored frame with the
``--history`` LR frames before it. The network runs once per frame at alpha 0; every stabiliser
setting (``still``/``moving`` thresholds in levels, ``strength`` the held output's weight: 1 holds,
below 1 averages over about ``1 / (1 - strength)`` frames) is then run over the same outputs and
the last frame scored: Y-PSNR over bicubic (shave 4), mean over the frames and per clip.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from ultrares_stream.quality.datasets import traffic_video_pairs
from ultrares_stream.quality.evaluate import bicubic_upscale, to_image, to_input
from ultrares_stream.quality.scores import psnr_y
from ultrares_stream.settings import data_dir
from ultrares_stream.temporal import Stabiliser, StabiliserSettings
from ultrares_stream.upscaler import Upscaler

THRESHOLDS = ((2, 4), (4, 8), (6, 12), (10, 20))
STRENGTHS = (1.0, 0.9, 0.75, 0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ultrares-traffic-x4")
    p.add_argument("--history", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    up = Upscaler(args.model, alpha=0.0, device="cpu", precision="fp32", tile=0)
    runs = []
    with torch.inference_mode():
        for name, lrs, hr in traffic_video_pairs(data_dir() / "video", 4, 4, "auto", history=args.history):
            xs = [to_input(lr, "cpu") for lr in lrs]
            bicubic = psnr_y(bicubic_upscale(lrs[-1], 4), hr, 4)
            runs.append((name.split("#")[0], xs, [up.upscale(x).float() for x in xs], hr, bicubic))

    def score(settings: StabiliserSettings | None) -> str:
        gains: dict[str, list[float]] = {}
        for clip, xs, outs, hr, bicubic in runs:
            out = outs[-1]
            if settings is not None:
                stab = Stabiliser(settings)
                with torch.inference_mode():
                    for x, o in zip(xs, outs):
                        out = stab(x, o.clone())
            gains.setdefault(clip, []).append(psnr_y(to_image(out), hr, 4) - bicubic)
        mean = np.mean([g for v in gains.values() for g in v])
        return f"{mean:+.3f} dB  " + "  ".join(f"{c[:16]} {np.mean(v):+.2f}" for c, v in gains.items())

    print(f"{args.model}, alpha 0, {len(runs)} frames, {args.history} frames of history")
    print(f"no stabiliser                    {score(None)}")
    for still, moving in THRESHOLDS:
        for strength in STRENGTHS:
            print(f"still {still:2} moving {moving:2} strength {strength:.2f}  "
                  f"{score(StabiliserSettings(still=still, moving=moving, strength=strength))}", flush=True)


if __name__ == "__main__":
    main()
