"""Geometric self-ensemble (ensemble.py): the network over flipped and transposed frames, each
output turned back and averaged; in the upscaler, the CLI, the evaluation and the provenance."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import need_data
from ultrares_stream import ensemble
from ultrares_stream.errors import UserError
from ultrares_stream.upscaler import Upscaler


def test_each_orientation_is_undone_by_its_inverse_and_the_eight_differ():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    seen = set()
    for how in ensemble.TRANSFORMS:
        y = ensemble.orient(x, *how)
        assert torch.equal(ensemble.unorient(y, *how), x)
        seen.add(tuple(y[0, 0].flatten().tolist()))
    assert len(ensemble.TRANSFORMS) == len(seen) == 8
    assert ensemble.TRANSFORMS[0] == (False, False, False)  # one pass is the plain pass


def test_an_equivariant_network_is_unchanged_and_another_is_averaged():
    x = torch.rand(1, 3, 6, 7)

    def nearest(t):  # commutes with every flip and transpose
        return F.interpolate(t, scale_factor=2, mode="nearest")

    assert torch.allclose(ensemble.self_ensemble(nearest, x, 8), nearest(x))
    kernel = torch.zeros(3, 1, 3, 3)
    kernel[:, 0, 0, 2] = 1.0  # looks up-right: not equivariant

    def shifted(t):
        return F.conv2d(t, kernel, padding=1, groups=3)

    want = sum(ensemble.unorient(shifted(ensemble.orient(x, *how)), *how) for how in ensemble.TRANSFORMS[:4]) / 4
    got = ensemble.self_ensemble(shifted, x, 4)
    assert torch.allclose(got, want) and not torch.allclose(got, shifted(x))


def test_pass_counts_other_than_1_2_4_8_are_refused():
    for bad in (0, 3, 16):
        with pytest.raises(UserError, match="1, 2, 4, 8"):
            ensemble.check_passes(bad)


def test_the_upscaler_averages_its_own_oriented_passes_tiled_or_whole(tiny_model):
    plain = Upscaler(tiny_model, device="cpu", precision="fp32", engine="eager", tile=0)
    eight = Upscaler(tiny_model, device="cpu", precision="fp32", engine="eager", tile=0, ensemble=8)
    tiled = Upscaler(tiny_model, device="cpu", precision="fp32", engine="eager", tile=16, ensemble=8)
    x = torch.rand(1, 3, 30, 44)  # not square: the transposed passes run at 44x30
    with torch.inference_mode():
        passes = [ensemble.unorient(plain.run(ensemble.orient(x, *how)), *how) for how in ensemble.TRANSFORMS]
        want = (sum(passes) / 8).clamp(0, 1)  # the mean of the raw passes, clamped once
        got = eight.upscale(x)
        assert got.shape == (1, 3, 60, 88)
        assert torch.allclose(got, want, atol=1e-5)
        assert (got - plain.upscale(x)).abs().max() > 1e-3  # it does change the output
        assert torch.allclose(tiled.upscale(x), got, atol=1e-5)  # tiles with the exact pad agree
        before = eight._gate.tickets
        eight.upscale(x)
    # each orientation is admitted on its own, so a camera's passes interleave with the eight
    assert eight._gate.tickets - before == 8


def test_enhance_records_the_ensemble_and_refuses_a_bad_count(tmp_path, tiny_model):
    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(src)
    run = [sys.executable, "-m", "ultrares_stream", "enhance", str(src), "-o", str(dst), "--model", tiny_model,
           "--device", "cpu"]
    bad = subprocess.run(run + ["--ensemble", "3"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "1, 2, 4, 8 passes, not 3" in bad.stderr and "Traceback" not in bad.stderr
    assert not dst.exists()
    ok = subprocess.run(run + ["--ensemble", "4"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    with Image.open(dst) as im:
        im.load()
        assert im.text["ultrares:ensemble"] == "4" and "self-ensemble of 4 orientations" in im.text["Comment"]


def test_the_shipped_traffic_pair_scores_higher_on_set5_with_eight_passes():
    from ultrares_stream.quality.datasets import load_pairs
    from ultrares_stream.quality.evaluate import evaluate_methods

    pairs = load_pairs(need_data("sr", "Set5"), 4)
    rows = evaluate_methods("Set5", pairs, 4, ["ultrares-traffic-x4"], [0.0], device="cpu", ensembles=(1, 8))
    _, plain, eight = rows
    assert (plain.method, eight.method) == ("ultrares-traffic-x4", "ultrares-traffic-x4 x8 ensemble")
    assert eight.psnr > plain.psnr + 0.1, (plain.psnr, eight.psnr)
