"""Network interpolation (ESRGAN section 3.4): (1 - alpha) * PSNR + alpha * GAN."""
from __future__ import annotations

import math

import pytest
import torch

from ultrares_stream.errors import ModelError
from ultrares_stream.models.archs import SRVGGNetCompact
from ultrares_stream.models.interpolation import check_alpha, check_compatible, interpolate
from ultrares_stream.models.registry import ResolvedModel
from ultrares_stream.upscaler import Upscaler


def _pair():
    torch.manual_seed(10)
    psnr = SRVGGNetCompact(num_feat=8, num_conv=2).state_dict()
    torch.manual_seed(11)
    gan = SRVGGNetCompact(num_feat=8, num_conv=2).state_dict()
    assert not torch.equal(psnr["body.0.weight"], gan["body.0.weight"])
    return psnr, gan


def test_endpoints_reproduce_each_network_exactly():
    psnr, gan = _pair()
    at0, at1 = interpolate(psnr, gan, 0.0), interpolate(psnr, gan, 1.0)
    assert all(torch.equal(at0[k], psnr[k]) for k in psnr)
    assert all(torch.equal(at1[k], gan[k]) for k in gan)


def test_half_is_the_mean_and_not_a_scaled_single_model():
    psnr, gan = _pair()
    mid = interpolate(psnr, gan, 0.5)
    for k in psnr:
        assert torch.allclose(mid[k], (psnr[k] + gan[k]) / 2, atol=1e-7)
    # the old app's "alpha * weights" is not interpolation
    assert not torch.allclose(mid["body.0.weight"], 0.5 * gan["body.0.weight"])
    q = interpolate(psnr, gan, 0.25)
    assert torch.allclose(q["body.2.bias"], 0.75 * psnr["body.2.bias"] + 0.25 * gan["body.2.bias"], atol=1e-7)


def test_inputs_are_not_modified():
    psnr, gan = _pair()
    before = {k: v.clone() for k, v in psnr.items()}
    interpolate(psnr, gan, 0.3)
    assert all(torch.equal(before[k], psnr[k]) for k in psnr)


@pytest.mark.parametrize("alpha", [-0.01, 1.01, math.nan, math.inf])
def test_alpha_outside_unit_interval_rejected(alpha):
    psnr, gan = _pair()
    with pytest.raises(ModelError, match="alpha must be between 0"):
        interpolate(psnr, gan, alpha)
    with pytest.raises(ModelError):
        check_alpha(alpha)


def test_mismatch_names_first_differing_key_or_shape():
    psnr, gan = _pair()
    wide = SRVGGNetCompact(num_feat=16, num_conv=2).state_dict()
    with pytest.raises(ModelError, match=r"'body\.0\.weight' has shape \(8, 3, 3, 3\) in the PSNR network and \(16, 3, 3, 3\)"):
        check_compatible(psnr, wide)
    deeper = SRVGGNetCompact(num_feat=8, num_conv=3).state_dict()
    with pytest.raises(ModelError, match=r"'body\.6\.weight' has shape \(48, 8, 3, 3\) in the PSNR network "
                                         r"and \(8, 8, 3, 3\) in the GAN"):
        interpolate(psnr, deeper, 0.5)
    extra = dict(gan, **{"body.9.weight": torch.zeros(1)})
    with pytest.raises(ModelError, match=r"key 'body\.9\.weight' is only in the GAN network"):
        interpolate(psnr, extra, 0.5)
    missing = dict(gan)
    del missing["body.1.weight"]
    with pytest.raises(ModelError, match=r"'body\.1\.weight' is only in the PSNR network"):
        interpolate(psnr, missing, 0.5)


def test_upscaler_alpha_endpoints_match_each_network():
    psnr, gan = _pair()
    up = Upscaler(ResolvedModel("pair", psnr, gan), alpha=0.0, device="cpu", precision="fp32", tile=0)
    x = torch.rand(1, 3, 9, 11)
    nets = {}
    for name, sd in (("psnr", psnr), ("gan", gan)):
        nets[name] = SRVGGNetCompact(num_feat=8, num_conv=2).eval()
        nets[name].load_state_dict(sd)
    with torch.no_grad():
        assert torch.equal(up.run(x), nets["psnr"](x))
        up.set_alpha(1.0)
        assert torch.equal(up.run(x), nets["gan"](x))
        up.set_alpha(0.5)
        mid = SRVGGNetCompact(num_feat=8, num_conv=2).eval()
        mid.load_state_dict(interpolate(psnr, gan, 0.5))
        assert torch.allclose(up.run(x), mid(x), atol=1e-6)
    assert up.alpha == 0.5 and up.is_pair
    with pytest.raises(ModelError):
        up.set_alpha(2)
