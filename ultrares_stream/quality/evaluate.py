"""Score an upscaler on evaluation pairs, and the tables ``ultrares eval`` prints and writes.

The protocol (the super-resolution papers'): the SR output is quantised to uint8, a border
of ``scale`` pixels is shaved, PSNR and SSIM are computed on the BT.601 Y channel
(:mod:`.metrics`), and the mean over images is reported. The baseline is MATLAB bicubic
up-scaling of the same LR input.
"""
from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from .matlab_resize import imresize
from .scores import psnr_y, sharpness_y, ssim_y

log = logging.getLogger(__name__)

__all__ = ["evaluate", "bicubic_upscale", "upscaler_fn", "evaluate_methods", "Row", "write_csv",
           "markdown_table", "write_markdown", "model_label",
           "picture_grid"]

UpscaleFn = Callable[[np.ndarray], np.ndarray]


def bicubic_upscale(lr_uint8: np.ndarray, scale: int) -> np.ndarray:
    """The baseline: MATLAB ``imresize(lr, scale, 'bicubic')`` on uint8 (rounded uint8 out)."""
    return imresize(np.asarray(lr_uint8, dtype=np.uint8), scale=scale)


def _quantise(sr) -> np.ndarray:
    sr = np.asarray(sr)
    if sr.dtype == np.uint8:
        return sr
    raise TypeError(f"upscale_fn must return uint8 pixels (quantise first), got {sr.dtype}")


def evaluate(pairs: Iterable[tuple[str, np.ndarray, np.ndarray]], upscale_fn: UpscaleFn, scale: int,
             keep: Collection[str] = ()) -> dict:
    """Mean Y-PSNR / SSIM (and sharpness relative to HR) of ``upscale_fn`` over ``pairs``.

    Returns ``{"psnr", "ssim", "sharpness", "count", "seconds", "per_image": [{"name", "psnr",
    "ssim", "sharpness"}, ...]}``. PSNR is ``inf`` for a perfect reconstruction (and the mean
    then too). The SR output must be ``HR``-sized uint8 (HR may be up to ``scale - 1`` pixels
    larger: it is cropped, as benchmark HR images are to a multiple of the scale). The SR images
    of the pairs named in ``keep`` are returned in ``"outputs"`` (name -> uint8 array).
    """
    per_image, outputs = [], {}
    t0 = time.perf_counter()
    for name, lr, hr in pairs:
        sr = _quantise(upscale_fn(lr))
        if sr.ndim == 2:
            sr = sr[:, :, None].repeat(3, axis=2)
        sh, sw = sr.shape[:2]
        if not (0 <= hr.shape[0] - sh < scale and 0 <= hr.shape[1] - sw < scale):
            raise ValueError(f"{name}: SR is {sw}x{sh} but HR is {hr.shape[1]}x{hr.shape[0]} (scale {scale})")
        hr = hr[:sh, :sw]
        if name in keep:
            outputs[name] = sr
        per_image.append({"name": name, "psnr": psnr_y(sr, hr, scale), "ssim": ssim_y(sr, hr, scale),
                          "sharpness": sharpness_y(sr, hr, scale)})
    if not per_image:
        raise ValueError("no images to evaluate")
    return {
        "psnr": float(np.mean([r["psnr"] for r in per_image])),
        "ssim": float(np.mean([r["ssim"] for r in per_image])),
        "sharpness": float(np.nanmean([r["sharpness"] for r in per_image])),
        "count": len(per_image),
        "seconds": time.perf_counter() - t0,
        "per_image": per_image,
        "outputs": outputs,
    }


def to_input(lr: np.ndarray, device):
    """LR uint8 HWC -> 1CHW float [0, 1] tensor on ``device`` (what an upscaler takes)."""
    import torch

    from ..colour import uint8_to_float

    return uint8_to_float(torch.from_numpy(np.ascontiguousarray(lr))).to(device)


def to_image(out) -> np.ndarray:
    """1CHW float [0, 1] output -> SR uint8 HWC on the host (rounded, as a file would hold it)."""
    from ..colour import float_to_uint8

    return float_to_uint8(out.float().cpu())[0].numpy()


