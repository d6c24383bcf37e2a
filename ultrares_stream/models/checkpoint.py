"""Checkpoint layouts: read the files users have, convert them to the canonical
(BasicSR) key layout, and infer architecture and hyper-parameters from the keys.

Layouts understood:

* BasicSR / Real-ESRGAN: ``conv_first``, ``body.N.rdbk.convj``, ``conv_body``,
  ``conv_up1/2``, ``conv_hr``, ``conv_last`` (RRDBNet) or ``body.N`` (SRVGGNetCompact),
  optionally wrapped in ``params_ema`` (preferred) or ``params``.
* Original ESRGAN repo: ``RRDB_trunk.N.RDBk.convj``, ``trunk_conv``, ``upconv1/2``, ``HRconv``.
* Oldest ESRGAN ``model.N.`` layout (``model.1.sub.N.RDBk.convj.0``).
* RLFN (bytedance/RLFN): ``conv_1``, ``block_N.c1_r`` ... ``block_N.esa.*``, ``upsampler.0``.
* SPAN, collapsed (NTIRE 2024 ESR slim files): ``conv_1.eval_conv``, ``block_N.cK_r.eval_conv``,
  ``conv_cat``, ``upsampler.0``.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError
from .archs import RLFN, SPAN, RRDBNet, SRVGGNetCompact

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ArchSpec:
    """What a state dict describes: the class and its constructor arguments."""

    arch: str  # a key of ARCHS
    kwargs: tuple[tuple[str, object], ...]

    @property
    def scale(self) -> int:
        d = dict(self.kwargs)
        return int(d.get("scale", d.get("upscale", 4)))

    def build(self) -> nn.Module:
        return ARCHS[self.arch](**dict(self.kwargs))

    def describe(self) -> str:
        return f"{self.arch} x{self.scale} ({_DESCRIBE[self.arch].format(**dict(self.kwargs))})"


#: architecture name -> class; what each checkpoint's hyper-parameters are called in `describe`.
ARCHS: dict[str, type[nn.Module]] = {"RRDBNet": RRDBNet, "SRVGGNetCompact": SRVGGNetCompact, "RLFN": RLFN,
                                     "SPAN": SPAN}
_DESCRIBE = {"RRDBNet": "nf {num_feat}, nb {num_block}, gc {num_grow_ch}",
             "SRVGGNetCompact": "feat {num_feat}, conv {num_conv}, {act_type}",
             "RLFN": "feat {num_feat}, blocks {num_block}, esa {esa_ch}",
             "SPAN": "feat {num_feat}"}


def read_checkpoint(path: str | Path) -> StateDict:
    """Read a ``.pth``/``.pt`` (``weights_only=True``) or ``.safetensors`` file and
    return its state dict in the canonical layout."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path), device="cpu")
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch/safetensors raise many types for bad files
        raise ModelError(f"{path}: not a readable checkpoint ({exc.__class__.__name__}: {exc})") from None
    return canonical_state_dict(raw, source=str(path))


def canonical_state_dict(raw: object, source: str = "checkpoint") -> StateDict:
    """Unwrap ``params_ema``/``params``/``state_dict`` and convert keys to the BasicSR layout."""
    if isinstance(raw, dict):
        for wrapper in ("params_ema", "params", "state_dict"):
            if wrapper in raw and isinstance(raw[wrapper], dict):
                raw = raw[wrapper]
                break
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ModelError(f"{source}: does not hold a state dict of tensors")
    sd = {k.removeprefix("module."): v for k, v in raw.items()}
    if "model.0.weight" in sd:
        sd = _from_old_esrgan(sd)
    elif "RRDB_trunk.0.RDB1.conv1.weight" in sd or "trunk_conv.weight" in sd:
        sd = _from_esrgan(sd)
    return sd


_ESRGAN_RENAMES = {"trunk_conv.": "conv_body.", "upconv1.": "conv_up1.", "upconv2.": "conv_up2.", "HRconv.": "conv_hr."}


def _from_esrgan(sd: StateDict) -> StateDict:
    out = {}
    for k, v in sd.items():
        m = re.match(r"RRDB_trunk\.(\d+)\.RDB(\d)\.(conv\d)\.(weight|bias)$", k)
        if m:
            out[f"body.{m[1]}.rdb{m[2]}.{m[3]}.{m[4]}"] = v
            continue
        for old, new in _ESRGAN_RENAMES.items():
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out


def _from_old_esrgan(sd: StateDict) -> StateDict:
    blocks = {int(m[1]) for k in sd if (m := re.match(r"model\.1\.sub\.(\d+)\.RDB", k))}
    trunk = max(blocks) + 1 if blocks else 0
    top = {"model.0.": "conv_first.", f"model.1.sub.{trunk}.": "conv_body.", "model.3.": "conv_up1.",
           "model.6.": "conv_up2.", "model.8.": "conv_hr.", "model.10.": "conv_last."}
    out = {}
    for k, v in sd.items():
        m = re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.(conv\d)\.0\.(weight|bias)$", k)
        if m:
            out[f"body.{m[1]}.rdb{m[2]}.{m[3]}.{m[4]}"] = v
            continue
        for old, new in top.items():
            if k.startswith(old):
                out[new + k[len(old):]] = v
                break
        else:
            raise ModelError(f"unexpected key {k!r} in an old-layout ESRGAN checkpoint")
    return out


