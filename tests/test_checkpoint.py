"""Checkpoint files and layouts: .pth (weights_only) and .safetensors; BasicSR
(params / params_ema), original ESRGAN, and the oldest ``model.N.`` layout; the
hyper-parameters inferred from keys; the real realesr-animevideov3 weights against
an independent forward pass."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import need_data
from ultrares_stream.errors import ModelError
from ultrares_stream.models.archs import RRDBNet, SRVGGNetCompact
from ultrares_stream.models.checkpoint import (build_model, canonical_state_dict, infer_arch, load_model,
                                               read_checkpoint, save_checkpoint, state_dict_hash)


# --- layouts, written here from the upstream repos' key names -------------------------

def to_esrgan(sd):
    """BasicSR keys -> the original ESRGAN repo's (RRDBNet_arch.py) keys."""
    out = {}
    ren = {"conv_body.": "trunk_conv.", "conv_up1.": "upconv1.", "conv_up2.": "upconv2.", "conv_hr.": "HRconv."}
    for k, v in sd.items():
        m = re.match(r"body\.(\d+)\.rdb(\d)\.(conv\d)\.(weight|bias)$", k)
        if m:
            out[f"RRDB_trunk.{m[1]}.RDB{m[2]}.{m[3]}.{m[4]}"] = v
            continue
        for new, old in ren.items():
            if k.startswith(new):
                k = old + k[len(new):]
        out[k] = v
    return out


def to_old_esrgan(sd, num_block):
    """BasicSR keys -> the oldest ESRGAN ``model.N.`` (sequential) layout."""
    top = {"conv_first.": "model.0.", "conv_body.": f"model.1.sub.{num_block}.", "conv_up1.": "model.3.",
           "conv_up2.": "model.6.", "conv_hr.": "model.8.", "conv_last.": "model.10."}
    out = {}
    for k, v in sd.items():
        m = re.match(r"body\.(\d+)\.rdb(\d)\.(conv\d)\.(weight|bias)$", k)
        if m:
            out[f"model.1.sub.{m[1]}.RDB{m[2]}.{m[3]}.0.{m[4]}"] = v
            continue
        prefix = next(p for p in top if k.startswith(p))
        out[top[prefix] + k[len(prefix):]] = v
    return out


@pytest.fixture(scope="module")
def esrgan_sd():
    """A full-size ESRGAN x4 state dict (nf 64, nb 23, gc 32), as the real checkpoints have."""
    torch.manual_seed(0)
    return RRDBNet().state_dict()


def test_infer_full_size_esrgan_from_every_layout(esrgan_sd):
    for raw in (esrgan_sd, to_esrgan(esrgan_sd), to_old_esrgan(esrgan_sd, 23), {"params_ema": esrgan_sd},
                {"params": esrgan_sd}):
        sd = canonical_state_dict(raw)
        assert set(sd) == set(esrgan_sd)
        spec = infer_arch(sd)
        assert spec.arch == "RRDBNet" and spec.scale == 4
        assert dict(spec.kwargs) == {"num_in_ch": 3, "num_out_ch": 3, "scale": 4, "num_feat": 64,
                                     "num_block": 23, "num_grow_ch": 32}


@pytest.mark.parametrize("layout", ["basicsr-params", "basicsr-params_ema", "esrgan", "old", "safetensors",
                                    "module-prefix"])
def test_layouts_load_to_the_same_network(tmp_path, layout):
    torch.manual_seed(1)
    net = RRDBNet(num_feat=8, num_block=3, num_grow_ch=4).eval()
    sd = net.state_dict()
    path = tmp_path / "w.pth"
    if layout == "basicsr-params":
        torch.save({"params": sd}, path)
    elif layout == "basicsr-params_ema":  # params_ema is what Real-ESRGAN releases use; it wins over params
        decoy = {k: torch.zeros_like(v) for k, v in sd.items()}
        torch.save({"params": decoy, "params_ema": sd}, path)
    elif layout == "esrgan":
        torch.save(to_esrgan(sd), path)
    elif layout == "old":
        torch.save(to_old_esrgan(sd, 3), path)
    elif layout == "module-prefix":
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    else:
        path = tmp_path / "w.safetensors"
        save_checkpoint(sd, path)
    loaded = load_model(path)
    assert isinstance(loaded, RRDBNet)
    x = torch.rand(1, 3, 10, 10)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


