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
        epilog="Example: ultrares bench --frames 40   |   ultrares bench --matrix --engine eager,compile")
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
    p.add_argument("--matrix", action="store_true", help="engines x batch sizes table (ultrares_stream.engine.bench)")
    p.add_argument("--batches", default="1,4,8", help="batch sizes for --matrix (default 1,4,8)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    if args.matrix:
        from ..engine.bench import run_matrix  # torch: imported only when the command runs

        try:
            batches = tuple(int(b) for b in args.batches.split(","))
        except ValueError:
            raise UserError(f"--batches must be comma-separated integers, not {args.batches!r}") from None
        engines = ["eager", "compile", "tensorrt"] if args.engine == "auto" else args.engine.split(",")
        rows = run_matrix(engines, batches=batches, device=args.device)
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
    from ..bench import format_report, run_bench

    r = run_bench(args.input, args.frames, args.model, args.engine, args.device, args.precision, args.batch,
                  args.threads, args.preset)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    for table in format_report(r):
        console.print(table)
    return 0
