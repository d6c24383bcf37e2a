"""``ultrares enhance INPUT... -o OUTPUT``: upscale image files, folders and recorded video."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DEFAULT_ALPHA, RECORDED_CRF, RECORDED_PRESET, StabiliseConfig
from ..errors import UserError
from ..models.defaults import DEFAULT_MODELS
from ..sizes import is_decimal, parse_size
from ..sources import VIDEO_SUFFIXES
from .options import add_device, add_precision, add_threads

log = logging.getLogger("ultrares.enhance")



def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "enhance", help="upscale image files, folders of images, or recorded video",
        description="Upscale PNG, JPEG, WebP, BMP and TIFF images (type detected from content), folders of "
                    "them (recursively, mirrored under OUTPUT) and recorded video files. Alpha channels are "
                    "kept, grayscale stays grayscale, 16-bit PNG stays 16-bit. A file that cannot be read is "
                    "reported in one line and the batch goes on; the exit status is 1 if any file failed.",
        epilog="examples:  ultrares enhance photo.jpg -o photo_x4.png\n"
               "           ultrares enhance shots/ -o shots_4k/ --size 4k --alpha 0.3\n"
               "           ultrares enhance clip.mp4 -o clip_1080p.mp4 --size 1080p",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", type=Path, help="image or video files, or folders")
    p.add_argument("-o", "--output", required=True, type=Path,
                   help="output file (one input file) or folder (created if needed)")
    p.add_argument("--model", default=None,
                   help="registry name, checkpoint path, or PSNR.pth+GAN.pth pair (default: the device's, "
                        + ", ".join(f"{m} on {d}" for d, m in DEFAULT_MODELS.items()) + "; see `ultrares models`)")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help=f"for a pair: 0 = faithful (PSNR net) ... 1 = detailed (GAN net) (default {DEFAULT_ALPHA})")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, help="output size as a multiple of the input (default: the model's)")
    size.add_argument("--size", help="fit the output inside 720p, 1080p, 1440p, 4k or WIDTHxHEIGHT, "
                                     "keeping the aspect ratio")
    p.add_argument("--tile", type=int, default=None,
                   help="tile side in input pixels; 0 = never tile (default: automatic from free memory)")
    p.add_argument("--ensemble", type=int, default=1, metavar="PASSES",
                   help="average the network over 2, 4 or 8 orientations of each frame (self-ensemble): "
                        "more faithful, that many times slower (default 1)")
    add_device(p)
    add_precision(p)  # fp32 keeps the full precision of 16-bit images
    p.add_argument("--preset", default=RECORDED_PRESET,
                   help=f"videos: libx264 preset (default {RECORDED_PRESET}; medium or slow for slightly more quality, "
                        "veryfast or ultrafast to go faster)")
    p.add_argument("--crf", type=_crf, default=RECORDED_CRF,
                   help=f"videos: libx264 constant quality, 0-51 (default {RECORDED_CRF})")
    p.add_argument("--no-stabilise", dest="stabilise", action="store_false",
                   help="videos: turn the temporal stabiliser off (it holds the output where the input is still: "
                        "less flicker, docs/eval.md)")
    add_threads(p)
    p.add_argument("--alpha-upsampler", default="model", choices=["model", "bicubic"],
                   help="how transparency is upscaled: through the model as a grey image (default, as "
                        "Real-ESRGAN does) or bicubic")
    p.set_defaults(func=run)


@dataclass
class Job:
    src: Path
    dst: Path  # a folder in folder mode (the name is decided once the type is known), else the file
    to_folder: bool
    kind: str = "image"  # or "video"


def plan_jobs(inputs: list[Path], output: Path) -> list[Job]:
    """Pair each input file with its destination. Folder inputs are walked recursively
    (image and video extensions only, hidden files skipped) and mirrored under ``output``."""
    for src in inputs:
        if not src.exists():
            raise UserError(f"{src}: no such file or folder")
        if not src.is_file() and not src.is_dir():  # a FIFO, a device such as /dev/zero, a socket
            raise UserError(f"{src}: not a regular file or folder")
    single_file = len(inputs) == 1 and inputs[0].is_file()
    if single_file and not output.is_dir() and not str(output).endswith(("/", "\\")):
        if not output.suffix:
            raise UserError(f"{output}: give the output file an extension (.png, .jpg, .mp4 ...) "
                            "or end it with / for a folder")
        return [Job(inputs[0], output, False)]
    if output.exists() and not output.is_dir():
        raise UserError(f"{output}: exists and is not a folder (several inputs need an output folder)")
    from ..images import IMAGE_SUFFIXES

    wanted = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    out_root = output.resolve()
    jobs = []
    for src in inputs:
        if src.is_file():
            jobs.append(Job(src, output, True))
            continue
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src)
            if not path.is_file() or any(part.startswith(".") for part in rel.parts):
                continue
            if path.suffix.lower() not in wanted:
                log.debug("skipping %s (not an image or video extension)", path)
                continue
            if out_root in path.resolve().parents:
                continue  # an earlier run's output inside the input folder
            jobs.append(Job(path, output / rel.parent, True))
    if not jobs:
        raise UserError(f"no image or video files found in {', '.join(map(str, inputs))}")
    return jobs


def run(args: argparse.Namespace) -> int:
    size = parse_size(args.size) if args.size else None
    if args.scale is not None and not 0 < args.scale <= 16:
        raise UserError(f"--scale must be between 0 and 16, not {args.scale}")
    from ..models.interpolation import check_alpha

    check_alpha(args.alpha)
    jobs = plan_jobs(args.inputs, args.output)
    for job in jobs:
        job.kind = _kind(job.src)
    seen = Claims.of(jobs)
    upscaler = _make_upscaler(args)
    failures = 0
    progress = _progress(len(jobs))
    with progress:
        task = progress.add_task("enhancing", total=len(jobs))
        for job in jobs:
            try:
                _one(job, upscaler, args, size, seen, video_progress=len(jobs) == 1)
            except UserError as exc:
                failures += 1
                _fail(progress, f"{exc}")
            except Exception as exc:  # a bug or resource problem on one file must not stop the batch
                failures += 1
                log.debug("failure on %s", job.src, exc_info=True)
                _fail(progress, f"{job.src}: failed: {exc.__class__.__name__}: {exc}")
            progress.advance(task)
    done = len(jobs) - failures
    log.info("%d of %d file(s) enhanced%s", done, len(jobs), f", {failures} failed" if failures else "")
    return 1 if failures else 0


def _fail(progress, message: str) -> None:
    """One line per failed file, on stderr (above the progress bar while it shows)."""
    line = f"ultrares enhance: error: {message}"
    if progress.disable:
        print(line, file=sys.stderr, flush=True)
    else:
        progress.console.print(line, style="red", markup=False, highlight=False, soft_wrap=True)


def _progress(count: int):
    """A bar over files when there are several and the output is a terminal."""
    from rich import get_console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    console = get_console()  # the one the log handler writes to, so log lines print above the bar
    return Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), disable=count < 2 or not console.is_terminal, console=console)


def _kind(src: Path) -> str:
    from ..images import detect_format

    if detect_format(src) is not None:
        return "image"
    from .. import recorded  # torch and PyAV: imported only when a file is enhanced

    if src.suffix.lower() in VIDEO_SUFFIXES or recorded.is_video(src):
        return "video"  # a damaged video is reported as a video that cannot be read, not as an image
    return "image"


def _make_upscaler(args: argparse.Namespace):
    from ..upscaler import Upscaler

    if args.tile is not None and args.tile < 0:
        raise UserError(f"--tile must be 0 (never tile) or a positive number of pixels, not {args.tile}")
    return Upscaler(args.model, alpha=args.alpha, device=args.device, precision=args.precision, tile=args.tile,
                    ensemble=args.ensemble)


def _one(job: Job, upscaler, args, size, seen: Claims, video_progress: bool) -> None:
    from ..images import detect_format, enhance_image, format_for_path, output_name

    start = time.perf_counter()
    if job.kind == "video":
        dst = job.dst / job.src.name if job.to_folder else job.dst
        seen.claim(job.src, dst, video=True)
        info = _enhance_video(job.src, dst, upscaler, size, args.scale, video_progress, args.preset, args.crf,
                              args.threads, args.stabilise)
        info = info or {}
        log.info("%s -> %s (%s frames at %.1f fps, %s audio/subtitle packets copied, %.1f s)", job.src, dst,
                 info.get("frames", "?"), info.get("fps", 0.0), info.get("copied_packets", 0),
                 time.perf_counter() - start)
        return
    fmt = detect_format(job.src)
    if job.to_folder:
        if fmt is None:  # let the reader say exactly what is wrong
            from ..images import read_image

            read_image(job.src)
            raise UserError(f"{job.src}: not a supported image")
        from ..images import SUPPORTED_FORMATS

        if fmt not in SUPPORTED_FORMATS:
            raise UserError(f"{job.src}: {fmt} images are not supported (supported: {', '.join(SUPPORTED_FORMATS)})")
        dst, out_fmt = job.dst / output_name(job.src, fmt), fmt
    else:
        dst, out_fmt = job.dst, format_for_path(job.dst)
    seen.claim(job.src, dst)
    info = enhance_image(job.src, dst, upscaler, scale=args.scale, size=size,
                         alpha_mode=args.alpha_upsampler, fmt=out_fmt)
    (w, h), (ow, oh) = info["in_size"], info["out_size"]
    log.info("%s -> %s (%s, %dx%d -> %dx%d, %.1f s)", job.src, dst, info["kind"], w, h, ow, oh,
             time.perf_counter() - start)


@dataclass
class Claims:
    """The files of one run: every input's identity (:func:`admission.file_target`: links resolved)
    and the outputs claimed so far. No job may write an input of the run or another job's output."""

    inputs: dict[str, Path]
    outputs: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, jobs: list[Job]) -> Claims:
        from ..admission import file_target

        return cls({file_target(job.src).key: job.src for job in jobs})

    def claim(self, src: Path, dst: Path, video: bool = False) -> None:
        """Claim ``dst`` for ``src``'s job, or UserError (before anything is written)."""
        from ..admission import file_target

        if file_target(dst).key == file_target(src).key:
            raise UserError(f"{src}: the output would overwrite the input; choose another output")
        if video:
            from ..recorded import check_not_own_input, written_paths

            check_not_own_input(src, dst)
            paths = [path for _, path in written_paths(dst)]
        else:
            paths = [dst]
        for path in paths:
            other = self.inputs.get(file_target(path).key)
            if other is not None:
                raise UserError(f"{src}: its output would overwrite {other}, another input of this run; "
                                "choose another output")
        key = file_target(dst).key
        if key in self.outputs:
            raise UserError(f"{src}: its output {dst} is also the output of an earlier input; skipped")
        self.outputs.add(key)


def _crf(text: str) -> int:
    if not is_decimal(text) or not 0 <= int(text) <= 51:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 51, not {text!r}")
    return int(text)


def _enhance_video(src: Path, dst: Path, upscaler, size, scale, progress: bool, preset: str, crf: int,
                   threads: int | None = None, stabilise: bool = True):
    from .. import recorded

    if scale is not None:
        size = _scaled_video_size(src, scale)
    from ..publisher import EncoderSettings

    encoder = EncoderSettings(preset=preset, crf=crf, tune=None)
    return recorded.enhance_video(src, dst, upscaler, size=size, progress=progress, encoder=encoder,
                                  threads=threads, stabilise=StabiliseConfig(enabled=stabilise).settings())


def _scaled_video_size(src: Path, scale: float) -> tuple[int, int]:
    import av

    try:
        with av.open(str(src)) as container:
            stream = container.streams.video[0]
            w, h = stream.codec_context.width, stream.codec_context.height
    except (av.FFmpegError, IndexError) as exc:
        raise UserError(f"{src}: cannot read the video ({exc})") from None
    w, h = round(w * scale), round(h * scale)
    return max(2, w - w % 2), max(2, h - h % 2)
