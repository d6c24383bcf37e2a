"""``ultrares zoom``: a box of a clip, fused from the frames around a time onto the x4 grid."""
from __future__ import annotations

import argparse
from pathlib import Path

from .options import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "zoom", help="fuse a marked box (a plate) from the frames around a time into one x4 crop",
        description="Multi-frame evidence zoom: the box marked at --at (x,y,w,h in the clip's pixels) is "
                    "tracked over the --frames frames around that time by registration (NCC, then ECC), "
                    "each frame's pixels are placed at their sub-pixel positions on the x4 grid and fused "
                    "robustly (frames that disagree are dropped, codec errors down-weighted). The PNG carries "
                    "its provenance (frames and timestamps used, registration residuals, method) and says "
                    "'unreadable' where fusion cannot help (too few frames agree, a box too small).",
        epilog="example: ultrares zoom clip.mp4 --at 3.2 --box 412,280,40,16 -o plate.png  (docs/fusion.md)")
    p.add_argument("clip", type=Path, help="video file")
    p.add_argument("--at", type=float, required=True, metavar="TIME", help="seconds from the start of the clip")
    p.add_argument("--box", required=True, metavar="X,Y,W,H", help="the box in the clip's pixels at TIME")
    p.add_argument("--frames", type=positive_int, default=16, help="frames around TIME to fuse (default 16)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output image (PNG keeps all provenance)")
    p.set_defaults(func=run)


def parse_box(text: str) -> tuple[int, int, int, int]:
    """``X,Y,W,H`` -> ints; UserError naming the option otherwise."""
    from ..errors import UserError

    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--box must be X,Y,W,H in pixels, e.g. 412,280,40,16; got {text!r}") from None
    if w < 2 or h < 2:
        raise UserError(f"--box {text}: W and H must be at least 2 pixels")
    return x, y, w, h


def check_inside(box: tuple[int, int, int, int], shape: tuple[int, ...]) -> None:
    from ..errors import UserError

    x, y, w, h = box
    fh, fw = shape[:2]
    if x < 0 or y < 0 or x + w > fw or y + h > fh:
        raise UserError(f"--box {x},{y},{w},{h} is outside the {fw}x{fh} frame")


def run(args: argparse.Namespace) -> int:
    import time

    import numpy as np
    import torch

    from ..fusion.crop import fuse_box
    from ..fusion.decode import frames_around
    from ..fusion.evidence import tags
    from ..images import Picture, format_for_path, write_image

    box = parse_box(args.box)
    format_for_path(args.output)  # an unsupported extension fails before the work
    frames = frames_around(args.clip, args.at, args.frames)
    check_inside(box, frames.rgb[frames.reference].shape)
    start = time.perf_counter()
    crop = fuse_box(frames.rgb, frames.times, frames.reference, box, keyframes=frames.keyframes)
    seconds = time.perf_counter() - start
    colour = torch.from_numpy(np.ascontiguousarray(crop.image)).permute(2, 0, 1)[None].float() / 255.0
    write_image(Picture(colour), args.output, provenance=tags(crop))
    print(f"{args.output}: {crop.summary()}; {seconds:.2f} s")
    return 0
