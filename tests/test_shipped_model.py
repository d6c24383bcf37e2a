"""The shipped pairs: they are there, each is a pair of one architecture, and they beat bicubic."""
from __future__ import annotations

import pytest
import torch

from ultrares_stream.models.checkpoint import infer_arch, read_checkpoint
from ultrares_stream.models.registry import DEFAULT_MODEL, ENTRIES, PAIRS, default_model, local_path
from ultrares_stream.upscaler import Upscaler


#: pair -> (architecture, hyper-parameters it must have)
SHIPPED = {"ultrares-compact-x4": ("SRVGGNetCompact", {"num_feat": 32, "num_conv": 6}),
           "ultrares-wide-x4": ("SRVGGNetCompact", {"num_feat": 64, "num_conv": 16}),
           "ultrares-traffic-x4": ("RLFN", {"num_feat": 52, "num_block": 6})}


def test_the_default_is_the_real_time_pair_on_the_cpu_and_the_traffic_pair_on_cuda():
    assert DEFAULT_MODEL == default_model("cpu") == "ultrares-compact-x4"
    assert default_model("cuda") == "ultrares-traffic-x4" and default_model("mps") == DEFAULT_MODEL
    assert {name for name, e in ENTRIES.items() if e.url is None} == {n for p in SHIPPED for n in PAIRS[p]}
    assert Upscaler(device="cpu", precision="fp32").model_name == "ultrares-compact-x4"


@pytest.mark.parametrize("pair", sorted(SHIPPED))
def test_shipped_pair_is_present_and_interpolable(pair):
    psnr_name, gan_name = PAIRS[pair]
    psnr, gan = (read_checkpoint(local_path(ENTRIES[n])) for n in (psnr_name, gan_name))
    spec = infer_arch(psnr)
    assert spec == infer_arch(gan)
    arch, wanted = SHIPPED[pair]
    assert spec.arch == arch and spec.scale == 4
    assert {k: dict(spec.kwargs)[k] for k in wanted} == wanted
    # two different networks (else alpha would do nothing), of one lineage (close in weight space)
    diff = sum((psnr[k] - gan[k]).abs().sum() for k in psnr)
    size = sum(psnr[k].abs().sum() for k in psnr)
    assert 0 < diff / size < 0.5


def test_default_upscaler_runs_and_alpha_changes_the_output():
    up = Upscaler(device="cpu", precision="fp32")
    assert up.model_name == DEFAULT_MODEL and up.is_pair and up.scale == 4
    torch.manual_seed(0)
    x = torch.rand(1, 3, 24, 32)
    up.set_alpha(0.0)
    a = up.upscale(x)
    up.set_alpha(1.0)
    b = up.upscale(x)
    assert a.shape == (1, 3, 96, 128)
    assert (a - b).abs().mean() > 1e-3


@pytest.mark.parametrize("pair", sorted(SHIPPED))
def test_shipped_psnr_network_beats_bicubic_on_set5(data, pair):
    from ultrares_stream.quality.datasets import load_pairs
    from ultrares_stream.quality.evaluate import bicubic_upscale, evaluate, upscaler_fn

    pairs = load_pairs(data("sr", "Set5"), 4)
    bicubic = evaluate(pairs, lambda lr: bicubic_upscale(lr, 4), 4)["psnr"]
    model = evaluate(pairs, upscaler_fn(Upscaler(pair, alpha=0.0, device="cpu", precision="fp32")), 4)["psnr"]
    assert abs(bicubic - 28.42) < 0.01
    assert model >= bicubic + 1.5, (model, bicubic)


@pytest.mark.parametrize("pair", sorted(SHIPPED))
def test_shipped_psnr_network_beats_bicubic_on_traffic(data, pair):
    """The traffic protocol (H.264 at 0.1 bit/pixel after 100 frames of stream), one frame per clip."""
    from ultrares_stream.quality.datasets import traffic_video_pairs
    from ultrares_stream.quality.evaluate import bicubic_upscale, evaluate, upscaler_fn

    pairs = traffic_video_pairs(data("video"), 4, frames_per_clip=1)
    bicubic = evaluate(pairs, lambda lr: bicubic_upscale(lr, 4), 4)["psnr"]
    model = evaluate(pairs, upscaler_fn(Upscaler(pair, alpha=0.0, device="cpu", precision="fp32")), 4)["psnr"]
    assert model >= bicubic + 0.3, (model, bicubic)