def upscaler_fn(upscaler) -> UpscaleFn:
    """Wrap an :class:`~ultrares_stream.upscaler.Upscaler` as ``lr uint8 HWC -> sr uint8 HWC``."""
    import torch

    def run(lr: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return to_image(upscaler.upscale(to_input(lr, upscaler.device)))

    return run


@dataclass
class Row:
    """One line of an evaluation table."""
    dataset: str
    method: str      # "bicubic", or a model spec
    alpha: str       # "" for bicubic and single networks
    psnr: float
    ssim: float
    sharpness: float
    delta_psnr: float  # vs bicubic on the same pairs
    images: int
    seconds: float


def stabilised_fn(upscaler, settings) -> UpscaleFn:
    """``T x h x w x 3`` LR frames (oldest first) -> SR uint8 of the last, with a fresh temporal
    stabiliser (:mod:`ultrares_stream.temporal`) run over all of them, as a live camera would."""
    import torch

    from ..temporal import Stabiliser

    def run(frames: np.ndarray) -> np.ndarray:
        stab = Stabiliser(settings)
        with torch.inference_mode():
            for lr in frames:
                x = to_input(lr, upscaler.device)
                out = stab(x, upscaler.upscale(x).float())
            return to_image(out)

    return run


def evaluate_methods(dataset: str, pairs: Sequence, scale: int, models: Sequence[str] = (),
                     alphas: Sequence[float] = (0.0, 0.5, 1.0), device: str = "auto",
                     on_row: Callable[[Row, dict], None] | None = None, keep: Collection[str] = (),
                     sequences: Sequence | None = None, stabilise=None,
                     ensembles: Sequence[int] = (1,)) -> list[Row]:
    """Bicubic, then every model (every alpha for pairs) on the same pairs.

    ``sequences`` (the pairs with T x h x w x 3 LR clips ending at each scored frame) and
    ``stabilise`` (:class:`~ultrares_stream.temporal.StabiliserSettings`): each model row is
    followed by a ``stabilised`` row, the same model with the temporal stabiliser run over the clip.
    ``ensembles``: each model is scored once per entry, with that many self-ensemble passes
    (:mod:`~ultrares_stream.ensemble`; 1 = plain).

    Models are built with ``Upscaler(model=spec, alpha=a, device=device, precision="fp32")``;
    a model whose scale is not ``scale`` is a :class:`~ultrares_stream.errors.UserError`.
    ``on_row(row, result)`` is called as each row is done (result = :func:`evaluate`'s dict,
    with the SR images of the pairs named in ``keep``).
    """
    from ..errors import UserError

    rows: list[Row] = []

    def add(method: str, alpha: str, fn: UpscaleFn, on=None) -> None:
        res = evaluate(on if on is not None else pairs, fn, scale, keep=keep)
        base = rows[0].psnr if rows else res["psnr"]
        row = Row(dataset, method, alpha, res["psnr"], res["ssim"], res["sharpness"],
                  res["psnr"] - base, res["count"], res["seconds"])
        log.info("%s %s%s: PSNR %.2f dB, SSIM %.4f (%d images, %.1f s)", dataset, method,
                 f" alpha {alpha}" if alpha else "", row.psnr, row.ssim, row.images, row.seconds)
        rows.append(row)
        if on_row:
            on_row(row, res)

    add("bicubic", "", lambda lr: bicubic_upscale(lr, scale))
    if models:
        from ..upscaler import Upscaler

        for spec in models:
            up = Upscaler(model=spec, alpha=alphas[0] if alphas else 0.0, device=device, precision="fp32")
            if up.scale != scale:
                raise UserError(f"model {spec} is x{up.scale}, the evaluation is x{scale} (use --scale {up.scale})")
            for a in alphas if up.is_pair else [None]:
                if a is not None:
                    up.set_alpha(a)
                label = "" if a is None else f"{a:g}"
                for n in ensembles:
                    view = up.with_ensemble(n)
                    add(model_label(spec, n), label, upscaler_fn(view))
                    if sequences is not None and stabilise is not None:
                        add(f"{model_label(spec, n)} stabilised", label, stabilised_fn(view, stabilise), on=sequences)
    return rows


def model_label(spec: str, ensemble: int = 1) -> str:
    """Short table label for a model spec: registry names as they are, checkpoint paths by file
    stem; `` x8 ensemble`` after it for a self-ensemble of 8 passes."""
    parts = str(spec).split("+")
    if any("/" in p or "\\" in p or p.endswith((".pth", ".pt", ".safetensors")) for p in parts):
        label = "+".join(Path(p).stem for p in parts)
    else:
        label = str(spec)
    return label if ensemble == 1 else f"{label} x{ensemble} ensemble"


def _fmt(v: float, digits: int) -> str:
    return "inf" if math.isinf(v) else ("nan" if math.isnan(v) else f"{v:.{digits}f}")


def write_csv(rows: Sequence[Row], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[f.name for f in fields(Row)])
        w.writeheader()
        for r in rows:
            d = asdict(r)
            for k, digits in (("psnr", 4), ("ssim", 5), ("sharpness", 4), ("delta_psnr", 4), ("seconds", 2)):
                d[k] = _fmt(d[k], digits)
            w.writerow(d)
    return path


def markdown_table(rows: Sequence[Row]) -> str:
    """A GitHub Markdown table: dataset, method, alpha, Y-PSNR, gain over bicubic, SSIM, sharpness."""
    lines = ["| dataset | method | alpha | PSNR-Y (dB) | vs bicubic (dB) | SSIM-Y | sharpness | images |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        delta = "" if r.method == "bicubic" else f"{r.delta_psnr:+.2f}"
        lines.append(f"| {r.dataset} | {r.method} | {r.alpha or '-'} | {_fmt(r.psnr, 2)} | {delta} | "
                     f"{_fmt(r.ssim, 4)} | {_fmt(r.sharpness, 3)} | {r.images} |")
    return "\n".join(lines) + "\n"


def write_markdown(rows: Sequence[Row], path: Path, title: str = "Evaluation", notes: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"# {title}\n\n" + (notes.strip() + "\n\n" if notes else "") + markdown_table(rows)
    path.write_text(text)
    return path


def picture_grid(tiles: Sequence[tuple[str, np.ndarray]], box: tuple[int, int, int, int] | None = None,
                 max_tile: int = 256) -> np.ndarray:
    """Side-by-side labelled crops (e.g. bicubic, alpha 0, 0.5, 1, original) as one uint8 RGB image.

    ``tiles``: (label, same-size uint8 HWC image). ``box`` = (x, y, width, height) in those
    images' pixels, clipped to the image; default the centre ``max_tile`` x ``max_tile`` square. Crops are shown at
    1:1 (no resampling), so detail is compared as it is.
    """
    from PIL import Image, ImageDraw

    if not tiles:
        raise ValueError("no images for the grid")
    h, w = tiles[0][1].shape[:2]
    if any(t.shape[:2] != (h, w) for _, t in tiles):
        raise ValueError("grid images differ in size")
    if box is None:
        bw, bh = min(w, max_tile), min(h, max_tile)
        box = ((w - bw) // 2, (h - bh) // 2, bw, bh)
    x, y, bw, bh = box
    if x < 0 or y < 0 or bw <= 0 or bh <= 0:
        raise ValueError(f"bad crop box {box}: x, y >= 0 and width, height > 0")
    x, y = min(x, w - 1), min(y, h - 1)  # clipped to the image (one box may serve several sizes)
    bw, bh = min(bw, w - x), min(bh, h - y)
    label_h, gap = 18, 4
    canvas = Image.new("RGB", (len(tiles) * (bw + gap) - gap, bh + label_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (label, img) in enumerate(tiles):
        crop = np.asarray(img)[y: y + bh, x: x + bw]
        if crop.ndim == 2:
            crop = crop[:, :, None].repeat(3, axis=2)
        left = i * (bw + gap)
        canvas.paste(Image.fromarray(np.ascontiguousarray(crop[:, :, :3])), (left, label_h))
        draw.text((left + 2, 3), label, fill=(0, 0, 0))
    return np.asarray(canvas)
