"""int8 (NNCF) against fp32 on the OpenVINO engine: the traffic protocol's PSNR and the plate score.

    .venv/bin/python scripts/int8_eval.py --model ultrares-compact-x4 --model ultrares-traffic-x4 [--plates]

Per model at alpha 0, the same 20 traffic frames (``ultrares eval``'s protocol: 4 frames per clip
of ``$ULTRARES_DATA/video``, H.264 at 0.1 bpp) scored for eager fp32, OpenVINO fp32 and OpenVINO
int8; ``--plates``: RapidOCR's character accuracy on ``$ULTRARES_DATA/plates/us`` for OpenVINO fp32
and int8 (``ultrares eval --task plates``' protocol). Prints a Markdown table (docs/benchmarks.md,
"int8 (NNCF) on the CPU"). Two threads, as the CPU machine has.
"""
from __future__ import annotations

import argparse
import logging
import time

import torch
import torch.nn.functional as F

from ultrares_stream.engine.base import ThreadPlan
from ultrares_stream.engine.eager import EagerEngine
from ultrares_stream.engine.openvino import OpenVINOEngine
from ultrares_stream.models.pair import ModelPair
from ultrares_stream.quality.evaluate import evaluate, to_image, to_input
from ultrares_stream.settings import data_dir

CPU = torch.device("cpu")
ENGINES = {"eager fp32": lambda net: EagerEngine(net, CPU, "fp32"),
           "openvino fp32": lambda net: OpenVINOEngine(net, CPU, "fp32", plan=ThreadPlan(1, 2)),
           "openvino int8": lambda net: OpenVINOEngine(net, CPU, "int8", plan=ThreadPlan(1, 2))}


def upscale_fn(engine, spec):
    """LR uint8 HWC -> SR uint8 HWC through ``engine``, padded to the network's size multiple."""
    multiple = spec.input_sizes.multiple

    def run(lr):
        x = to_input(lr, CPU)
        h, w = x.shape[-2:]
        ph, pw = (-h) % multiple, (-w) % multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        with torch.inference_mode():
            return to_image(engine(x)[..., : h * spec.scale, : w * spec.scale].clamp(0, 1))

    return run


def score_model(name: str, plates: bool) -> list[str]:
    from ultrares_stream.quality.datasets import traffic_video_pairs

    pair = ModelPair.load(name, "cpu")
    frames = traffic_video_pairs(data_dir() / "video", 4, 4, "auto")
    fns, lines = {}, []
    for label, build in ENGINES.items():
        engine = build(pair.spec.build())
        engine.load_weights(pair.weights_at(0.0))
        fns[label] = upscale_fn(engine, pair.spec)
        t0 = time.perf_counter()
        r = evaluate(frames, fns[label], 4)
        lines.append(f"| {name} | {label} | {r['psnr']:.4f} | {r['ssim']:.4f} | {time.perf_counter() - t0:.0f} s |")
    if plates:
        lines += plate_lines(name, {k: v for k, v in fns.items() if k.startswith("openvino")})
    return lines


def plate_lines(name: str, fns: dict) -> list[str]:
    from ultrares_stream.quality.plate_reading import photo_samples, rapidocr_reader, read_annotations, score_plates

    result = score_plates(photo_samples(read_annotations(data_dir() / "plates" / "us")), fns, rapidocr_reader())
    return [f"| {name} plates ({result.count}) | {label} | accuracy {result.accuracy[label]:.4f} | "
            f"gap closed {result.gap(label):+.3f} | |" for label in ("bicubic", "original", *fns)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--plates", action="store_true", help="also the plate score (RapidOCR)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    lines = ["| model | engine | PSNR-Y (dB) | SSIM-Y | time |", "| --- | --- | ---: | ---: | ---: |"]
    for name in args.model:
        lines += score_model(name, args.plates)
        print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
