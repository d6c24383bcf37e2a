"""Checkpoint files: read the files users have into a canonical state dict (each architecture's
own key layout, older layouts converted by its descriptor), recognise the architecture and its
hyper-parameters from the keys (:func:`~ultrares_stream.models.archs.detect`), build the network.

Layouts understood (:data:`~ultrares_stream.models.archs.ARCHS`, one file each):

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
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError
from .archs import ArchSpec, StateDict, canonical_layout, detect

__all__ = ["ArchSpec", "StateDict", "build_model", "canonical_state_dict", "infer_arch", "load_model",
           "read_checkpoint", "save_checkpoint", "state_dict_hash"]


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
    """Unwrap ``params_ema``/``params``/``state_dict``, drop a ``module.`` prefix and convert older
    layouts' keys to their architecture's canonical ones."""
    if isinstance(raw, dict):
        for wrapper in ("params_ema", "params", "state_dict"):
            if wrapper in raw and isinstance(raw[wrapper], dict):
                raw = raw[wrapper]
                break
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ModelError(f"{source}: does not hold a state dict of tensors")
    return canonical_layout({k.removeprefix("module."): v for k, v in raw.items()})


def infer_arch(sd: StateDict, source: str = "checkpoint") -> ArchSpec:
    """Infer architecture and hyper-parameters from canonical keys and shapes."""
    return detect(sd, source)


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
