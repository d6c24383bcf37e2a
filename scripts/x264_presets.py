#!/usr/bin/env python3
"""libx264 presets for recorded jobs (docs/benchmarks.md): the first 60 frames of a clip enhanced
by the shipped compact pair at alpha 0, then encoded at CRF 18 with each preset on one encoder
thread, twice: file size, Y-PSNR of the decoded video against the enhanced frames, CPU a frame.

    .venv/bin/python scripts/x264_presets.py CLIP
"""
from __future__ import annotations

import io
import sys
import time

import av
import numpy as np
import torch

from ultrares_stream.colour import float_to_uint8, uint8_to_float
from ultrares_stream.quality.scores import psnr_y
from ultrares_stream.upscaler import Upscaler

PRESETS = ("medium", "faster", "veryfast")


def encode(frames: list[np.ndarray], preset: str) -> tuple[bytes, float]:
    """An MP4 of ``frames`` (RGB uint8) at CRF 18, and the CPU seconds it took a frame."""
    buf = io.BytesIO()
    t = time.process_time()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=25, options={"crf": "18", "preset": preset})
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        s.thread_count = 1
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return buf.getvalue(), (time.process_time() - t) / len(frames)


def main() -> None:
    torch.set_num_threads(2)
    with av.open(sys.argv[1]) as c:
        lr = [f.to_ndarray(format="rgb24") for _, f in zip(range(60), c.decode(video=0))]
    up = Upscaler("ultrares-compact-x4", alpha=0.0, device="cpu", tile=0)
    with torch.inference_mode():
        enhanced = [float_to_uint8(up.upscale(uint8_to_float(torch.from_numpy(f)[None])))[0].numpy() for f in lr]
    for run in range(2):
        for preset in PRESETS:
            data, cpu_s = encode(enhanced, preset)
            with av.open(io.BytesIO(data)) as c:
                decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
            psnr = np.mean([psnr_y(d, e, 0) for d, e in zip(decoded, enhanced)])
            print(f"run {run + 1} {preset:9} {len(data) / 1e6:.2f} MB  {psnr:.2f} dB  {1000 * cpu_s:.0f} ms CPU a frame",
                  flush=True)


if __name__ == "__main__":
    main()
