"""The upscaler core: padding to the size multiple, output size, CPU precision,
and the fp16 -> fp32 fallback on NaN/Inf."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import need_data
from ultrares_stream.engine.base import cpu_supports_bf16, pick_precision
from ultrares_stream.engine.eager import EagerEngine
from ultrares_stream.errors import ModelError, UserError
from ultrares_stream.models.archs import RRDBNet, SRVGGNetCompact, detect
from ultrares_stream.models.checkpoint import read_checkpoint
from ultrares_stream.models.registry import ResolvedModel
from ultrares_stream.upscaler import Upscaler, resize


def _tiny(scale=4):
    torch.manual_seed(0)
    return ResolvedModel("tiny", SRVGGNetCompact(num_feat=8, num_conv=2, upscale=scale).state_dict())


@pytest.mark.parametrize("scale", [1, 2])
def test_pads_to_size_multiple_and_crops_back(scale):
    torch.manual_seed(scale)
    net = RRDBNet(scale=scale, num_feat=8, num_block=1, num_grow_ch=4).eval()
    up = Upscaler(ResolvedModel("r", net.state_dict()), device="cpu", precision="fp32", tile=0)
    x = torch.rand(1, 3, 21, 30)  # not a multiple of 4 (x1) or 2 (x2)
    out = up.run(x)
    assert out.shape == (1, 3, 21 * scale, 30 * scale)
    # what the net gives for the frame reflect-padded to the next multiple, cropped back
    m = detect(net.state_dict()).input_sizes.multiple
    with torch.no_grad():
        ref = net(F.pad(x, (0, (-30) % m, 0, (-21) % m), mode="reflect"))[..., : 21 * scale, : 30 * scale]
    assert torch.equal(out, ref)
    with pytest.raises(RuntimeError):  # the unpadded frame is not a valid input: padding is needed
        with torch.no_grad():
            net(x)


def test_output_size_and_clamping():
    up = Upscaler(_tiny(), device="cpu", precision="fp32", tile=0)
    x = torch.rand(2, 3, 10, 16)
    out = up.upscale(x, size=(50, 31))
    assert out.shape == (2, 3, 31, 50) and out.min() >= 0 and out.max() <= 1
    assert up.upscale(x).shape == (2, 3, 40, 64)
    small = resize(torch.rand(1, 3, 40, 40), (10, 10))
    assert small.shape == (1, 3, 10, 10)


def test_cpu_precision_choice():
    cpu = torch.device("cpu")
    assert pick_precision("auto", cpu) == ("bf16" if cpu_supports_bf16() else "fp32")
    with pytest.raises(UserError, match="fp16 is not supported on the CPU"):
        pick_precision("fp16", cpu)
    with pytest.raises(UserError, match="precision must be"):
        pick_precision("int4", cpu)  # int8 is a CPU precision (the OpenVINO engine: tests/test_engine_int8.py)
    with pytest.raises(UserError, match="CUDA is not available"):
        if torch.cuda.is_available():
            pytest.skip("CUDA present")
        Upscaler(_tiny(), device="cuda")


def test_bf16_autocast_channels_last_close_to_fp32():
    sd = read_checkpoint(need_data("weights", "realesr-animevideov3.pth"))
    img = Image.open(need_data("sr", "Set5", "LR_bicubic", "X4", "headx4.png")).convert("RGB")
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None][..., :48, :48]
    fp32 = Upscaler(ResolvedModel("a", sd), device="cpu", precision="fp32", engine="eager", tile=0)
    bf16 = Upscaler(ResolvedModel("a", sd), device="cpu", precision="bf16", engine="eager", tile=0)
    assert bf16.precision == "bf16" and bf16.engine.channels_last
    a, b = fp32.upscale(x), bf16.upscale(x)
    assert b.dtype == torch.float32
    assert (a - b).abs().mean().item() < 2 / 255


class _Overflows(torch.nn.Module):
    """Finite in fp32, Inf in fp16 (65504 is fp16's largest value): what RRDBNet's
    activations do on some inputs."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(1000.0))

    def forward(self, x):
        return x * self.gain * self.gain / 1e6


def test_fp16_falls_back_to_fp32_on_inf_and_logs_once(caplog):
    engine = EagerEngine(_Overflows(), torch.device("cpu"), "fp16")  # the CUDA fp16 path, run on the CPU
    x = torch.rand(1, 3, 4, 4) + 0.5
    with caplog.at_level(logging.WARNING, logger="ultrares_stream.engine.eager"):
        out = engine(x)
        out2 = engine(x)
    assert torch.isfinite(out).all() and torch.allclose(out, x, rtol=1e-5)
    assert torch.equal(out, out2) and engine.precision == "fp32"
    assert sum("NaN/Inf" in r.getMessage() for r in caplog.records) == 1


def test_fp16_kept_when_output_is_finite():
    class Halves(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(0.5))

        def forward(self, x):
            return x * self.w

    engine = EagerEngine(Halves(), torch.device("cpu"), "fp16")
    out = engine(torch.ones(1, 1, 2, 2))
    assert engine.precision == "fp16" and out.dtype == torch.float32 and torch.equal(out, torch.full_like(out, 0.5))


def test_bad_options():
    with pytest.raises(UserError, match="tile size"):
        Upscaler(_tiny(), device="cpu", tile=-1)
    up = Upscaler(_tiny(), device="cpu", precision="fp32")
    assert not up.is_pair and up.scale == 4
    up.set_alpha(0.9)  # no effect on a single network, but still validated
    with pytest.raises(ModelError):
        up.set_alpha(-1)


def test_a_precision_the_architecture_is_not_safe_in_is_refused_or_avoided():
    import dataclasses

    from ultrares_stream.upscaler import choose_precision

    spec = detect(_tiny().psnr)
    only = dataclasses.replace(spec.descriptor, precisions=frozenset({"fp32"}))
    fp32_only = dataclasses.replace(spec, descriptor=only)
    cpu = torch.device("cpu")
    assert choose_precision(spec, "bf16", cpu) == "bf16"
    assert choose_precision(fp32_only, "auto", cpu) == "fp32"
    with pytest.raises(UserError, match="does not run in bf16"):
        choose_precision(fp32_only, "bf16", cpu)
