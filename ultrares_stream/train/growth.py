"""Starting a deeper compact generator from a trained shallower one (Net2Net deepening).

The new body layers are appended just before the last conv as identity maps: a 3x3 conv
with a centred Dirac kernel and zero bias, followed by a PReLU of slope 1. The grown network
therefore computes exactly what the trained one did, and training goes on from there instead
of from random weights.
"""
from __future__ import annotations

import torch

from ..errors import UserError
from ..models.archs import compact
from ..models.checkpoint import StateDict, infer_arch


def deepen_compact(sd: StateDict, num_conv: int, source: str = "init weights") -> StateDict:
    """An SRVGGNetCompact state dict with ``num_conv`` body convs that computes the same
    function as ``sd`` (which has at most that many). PReLU activations only."""
    arch = infer_arch(sd, source)
    spec = dict(arch.kwargs)
    have = spec.get("num_conv")
    if arch.descriptor is not compact.ARCH or spec["act_type"] != "prelu":
        raise UserError(f"{source}: deepening needs an SRVGGNetCompact with PReLU activations")
    if num_conv < have:
        raise UserError(f"{source} has {have} body convs; cannot shrink it to {num_conv}")
    feat = int(spec["num_feat"])
    last = 2 + 2 * have  # index of the last conv in body
    out = {k: v for k, v in sd.items() if int(k.split(".")[1]) < last}
    dirac = torch.nn.init.dirac_(torch.empty(feat, feat, 3, 3, dtype=sd["body.0.weight"].dtype))
    for i in range(have, num_conv):
        conv, act = 2 + 2 * i, 3 + 2 * i
        out[f"body.{conv}.weight"] = dirac.clone()
        out[f"body.{conv}.bias"] = torch.zeros(feat, dtype=dirac.dtype)
        out[f"body.{act}.weight"] = torch.ones(feat, dtype=dirac.dtype)
    new_last = 2 + 2 * num_conv
    for name in ("weight", "bias"):
        out[f"body.{new_last}.{name}"] = sd[f"body.{last}.{name}"]
    return out
