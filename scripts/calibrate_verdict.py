#!/usr/bin/env python
"""Calibrate the fusion verdict's quantiser rule (``fusion.evidence.MIN_HEIGHT_AT_QP``) on drawn plates.

Each drawn picture (``train.plate_images``, never the AGPL ``plates/us`` photos, which are for
evaluation only) is cut to the evaluation's 640x384 window and seen in a 16-frame synthetic pass
(``fusion.synthetic``), shrunk x1/4 and encoded with libx264 at camera bitrates (``--bpp``); one
plate is fused as ``ultrares zoom`` fuses it (its box grown by 2 LR pixels, as the evaluation
does), and the OCR reads the fused crop. A row per (plate, bitrate): the box's height, the median
H.264 QP under it (``FusedCrop.quantiser``) and the character accuracy. Plates the OCR cannot read
in the original picture (accuracy < 0.8) are left out. It prints the mean accuracy by QP and box
height and, per QP band, the smallest height from which every taller band reads more than
``--unreadable`` on average (at most one character in ten right: the text would be invented):
the rule's table.

    .venv/bin/python scripts/calibrate_verdict.py --pictures 300 --out runs/verdict.jsonl
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ultrares_stream.fusion.crop import fuse_box
from ultrares_stream.fusion.synthetic import random_motions, render
from ultrares_stream.quality.plate_reading import char_accuracy, rapidocr_reader
from ultrares_stream.quality.plates_clip import WINDOW, encode, lr_box
from ultrares_stream.train.plate_images import plate_image

SCALE = 4
QP_BANDS = (25, 28, 31, 34, 37, 40, 52)
HEIGHTS = (10, 12, 14, 16, 18, 22, 26, 34, 1 << 10)


def rows_for_picture(rng: np.random.Generator, bitrates: list[str], reader) -> list[dict]:
    labels: list = []
    picture = plate_image(rng, WINDOW[0], labels)[: WINDOW[1]]
    plates = [(b, t) for b, t in labels if b[1] + b[3] < WINDOW[1] - 8 and len(t) >= 4]
    if not plates:
        return []
    (x, y, w, h), text = plates[0]
    original = char_accuracy(reader(np.ascontiguousarray(picture[y: y + h, x: x + w])), text, fold=True)
    if original < 0.8:
        return []
    clean = [render(picture, m, SCALE) for m in random_motions(rng, (x + w / 2, y + h / 2), SCALE)]
    box = lr_box((x, y, w, h), SCALE, clean[0].shape)
    ox, oy = x - box[0] * SCALE, y - box[1] * SCALE
    rows = []
    for bitrate in bitrates:
        frames, quantisers = encode(clean, bitrate)
        crop = fuse_box(frames, [k / 25 for k in range(len(frames))], 0, box,
                        keyframes=[True] + [False] * (len(frames) - 1), quantisers=quantisers)
        plate = np.ascontiguousarray(crop.image[max(0, oy): oy + h, max(0, ox): ox + w])
        rows.append({"bitrate": bitrate, "box_height": box[3], "plate_height": h / SCALE,
                     "qp": crop.quantiser[1] if crop.quantiser else None,
                     "accuracy": char_accuracy(reader(plate), text, fold=True), "truth": text})
    return rows


def table(rows: list[dict], unreadable: float) -> list[str]:
    """Markdown: mean accuracy (count) by QP band and box height, and the smallest readable height per band."""
    edges = (0,) + HEIGHTS
    head = ["QP \\ box height"] + [f"{a}-{b - 1}" if b < 1 << 10 else f">= {a}" for a, b in zip(edges, HEIGHTS)]
    head += ["smallest readable"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lo = 0
    for hi in QP_BANDS:
        band = [r for r in rows if r["qp"] is not None and lo <= r["qp"] < hi]
        cells, means, below = [], [], 0
        for top in HEIGHTS:
            got = [r["accuracy"] for r in band if below <= r["box_height"] < top]
            means.append((below, float(np.mean(got)) if got else None))
            cells.append(f"{np.mean(got):.2f} ({len(got)})" if got else "-")
            below = top
        known = [(h, m) for h, m in means if m is not None]
        least = next((h for i, (h, _) in enumerate(known) if all(m > unreadable for _, m in known[i:])), None)
        lines.append(f"| {lo}-{hi} | " + " | ".join(cells) + f" | {least if least is not None else '-'} |")
        lo = hi
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pictures", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bpp", default="0.3bpp,0.1bpp,0.07bpp,0.05bpp,0.035bpp")
    p.add_argument("--unreadable", type=float, default=0.10,
                   help="mean character accuracy at or below which a band is unreadable")
    p.add_argument("--out", type=Path, default=None, help="write the rows (JSON lines); an existing file is "
                                                          "read instead of measuring again")
    args = p.parse_args()
    if args.out is not None and args.out.exists():
        rows = [json.loads(line) for line in args.out.read_text().splitlines()]
    else:
        import torch

        torch.set_num_threads(1)
        reader, rng, rows = rapidocr_reader(), np.random.default_rng(args.seed), []
        for _ in range(args.pictures):
            rows += rows_for_picture(rng, args.bpp.split(","), reader)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} rows ({len(rows) // max(1, len(args.bpp.split(',')))} plates)\n")
    print("\n".join(table(rows, args.unreadable)))


if __name__ == "__main__":
    main()
