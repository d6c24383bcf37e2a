"""``ultrares eval``: PSNR / SSIM (Y channel, MATLAB protocol) of models vs bicubic; table, CSV, Markdown."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .options import add_device

log = logging.getLogger(__name__)

DEFAULT_ALPHAS = (0.0, 0.5, 1.0)
PLATE_ALPHAS = (0.0, 0.25, 0.5, 1.0)
STABILISE_HISTORY = 8  # LR frames the stabiliser runs over before a scored frame (eval --stabilise)


def register(sub: argparse._SubParsersAction) -> None:
    from ..models.defaults import DEFAULT_MODEL
    from ..settings import data_dir

    sr = data_dir() / "sr"
    p = sub.add_parser(
        "eval", help="measure PSNR/SSIM of models against bicubic on Set5/Set14 or traffic video",
        description="Score super-resolution models the way the papers do: the output is quantised to 8 bits, "
                    "a border of SCALE pixels is shaved, PSNR and SSIM are computed on the BT.601 Y channel "
                    "(MATLAB-compatible), against MATLAB bicubic up-scaling of the same input. Set5-style folders "
                    "(HR/ + LR_bicubic/X4/) use their shipped LR; HR-only folders get MATLAB-bicubic LR. A folder "
                    "of videos uses the traffic protocol: frames down-scaled, re-encoded with H.264 at a camera "
                    "bitrate and decoded back, scored against the original frames. Writes eval.csv, "
                    "eval_per_image.csv and eval.md to --out-dir.",
        epilog=f"example: ultrares eval --dataset {sr / 'Set5'} --dataset {sr / 'Set14' / 'HR'} "
               f"--dataset {data_dir() / 'video'} --model {DEFAULT_MODEL} --alpha 0 --alpha 1")
    _add_task_args(p)
    _add_method_args(p)
    add_device(p)
    p.add_argument("--out-dir", type=Path, default=Path("eval-results"), help="where the CSV, Markdown and grid files go (default eval-results)")
    p.set_defaults(func=run)


def _add_task_args(p: argparse.ArgumentParser) -> None:
    """What is measured, on which data."""
    from ..settings import data_dir

    p.add_argument("--dataset", type=Path, action="append", required=True, metavar="DIR",
                   help="Set5/Set14-style image folder or folder of video clips (repeatable)")
    p.add_argument("--task", choices=["quality", "plates", "plates-clip", "flicker"], default="quality",
                   help="quality: PSNR/SSIM (default); plates: plate readability, an OCR reading each annotated "
                        "plate (folders of photos with 'file x y w h PLATE' .txt files, e.g. "
                        f"{data_dir() / 'plates' / 'us'}) after x1/SCALE and back; writes plates.csv and plates.md; "
                        "flicker: frame-to-frame change on static pixels relative to bicubic, without and with "
                        "the temporal stabiliser (--dataset: clips or folders of clips); writes flicker.md; "
                        "plates-clip: plates read from 16-frame synthetic passes (sub-pixel motion, x1/SCALE, "
                        "H.264 at 0.3 and 0.1 bit/pixel or lossless): bicubic and the model (alpha 0) on the "
                        "reference frame, the registered temporal mean and the multi-frame fusion of N = 1, 4, 8, "
                        "16 frames; writes plates_clip.md and plates_clip.csv (docs/fusion.md)")
    p.add_argument("--stabilise", action="store_true",
                   help="quality task, traffic datasets: also score each model with the temporal stabiliser run "
                        "over the 8 LR frames before each scored frame (its cost in PSNR)")
    p.add_argument("--frames", type=int, default=60, help="flicker task: consecutive frames per clip (default 60)")
    p.add_argument("--shake", type=float, default=0.0, metavar="PX",
                   help="flicker task, with --noise: also score each noisy camera shaking (a random walk of up to PX "
                        "pixels, quality.flicker.shake_path), its outputs moved back onto the scene")
    p.add_argument("--noise", type=float, action="append", default=[], metavar="SIGMA",
                   help="flicker task: also score each clip as a noisy camera sees it: sensor noise of SIGMA levels, "
                        "then H.264 at --bitrate (repeatable; quality.flicker.noisy_clip_frames)")
    p.add_argument("--profile", action="store_true",
                   help="flicker task: also write a picture per clip (temporal profile of a row and a moving crop)")
    p.add_argument("--max-plates", type=int, default=None, metavar="N",
                   help="plates task: score the first N plates only")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="plates-clip task: N plates spread evenly over the set (default all)")
    p.add_argument("--scene-windows", type=int, default=8, metavar="N",
                   help="plates-clip task: also score the demo scene's plates in their own motion over N 16-frame "
                        "windows (default 8; 0: none)")


def _add_method_args(p: argparse.ArgumentParser) -> None:
    """Which methods are scored and how the inputs are made."""
    from ..models.defaults import DEFAULT_MODEL

    p.add_argument("--scale", type=int, default=4, help="up-scaling factor (default 4)")
    p.add_argument("--model", action="append", default=None, metavar="SPEC",
                   help=f"model spec: registry name, pair, checkpoint path or psnr.pth+gan.pth (repeatable; "
                        f"default {DEFAULT_MODEL})")
    p.add_argument("--alpha", type=float, action="append", default=None,
                   help="alpha for pair models, 0 = PSNR-oriented, 1 = GAN-oriented (repeatable; default 0, 0.5, 1; "
                        "for --task plates 0, 0.25, 0.5, 1)")
    p.add_argument("--ensemble", type=int, action="append", default=None, metavar="PASSES",
                   help="quality and plates tasks: also score each model with a self-ensemble of 2, 4 or 8 "
                        "orientations (repeatable; 1 = plain, the default)")
    p.add_argument("--bicubic-only", action="store_true", help="score only the bicubic baseline (no model)")
    p.add_argument("--traffic", action="store_true",
                   help="treat every --dataset as video (auto-detected for folders holding only videos)")
    p.add_argument("--frames-per-clip", type=int, default=4, help="traffic protocol: frames scored per clip (default 4)")
    p.add_argument("--bitrate", default="auto",
                   help="traffic protocol: H.264 bitrate of the LR stream: auto (0.1 bit per pixel at 25 fps, "
                        "at least 32k), bit/s such as 200k, bits per pixel such as 0.15bpp, or none: no H.264, the clean "
                        "down-scale, to see how much of the gap is compression (default auto)")
    p.add_argument("--grid", action="append", default=[], metavar="NAME",
                   help="also write a picture grid (bicubic, each model/alpha, original) of this image or frame: "
                        "an image name (zebra), a frame (street-pole-640x352#455) or a clip name (its first "
                        "scored frame); repeatable")
    p.add_argument("--grid-box", default=None, metavar="X,Y,W,H",
                   help="crop of the grid pictures in HR pixels (default: the centre 256x256)")


def dataset_label(path: Path, traffic: bool, encoded: bool = True) -> str:
    """Short name for tables: ``Set5``, ``Set14`` (for Set14/HR), ``video (H.264)``, ``video (no H.264)``."""
    path = Path(path)
    name = path.parent.name if path.name.upper() == "HR" and path.parent.name else path.stem
    if not traffic:
        return name
    return f"{name} (H.264)" if encoded else f"{name} (no H.264)"


def run(args: argparse.Namespace) -> int:
    from ..config import StabiliseConfig
    from ..quality.evaluate import evaluate_methods

    models, alphas, ensembles = _methods(args)
    task = {"plates": lambda: run_plates(args, models, alphas, ensembles),
            "plates-clip": lambda: run_plates_clip(args, models),
            "flicker": lambda: run_flicker(args, models, alphas)}.get(args.task)
    if task is not None:
        return task()
    box = _parse_box(args.grid_box) if args.grid_box else None
    datasets, sequences, notes = _quality_datasets(args)
    grids = _match_grid_names(args.grid, datasets)
    rows, per_image = [], []
    for label, pairs in datasets:
        keep = {name for (lbl, name) in grids if lbl == label}
        tiles: dict[str, list] = {name: [] for name in keep}

        def on_row(row, result, _label=label, _tiles=tiles):
            per_image.extend({"dataset": _label, "method": row.method, "alpha": row.alpha, **r}
                             for r in result["per_image"])
            for name, sr in result["outputs"].items():
                _tiles[name].append((row.method if not row.alpha else f"{row.method} a={row.alpha}", sr))

        rows += evaluate_methods(label, pairs, args.scale, models, alphas, device=args.device,
                                 on_row=on_row, keep=keep, sequences=sequences.get(label),
                                 stabilise=StabiliseConfig().settings(), ensembles=ensembles)
        for name, shown in tiles.items():
            hr = next(h for n, _, h in pairs if n == name)
            shown.append(("original", hr[: shown[0][1].shape[0], : shown[0][1].shape[1]]))
            _write_grid(shown, box, args.out_dir / f"grid_{_slug(label)}_{_slug(name)}.png")
    _report_quality(args, rows, per_image, notes)
    return 0


def _methods(args: argparse.Namespace) -> tuple[list[str], list[float], list[int]]:
    """The models, alphas and self-ensembles to score, checked (UserError naming the option)."""
    from ..ensemble import check_passes
    from ..errors import UserError
    from ..models.interpolation import check_alpha
    from ..models.defaults import DEFAULT_MODEL

    if args.scale < 1:
        raise UserError(f"--scale must be a positive integer, got {args.scale}")
    if args.frames_per_clip < 1:
        raise UserError(f"--frames-per-clip must be >= 1, got {args.frames_per_clip}")
    alphas = [check_alpha(a) for a in (args.alpha or (PLATE_ALPHAS if args.task == "plates" else DEFAULT_ALPHAS))]
    ensembles = [check_passes(n) for n in (args.ensemble or [1])]
    if args.bicubic_only and args.model:
        raise UserError("--bicubic-only and --model exclude each other")
    for d in args.dataset:
        if not d.exists():
            raise UserError(f"dataset not found: {d}")
    return ([] if args.bicubic_only else (args.model or [DEFAULT_MODEL])), alphas, ensembles


def _quality_datasets(args: argparse.Namespace) -> tuple[list, dict[str, list], list[str]]:
    """``(label, pairs)`` per dataset, the frame sequences of traffic datasets (``--stabilise``) and
    the notes that say how each was made."""
    from ..quality.datasets import is_unencoded, is_video_folder, load_pairs, traffic_video_pairs

    notes = ["Y-channel PSNR/SSIM (BT.601, MATLAB protocol), SR quantised to uint8, "
             f"border of {args.scale} px shaved; x{args.scale}."]
    datasets, sequences = [], {}
    encoded = not is_unencoded(args.bitrate)
    for d in args.dataset:
        traffic = args.traffic or is_video_folder(d)
        label = dataset_label(d, traffic, encoded)
        if traffic and args.stabilise:
            sequences[label] = traffic_video_pairs(d, args.scale, args.frames_per_clip, args.bitrate,
                                                   history=STABILISE_HISTORY)
            pairs = [(name, seq[-1], hr) for name, seq, hr in sequences[label]]
        elif traffic:
            pairs = traffic_video_pairs(d, args.scale, args.frames_per_clip, args.bitrate)
            lr = (f"then H.264 (libx264) at bitrate {args.bitrate}" if encoded else "not re-encoded")
            notes.append(f"{label}: {len(pairs)} frames of the clips in {d.name}, MATLAB bicubic x1/{args.scale} "
                         f"{lr}, scored against the original frames.")
        else:
            pairs = load_pairs(d, args.scale)
            shipped = (d / "LR_bicubic" / f"X{args.scale}").is_dir()
            notes.append(f"{label}: {len(pairs)} images, LR " +
                         ("shipped with the dataset (MATLAB bicubic)." if shipped else "by MATLAB-compatible bicubic."))
        datasets.append((label, pairs))
    return datasets, sequences, notes


def _report_quality(args: argparse.Namespace, rows: list, per_image: list, notes: list[str]) -> None:
    """The table on the console; eval.csv, eval.md and eval_per_image.csv in ``--out-dir``."""
    from rich.console import Console
    from rich.table import Table

    from ..quality.evaluate import write_csv, write_markdown

    table = Table(title=f"UltraRes eval x{args.scale} (Y channel, border {args.scale} px shaved)")
    for col, justify in (("dataset", "left"), ("method", "left"), ("alpha", "right"), ("PSNR dB", "right"),
                         ("vs bicubic", "right"), ("SSIM", "right"), ("sharpness", "right"), ("images", "right")):
        table.add_column(col, justify=justify)
    for r in rows:
        table.add_row(r.dataset, r.method, r.alpha or "-", f"{r.psnr:.2f}",
                      "" if r.method == "bicubic" else f"{r.delta_psnr:+.2f}", f"{r.ssim:.4f}",
                      f"{r.sharpness:.3f}", str(r.images))
    Console().print(table)
    out = args.out_dir
    csv_path = write_csv(rows, out / "eval.csv")
    md_path = write_markdown(rows, out / "eval.md", title=f"UltraRes evaluation x{args.scale}",
                             notes="\n".join(f"- {n}" for n in notes) +
                                   "\n- sharpness: mean Y gradient magnitude relative to the original (1 = as detailed).")
    _write_per_image(per_image, out / "eval_per_image.csv")
    log.info("wrote %s, %s and %s", csv_path, md_path, out / "eval_per_image.csv")


def run_plates(args: argparse.Namespace, models: list[str], alphas: list[float], ensembles: list[int]) -> int:
    """``--task plates``: character accuracy of an OCR on each method's plates (quality.plate_reading)."""
    import csv

    from rich.console import Console
    from rich.table import Table

    from ..errors import UserError
    from ..quality.evaluate import model_label, upscaler_fn
    from ..quality.plate_reading import photo_samples, rapidocr_reader, read_annotations, score_plates
    from ..upscaler import Upscaler

    plates = [p for d in args.dataset for p in read_annotations(d)][: args.max_plates]
    methods = {}
    for spec in models:
        for a in alphas:
            for n in ensembles:
                up = Upscaler(model=spec, alpha=a, device=args.device, precision="fp32", ensemble=n)
                if up.scale != args.scale:
                    raise UserError(f"model {spec} is x{up.scale}, the evaluation is x{args.scale}")
                methods[model_label(spec, n) + (f" a={a:g}" if up.is_pair else "")] = upscaler_fn(up)
            if not up.is_pair:
                break
    result = score_plates(photo_samples(plates), methods, rapidocr_reader(), args.scale)

    table = Table(title=f"Plate readability x{args.scale}: {result.count} plates, RapidOCR character accuracy")
    for col in ("method", "accuracy", "gap closed"):
        table.add_column(col, justify="left" if col == "method" else "right")
    lines = ["| method | character accuracy | share of the bicubic -> original gap closed |",
             "| --- | ---: | ---: |"]
    for label, acc in result.accuracy.items():
        gap = "" if label in ("original", "bicubic") else f"{100 * result.gap(label):.0f} %"
        table.add_row(label, f"{acc:.3f}", gap)
        lines.append(f"| {label} | {acc:.3f} | {gap} |")
    Console().print(table)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "plates.md").write_text(
        f"# Plate readability x{args.scale}\n\n{result.count} plates from "
        f"{', '.join(str(d) for d in args.dataset)}: each crop down-scaled x1/{args.scale} (MATLAB bicubic), "
        "up-scaled by each method, the plate box read by RapidOCR (PP-OCR recogniser); character accuracy = "
        "1 - edit distance / length on letters and digits.\n\n" + "\n".join(lines) + "\n")
    with (out / "plates.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(result.reads[0]))
        w.writeheader()
        w.writerows(result.reads)
    log.info("wrote %s and %s", out / "plates.md", out / "plates.csv")
    return 0


def run_plates_clip(args: argparse.Namespace, models: list[str]) -> int:
    """``--task plates-clip``: plates read from synthetic multi-frame passes (quality.plates_clip)."""
    import csv

    import cv2
    import numpy as np
    import torch

    from ..errors import UserError
    from ..quality.evaluate import upscaler_fn
    from ..quality.plate_reading import photo_samples, rapidocr_reader, read_annotations
    from ..quality.plates_clip import ClipProtocol, markdown, scene_starts, score_clip_plates, score_scene_plates
    from ..upscaler import Upscaler

    if args.scale != 4:
        raise UserError("--task plates-clip is defined for x4 (--scale 4)")
    cv2.setNumThreads(1)  # the fusion's speed is measured on one core
    torch.set_num_threads(1)
    plates = [p for d in args.dataset for p in read_annotations(d)]
    if args.scene_windows < 0:
        raise UserError(f"--scene-windows must be 0 or more, got {args.scene_windows}")
    if args.limit is not None:
        if args.limit < 1:
            raise UserError(f"--limit must be at least 1, got {args.limit}")
        plates = [plates[i] for i in sorted(set(np.linspace(0, len(plates) - 1, args.limit).round().astype(int)))]
    model = None
    if models:
        up = Upscaler(model=models[0], alpha=0.0, device=args.device, precision="fp32")
        if up.scale != 4:
            raise UserError(f"model {models[0]} is x{up.scale}, the evaluation is x4")
        model = upscaler_fn(up)
    protocol = ClipProtocol()
    progress = lambda i: log.info("plates-clip: %d / %d plates", i, len(plates))  # noqa: E731
    reader = rapidocr_reader()
    rows, timings = score_clip_plates(photo_samples(plates), reader, model, protocol, progress)
    text = markdown(rows, protocol, timings)
    if args.scene_windows > 0:
        scene = score_scene_plates(reader, model, protocol, scene_starts(args.scene_windows),
                                   lambda s: log.info("plates-clip: scene window at frame %d", s))
        text += ("\n## The demo scene's plates in their own motion\n\n" + markdown(scene, protocol, [])
                 if scene else "")
        rows += scene
    print(text)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    model_note = f"single-frame model: {models[0]} at alpha 0. " if models else ""
    (out / "plates_clip.md").write_text(f"# Plates from many frames x4\n\n{model_note}" + text)
    with (out / "plates_clip.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    log.info("wrote %s and %s", out / "plates_clip.md", out / "plates_clip.csv")
    return 0


def run_flicker(args: argparse.Namespace, models: list[str], alphas: list[float]) -> int:
    """``--task flicker``: static-region flicker per clip and method, relative to bicubic (quality.flicker)."""
    from ..config import StabiliseConfig
    from ..errors import UserError
    from ..quality.datasets import videos_in
    from ..quality.evaluate import bicubic_upscale, model_label
    from ..quality.flicker import measure, upscaler_methods
    from ..upscaler import Upscaler

    if args.frames < 2:
        raise UserError(f"--frames must be at least 2, got {args.frames}")
    clips = [c for d in args.dataset for c in (videos_in(d) if d.is_dir() else [d])]
    if not clips:
        raise UserError("no clips found in " + ", ".join(str(d) for d in args.dataset))
    settings = StabiliseConfig().settings()
    ups = []
    for spec in models:
        for a in alphas:
            up = Upscaler(model=spec, alpha=a, device=args.device, precision="fp32")
            ups.append((model_label(spec) + (f" a={a:g}" if up.is_pair else ""), up))
            if not up.is_pair:
                break
    results: dict[str, dict[str, float]] = {}
    for clip in clips:
        for name, frames, scene, shake in _flicker_inputs(clip, args):
            methods = {"bicubic": lambda lr: bicubic_upscale(lr, args.scale)}
            for label, up in ups:
                methods.update(upscaler_methods(up, label, settings))
            profile = args.profile and scene is None
            if profile:
                methods = _recording(methods, frames, args.scale)
            results[name] = measure(frames, methods, args.scale, scene=scene, shake=shake)
            log.info("%s: %d frames, flicker %s", name, len(frames),
                     ", ".join(f"{k} {v:.3f}" for k, v in results[name].items()))
            if profile:
                _write_profile(methods, args.out_dir / f"flicker_{_slug(clip.stem)}.png")

    _report_flicker(args, results, settings)
    return 0


def _flicker_inputs(clip, args: argparse.Namespace):
    """(name, camera frames, scene frames or None, camera offsets or None) of a clip: as it is,
    then one noisy camera per ``--noise`` sigma (static pixels from the clean scene), and with
    ``--shake`` the same noisy camera shaking."""
    from ..errors import UserError
    from ..quality.flicker import clip_frames, noisy_clip_frames, shake_path

    frames = clip_frames(clip, args.frames)
    if len(frames) < 2:
        raise UserError(f"{clip}: fewer than 2 frames in its second half")
    yield clip.stem, frames, None, None
    for sigma in args.noise:
        scene, camera = noisy_clip_frames(clip, args.frames, sigma, args.bitrate)
        yield f"{clip.stem} noise {sigma:g}", camera, scene, None
        if args.shake > 0:
            path = shake_path(len(scene), args.shake, args.scale)
            scene, camera = noisy_clip_frames(clip, args.frames, sigma, args.bitrate, path, args.scale)
            yield f"{clip.stem} noise {sigma:g} shake {args.shake:g}", camera, scene, path


def _report_flicker(args: argparse.Namespace, results: dict[str, dict[str, float]], settings) -> None:
    """The flicker table on the console and flicker.md in ``--out-dir``."""
    from rich.console import Console
    from rich.table import Table

    names = list(next(iter(results.values())))
    table = Table(title=f"Flicker x{args.scale}: change on static pixels, relative to bicubic ({args.frames} frames)")
    table.add_column("method")
    for clip in results:
        table.add_column(clip, justify="right")
    table.add_column("mean", justify="right")
    lines = ["| method | " + " | ".join(results) + " | mean |", "| --- |" + " ---: |" * (len(results) + 1)]
    for name in names:
        ratios = [results[c][name] / results[c]["bicubic"] for c in results]
        cells = [f"{r:.2f}x" for r in ratios] + [f"{sum(ratios) / len(ratios):.2f}x"]
        table.add_row(name, *cells)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    Console().print(table)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "flicker.md").write_text(
        f"# Flicker x{args.scale}\n\n{args.frames} consecutive frames from the second half of each clip, "
        "upscaled in order; mean |change of Y| between frames on static pixels (no channel of the input changed "
        "by 2 levels or more in the 3x3 neighbourhood), divided by bicubic's. Stabiliser: the default "
        f"settings ({settings}).{_noise_note(args)}\n\n" + "\n".join(lines) + "\n\nAbsolute values (Y levels):\n\n" +
        "\n".join(f"- {c}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()) for c, r in results.items()) + "\n")
    log.info("wrote %s", out / "flicker.md")


def _noise_note(args: argparse.Namespace) -> str:
    """What the ``noise SIGMA`` columns are (empty without ``--noise``)."""
    if not args.noise:
        return ""
    from ..quality.flicker import NOISY_CONTEXT

    return (" Columns `CLIP noise SIGMA`: the clip as a camera with sensor noise delivers it (Gaussian, SIGMA levels "
            "at mid-grey, growing with the square root of the signal, seeded), encoded with libx264 at "
            f"`--bitrate {args.bitrate}` ({NOISY_CONTEXT} frames before the scored ones) and decoded; their static "
            "pixels are those of the clean clip (`quality/flicker.py`)." + (
                f" Columns `CLIP noise SIGMA shake {args.shake:g}`: the same camera shaking (a random walk of up to "
                f"{args.shake:g} pixels, `shake_path`, before the noise); each output is moved back onto the scene by "
                "the known path and the edges the shake reaches are left out." if args.shake > 0 else ""))


class _Recorder:
    """Wraps a method (LR -> SR) and keeps, of each output, only what the profile picture shows:
    the profile row's segment, and the crop of the middle frame."""

    def __init__(self, fn, layout: dict, mid: int):
        self.fn, self.layout, self.mid = fn, layout, mid
        self.rows, self.crop, self._n = [], None, 0

    def __call__(self, lr):
        out = self.fn(lr)
        row, x0, x1 = self.layout["row"]
        self.rows.append(out[row, x0:x1].copy())
        if self._n == self.mid:
            (y0, y1), (cx0, cx1) = self.layout["crop"]
            self.crop = out[y0:y1, cx0:cx1].copy()
        self._n += 1
        return out


def _profile_layout(frames: list, scale: int) -> dict:
    """Where the picture looks, in HR pixels, decided from the LR frames alone: the row segment of a
    still, textured area (``row``: (y, x0, x1)) and the box where the input moves most (``crop``)."""
    import numpy as np
    from scipy.ndimage import uniform_filter

    lr = np.stack([f.astype(np.int16) for f in frames])
    motion = np.abs(np.diff(lr, axis=0)).max(axis=(0, 3)).astype(float)  # HxW: largest change in time
    h, w = motion.shape
    band = max(8, 96 // scale)
    span = min(w, 2 * band)  # LR pixels of the profile row and of the crop's width
    texture = np.abs(np.diff(lr[0].mean(axis=2), axis=1))  # horizontal detail of the first frame
    still_detail = uniform_filter(texture / (1.0 + motion[:, 1:]), size=(1, span), mode="constant")
    top = int(h * 0.1)
    row, px = np.unravel_index(np.argmax(still_detail[top: int(h * 0.9)]), still_detail[top:].shape)
    px = int(np.clip(px - span // 2, 0, w - span))
    busy = uniform_filter(motion, size=(band, 2 * band), mode="constant")
    cy, cx = np.unravel_index(np.argmax(busy), busy.shape)
    y0 = int(np.clip(cy - band // 2, 0, max(0, h - band))) * scale
    x0 = int(np.clip(cx - band, 0, max(0, w - 2 * band))) * scale
    return {"row": ((int(row) + top) * scale, px * scale, (px + span) * scale),
            "crop": ((y0, y0 + band * scale), (x0, x0 + 2 * band * scale))}


def _recording(methods: dict, frames: list, scale: int) -> dict:
    """Bicubic and the first model without and with the stabiliser (its default settings), wrapped
    in :class:`_Recorder`s."""
    first = next((n for n in methods if n != "bicubic"), None)
    shown = {"bicubic", first, f"{first} stabilised"}
    layout = _profile_layout(frames, scale)
    return {n: _Recorder(fn, layout, len(frames) // 2) if n in shown else fn for n, fn in methods.items()}


def _write_profile(methods: dict, path: Path) -> None:
    """The recorded methods side by side: on top the temporal profile (the row stacked over the
    frames, 3 px a frame: steady = vertical stripes), below the crop around the largest motion."""
    import numpy as np
    from PIL import Image, ImageDraw

    tiles = []
    for name, rec in methods.items():
        if not isinstance(rec, _Recorder):
            continue
        profile = np.repeat(np.stack(rec.rows), 3, axis=0)
        crop = rec.crop
        tile = np.zeros((14 + profile.shape[0] + 4 + crop.shape[0], max(profile.shape[1], crop.shape[1]), 3),
                        np.uint8)
        tile[14: 14 + profile.shape[0], : profile.shape[1]] = profile
        tile[18 + profile.shape[0]:, : crop.shape[1]] = crop
        img = Image.fromarray(tile)
        ImageDraw.Draw(img).text((2, 1), name, fill=(255, 255, 255))
        tiles.append(np.asarray(img))
    grid = np.concatenate([np.pad(t, ((0, 0), (0, 8), (0, 0))) for t in tiles], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    log.info("wrote %s", path)


def _write_per_image(records: list[dict], path: Path) -> None:
    import csv

    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["dataset", "method", "alpha", "name", "psnr", "ssim", "sharpness"])
        w.writeheader()
        for r in records:
            w.writerow({**r, "psnr": f"{r['psnr']:.4f}", "ssim": f"{r['ssim']:.5f}",
                        "sharpness": f"{r['sharpness']:.4f}"})


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _parse_box(text: str) -> tuple[int, int, int, int]:
    from ..errors import UserError

    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--grid-box must be X,Y,W,H in pixels, e.g. 100,80,192,128; got {text!r}") from None
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise UserError(f"--grid-box {text!r}: X and Y must be >= 0, W and H > 0")
    return x, y, w, h


def _match_grid_names(names: list[str], datasets: list[tuple[str, list]]) -> set[tuple[str, str]]:
    """(dataset label, pair name) for each --grid NAME: an exact pair name, or a clip's first frame."""
    from ..errors import UserError

    found = set()
    for wanted in names:
        hits = []
        for label, pairs in datasets:
            exact = [n for n, _, _ in pairs if n == wanted]
            frames = [n for n, _, _ in pairs if n.startswith(wanted + "#")]
            if exact or frames:
                hits.append((label, (exact or frames)[0]))
        if not hits:
            known = ", ".join(n for _, pairs in datasets for n, _, _ in pairs[:8])
            raise UserError(f"--grid {wanted!r}: no such image or clip in the datasets (e.g. {known})")
        found.update(hits)
    return found


def _write_grid(tiles: list, box, path: Path) -> None:
    from PIL import Image

    from ..errors import UserError
    from ..quality.evaluate import picture_grid

    try:
        grid = picture_grid(tiles, box)
    except ValueError as exc:
        raise UserError(f"{path.name}: {exc}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    log.info("wrote %s", path)