@pytest.mark.parametrize("scale,in_ch", [(2, 12), (1, 48)])
def test_rrdbnet_scale_from_first_conv(scale, in_ch):
    sd = RRDBNet(scale=scale, num_feat=8, num_block=1, num_grow_ch=4).state_dict()
    assert sd["conv_first.weight"].shape[1] == in_ch
    spec = infer_arch(sd)
    assert spec.scale == scale and dict(spec.kwargs)["num_block"] == 1


def test_compact_hyper_parameters_inferred():
    sd = SRVGGNetCompact(num_feat=16, num_conv=5, upscale=2).state_dict()
    spec = infer_arch(sd)
    assert spec.arch == "SRVGGNetCompact"
    assert dict(spec.kwargs) == {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 16, "num_conv": 5,
                                 "upscale": 2, "act_type": "prelu"}


def test_safetensors_written_by_safetensors_itself(tmp_path):
    from safetensors.torch import save_file

    sd = SRVGGNetCompact(num_feat=8, num_conv=2).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    back = read_checkpoint(tmp_path / "m.safetensors")
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_bad_files_are_model_errors(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match="junk.pth: not a readable checkpoint"):
        read_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(ModelError, match="not found"):
        read_checkpoint(tmp_path / "missing.pth")
    torch.save({"epoch": 3}, tmp_path / "meta.pth")
    with pytest.raises(ModelError, match="does not hold a state dict"):
        read_checkpoint(tmp_path / "meta.pth")
    with pytest.raises(ModelError, match="unrecognised checkpoint layout.*'encoder.weight'"):
        infer_arch({"encoder.weight": torch.zeros(3, 3, 3, 3)})
    sd = SRVGGNetCompact(num_feat=8, num_conv=2).state_dict()
    del sd["body.1.weight"]
    with pytest.raises(ModelError, match="do not fit"):
        build_model(sd)


def test_state_dict_hash_tracks_content():
    sd = SRVGGNetCompact(num_feat=8, num_conv=2).state_dict()
    same = {k: v.clone() for k, v in sd.items()}
    assert state_dict_hash(sd) == state_dict_hash(same)
    same["body.0.bias"][0] += 1e-3
    assert state_dict_hash(sd) != state_dict_hash(same)


# --- the real Real-ESRGAN weights -------------------------------------------------------

def reference_compact(raw, x):
    """SRVGGNetCompact from the Real-ESRGAN paper/code description, with F ops only:
    conv+PReLU, 16 x (conv+PReLU), conv to 3*4*4 channels, pixel shuffle, + nearest-upsampled input."""
    out = x
    i = 0
    while f"body.{i}.weight" in raw:
        w = raw[f"body.{i}.weight"]
        if w.ndim == 4:
            out = F.conv2d(out, w, raw[f"body.{i}.bias"], padding=1)
        else:
            out = F.prelu(out, w)
        i += 1
    return F.pixel_shuffle(out, 4) + F.interpolate(x, scale_factor=4, mode="nearest")


def test_animevideov3_matches_reference_forward_pass():
    weights = need_data("weights", "realesr-animevideov3.pth")
    lr = need_data("sr", "Set5", "LR_bicubic", "X4", "birdx4.png")
    raw = torch.load(weights, map_location="cpu", weights_only=True)["params"]
    model = load_model(weights)
    assert infer_arch(read_checkpoint(weights)).describe() == "SRVGGNetCompact x4 (feat 64, conv 16, prelu)"
    img = np.asarray(Image.open(lr).convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    with torch.no_grad():
        ours = model(x)
        ref = reference_compact(raw, x)
    assert ours.shape == (1, 3, 4 * x.shape[2], 4 * x.shape[3])
    assert (ours - ref).abs().max().item() < 1e-5
    # and the output is a plausible upscale of the image (close to bicubic), not noise
    bicubic = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
    assert (ours.clamp(0, 1) - bicubic).abs().mean().item() < 0.05
