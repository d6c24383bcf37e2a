"""Training recipe: degradations, a short run that learns, bit-exact resume, the shipped pair."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ultrares_stream.models.checkpoint import read_checkpoint
from ultrares_stream.train.degradations import DegradationConfig, bicubic_down, degrade, h264, jpeg
from ultrares_stream.train.trainer import TrainConfig, Trainer, lr_at


def _scene(tmp_path, n=6, size=96):
    """A few synthetic HR images with edges and texture (a tiny training set)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "hr"
    folder.mkdir()
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        img = np.zeros((size, size, 3), np.float64)
        for c in range(3):
            fx, fy = rng.uniform(0.05, 0.3, 2)
            img[..., c] = 0.5 + 0.4 * np.sin(fx * xx + fy * yy + c)
        img[(xx // 12 + yy // 12) % 2 == 0] *= 0.6
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def test_bicubic_down_matches_matlab_set5(data):
    hr = np.asarray(Image.open(data("sr", "Set5", "HR", "baby.png")).convert("RGB"))
    ref = np.asarray(Image.open(data("sr", "Set5", "LR_bicubic", "X4", "babyx4.png")).convert("RGB")).astype(float)
    x = torch.from_numpy(hr.copy()).permute(2, 0, 1)[None].float() / 255
    lr = (bicubic_down(x, 4).clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy()
    assert lr.shape == ref.shape
    assert np.abs(lr - ref).max() <= 1  # MATLAB rounds in uint8; we differ by at most one level
    assert np.abs(lr - ref).mean() < 0.2


def test_bicubic_down_keeps_constant_and_shape():
    x = torch.full((2, 3, 64, 48), 0.3)
    y = bicubic_down(x, 4)
    assert y.shape == (2, 3, 16, 12)
    assert torch.allclose(y, torch.full_like(y, 0.3), atol=1e-6)


def test_traffic_degradations_change_the_image_and_stay_in_range():
    rng = np.random.default_rng(1)
    hr = torch.rand(4, 3, 64, 64)
    plain = degrade(hr, 4, np.random.default_rng(1), DegradationConfig(mode="bicubic"))
    cfg = DegradationConfig(mode="traffic", blur_prob=1, noise_prob=1, h264_prob=1, jpeg_prob=0)
    lr = degrade(hr, 4, rng, cfg)
    assert lr.shape == plain.shape == (4, 3, 16, 16)
    assert 0 <= lr.min() and lr.max() <= 1
    assert (lr - plain).abs().mean() > 0.01
    # compression round trips keep size and stay close to the input on smooth content
    smooth = torch.nn.functional.interpolate(torch.rand(3, 3, 4, 4), size=(32, 32), mode="bilinear")
    for codec in (lambda t: jpeg(t, 90), lambda t: h264(t, 18)):
        out = codec(smooth)
        assert out.shape == smooth.shape
        assert (out - smooth).abs().mean() < 0.03


def test_lr_schedule_halves():
    assert lr_at(0, 2e-4, 100) == 2e-4
    assert lr_at(50, 2e-4, 100) == 1e-4
    assert lr_at(99, 2e-4, 100) == pytest.approx(2.5e-5)


def _cfg(tmp_path, folder, **kw):
    base = dict(out_dir=tmp_path / "run", images=[folder], num_feat=8, num_conv=2, crop=32, batch=4,
                steps=60, ckpt_every=1000, val_every=10_000, progress=False, lr=1e-3,
                degradation=DegradationConfig(mode="bicubic"))
    base.update(kw)
    return TrainConfig(**base)


def test_short_training_run_lowers_the_loss(tmp_path):
    folder = _scene(tmp_path)
    trainer = Trainer(_cfg(tmp_path, folder, steps=150))
    from ultrares_stream.train.data import CropSampler, build_pool

    sampler = CropSampler(build_pool([folder], []), 32, seed=3)
    fixed = sampler.batch(8)

    def eval_loss():
        lr = bicubic_down(fixed, 4)
        with torch.no_grad():
            return torch.nn.functional.l1_loss(trainer.g(lr), fixed).item()

    before = eval_loss()
    trainer.fit(resume=False)
    after = eval_loss()
    assert after < 0.8 * before
    assert (tmp_path / "run" / "generator_ema.safetensors").is_file()


def test_resume_gives_identical_weights(tmp_path):
    folder = _scene(tmp_path)
    straight = Trainer(_cfg(tmp_path / "a", folder, steps=20))
    straight.fit(resume=False)

    first = Trainer(_cfg(tmp_path / "b", folder, steps=20))
    first.fit(resume=False, until=10)
    assert first.step == 10
    second = Trainer(_cfg(tmp_path / "b", folder, steps=20))
    second.fit(resume=True)
    assert second.step == 20
    for (k, a), b in zip(straight.g.state_dict().items(), second.g.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(straight.ema.state_dict().values(), second.ema.state_dict().values()):
        assert torch.equal(a, b)


def test_gan_stage_runs_and_moves_away_from_init(tmp_path):
    folder = _scene(tmp_path)
    psnr = Trainer(_cfg(tmp_path / "p", folder, steps=20))
    init = psnr.fit(resume=False)
    gan = Trainer(_cfg(tmp_path / "g", folder, steps=10, stage="gan", init=init, perceptual="none"))
    out = gan.fit(resume=False)
    a, b = read_checkpoint(init), read_checkpoint(out)
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)
