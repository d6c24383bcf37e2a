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
        epilog="examples: ultrares zoom clip.mp4 --at 3.2 --box 412,280,40,16 -o plate.png; "
               "ultrares zoom clip.mp4 --auto -o plates/  (docs/fusion.md)")
    p.add_argument("clip", type=Path, help="video file")
    p.add_argument("--at", type=float, metavar="TIME", help="seconds from the start of the clip")
    p.add_argument("--box", metavar="X,Y,W,H", help="the box in the clip's pixels at TIME")
    p.add_argument("--auto", action="store_true",
                   help="instead of --at/--box: every plate-like region (RapidOCR's text detector, [dev] extra), "
                        "tracked and fused; -o is then a folder (one PNG per region and contact-sheet.png)")
    p.add_argument("--every", type=positive_int, default=5, help="--auto: detect regions every N frames (default 5)")
    p.add_argument("--seconds", type=float, default=20.0, help="--auto: the first SECONDS of the clip (default 20)")
    p.add_argument("--frames", type=positive_int, default=16, help="frames around TIME to fuse (default 16)")
    p.add_argument("--read", action="store_true",
                   help="also read the fused crop with the OCR (RapidOCR, [dev] extra): the text with each "
                        "character's confidence, printed and kept in the PNG; never on an 'unreadable' crop")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output image (PNG keeps all provenance); with --auto a folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError

    if args.auto:
        if args.at is not None or args.box is not None:
            raise UserError("--auto finds the regions itself: give no --at or --box")
        return run_auto(args)
    if args.at is None or args.box is None:
        raise UserError("give --at TIME and --box X,Y,W,H (or --auto)")
    return run_box(args)


def reading(args: argparse.Namespace):
    """crop -> (provenance keys, a line to print) for ``--read``; nothing without it. The OCR is
    loaded first, so a missing one fails before the work."""
    if not args.read:
        return lambda crop: ({}, "")
    from ..fusion.evidence import read, reading_tags
    from ..quality.plate_reading import READER_NAME, character_reader

    reader = character_reader()

    def read_crop(crop):
        got = read(crop, reader, READER_NAME)
        return reading_tags(got), ("; " + got.line() if got else "; not read (unreadable)")

    return read_crop


def run_box(args: argparse.Namespace) -> int:
    from ..fusion.clip import clip_crop, parse_box
    from ..fusion.evidence import tags
    from ..fusion.live import picture
    from ..images import format_for_path, write_image

    box = parse_box(args.box)
    format_for_path(args.output)  # an unsupported extension fails before the work
    read_crop = reading(args)
    made = clip_crop(args.clip, args.at, box, args.frames)
    keys, said = read_crop(made.crop)
    write_image(picture(made.image), args.output, provenance={**tags(made.crop), **keys})
    print(f"{args.output}: {made.crop.summary()}; {made.seconds:.2f} s{said}")
    return 0


def run_auto(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..fusion.auto import auto_zoom, contact_sheet, sheet_tags
    from ..fusion.evidence import tags
    from ..fusion.live import picture
    from ..images import write_image

    if args.output.exists() and not args.output.is_dir():
        raise UserError(f"-o {args.output}: with --auto the output is a folder, and this is a file")
    read_crop = reading(args)
    clip, plates = auto_zoom(args.clip, args.frames, args.every, args.seconds)
    args.output.mkdir(parents=True, exist_ok=True)
    for plate in plates:
        path = args.output / f"plate-{plate.track.id:02d}.png"
        keys, said = read_crop(plate.crop)
        write_image(picture(plate.crop.image), path,
                    provenance={**tags(plate.crop), **keys, "ultrares:track": str(plate.track.id)})
        print(f"{path}: {plate.crop.summary()}{said}")
    if plates:
        sheet = args.output / "contact-sheet.png"
        write_image(picture(contact_sheet(plates)), sheet, provenance=sheet_tags(plates))
        print(f"{sheet}: {len(plates)} tracked plate-like regions in {len(clip.rgb)} frames")
    else:
        print(f"{args.clip}: no plate-like region found in {len(clip.rgb)} frames")
    return 0
