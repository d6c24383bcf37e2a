#!/usr/bin/env python3
"""What one live frame costs on one CPU thread, stage by stage (docs/benchmarks.md): the shipped
compact pair on a 320x240 frame of CLIP (packed yuv420p in, as the decoder hands it over, to RGB
and through the network: the ``ToRGB`` and ``Upscale`` stages), the stabiliser on the next frame, rgb ->
yuv420p and packing at 1280x960, libx264 ultrafast (zerolatency, one thread) of the packed
frame; decoding is not counted. Best of several runs each, in ms; their sum bounds the fps of
the live pipeline on two cores.

    .venv/bin/python scripts/live_frame_costs.py CLIP
"""
from __future__ import annotations

import io
import sys
import time

import av
import torch

from ultrares_stream.colour import pack_yuv420p, rgb_to_yuv420p
from ultrares_stream.sources import Frame
from ultrares_stream.stages import DeviceBatch, Item, Route, ToRGB, Upscale, run_stages
from ultrares_stream.temporal import Stabiliser
from ultrares_stream.upscaler import Upscaler


def upscale_rgb(up, frame, w: int, h: int):
    """(the frame as float RGB, its upscale): the pipeline's first two device stages."""
    batch = run_stages((ToRGB(), Upscale()), DeviceBatch([Item(None, Frame(frame, w, h, 0, None))], Route(up), w, h))
    return batch.rgb, batch.out


def best_ms(fn, runs: int = 8) -> float:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * min(times)


def main() -> None:
    torch.set_num_threads(1)
    with av.open(sys.argv[1]) as c:
        frames = [f.reformat(format="yuv420p").to_ndarray() for _, f in zip(range(2), c.decode(video=0))]
    h, w = frames[0].shape[0] * 2 // 3, frames[0].shape[1]
    up = Upscaler("ultrares-compact-x4", alpha=0.0, device="cpu", tile=0)
    costs = {}
    with torch.inference_mode():
        rgb, out = upscale_rgb(up, frames[0], w, h)
        costs["yuv -> rgb + network"] = best_ms(lambda: upscale_rgb(up, frames[0], w, h), 4)
        costs["rgb -> yuv420p + pack"] = best_ms(lambda: pack_yuv420p(*rgb_to_yuv420p(out)).numpy())
        stab = Stabiliser()
        stab(rgb, out.clone())
        rgb2, out2 = upscale_rgb(up, frames[1], w, h)
        costs["stabiliser"] = best_ms(lambda: stab(rgb2, out2.clone())) - best_ms(lambda: out2.clone())
    packed = pack_yuv420p(*rgb_to_yuv420p(out)).numpy()[0]
    with av.open(io.BytesIO(), "w", format="matroska") as c:
        s = c.add_stream("libx264", rate=25, options={"preset": "ultrafast", "tune": "zerolatency", "crf": "23"})
        s.width, s.height, s.pix_fmt = out.shape[-1], out.shape[-2], "yuv420p"
        s.thread_count = 1
        costs["libx264 ultrafast"] = best_ms(lambda: c.mux(s.encode(av.VideoFrame.from_ndarray(packed, format="yuv420p"))), 12)
    for name, ms in costs.items():
        print(f"{name:26} {ms:6.2f} ms")
    total = sum(costs.values())
    print(f"{'sum':26} {total:6.2f} ms: at most {2000 / total:.1f} fps on two cores "
          f"({2000 / (total - costs['stabiliser']):.1f} without the stabiliser)")


if __name__ == "__main__":
    main()
