"""Plates read from many frames (``ultrares eval --task plates-clip``).

For each annotated plate (see :mod:`.plates`), a synthetic pass of the vehicle: a window of the
photo around the plate (``WINDOW`` HR pixels, the plate in the middle) is seen over 16 frames,
each with a random sub-pixel shift (+-1 LR pixel) and zoom (+-3 %) about the plate, the first
the photo itself; each frame is shrunk x1/4 with MATLAB bicubic and the sequence encoded as one
H.264 stream (libx264, camera settings, :func:`.datasets.h264_roundtrip`) at 0.3 or 0.1 bit per
pixel, or left uncompressed ("lossless"), and decoded. Frame 0 (the stream's I-frame) is the
reference, and its plate box, grown by ``MARGIN`` LR pixels, is the box every method up-scales
x4. The plate is read by the OCR on each output and scored like ``--task plates`` with O/0 and
I/1 folded; the score of a method is the share of the bicubic -> original gap it closes, with
the bicubic of the reference frame at the same bitrate.

Methods: bicubic of the reference frame; the single-frame network on it; the registered temporal
mean of the first N frames (LR, bicubic warps, then bicubic x4); the fusion of the first N frames
(:func:`ultrares_stream.fusion.crop.fuse_box`, with its learned refinement where installed, and
at the largest N the classical fusion alone beside it) and, to show what registration costs, the
same fusion of all the frames with the true motion.
"""
from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from ..fusion.crop import FusionSettings, frame_uses, fuse_box
from ..fusion.fuse import Observation, build_problem, robust_fuse
from ..fusion.registration import translation
from ..fusion.synthetic import PassSettings, lr_to_hr, random_motions, render, true_warp
from ..fusion.tracking import crop_box, track
from .datasets import h264_roundtrip, parse_bitrate
from .matlab_resize import imresize
from .plate_reading import char_accuracy
from .scores import psnr_y

BITRATES = ("lossless", "0.3bpp", "0.1bpp")
COUNTS = (1, 4, 8, 16)
WINDOW = (640, 384)  # HR pixels (w, h) of the photo each frame shows: 160x96 after x1/4
MARGIN = 2  # LR pixels around the plate box in the box every method up-scales
SCENE_SIZE = (960, 720)  # HR size of the demo scene's frames: 240x180 LR, plates about 7.5 LR pixels high
SCENE_STEP = 50  # frames between the starts of the scene's windows (2 s: other vehicles in view)
BUCKETS = ((0, 80, "< 80 px"), (80, 120, "80-120 px"), (120, 1 << 30, ">= 120 px"))


@dataclass(frozen=True)
class ClipProtocol:
    scale: int = 4
    counts: tuple[int, ...] = COUNTS
    bitrates: tuple[str, ...] = BITRATES
    motion: PassSettings = field(default_factory=PassSettings)
    fusion: FusionSettings = field(default_factory=FusionSettings)
    true_motion: bool = True
    seed: int = 0


def bucket(width: int) -> str:
    """The plate-width bucket (HR pixels of the photo) a plate is reported in."""
    return next(label for lo, hi, label in BUCKETS if lo <= width < hi)


