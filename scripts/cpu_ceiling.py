#!/usr/bin/env python3
"""How close a network's CPU pass is to this machine's arithmetic rate (docs/benchmarks.md).

    .venv/bin/python scripts/cpu_ceiling.py [--feat 64] [--conv 16] [--width 320] [--height 240]

On one torch thread: the bf16 and fp32 rate of a 2048x2048 matrix multiply, the work of one
SRVGGNetCompact pass (torch's FLOP counter) and the median time of that pass three ways: as the
product runs it (bf16 autocast, channels-last), with bf16 weights and no autocast, and compiled by
Inductor with frozen weights. Random weights: speed does not depend on them.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ultrares_stream.models.archs import SRVGGNetCompact


def median_seconds(fn, x, passes: int = 6) -> float:
    with torch.no_grad():
        fn(x), fn(x)  # warm-up
        times = []
        for _ in range(passes):
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_rate(dtype: torch.dtype, n: int = 2048) -> float:
    a, b = torch.rand(n, n).to(dtype), torch.rand(n, n).to(dtype)
    return 2 * n**3 / median_seconds(lambda _: a @ b, None) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--feat", type=int, default=64)
    ap.add_argument("--conv", type=int, default=16)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    args = ap.parse_args()
    torch.set_num_threads(1)
    net = SRVGGNetCompact(num_feat=args.feat, num_conv=args.conv, upscale=4).eval().requires_grad_(False)
    x = torch.rand(1, 3, args.height, args.width)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    gflop = counter.get_total_flops() / 1e9
    net = net.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)

    def autocast_pass(t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return net(t).float()

    bf16 = copy.deepcopy(net).to(torch.bfloat16)
    xb = x.to(torch.bfloat16)
    import torch._inductor.config as inductor

    inductor.freezing = True
    frozen = torch.compile(bf16, dynamic=False)
    t = time.perf_counter()
    with torch.no_grad():
        frozen(xb)
    compile_s = time.perf_counter() - t
    passes = {"autocast_channels_last": median_seconds(autocast_pass, x),
              "bf16_weights": median_seconds(lambda t: bf16(t).float(), xb),
              "inductor_frozen": median_seconds(lambda t: frozen(t).float(), xb)}
    print(json.dumps({
        "matmul_gflops": {"bf16": round(matmul_rate(torch.bfloat16), 1), "fp32": round(matmul_rate(torch.float32), 1)},
        "gflop_per_frame": round(gflop, 2),
        "pass_ms": {k: round(1000 * v, 1) for k, v in passes.items()},
        "pass_gflops": {k: round(gflop / v, 1) for k, v in passes.items()},
        "inductor_compile_s": round(compile_s, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
