"""``ultrares eval``: PSNR / SSIM (Y channel, MATLAB protocol) of models vs bicubic; table, CSV, Markdown."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_ALPHAS = (0.0, 0.5, 1.0)


def register(sub: argparse._SubParsersAction) -> None:
    from ..models.registry import DEFAULT_MODEL
    from ..settings import data_dir

    sr = data_dir() / "sr"
    p = sub.add_parser(
        "eval", help="measure PSNR/SSIM of models against bicubic on Set5/Set14 or traffic video",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Score super-resolution models the way the papers do: the output is quantised to 8 bits, "
                    "a border of SCALE pixels is shaved, PSNR and SSIM are computed on the BT.601 Y channel "
                    "(MATLAB-compatible), against MATLAB bicubic up-scaling of the same input. Set5-style folders "
                    "(HR/ + LR_bicubic/X4/) use their shipped LR; HR-only folders get MATLAB-bicubic LR. A folder "
                    "of videos uses the traffic protocol: frames down-scaled, re-encoded with H.264 at a camera "
                    "bitrate and decoded back, scored against the original frames. Writes eval.csv, "
                    "eval_per_image.csv and eval.md to --out-dir.",
        epilog=f"example: ultrares eval --dataset {sr / 'Set5'} --dataset {sr / 'Set14' / 'HR'} "
               f"--dataset {data_dir() / 'video'} --model {DEFAULT_MODEL} --alpha 0 --alpha 1")
    p.add_argument("--dataset", type=Path, action="append", required=True, metavar="DIR",
                   help="Set5/Set14-style image folder or folder of video clips (repeatable)")
    p.add_argument("--scale", type=int, default=4, help="up-scaling factor")
    p.add_argument("--model", action="append", default=None, metavar="SPEC",
                   help=f"model spec: registry name, pair, checkpoint path or psnr.pth+gan.pth (repeatable; "
                        f"default {DEFAULT_MODEL})")
    p.add_argument("--alpha", type=float, action="append", default=None,
                   help="alpha for pair models, 0 = PSNR-oriented, 1 = GAN-oriented (repeatable; default 0, 0.5, 1)")
    p.add_argument("--bicubic-only", action="store_true", help="score only the bicubic baseline (no model)")
    p.add_argument("--traffic", action="store_true",
                   help="treat every --dataset as video (auto-detected for folders holding only videos)")
    p.add_argument("--frames-per-clip", type=int, default=4, help="traffic protocol: frames scored per clip")
    p.add_argument("--bitrate", default="auto",
                   help="traffic protocol: H.264 bitrate of the LR stream: auto (0.1 bit per pixel at 25 fps, "
                        "at least 32k), bit/s such as 200k, or bits per pixel such as 0.15bpp")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out-dir", type=Path, default=Path("eval-results"), help="where CSV and Markdown go")
    p.set_defaults(func=run)


def dataset_label(path: Path, traffic: bool) -> str:
    """Short name for tables: ``Set5``, ``Set14`` (for Set14/HR), ``video (H.264)``."""
    path = Path(path)
    name = path.parent.name if path.name.upper() == "HR" and path.parent.name else path.stem
    return f"{name} (H.264)" if traffic else name


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..errors import UserError
    from ..models.interpolation import check_alpha
    from ..models.registry import DEFAULT_MODEL
    from ..quality.datasets import is_video_folder, load_pairs, traffic_video_pairs
    from ..quality.evaluate import evaluate_methods, write_csv, write_markdown

    if args.scale < 1:
        raise UserError(f"--scale must be a positive integer, got {args.scale}")
    if args.frames_per_clip < 1:
        raise UserError(f"--frames-per-clip must be >= 1, got {args.frames_per_clip}")
    alphas = [check_alpha(a) for a in (args.alpha or DEFAULT_ALPHAS)]
    if args.bicubic_only and args.model:
        raise UserError("--bicubic-only and --model exclude each other")
    models = [] if args.bicubic_only else (args.model or [DEFAULT_MODEL])
    for d in args.dataset:
        if not d.exists():
            raise UserError(f"dataset not found: {d}")

    console = Console()
    rows, per_image = [], []
    notes = ["Y-channel PSNR/SSIM (BT.601, MATLAB protocol), SR quantised to uint8, "
             f"border of {args.scale} px shaved; x{args.scale}."]
    for d in args.dataset:
        traffic = args.traffic or is_video_folder(d)
        label = dataset_label(d, traffic)
        if traffic:
            pairs = traffic_video_pairs(d, args.scale, args.frames_per_clip, args.bitrate)
            notes.append(f"{label}: {len(pairs)} frames of the clips in {d.name}, MATLAB bicubic x1/{args.scale} "
                         f"then H.264 (libx264) at bitrate {args.bitrate}, scored against the original frames.")
        else:
            pairs = load_pairs(d, args.scale)
            shipped = (d / "LR_bicubic" / f"X{args.scale}").is_dir()
            notes.append(f"{label}: {len(pairs)} images, LR " +
                         ("shipped with the dataset (MATLAB bicubic)." if shipped else "by MATLAB-compatible bicubic."))

        def on_row(row, result, _label=label):
            per_image.extend({"dataset": _label, "method": row.method, "alpha": row.alpha, **r}
                             for r in result["per_image"])

        rows += evaluate_methods(label, pairs, args.scale, models, alphas, device=args.device, on_row=on_row)

    table = Table(title=f"UltraRes eval x{args.scale} (Y channel, border {args.scale} px shaved)")
    for col, justify in (("dataset", "left"), ("method", "left"), ("alpha", "right"), ("PSNR dB", "right"),
                         ("vs bicubic", "right"), ("SSIM", "right"), ("sharpness", "right"), ("images", "right")):
        table.add_column(col, justify=justify)
    for r in rows:
        table.add_row(r.dataset, r.method, r.alpha or "-", f"{r.psnr:.2f}",
                      "" if r.method == "bicubic" else f"{r.delta_psnr:+.2f}", f"{r.ssim:.4f}",
                      f"{r.sharpness:.3f}", str(r.images))
    console.print(table)

    out = args.out_dir
    csv_path = write_csv(rows, out / "eval.csv")
    md_path = write_markdown(rows, out / "eval.md", title=f"UltraRes evaluation x{args.scale}",
                             notes="\n".join(f"- {n}" for n in notes) +
                                   "\n- sharpness: mean Y gradient magnitude relative to the original (1 = as detailed).")
    _write_per_image(per_image, out / "eval_per_image.csv")
    log.info("wrote %s, %s and %s", csv_path, md_path, out / "eval_per_image.csv")
    return 0


def _write_per_image(records: list[dict], path: Path) -> None:
    import csv

    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["dataset", "method", "alpha", "name", "psnr", "ssim", "sharpness"])
        w.writeheader()
        for r in records:
            w.writerow({**r, "psnr": f"{r['psnr']:.4f}", "ssim": f"{r['ssim']:.5f}",
                        "sharpness": f"{r['sharpness']:.4f}"})