def pass_window(image: np.ndarray, box: tuple[int, int, int, int], scale: int):
    """(window, box in it): ``WINDOW`` pixels of ``image`` centred on ``box`` and kept inside the
    image (smaller where the photo is), its size a multiple of 2 * ``scale`` (even LR frames)."""
    h, w = image.shape[:2]
    step = 2 * scale
    ww, wh = min(WINDOW[0], w) // step * step, min(WINDOW[1], h) // step * step
    x, y, bw, bh = box
    x0 = int(np.clip(x + bw // 2 - ww // 2, 0, w - ww)) // scale * scale
    y0 = int(np.clip(y + bh // 2 - wh // 2, 0, h - wh)) // scale * scale
    return np.ascontiguousarray(image[y0: y0 + wh, x0: x0 + ww]), (x - x0, y - y0, bw, bh)


def lr_box(box: tuple[int, int, int, int], scale: int, lr_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The LR box (x, y, w, h) holding the HR ``box`` plus ``MARGIN`` LR pixels, clipped to the frame."""
    x0, y0 = max(0, box[0] // scale - MARGIN), max(0, box[1] // scale - MARGIN)
    x1 = min(lr_shape[1], -(-(box[0] + box[2]) // scale) + MARGIN)
    y1 = min(lr_shape[0], -(-(box[1] + box[3]) // scale) + MARGIN)
    return x0, y0, x1 - x0, y1 - y0


def encode(frames: list[np.ndarray], bitrate: str) -> tuple[list[np.ndarray], list]:
    """(the frames through H.264 at ``bitrate`` (bits per pixel at 25 fps), or as they are
    (lossless); each frame's quantisers, None where not encoded)."""
    if bitrate == "lossless":
        return frames, [None] * len(frames)
    h, w = frames[0].shape[:2]
    quantisers: list = []
    return h264_roundtrip(frames, parse_bitrate(bitrate, w, h), quantisers), quantisers


def single_frame(frame: np.ndarray, box, upscale: Callable[[np.ndarray], np.ndarray], scale: int,
                 margin: int) -> np.ndarray:
    """``upscale`` of the box with ``margin`` LR pixels of context, cut back to the box (x``scale``)."""
    cx, cy, cw, ch = crop_box(box, margin, frame.shape)
    out = upscale(np.ascontiguousarray(frame[cy: cy + ch, cx: cx + cw]))
    x0, y0 = (box[0] - cx) * scale, (box[1] - cy) * scale
    return out[y0: y0 + box[3] * scale, x0: x0 + box[2] * scale]


def registered_mean(frames: list[np.ndarray], box, settings: FusionSettings) -> np.ndarray:
    """Every frame registered to frame 0 (as the fusion does), up-scaled x``scale`` by MATLAB bicubic,
    warped onto the reference's HR grid (bicubic) and averaged, rejected frames left out; the box, uint8."""
    s = settings.scale
    ref, (cx, cy, cw, ch), tracked = track(frames, 0, box, settings.margin, settings.search, settings.pad)
    uses = frame_uses(tracked, [0.0] * len(frames), [1.0] * len(frames), settings)
    c = lr_to_hr(s)
    flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
    warped = [cv2.warpPerspective(imresize(t.patch.astype(np.float32), scale=s).astype(np.float32),
                                  c @ t.registration.warp @ np.linalg.inv(c), (cw * s, ch * s), flags=flags,
                                  borderMode=cv2.BORDER_REPLICATE) for t, u in zip(tracked, uses) if u.weight > 0]
    mean = np.mean(warped, axis=0)
    x0, y0 = (box[0] - cx) * s, (box[1] - cy) * s
    return np.clip(np.round(mean[y0: y0 + box[3] * s, x0: x0 + box[2] * s]), 0, 255).astype(np.uint8)


def true_motion_fusion(frames: list[np.ndarray], warps: list[np.ndarray], box, settings: FusionSettings) -> np.ndarray:
    """The fusion with the motion that made the frames instead of the registered one; the box, uint8."""
    s, pad = settings.scale, settings.pad
    cx, cy, cw, ch = crop_box(box, settings.margin, frames[0].shape)
    obs = []
    for frame, warp in zip(frames, warps):
        x0, y0 = max(0, cx - pad - 2), max(0, cy - pad - 2)
        patch = frame[y0: cy + ch + pad + 2, x0: cx + cw + pad + 2]
        obs.append(Observation(patch, translation(-x0, -y0) @ warp @ translation(cx, cy)))
    fused = robust_fuse(build_problem(obs, (ch, cw), s), s, settings.fuse)
    x0, y0 = (box[0] - cx) * s, (box[1] - cy) * s
    return np.clip(np.round(fused[y0: y0 + box[3] * s, x0: x0 + box[2] * s]), 0, 255).astype(np.uint8)


def method_outputs(frames: list[np.ndarray], warps: list[np.ndarray], box, model: Callable | None,
                   protocol: ClipProtocol, timings: list[float],
                   quantisers: list | None = None) -> dict[tuple[str, int], tuple[np.ndarray, str]]:
    """(method, N) -> (the x4 picture of ``box``, the fusion's verdict or "") for every method and
    frame count; at the largest N also the classical fusion alone where the learned refinement is on.
    ``quantisers``: each frame's (:mod:`ultrares_stream.fusion.codec`), for the fusion's verdict."""
    quantisers = quantisers or [None] * len(frames)
    s, fs = protocol.scale, protocol.fusion
    out = {("bicubic", 1): (single_frame(frames[0], box, lambda lr: imresize(lr, scale=s), s, fs.margin), "")}
    if model is not None:
        out[("model", 1)] = (single_frame(frames[0], box, model, s, fs.margin), "")
    times = [i / 25 for i in range(len(frames))]
    top = max(protocol.counts)
    for n in protocol.counts:
        if n > 1:
            out[("temporal mean", n)] = (registered_mean(frames[:n], box, fs), "")
        start = time.perf_counter()
        crop = fuse_box(frames[:n], times[:n], 0, box, fs, [True] + [False] * (n - 1), quantisers[:n])
        out[("fusion", n)] = (crop.image, crop.verdict)
        if n == top:
            timings.append(time.perf_counter() - start)
        if n == top and crop.classical is not None:
            out[("classical fusion", n)] = (crop.classical, crop.verdict)
        if protocol.true_motion and n == top:
            out[("fusion, true motion", n)] = (true_motion_fusion(frames[:n], warps[:n], box, fs), "")
    return out


def score_plate(image: np.ndarray, box, text: str, reader, model, protocol: ClipProtocol, rng,
                timings: list[float]) -> list[dict]:
    """Per-plate rows ``{bitrate, method, n, accuracy, read}`` (and one for the original)."""
    s = protocol.scale
    window, inner = pass_window(image, box, s)
    centre = (inner[0] + inner[2] / 2, inner[1] + inner[3] / 2)
    motions = random_motions(rng, centre, s, protocol.motion)
    clean = [render(window, m, s) for m in motions]
    warps = [true_warp(m, s) for m in motions]
    return score_pass(Pass(clean, warps, window, inner, text), reader, model, protocol, timings)


@dataclass(frozen=True)
class Pass:
    """A plate seen over frames: the clean LR ``frames`` (frame 0 the reference), their true
    ``warps`` (None where unknown), the HR picture of frame 0 and the plate's box in it, its text."""

    frames: list[np.ndarray]
    warps: list[np.ndarray] | None
    picture: np.ndarray
    box: tuple[int, int, int, int]
    text: str


def score_pass(p: Pass, reader, model, protocol: ClipProtocol, timings: list[float], encoded=None) -> list[dict]:
    """Rows ``{bitrate, method, n, accuracy, read, verdict}`` of one pass, and one for the original;
    ``encoded``: bitrate -> the frames already through the codec and their quantisers (:func:`encode`;
    a scene's frames hold several plates)."""
    s, (bx, by, bw, bh) = protocol.scale, p.box
    lbox = lr_box(p.box, s, p.frames[0].shape)
    x, y, w, h = (bx - lbox[0] * s, by - lbox[1] * s, bw, bh)
    truth = np.ascontiguousarray(p.picture[by: by + bh, bx: bx + bw])
    text_read = reader(truth)
    rows = [{"bitrate": "-", "method": "original", "n": 1, "read": text_read, "verdict": "", "psnr": float("inf"),
             "accuracy": char_accuracy(text_read, p.text, fold=True)}]
    settings = protocol if p.warps is not None else replace(protocol, true_motion=False)
    for bitrate in protocol.bitrates:
        frames, quantisers = encoded[bitrate] if encoded else encode(p.frames, bitrate)
        for (method, n), (out, verdict) in method_outputs(frames, p.warps, lbox, model, settings, timings,
                                                          quantisers).items():
            plate = np.ascontiguousarray(out[max(0, y): y + h, max(0, x): x + w])
            got = reader(plate)
            rows.append({"bitrate": bitrate, "method": method, "n": n, "read": got, "verdict": verdict,
                         "psnr": psnr_y(plate, truth[: plate.shape[0], : plate.shape[1]], 0),
                         "accuracy": char_accuracy(got, p.text, fold=True)})
    return rows


def scene_passes(starts: Iterable[int], protocol: ClipProtocol, size: tuple[int, int] = SCENE_SIZE):
    """The demo scene's plates in their own motion: for each start frame, the HR frames ``size``
    from it (as many as the largest N), shrunk x1/``scale`` with MATLAB bicubic; one :class:`Pass`
    per plate wholly in the start frame and still wholly in the frame at the end of the window."""
    from ..demo.scene import render_scene_frame

    count = max(protocol.counts)
    for start in starts:
        boxes: list = []
        hr = [render_scene_frame(start + k, *size, plates=boxes if k == 0 else None) for k in range(count)]
        last: list = []
        render_scene_frame(start + count - 1, *size, plates=last)
        frames = [imresize(f, scale=1 / protocol.scale) for f in hr]
        kept = [b for b in boxes if b[4] in {t for *_, t in last}]
        yield start, [Pass(frames, None, hr[0], (x, y, w, h), text.replace(" ", "")) for x, y, w, h, text in kept]


def scene_starts(windows: int) -> tuple[int, ...]:
    """The start frames of ``windows`` windows of the demo scene."""
    return tuple(range(0, SCENE_STEP * windows, SCENE_STEP))


def score_scene_plates(reader, model, protocol: ClipProtocol = ClipProtocol(), starts: Iterable[int] = scene_starts(8),
                       progress: Callable | None = None) -> list[dict]:
    """Rows as :func:`score_clip_plates`' for the demo scene's plates in their own motion, each window's
    frames encoded once (real H.264 motion compensation across the moving vehicles)."""
    timings: list[float] = []
    rows = []
    for start, passes in scene_passes(starts, protocol):
        if not passes:
            continue
        encoded = {b: encode(passes[0].frames, b) for b in protocol.bitrates}
        for p in passes:
            for row in score_pass(p, reader, model, protocol, timings, encoded):
                rows.append({"image": f"scene@{start}", "width": p.box[2], "truth": p.text, **row})
        if progress:
            progress(start)
    return rows


def score_clip_plates(samples: Iterable[tuple[str, np.ndarray, tuple, str]], reader, model,
                      protocol: ClipProtocol = ClipProtocol(), progress: Callable | None = None):
    """(rows, timings): a row per plate x bitrate x method x N (with ``image``, ``width``, ``truth``),
    and the seconds of each 16-frame fusion (tracking included)."""
    rows, timings = [], []
    for i, (name, image, box, text) in enumerate(samples):
        rng = np.random.default_rng([protocol.seed, zlib.crc32(f"{name} {box}".encode())])  # a plate's own pass
        for row in score_plate(image, box, text, reader, model, protocol, rng, timings):
            rows.append({"image": name, "width": box[2], "truth": text, **row})
        if progress:
            progress(i + 1)
    return rows, timings


def mean_accuracy(rows: list[dict], bitrate: str, method: str, n: int, widths: tuple[int, int] = (0, 1 << 30)) -> float:
    """Mean character accuracy of one (bitrate, method, N) over plates of a width range (nan: none)."""
    got = [r["accuracy"] for r in rows if r["method"] == method and r["n"] == n
           and r["bitrate"] in (bitrate, "-") and widths[0] <= r["width"] < widths[1]]
    return float(np.mean(got)) if got else float("nan")


def gap_table(rows: list[dict], protocol: ClipProtocol, widths: tuple[int, int] = (0, 1 << 30)) -> list[dict]:
    """One dict per (method, N): ``{"method", "n", bitrate: (accuracy, gap closed), ...}``; the gap
    is measured from the bicubic of the reference frame at the same bitrate to the original."""
    methods = list(dict.fromkeys((r["method"], r["n"]) for r in rows if r["method"] != "original"))
    original = mean_accuracy(rows, "-", "original", 1, widths)
    table = []
    for method, n in methods:
        line = {"method": method, "n": n}
        for b in protocol.bitrates:
            acc, bic = mean_accuracy(rows, b, method, n, widths), mean_accuracy(rows, b, "bicubic", 1, widths)
            gap = original - bic
            line[b] = (acc, (acc - bic) / gap if gap > 1e-9 else float("nan"))
        table.append(line)
    return table


def verdict_table(rows: list[dict], protocol: ClipProtocol) -> list[str]:
    """Markdown lines: per bitrate, how many of the largest N's fused crops were judged unreadable,
    and the character accuracy of those and of the rest (what the verdict is worth)."""
    top = max(protocol.counts)
    lines = ["| bitrate | judged unreadable | their accuracy | accuracy of the rest |", "| --- | ---: | ---: | ---: |"]
    for b in protocol.bitrates:
        fused = [r for r in rows if r["method"] == "fusion" and r["n"] == top and r["bitrate"] == b]
        flagged = [r["accuracy"] for r in fused if r.get("verdict") == "unreadable"]
        rest = [r["accuracy"] for r in fused if r.get("verdict") != "unreadable"]
        mean = (lambda xs: f"{np.mean(xs):.3f}" if xs else "-")
        lines.append(f"| {b} | {len(flagged)} of {len(fused)} | {mean(flagged)} | {mean(rest)} |")
    return lines


def psnr_table(rows: list[dict], protocol: ClipProtocol) -> list[str]:
    """Markdown lines: the mean Y-PSNR (dB) of the plate box against the original, per method at
    N = 1 and the largest N, per bitrate (pixel fidelity beside what the OCR makes of it)."""
    top = max(protocol.counts)
    lines = ["| method | N | " + " | ".join(protocol.bitrates) + " |", "| --- | ---: |" + " ---: |" * len(protocol.bitrates)]
    for method, n in dict.fromkeys((r["method"], r["n"]) for r in rows if r["method"] != "original"):
        if n in (1, top):
            cells = [np.mean([r["psnr"] for r in rows if (r["method"], r["n"], r["bitrate"]) == (method, n, b)])
                     for b in protocol.bitrates]
            lines.append(f"| {method} | {n} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return lines


def markdown(rows: list[dict], protocol: ClipProtocol, timings: list[float]) -> str:
    """The overall table (every N) and the by-width table (the largest N) in Markdown."""
    plates = len({(r["image"], r["truth"], r["width"]) for r in rows})
    head = "| method | N | " + " | ".join(protocol.bitrates) + " |\n| --- | ---: |" + " ---: |" * len(protocol.bitrates)
    lines = [f"{plates} plates; share of the bicubic -> original gap closed (character accuracy, O/0 I/1 folded; "
             f"original {mean_accuracy(rows, '-', 'original', 1):.3f}).", "", head]
    for line in gap_table(rows, protocol):
        cells = [f"{100 * line[b][1]:+.0f} % ({line[b][0]:.3f})" for b in protocol.bitrates]
        lines.append(f"| {line['method']} | {line['n']} | " + " | ".join(cells) + " |")
    top = max(protocol.counts)
    lines += ["", f"By plate width in the photo, N = {top} (gap closed; plates in the bucket):", "",
              "| method | bucket | plates | " + " | ".join(protocol.bitrates) + " |",
              "| --- | --- | ---: |" + " ---: |" * len(protocol.bitrates)]
    for lo, hi, label in BUCKETS:
        count = len({(r["image"], r["truth"]) for r in rows if lo <= r["width"] < hi})
        if not count:
            continue
        for line in gap_table(rows, protocol, (lo, hi)):
            if (line["method"], line["n"]) == ("model", 1) or (line["n"] == top and line["method"] != "bicubic"):
                cells = [f"{100 * line[b][1]:+.0f} %" for b in protocol.bitrates]
                lines.append(f"| {line['method']} (N={line['n']}) | {label} | {count} | " + " | ".join(cells) + " |")
    lines += ["", f"The fusion's verdict, N = {top}:", ""] + verdict_table(rows, protocol)
    lines += ["", "Y-PSNR of the plate box against the original (dB):", ""] + psnr_table(rows, protocol)
    if timings:
        lines += ["", f"{top}-frame fusion (tracking included), one thread: median {np.median(timings):.3f} s, "
                      f"p90 {np.percentile(timings, 90):.3f} s, max {max(timings):.3f} s over {len(timings)} crops."]
    return "\n".join(lines) + "\n"
