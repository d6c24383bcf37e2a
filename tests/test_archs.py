"""The generator architectures: shapes, scales, agreement with reference forward passes written
here with plain torch.nn.functional ops, and their descriptors (recognised from the keys, rebuilt
from them, what each declares)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ultrares_stream.errors import ModelError
from ultrares_stream.models import archs
from ultrares_stream.models.archs import RRDBNet, SRVGGNetCompact, detect, shuffle_add_nearest


def _lrelu(x):
    return F.leaky_relu(x, 0.2)


def _conv(sd, name, x):
    return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)


def reference_rrdbnet(sd, x, scale, num_block):
    """ESRGAN generator from the paper's description, straight from the state dict."""
    if scale in (1, 2):
        x = F.pixel_unshuffle(x, 4 // scale)
    feat = _conv(sd, "conv_first", x)
    body = feat
    for b in range(num_block):
        block_in = body
        for r in (1, 2, 3):
            p = f"body.{b}.rdb{r}"
            xs = [body]
            for j in range(1, 5):
                xs.append(_lrelu(_conv(sd, f"{p}.conv{j}", torch.cat(xs, 1))))
            body = _conv(sd, f"{p}.conv5", torch.cat(xs, 1)) * 0.2 + body
        body = body * 0.2 + block_in
    feat = feat + _conv(sd, "conv_body", body)
    feat = _lrelu(_conv(sd, "conv_up1", F.interpolate(feat, scale_factor=2, mode="nearest")))
    feat = _lrelu(_conv(sd, "conv_up2", F.interpolate(feat, scale_factor=2, mode="nearest")))
    return _conv(sd, "conv_last", _lrelu(_conv(sd, "conv_hr", feat)))


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_rrdbnet_matches_reference_and_scales(scale):
    torch.manual_seed(scale)
    net = RRDBNet(scale=scale, num_feat=8, num_block=2, num_grow_ch=4).eval()
    x = torch.rand(2, 3, 12, 16)
    with torch.no_grad():
        out = net(x)
        ref = reference_rrdbnet(net.state_dict(), x, scale, 2)
    assert out.shape == (2, 3, 12 * scale, 16 * scale)
    assert torch.allclose(out, ref, atol=1e-5)
    assert detect(net.state_dict()).input_sizes.multiple == {4: 1, 2: 2, 1: 4}[scale]


def test_rrdbnet_default_hyper_parameters_are_esrgans():
    net = RRDBNet()
    assert len(net.body) == 23 and net.conv_first.out_channels == 64
    assert net.body[0].rdb1.conv1.out_channels == 32
    assert sum(p.numel() for p in net.parameters()) == 16_697_987  # the published ESRGAN x4 size


def test_rrdbnet_rejects_unknown_scale():
    with pytest.raises(ValueError, match="scale 1, 2 or 4"):
        RRDBNet(scale=3)


def test_compact_residual_is_nearest_upsampled_input():
    torch.manual_seed(0)
    net = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4).eval()
    torch.nn.init.zeros_(net.body[-1].weight)
    torch.nn.init.zeros_(net.body[-1].bias)
    x = torch.rand(1, 3, 5, 7)
    with torch.no_grad():
        out = net(x)
    assert torch.equal(out, x.repeat_interleave(4, 2).repeat_interleave(4, 3))


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_shuffle_add_nearest_equals_shuffle_plus_upsample(scale, channels_last):
    torch.manual_seed(scale)
    out = torch.randn(2, 3 * scale * scale, 5, 7)
    x = torch.rand(2, 3, 5, 7)
    if channels_last:
        out, x = out.contiguous(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    expected = F.pixel_shuffle(out, scale) + F.interpolate(x, scale_factor=scale, mode="nearest")
    got = shuffle_add_nearest(out, x, scale)
    assert got.shape == expected.shape and torch.equal(got, expected)


@pytest.mark.parametrize("act", ["prelu", "relu", "lrelu"])
def test_compact_layer_layout(act):
    net = SRVGGNetCompact(num_feat=8, num_conv=3, upscale=2, act_type=act)
    convs = [m for m in net.body if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3 + 2 and convs[-1].out_channels == 3 * 2 * 2
    assert net(torch.rand(1, 3, 6, 6)).shape == (1, 3, 12, 12)
    with pytest.raises(ValueError, match="unknown activation"):
        SRVGGNetCompact(act_type="gelu")


# --- the descriptors: one per architecture, found from the keys ----------------------------------

#: a small network of every registered architecture
SMALL = {
    "SRVGGNetCompact": lambda: SRVGGNetCompact(num_feat=8, num_conv=3, upscale=2, act_type="lrelu"),
    "RRDBNet": lambda: RRDBNet(scale=1, num_feat=8, num_block=2, num_grow_ch=4),
    "RLFN": lambda: archs.RLFN(num_feat=12, num_block=2, esa_ch=8),
    "SPAN": lambda: archs.SPAN(num_feat=8),
}


def test_every_registered_architecture_has_a_small_network_here():
    assert sorted(a.name for a in archs.ARCHS) == sorted(SMALL)  # names unique, none untested


@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_state_dict_is_recognised_by_its_own_descriptor_only_and_rebuilds_the_same_net(name):
    torch.manual_seed(0)
    net = SMALL[name]().eval()
    sd = net.state_dict()
    claims = [a.name for a in archs.ARCHS if a.detect(sd)]
    assert claims == [name]
    spec = detect(sd, "small")
    rebuilt = spec.build().eval()
    rebuilt.load_state_dict(sd, strict=True)
    assert type(rebuilt) is type(net) and spec.scale == net.scale
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))
    assert archs.input_sizes(net) == spec.input_sizes
    assert spec.bytes_per_pixel("fp16") < spec.bytes_per_pixel("fp32") and spec.supports("fp32")


def test_what_the_descriptors_declare():
    compact = detect(SRVGGNetCompact(num_feat=8, num_conv=5).state_dict())
    assert compact.tile_pad == 7 and compact.input_sizes == archs.InputSizes(1, 1)  # receptive-field radius
    rlfn = detect(archs.RLFN(num_feat=8, num_block=1).state_dict())
    assert rlfn.input_sizes == archs.InputSizes(1, 17) and rlfn.tile_pad == 16  # the ESA pool's minimum
    for scale, multiple in ((4, 1), (2, 2), (1, 4)):  # pixel-unshuffled bodies
        rrdb = detect(RRDBNet(scale=scale, num_feat=4, num_block=1, num_grow_ch=4).state_dict())
        assert rrdb.input_sizes.multiple == multiple and rrdb.scale == scale
    assert archs.input_sizes(torch.nn.Conv2d(3, 3, 3)) == archs.InputSizes()  # no known architecture


def test_a_state_dict_two_architectures_claim_is_refused():
    sd = {**SRVGGNetCompact(num_feat=4, num_conv=1).state_dict(), **archs.SPAN(num_feat=4).state_dict()}
    with pytest.raises(ModelError, match="more than one architecture"):
        detect(sd, "mixed")
