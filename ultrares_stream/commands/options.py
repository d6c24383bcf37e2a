"""Command-line options that several sub-commands share, spelled and checked one way."""
from __future__ import annotations

import argparse

PRECISIONS = ["auto", "fp32", "fp16", "bf16", "int8"]


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_device(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--device", default=default,
                   help=f"inference device: auto, cpu, cuda or cuda:N (default {default}; auto = cuda when "
                        "available)")


def add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto = fp16 on CUDA, bf16 on CPUs with native bf16, else fp32 (default auto); int8: "
                        "NNCF-quantised on the OpenVINO CPU engine (docs/benchmarks.md)")


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=positive_int, default=None,
                   help="video on the CPU: run one batch at a time on this many torch threads (default: one "
                        "single-threaded batch per core, side by side)")
