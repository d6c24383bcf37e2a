"""Two-stage training of a PSNR/GAN generator pair (ESRGAN recipe, sized for small machines).

Stage ``psnr``: L1, Adam (lr 2e-4, halved at 50/75/90 % of the steps), EMA of the generator.
Stage ``gan``: initialised from the PSNR stage's EMA weights; loss = pixel L1 + perceptual +
relativistic-average adversarial; the discriminator is a VGG-style net.

Checkpoints (``last.pt``) hold everything needed to resume bit-for-bit: generator, EMA,
discriminator, optimisers, step and every random generator's state.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import UserError
from ..models.archs import SRVGGNetCompact, compact
from ..models.checkpoint import build_model, infer_arch, read_checkpoint, save_checkpoint
from .data import CropSampler, PairSampler, build_pairs, build_pool
from .degradations import DegradationConfig, degrade
from .discriminator import VGGDiscriminator
from .growth import deepen_compact
from .losses import feature_network, perceptual_loss, ragan_d_loss, ragan_g_loss
from .reparam import RepCompact

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    out_dir: Path
    stage: str = "psnr"  # psnr | gan
    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    plates: int = 0  # synthetic plate/text images added to the pool (train.plate_images)
    scale: int = 4
    num_feat: int = 32
    num_conv: int = 6
    crop: int = 128  # HR crop; LR is crop / scale
    batch: int = 16
    lr: float = 2e-4
    steps: int = 20000
    budget_minutes: float | None = None
    ema_decay: float = 0.999
    init: Path | None = None  # generator weights to start from (the PSNR stage for "gan")
    # train a compact net in its re-parameterisable form (train.reparam); it ships collapsed
    reparam: bool = False
    teacher: Path | None = None  # weights of a stronger net whose output is a second L1 target
    distill_weight: float = 0.5
    # plate-aware loss (train.reader): weight of the CTC loss of a plate reader on the upscaled
    # synthetic plates, the reader's weights, and the share of batches that are plate crops
    plate_loss: float = 0.0
    reader: Path | None = None
    plate_share: float = 0.25
    perceptual: str | None = None  # vgg19:PATH | srnet:PATH | none
    pixel_weight: float = 1.0
    perceptual_weight: float = 1.0
    gan_weight: float = 0.1
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    # share of batches taken from the videos' first halves as real H.264 streams (LR with P-frame
    # artefacts, encoded at each of pair_bpp bits per pixel) instead of degrading HR crops
    pair_prob: float = 0.0
    pair_bpp: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
    val_dir: Path | None = None  # Set5-style folder for the periodic validation PSNR
    val_every: int = 500
    ckpt_every: int = 200
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 (autocast; ~25 % faster on CPUs with native bf16, less precise)
    threads: int | None = None
    progress: bool = True


def lr_at(step: int, base: float, total: int) -> float:
    """Step decay: halve at 50 %, 75 % and 90 % of the run."""
    return base * 0.5 ** sum(step >= int(total * f) for f in (0.5, 0.75, 0.9))


class Trainer:
    def __init__(self, cfg: TrainConfig):
        if cfg.stage not in ("psnr", "gan"):
            raise UserError(f"stage must be psnr or gan, not {cfg.stage!r}")
        if cfg.crop % cfg.scale:
            raise UserError(f"crop {cfg.crop} must be a multiple of scale {cfg.scale}")
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed + 1)
        self.g = self._build_generator()
        self.teacher = self._build_teacher()
        self.ema = copy.deepcopy(self.g).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
        self.d = self.opt_d = self.feat = None
        if cfg.stage == "gan":
            self.d = VGGDiscriminator(input_size=cfg.crop)
            self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
            self.feat = feature_network(cfg.perceptual)
            if self.feat is None:
                log.warning("no perceptual network given: GAN stage uses pixel + adversarial loss only")
        self.step = 0
        self.sampler: CropSampler | None = None
        self.pair_sampler: PairSampler | None = None
        self.plate_sampler = None
        self.reader = self._build_reader()
        from ..engine.base import cpu_supports_bf16

        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and cpu_supports_bf16())
        self.history: list[dict] = []

    def _build_generator(self) -> torch.nn.Module:
        """A fresh SRVGGNetCompact of the configured size, or the net of the ``--init`` weights:
        any architecture :mod:`~ultrares_stream.models.checkpoint` knows (RLFN, SPAN, ...);
        a shallower compact net is deepened with identity layers."""
        cfg = self.cfg
        if cfg.init is None:
            if cfg.reparam:
                return RepCompact(num_feat=cfg.num_feat, num_conv=cfg.num_conv, upscale=cfg.scale)
            return SRVGGNetCompact(num_feat=cfg.num_feat, num_conv=cfg.num_conv, upscale=cfg.scale)
        sd = read_checkpoint(cfg.init)
        spec = infer_arch(sd, str(cfg.init))
        if spec.scale != cfg.scale:
            raise UserError(f"--init {cfg.init}: a x{spec.scale} net, training is x{cfg.scale}")
        have = dict(spec.kwargs).get("num_conv")
        if spec.descriptor is compact.ARCH and have < cfg.num_conv:
            log.info("deepening %s from %d to %d body convs (new layers start as identity)",
                     cfg.init, have, cfg.num_conv)
            sd = deepen_compact(sd, cfg.num_conv, str(cfg.init))
            spec = infer_arch(sd, str(cfg.init))
        if cfg.reparam:
            if spec.descriptor is not compact.ARCH or dict(spec.kwargs)["act_type"] != "prelu":
                raise UserError(f"--reparam trains SRVGGNetCompact (PReLU) nets; {cfg.init} is {spec.describe()}")
            return RepCompact.from_compact(sd, str(cfg.init))
        net = spec.build()
        net.load_state_dict(sd, strict=True)
        return net

    def _build_teacher(self) -> torch.nn.Module | None:
        if self.cfg.teacher is None:
            return None
        sd = read_checkpoint(self.cfg.teacher)
        if infer_arch(sd, str(self.cfg.teacher)).scale != self.cfg.scale:
            raise UserError(f"--teacher {self.cfg.teacher}: a x{infer_arch(sd).scale} net, training is x{self.cfg.scale}")
        net = build_model(sd, str(self.cfg.teacher)).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        return net

    def _build_reader(self) -> torch.nn.Module | None:
        if not self.cfg.plate_loss:
            return None
        if self.cfg.reader is None or not Path(self.cfg.reader).is_file():
            raise UserError(f"--plate-loss needs --reader: the weights of `ultrares train --stage reader` "
                            f"({self.cfg.reader or 'not given'})")
        from .reader import load_reader

        return load_reader(self.cfg.reader)

    @staticmethod
    def shipped_state_dict(net: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The weights as they ship: a re-parameterisable net collapsed to its plain form."""
        return net.compact_state_dict() if isinstance(net, RepCompact) else net.state_dict()

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.cfg.out_dir / "last.pt"

    def save(self) -> None:
        self.cfg.out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step, "g": self.g.state_dict(), "ema": self.ema.state_dict(),
            "opt_g": self.opt_g.state_dict(), "torch_rng": torch.get_rng_state(),
            "rng": self.rng.bit_generator.state, "history": self.history,
            "sampler": self.sampler.state() if self.sampler else None,
            "pair_sampler": self.pair_sampler.state() if self.pair_sampler else None,
            "plate_sampler": self.plate_sampler.state() if self.plate_sampler else None,
            "config": {k: str(v) for k, v in asdict(self.cfg).items()},
        }
        if self.d is not None:
            state["d"], state["opt_d"] = self.d.state_dict(), self.opt_d.state_dict()
        tmp = self.ckpt_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.ckpt_path)  # never leave a half-written checkpoint
        save_checkpoint(self.shipped_state_dict(self.ema), self.cfg.out_dir / "generator_ema.safetensors",
                        {"stage": self.cfg.stage, "step": str(self.step)})

    def resume(self) -> bool:
        if not self.ckpt_path.is_file():
            return False
        state = torch.load(self.ckpt_path, map_location="cpu", weights_only=False)
        self.g.load_state_dict(state["g"])
        self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        if self.d is not None and "d" in state:
            self.d.load_state_dict(state["d"])
            self.opt_d.load_state_dict(state["opt_d"])
        torch.set_rng_state(state["torch_rng"])
        self.rng.bit_generator.state = state["rng"]
        self.step = int(state["step"])
        self.history = state.get("history", [])
        self._sampler_state = state.get("sampler")
        self._pair_sampler_state = state.get("pair_sampler")
        self._plate_sampler_state = state.get("plate_sampler")
        log.info("resumed %s at step %d", self.ckpt_path, self.step)
        return True

    # -- one step ----------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)

    def train_step(self, hr: torch.Tensor, lr_img: torch.Tensor | None = None,
                   plates: tuple[list, list[str]] | None = None) -> dict[str, float]:
        """One optimiser step on an HR batch; its LR is ``lr_img`` or made by the degradations.
        ``plates``: (LR boxes, registrations) of one plate per crop, for the plate reader's loss."""
        cfg = self.cfg
        if lr_img is None:
            lr_img = degrade(hr, cfg.scale, self.rng, cfg.degradation)
        for group in self.opt_g.param_groups:
            group["lr"] = lr_at(self.step, cfg.lr, cfg.steps)
        self.g.train()
        gan = cfg.stage == "gan"
        with self._autocast():
            sr = self.g(lr_img).float()
        pixel = F.l1_loss(sr, hr)
        logs: dict[str, float] = {"l1": float(pixel.detach())}
        loss = cfg.pixel_weight * pixel if gan else pixel
        if self.teacher is not None:
            with torch.no_grad(), self._autocast():
                target = self.teacher(lr_img).float().clamp(0, 1)
            distill = F.l1_loss(sr, target)
            loss = loss + cfg.distill_weight * distill
            logs["distill"] = float(distill.detach())
        if plates is not None and self.reader is not None:
            from .reader import ctc_loss, plate_crops

            boxes, texts = plates
            reading = ctc_loss(self.reader(plate_crops(sr.clamp(0, 1), boxes, cfg.scale)), texts)
            loss = loss + cfg.plate_loss * reading
            logs["read"] = float(reading.detach())
        if gan:
            with self._autocast():
                if self.feat is not None:
                    p = perceptual_loss(self.feat, sr, hr).float()
                    loss = loss + cfg.perceptual_weight * p
                    logs["percep"] = float(p.detach())
                for q in self.d.parameters():
                    q.requires_grad_(False)
                real_logits = self.d(hr).detach().float()
                adv = ragan_g_loss(real_logits, self.d(sr).float())
            loss = loss + cfg.gan_weight * adv
            logs["g_adv"] = float(adv.detach())
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        if gan:
            logs["d"] = self._discriminator_step(sr, hr)
        self._update_ema()
        self.step += 1
        logs["loss"] = float(loss.detach())
        return logs

    def _discriminator_step(self, sr: torch.Tensor, hr: torch.Tensor) -> float:
        """One optimiser step of the discriminator (GAN stage) on this batch; its loss."""
        for q in self.d.parameters():
            q.requires_grad_(True)
        for group in self.opt_d.param_groups:
            group["lr"] = lr_at(self.step, self.cfg.lr, self.cfg.steps)
        with self._autocast():
            d_loss = ragan_d_loss(self.d(hr).float(), self.d(sr.detach()).float())
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        return float(d_loss.detach())

    def _update_ema(self) -> None:
        decay = self.cfg.ema_decay
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.g.parameters()):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)

    # -- validation --------------------------------------------------------------------------
    def validate(self) -> float | None:
        """Mean Y-PSNR of the EMA generator on the validation folder (Set5 protocol)."""
        if self.cfg.val_dir is None:
            return None
        from ..colour import float_to_uint8, uint8_to_float

        try:
            from ..quality.datasets import load_pairs
            from ..quality.evaluate import evaluate
        except ImportError as exc:
            log.warning("validation skipped: %s", exc)
            return None

        if not hasattr(self, "_val_pairs"):
            self._val_pairs = load_pairs(self.cfg.val_dir, self.cfg.scale)

        def run(lr: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                out = self.ema(uint8_to_float(torch.from_numpy(lr))).clamp(0, 1)
            return float_to_uint8(out)[0].numpy()

        return float(evaluate(self._val_pairs, run, self.cfg.scale)["psnr"])

    # -- the loop ----------------------------------------------------------------------------
    def _prepare_samplers(self) -> None:
        """The crop sampler over the image pool, and the H.264 pair and plate samplers when asked
        for, each continuing from a resumed checkpoint's state."""
        cfg = self.cfg
        pool = build_pool(cfg.images, cfg.videos)
        if cfg.plates:
            from .plate_images import plate_images

            pool += plate_images(cfg.plates, seed=cfg.seed)
            log.info("%d synthetic plate images", cfg.plates)
        self.sampler = CropSampler(pool, cfg.crop, seed=cfg.seed)
        if getattr(self, "_sampler_state", None):
            self.sampler.set_state(self._sampler_state)
        if cfg.pair_prob > 0:
            self.pair_sampler = PairSampler(build_pairs(cfg.videos, cfg.scale, cfg.pair_bpp), cfg.crop, cfg.scale,
                                            seed=cfg.seed + 2)
            if getattr(self, "_pair_sampler_state", None):
                self.pair_sampler.set_state(self._pair_sampler_state)
            log.info("%.0f %% of batches from %d H.264 frame pairs", 100 * cfg.pair_prob, len(self.pair_sampler))
        if self.reader is not None:
            from .plate_images import labelled_plate_images
            from .reader import PlateCropSampler

            self.plate_sampler = PlateCropSampler(labelled_plate_images(max(cfg.plates, 200), seed=cfg.seed + 3),
                                                  cfg.crop, cfg.scale, seed=cfg.seed + 3)
            if getattr(self, "_plate_sampler_state", None):
                self.plate_sampler.set_state(self._plate_sampler_state)
            log.info("%.0f %% of batches are plate crops with the plate reader's loss (weight %g)",
                     100 * cfg.plate_share, cfg.plate_loss)
        log.info("stage %s: %d training images/frames, %s, batch %d x %dpx, %s", cfg.stage, len(self.sampler),
                 infer_arch(self.shipped_state_dict(self.g)).describe()
                 + (" (re-parameterisable training form)" if cfg.reparam else ""), cfg.batch, cfg.crop,
                 "bf16 autocast" if self.bf16 else "fp32")

    def _step_on_next_batch(self) -> dict[str, float]:
        """A training step on the next batch: plate crops, H.264 frame pairs or image crops, by
        their shares."""
        cfg = self.cfg
        if self.plate_sampler is not None and self.rng.random() < cfg.plate_share:
            hr, boxes, texts = self.plate_sampler.batch(cfg.batch)
            return self.train_step(hr, plates=(boxes, texts))
        if self.pair_sampler is not None and self.rng.random() < cfg.pair_prob:
            lr_img, hr = self.pair_sampler.batch(cfg.batch)
            return self.train_step(hr, lr_img)
        return self.train_step(self.sampler.batch(cfg.batch))

    def fit(self, resume: bool = True, until: int | None = None) -> Path:
        """Train to ``cfg.steps`` (or step ``until``, or the time budget), checkpointing along the way."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        cfg = self.cfg
        if resume:
            self.resume()
        self._prepare_samplers()
        deadline = time.monotonic() + cfg.budget_minutes * 60 if cfg.budget_minutes else math.inf
        started = time.monotonic()
        last_ckpt = time.monotonic()
        avg: dict[str, float] = {}
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[info]}"), TimeRemainingColumn(), disable=not cfg.progress) as bar:
            task = bar.add_task(f"train {cfg.stage}", total=cfg.steps, completed=self.step, info="")
            stop = min(cfg.steps, until or cfg.steps)
            while self.step < stop and time.monotonic() < deadline:
                logs = self._step_on_next_batch()
                for k, v in logs.items():
                    avg[k] = 0.98 * avg.get(k, v) + 0.02 * v
                info = " ".join(f"{k} {v:.4f}" for k, v in avg.items())
                if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                    psnr = self.validate()
                    if psnr is not None:
                        self.history.append({"step": self.step, "val_psnr": psnr, **avg})
                        log.info("step %d: %s, validation Y-PSNR %.2f dB", self.step, info, psnr)
                bar.update(task, completed=self.step, info=info)
                if self.step % cfg.ckpt_every == 0 or time.monotonic() - last_ckpt > 300:
                    self.save()
                    last_ckpt = time.monotonic()
        self.save()
        why = "done" if self.step >= cfg.steps else "time budget reached"
        log.info("stage %s stopped at step %d (%s) after %.1f min; weights: %s", cfg.stage, self.step, why,
                 (time.monotonic() - started) / 60, cfg.out_dir / "generator_ema.safetensors")
        return cfg.out_dir / "generator_ema.safetensors"