def infer_arch(sd: StateDict, source: str = "checkpoint") -> ArchSpec:
    """Infer architecture and hyper-parameters from canonical keys and shapes."""
    if "conv_first.weight" in sd and "conv_last.weight" in sd:
        in_ch = sd["conv_first.weight"].shape[1]
        out_ch = sd["conv_last.weight"].shape[0]
        ratio = in_ch // out_ch
        scale = {1: 4, 4: 2, 16: 1}.get(ratio)
        if scale is None or in_ch % out_ch:
            raise ModelError(f"{source}: RRDBNet with {in_ch} input / {out_ch} output channels has no known scale")
        num_block = len({int(m[1]) for k in sd if (m := re.match(r"body\.(\d+)\.rdb1\.", k))})
        return ArchSpec("RRDBNet", (
            ("num_in_ch", out_ch), ("num_out_ch", out_ch), ("scale", scale),
            ("num_feat", int(sd["conv_first.weight"].shape[0])), ("num_block", num_block),
            ("num_grow_ch", int(sd["body.0.rdb1.conv1.weight"].shape[0])),
        ))
    if "body.0.weight" in sd and sd["body.0.weight"].ndim == 4:
        idx = sorted({int(m[1]) for k in sd if (m := re.match(r"body\.(\d+)\.weight$", k))})
        convs = [i for i in idx if sd[f"body.{i}.weight"].ndim == 4]
        num_feat, num_in = sd["body.0.weight"].shape[:2]
        last_out = sd[f"body.{convs[-1]}.weight"].shape[0]
        scale = round((last_out / num_in) ** 0.5)
        if scale * scale * num_in != last_out:
            raise ModelError(f"{source}: SRVGGNetCompact last conv has {last_out} channels; no integer scale")
        act = "prelu" if "body.1.weight" in sd else "lrelu"
        return ArchSpec("SRVGGNetCompact", (
            ("num_in_ch", int(num_in)), ("num_out_ch", int(num_in)), ("num_feat", int(num_feat)),
            ("num_conv", len(convs) - 2), ("upscale", scale), ("act_type", act),
        ))
    if "block_1.esa.conv1.weight" in sd and "upsampler.0.weight" in sd:
        num_feat, num_in = sd["conv_1.weight"].shape[:2]
        return ArchSpec("RLFN", (
            ("num_in_ch", int(num_in)), ("num_out_ch", int(num_in)), ("num_feat", int(num_feat)),
            ("num_block", len({int(m[1]) for k in sd if (m := re.match(r"block_(\d+)\.c1_r\.", k))})),
            ("esa_ch", int(sd["block_1.esa.conv1.weight"].shape[0])),
            ("upscale", _shuffle_scale(sd["upsampler.0.weight"].shape[0], int(num_in), source)),
        ))
    if "conv_1.eval_conv.weight" in sd and "conv_cat.weight" in sd:
        num_feat, num_in = sd["conv_1.eval_conv.weight"].shape[:2]
        return ArchSpec("SPAN", (
            ("num_in_ch", int(num_in)), ("num_out_ch", int(num_in)), ("num_feat", int(num_feat)),
            ("upscale", _shuffle_scale(sd["upsampler.0.weight"].shape[0], int(num_in), source)),
        ))
    first = next(iter(sd))
    raise ModelError(f"{source}: unrecognised checkpoint layout (first key {first!r}); "
                     "expected ESRGAN/RRDBNet, Real-ESRGAN SRVGGNetCompact, RLFN or collapsed SPAN weights")


def _shuffle_scale(out_channels: int, num_out: int, source: str) -> int:
    """Scale of a pixel-shuffle upsampler whose conv has ``out_channels`` = num_out * scale**2."""
    scale = round((out_channels / num_out) ** 0.5)
    if scale * scale * num_out != out_channels:
        raise ModelError(f"{source}: upsampler has {out_channels} channels; no integer scale")
    return scale


def build_model(sd: StateDict, source: str = "checkpoint") -> nn.Module:
    """Construct the network a canonical state dict describes and load it strictly."""
    spec = infer_arch(sd, source)
    model = spec.build()
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{source}: weights do not fit {spec.describe()}: {exc}") from None
    return model.eval()


def load_model(path: str | Path) -> nn.Module:
    return build_model(read_checkpoint(path), str(path))


def state_dict_hash(sd: StateDict) -> str:
    """Stable content hash of a state dict (keys, dtypes, shapes, values): the engine cache key."""
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def save_checkpoint(sd: StateDict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a canonical state dict as ``.safetensors`` (or ``.pth`` under ``params``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path), metadata=metadata)
    else:
        torch.save({"params": sd}, str(path))
