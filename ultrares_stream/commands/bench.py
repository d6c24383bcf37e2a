"""``ultrares bench``: model-alone fps vs whole-pipeline fps on one input; ``--matrix`` for engines x batches."""
from __future__ import annotations

import argparse
import json

from ..errors import UserError
from .options import add_device, add_precision, add_threads


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="measure model-alone and whole-pipeline fps side by side",
        description="Decode the first N frames of a clip and time (1) the model alone on them and (2) the whole "
                    "pipeline (decode -> queue -> batcher -> encode) on the same frames, in one run, with "
                    "per-stage times. --matrix instead times every engine backend at several batch sizes.",
        epilog="Example: ultrares bench --frames 40   |   ultrares bench --matrix --engine eager,compile   |   "
               "ultrares bench --matrix --device cpu (the CPU engines: eager NCHW, eager channels_last, OpenVINO)")
    p.add_argument("--input", "-i", metavar="CLIP", help="video to use (default: the 320x240 CCTV clip or the demo scene)")
    p.add_argument("--frames", "-n", type=int, default=40, help="frames to time (default 40)")
    p.add_argument("--model", default=None, help="model name or checkpoint (default ultrares-compact-x4)")
    p.add_argument("--engine", default="auto", help="engine backend (default auto); with --matrix a comma list")
    add_device(p)
    add_precision(p)
    p.add_argument("--batch", type=int, default=1, help="frames per inference batch (default 1)")
    add_threads(p)
    p.add_argument("--preset", default="auto",
                   help="libx264 preset of the pipeline's encoder (default auto, as the service: ultrafast when "
                        "the model runs on the CPU, else veryfast)")
    p.add_argument("--matrix", action="store_true", help="engines x batch sizes table (ultrares_stream.engine.matrix)")
    p.add_argument("--batches", default=None, help="batch sizes for --matrix (default 1,4,8; 1 on the CPU)")
    p.add_argument("--rounds", type=int, default=5, help="--matrix on the CPU: interleaved rounds (default 5)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    if args.matrix:
        rows = _matrix(args)  # torch: imported only when the command runs
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        from rich.table import Table

        cols = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
        t = Table(title="engine matrix")
        for c in cols:
            t.add_column(c)
        for r in rows:
            t.add_row(*[f"{r[c]:.2f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols])
        console.print(t)
        return 0
    if args.batch < 1:
        raise UserError("--batch must be at least 1")
    return _bench(args, console)


def _matrix(args: argparse.Namespace) -> list[dict]:
    """The engine matrix: on the CPU the CPU engines side by side in interleaved rounds
    (``engine.matrix.run_cpu_matrix``), on CUDA the GPU backends (``run_matrix``)."""
    from ..engine import pick_device
    from ..engine.matrix import run_cpu_matrix, run_matrix
    from ..engine.select import CPU_CANDIDATES

    cpu = pick_device(args.device).type == "cpu"
    try:
        batches = tuple(int(b) for b in (args.batches or ("1" if cpu else "1,4,8")).split(","))
    except ValueError:
        raise UserError(f"--batches must be comma-separated integers, not {args.batches!r}") from None
    if cpu:
        engines = list(CPU_CANDIDATES) if args.engine == "auto" else args.engine.split(",")
        return run_cpu_matrix(engines, batches, precision=args.precision, rounds=args.rounds, threads=args.threads)
    engines = ["eager", "compile", "tensorrt"] if args.engine == "auto" else args.engine.split(",")
    return run_matrix(engines, batches=batches, device=args.device, precision=args.precision)


def _bench(args: argparse.Namespace, console) -> int:
    from ..pipeline_bench import format_report, run_bench

    r = run_bench(args.input, args.frames, args.model, args.engine, args.device, args.precision, args.batch,
                  args.threads, args.preset)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    for table in format_report(r):
        console.print(table)
    return 0
