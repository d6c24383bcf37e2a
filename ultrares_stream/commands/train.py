"""``ultrares train``: train a PSNR/GAN pair of compact generators (see docs/model_card.md)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from ..settings import data_dir

    sr = data_dir() / "sr"
    p = sub.add_parser(
        "train", help="train the PSNR (stage 1) or GAN (stage 2) generator",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Two-stage ESRGAN-style training of an SRVGGNetCompact generator (or fine-tuning of any "
                    "known architecture from --init). Stage psnr: L1 loss. "
                    "Stage gan: initialised from stage psnr (--init), L1 + perceptual + relativistic-average GAN. "
                    "Resumes from OUT/last.pt when it exists; writes OUT/generator_ema.safetensors. Stage reader: the plate "
                    "reader of --plate-loss, trained from scratch on synthetic plates into OUT/plate-reader.safetensors.")
    p.add_argument("--stage", choices=["psnr", "gan", "reader"], default="psnr",
                   help="psnr / gan: the generator's two stages; reader: the small plate reader (CRNN) that "
                        "--plate-loss uses, trained on synthetic plates only")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, weights)")
    _add_data_args(p, sr)
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default 20000; stage reader 2500)")
    p.add_argument("--budget-minutes", type=float, default=None, help="stop (and checkpoint) after this wall-clock time")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 16; stage reader 32)")
    p.add_argument("--crop", type=int, default=128, help="HR crop size")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--num-feat", type=int, default=32)
    p.add_argument("--num-conv", type=int, default=6)
    _add_model_args(p)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16 autocast roughly halves a GAN-stage step on CPUs with native bf16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT/last.pt exists")
    p.set_defaults(func=run)


def _add_data_args(p: argparse.ArgumentParser, sr: Path) -> None:
    """What the generator learns from: images, clips, synthetic plates, degradations, validation."""
    from ..settings import data_dir

    p.add_argument("--images", type=Path, action="append", default=None,
                   help=f"HR image folder (repeatable; default {sr / 'T91'} and {sr / 'BSD200'})")
    p.add_argument("--videos", type=Path, action="append", default=None,
                   help=f"folder of clips to take frames from (first half of each clip; default {data_dir() / 'video'} if present)")
    p.add_argument("--plates", type=int, default=0, metavar="N",
                   help="add N synthetic images of number plates and text to the training pool (stage reader: "
                        "the reader's training images, default 3000)")
    p.add_argument("--degradation", choices=["mixed", "traffic", "bicubic"], default="mixed",
                   help="bicubic = paper protocol; traffic = blur/noise/JPEG/H.264; mixed = half and half")
    p.add_argument("--degrade", metavar="FIELD=VALUE", action="append", default=[],
                   help="override a degradation setting, e.g. h264_prob=0.6 or h264_crf=24,40 or p_bicubic=0.3 "
                        "(fields of train.degradations.DegradationConfig; repeatable)")
    p.add_argument("--video-pairs", type=float, default=0.0, metavar="SHARE",
                   help="share of batches (0..1) from the --videos clips encoded as real H.264 streams at "
                        "--pair-bpp bitrates: LR with inter-frame artefacts, HR the original frames")
    p.add_argument("--pair-bpp", default="0.05,0.1,0.2,0.4",
                   help="bits per pixel (at 25 fps) of the H.264 streams behind --video-pairs, comma-separated")
    p.add_argument("--val", type=Path, default=sr / "Set5", help="Set5-style folder for validation PSNR")
    p.add_argument("--val-every", type=int, default=500)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    """Where the generator starts from and what it is taught by besides L1."""
    p.add_argument("--init", type=Path, default=None, help="generator weights to start from (stage gan: the psnr run's generator_ema.safetensors); "
                        "any known architecture (SRVGGNetCompact, RLFN, SPAN, RRDBNet): the net is built from them and "
                        "--num-feat/--num-conv are ignored, except that a compact net with fewer body convs than "
                        "--num-conv is deepened with identity layers")
    p.add_argument("--reparam", action="store_true",
                   help="train a compact net with re-parameterisable multi-branch convs; the weights ship collapsed "
                        "into the plain net (same speed)")
    p.add_argument("--teacher", type=Path, default=None,
                   help="weights of a stronger x4 net whose output is a second L1 target (distillation)")
    p.add_argument("--distill-weight", type=float, default=0.5, help="weight of the teacher's L1 term")
    p.add_argument("--plate-loss", type=float, default=0.0, metavar="WEIGHT",
                   help="add WEIGHT x the CTC loss of the plate reader (--reader) on upscaled synthetic plates")
    p.add_argument("--reader", type=Path, default=None, help="plate reader weights (ultrares train --stage reader)")
    p.add_argument("--plate-share", type=float, default=0.25, metavar="SHARE",
                   help="share of batches that are synthetic plate crops when --plate-loss is on")
    p.add_argument("--perceptual", default=None,
                   help="feature network for the perceptual loss: vgg19:PATH (torchvision VGG19 weights), "
                        "srnet:PATH (an SRVGGNetCompact checkpoint) or none; default: srnet on "
                        "the shared realesr-animevideov3 weights if present, else none")


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..settings import data_dir
    from ..train.trainer import TrainConfig, Trainer

    if args.stage == "reader":
        from ..train.reader import train_reader

        out = args.out / "plate-reader.safetensors"
        args.out.mkdir(parents=True, exist_ok=True)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        result = train_reader(out, steps=args.steps or 2500, images=args.plates or 3000, batch=args.batch or 32,
                              seed=args.seed)
        print(f"plate reader: {result['steps']} steps in {result['minutes']:.1f} min, "
              f"{100 * result['accuracy']:.0f} % of held-out synthetic plates read exactly; weights: {out}")
        return 0
    if not 0 <= args.plate_share <= 1:
        raise UserError(f"--plate-share must be between 0 and 1, not {args.plate_share}")
    sr = data_dir() / "sr"
    images = args.images if args.images is not None else [sr / "T91", sr / "BSD200"]
    videos = args.videos if args.videos is not None else [d for d in [data_dir() / "video"] if d.is_dir()]
    perceptual = args.perceptual
    if perceptual is None and args.stage == "gan":
        fallback = data_dir() / "weights" / "realesr-animevideov3.pth"
        perceptual = f"srnet:{fallback}" if fallback.is_file() else "none"
    if not 0 <= args.video_pairs <= 1:
        raise UserError(f"--video-pairs must be between 0 and 1, not {args.video_pairs}")
    if args.video_pairs and not videos:
        raise UserError("--video-pairs needs clips: give --videos (no video folder found)")
    try:
        pair_bpp = tuple(float(b) for b in args.pair_bpp.split(","))
    except ValueError:
        raise UserError(f"--pair-bpp {args.pair_bpp!r}: give numbers such as 0.05,0.1,0.2") from None
    if not pair_bpp or min(pair_bpp) <= 0:
        raise UserError(f"--pair-bpp {args.pair_bpp!r}: bitrates must be positive")
    cfg = TrainConfig(
        out_dir=args.out, stage=args.stage, images=images, videos=videos, plates=args.plates,
        steps=args.steps or 20000, budget_minutes=args.budget_minutes, batch=args.batch or 16, crop=args.crop, lr=args.lr,
        num_feat=args.num_feat, num_conv=args.num_conv, init=args.init, perceptual=perceptual,
        reparam=args.reparam, teacher=args.teacher, distill_weight=args.distill_weight,
        degradation=degradation_config(args.degradation, args.degrade),
        val_dir=args.val if args.val and args.val.is_dir() else None, val_every=args.val_every,
        seed=args.seed, threads=args.threads, precision=args.precision,
        pair_prob=args.video_pairs, pair_bpp=pair_bpp,
        plate_loss=args.plate_loss, reader=args.reader, plate_share=args.plate_share)
    Trainer(cfg).fit(resume=not args.no_resume)
    return 0


def degradation_config(mode: str, overrides: list[str]):
    """``DegradationConfig(mode=...)`` with ``FIELD=VALUE`` overrides (ranges as ``LOW,HIGH``)."""
    from dataclasses import fields, replace

    from ..errors import UserError
    from ..train.degradations import DegradationConfig

    cfg = DegradationConfig(mode=mode)
    known = {f.name: f for f in fields(cfg)}
    changes: dict[str, object] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in known or key == "mode":
            raise UserError(f"--degrade {item!r}: use FIELD=VALUE with FIELD one of "
                            f"{', '.join(k for k in known if k != 'mode')}")
        current = getattr(cfg, key)
        try:
            if isinstance(current, tuple):
                low, high = value.split(",")
                changes[key] = (type(current[0])(low), type(current[1])(high))
            else:
                changes[key] = type(current)(value)
        except ValueError:
            raise UserError(f"--degrade {item!r}: bad value for {key} (now {current!r})") from None
    return replace(cfg, **changes)
