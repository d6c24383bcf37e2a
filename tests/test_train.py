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


def _texture_clip(folder, frames=40, w=160, h=128):
    """A clip of a random grey texture (4:2:0 keeps it) panning 3 px per frame, encoded almost losslessly."""
    import av

    folder.mkdir(exist_ok=True)
    path = folder / "pan.mp4"
    rng = np.random.default_rng(1)
    grey = rng.random((h // 4, (w + 3 * frames) // 4, 1)) * 200 + 20
    big = (grey * np.array([1.0, 0.9, 0.8])).astype(np.uint8)
    big = np.asarray(Image.fromarray(big).resize((w + 3 * frames, h), Image.BICUBIC))
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25, options={"crf": "4"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(big[:, 3 * i:3 * i + w]), format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse)


def test_encoded_clip_pairs_are_aligned_p_frames_of_a_real_stream(tmp_path):
    import av

    from ultrares_stream.quality.matlab_resize import imresize
    from ultrares_stream.train.data import SETTLE_FRAMES, encoded_clip_pairs

    clip = _texture_clip(tmp_path / "clips")
    with av.open(str(clip)) as c:
        originals = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    pairs = encoded_clip_pairs(clip, 4, (0.05, 2.0), every=4)
    kept = list(range(SETTLE_FRAMES, 20, 4))  # first half of 40 frames only: the rest is held out
    assert len(pairs) == 2 * len(kept)
    for (lr, hr), i in zip(pairs, kept * 2):
        assert lr.shape == (32, 40, 3) and hr.shape == (128, 160, 3)
        assert np.array_equal(hr, originals[i])
    low = [_psnr(lr, imresize(hr, scale=1 / 4)) for lr, hr in pairs[: len(kept)]]
    high = [_psnr(lr, imresize(hr, scale=1 / 4)) for lr, hr in pairs[len(kept):]]
    assert min(high) > 30 and min(high) > max(low) + 3  # a real encode at two bitrates
    lr, hr = pairs[-1]
    other = pairs[-2][1]  # a frame 4 frames (12 px) earlier: LR must match its own frame better
    assert _psnr(lr, imresize(hr, scale=1 / 4)) > _psnr(lr, imresize(other, scale=1 / 4)) + 5


def test_pair_sampler_crops_lr_and_hr_at_the_same_place():
    from ultrares_stream.quality.matlab_resize import imresize
    from ultrares_stream.train.data import PairSampler

    rng = np.random.default_rng(2)
    hrs = [np.asarray(Image.fromarray((rng.random((24, 30, 3)) * 255).astype(np.uint8)).resize((120, 96), Image.BICUBIC))
           for _ in range(3)]
    sampler = PairSampler([(imresize(h, scale=1 / 4), h) for h in hrs], crop=48, scale=4, seed=5)
    lr, hr = sampler.batch(16)
    assert lr.shape == (16, 3, 12, 12) and hr.shape == (16, 3, 48, 48)
    err = (bicubic_down(hr, 4) - lr)[..., 2:-2, 2:-2].abs()  # the kernel reaches 2 LR pixels past a crop
    assert err.max() < 2 / 255
    shifted = (bicubic_down(hr, 4)[..., 2:-2, 3:-1] - lr[..., 2:-2, 2:-2]).abs()
    assert shifted.mean() > 10 * err.mean()


def test_resume_with_video_pairs_gives_identical_weights(tmp_path):
    folder = _scene(tmp_path)
    clips = _texture_clip(tmp_path / "clips").parent
    kw = dict(videos=[clips], pair_prob=0.5, pair_bpp=(0.1, 0.5), steps=16)
    straight = Trainer(_cfg(tmp_path / "a", folder, **kw))
    straight.fit(resume=False)
    first = Trainer(_cfg(tmp_path / "b", folder, **kw))
    first.fit(resume=False, until=7)
    second = Trainer(_cfg(tmp_path / "b", folder, **kw))
    second.fit(resume=True)
    assert len(second.pair_sampler) == 2 * 3
    for (k, a), b in zip(straight.g.state_dict().items(), second.g.state_dict().values()):
        assert torch.equal(a, b), k


def test_deepened_generator_computes_the_same_function():
    from ultrares_stream.errors import UserError
    from ultrares_stream.models.archs import RRDBNet, SRVGGNetCompact
    from ultrares_stream.train.growth import deepen_compact

    torch.manual_seed(0)
    small = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4).eval()
    grown_sd = deepen_compact(small.state_dict(), 5)
    grown = SRVGGNetCompact(num_feat=8, num_conv=5, upscale=4).eval()
    grown.load_state_dict(grown_sd)  # strict: every key of the deeper net, nothing else
    x = torch.rand(2, 3, 9, 11)
    with torch.no_grad():
        assert torch.allclose(grown(x), small(x), atol=1e-6)
    with pytest.raises(UserError, match="cannot shrink"):
        deepen_compact(small.state_dict(), 1)
    with pytest.raises(UserError, match="PReLU"):
        deepen_compact(SRVGGNetCompact(num_feat=8, num_conv=2, act_type="lrelu").state_dict(), 4)
    with pytest.raises(UserError, match="SRVGGNetCompact"):
        deepen_compact(RRDBNet(num_feat=8, num_block=1, num_grow_ch=4).state_dict(), 4)


def test_training_from_a_shallower_init_deepens_it(tmp_path):
    folder = _scene(tmp_path)
    init = Trainer(_cfg(tmp_path / "p", folder, steps=5)).fit(resume=False)
    deeper = Trainer(_cfg(tmp_path / "d", folder, steps=5, num_conv=4, init=init))
    small = read_checkpoint(init)
    for k in ("body.0.weight", "body.3.weight"):  # first conv, first body activation: carried over
        assert torch.equal(deeper.g.state_dict()[k], small[k])
    assert deeper.g.num_conv == 4 and torch.equal(deeper.g.state_dict()["body.10.bias"], small["body.6.bias"])


def test_reparameterisable_compact_collapses_to_the_same_function():
    from ultrares_stream.models.archs import SRVGGNetCompact
    from ultrares_stream.train.reparam import RepCompact

    torch.manual_seed(0)
    plain = SRVGGNetCompact(num_feat=8, num_conv=3, upscale=4).eval()
    rep = RepCompact.from_compact(plain.state_dict())
    x = torch.rand(2, 3, 9, 13)
    with torch.no_grad():
        assert torch.equal(rep(x), plain(x))  # extra branches start at zero: same net
        for p in rep.parameters():  # every branch now contributes
            p.add_(0.05 * torch.randn_like(p))
        trained = rep(x)
        collapsed = rep.collapsed().eval()
        assert not torch.allclose(trained, plain(x), atol=1e-3)
        assert torch.allclose(collapsed(x), trained, atol=1e-5)
    assert set(rep.compact_state_dict()) == set(plain.state_dict())


def test_reparam_training_with_a_teacher_ships_plain_compact_weights(tmp_path):
    from ultrares_stream.errors import UserError
    from ultrares_stream.models.archs import RRDBNet
    from ultrares_stream.models.checkpoint import build_model, save_checkpoint

    folder = _scene(tmp_path)
    init = Trainer(_cfg(tmp_path / "p", folder, steps=5)).fit(resume=False)
    teacher = Trainer(_cfg(tmp_path / "t", folder, steps=5, num_feat=12)).fit(resume=False)
    trainer = Trainer(_cfg(tmp_path / "r", folder, steps=8, init=init, reparam=True, teacher=teacher))
    out = trainer.fit(resume=False)
    assert trainer.history == [] and trainer.step == 8
    shipped = build_model(read_checkpoint(out))  # loads strictly as a plain SRVGGNetCompact
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(shipped(x), trainer.ema(x), atol=1e-5)
        assert not torch.allclose(shipped(x), build_model(read_checkpoint(init))(x), atol=1e-4)
    rrdb = tmp_path / "rrdb.safetensors"
    save_checkpoint(RRDBNet(num_feat=8, num_block=1, num_grow_ch=4).state_dict(), rrdb, {})
    with pytest.raises(UserError, match="--reparam"):
        Trainer(_cfg(tmp_path / "x", folder, init=rrdb, reparam=True))
    from ultrares_stream.models.archs import SRVGGNetCompact

    x2 = tmp_path / "x2.safetensors"
    save_checkpoint(SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2).state_dict(), x2, {})
    with pytest.raises(UserError, match="x2 net, training is x4"):
        Trainer(_cfg(tmp_path / "y", folder, teacher=x2))


def test_synthetic_plates_are_reproducible_plate_like_pictures():
    from ultrares_stream.train.plate_images import draw_plate, plate_images

    a, b, c = plate_images(3, seed=5), plate_images(3, seed=5), plate_images(3, seed=6)
    assert all(x.shape == (256, 256, 3) and x.dtype == np.uint8 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)), "a pure function of its seed"
    assert not any(np.array_equal(x, y) for x, y in zip(a, c))
    rng = np.random.default_rng(0)
    for _ in range(20):
        plate = np.asarray(draw_plate(rng, 120)[0])
        assert 100 <= plate.shape[1] <= 140, "drawn at the asked width (rotation adds a little)"
        inside = plate[..., 3] == 255
        grey = plate[..., :3].mean(axis=2)[inside]
        assert grey.max() - grey.min() > 80, "characters stand out from the plate"



def test_plate_crops_hold_the_whole_plate_and_its_box_maps_onto_the_lr():
    from ultrares_stream.train.plate_images import labelled_plate_images
    from ultrares_stream.train.reader import PlateCropSampler

    labelled = labelled_plate_images(30, seed=2)
    sampler = PlateCropSampler(labelled, crop=128, scale=4, seed=0)
    hr, boxes, texts = sampler.batch(16)
    assert hr.shape == (16, 3, 128, 128) and len(boxes) == len(texts) == 16
    known = {text for _, labels in labelled for _, text in labels}
    for crop, (x, y, w, h), text in zip(hr, boxes, texts):
        assert text in known and text.isalnum()
        assert 0 <= x and 0 <= y and (x + w) * 4 <= 128 and (y + h) * 4 <= 128, "the plate is inside the crop"
        inside = crop[:, y * 4:(y + h) * 4, x * 4:(x + w) * 4]
        assert inside.std() > 0.05, "the box holds the plate's strokes, not a flat panel"


def test_the_plate_reader_learns_and_its_loss_trains_the_generator(tmp_path):
    from ultrares_stream.models.checkpoint import save_checkpoint
    from ultrares_stream.train.plate_images import labelled_plate_images
    from ultrares_stream.train.reader import PlateCropSampler, PlateReader, ctc_loss, decode, plate_crops

    torch.manual_seed(0)
    sampler = PlateCropSampler(labelled_plate_images(40, seed=1), crop=256, scale=1, seed=0)
    reader = PlateReader()
    opt = torch.optim.Adam(reader.parameters(), lr=2e-3)
    hr, boxes, texts = sampler.batch(16)
    losses = []
    for _ in range(40):  # one batch, learnt by heart: the CTC path and its gradients work
        loss = ctc_loss(reader(plate_crops(hr, boxes)), texts)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    reader.eval()
    assert all(len(r) <= 10 and r.isalnum() or r == "" for r in decode(reader(plate_crops(hr, boxes))))
    save_checkpoint(reader.state_dict(), tmp_path / "reader.safetensors")
    # the generator's training takes the reader's loss on plate crops
    cfg = TrainConfig(out_dir=tmp_path / "run", images=[_scene(tmp_path)], plates=20, num_feat=8, num_conv=2, crop=64, batch=4,
                      steps=6, ckpt_every=1000, val_every=1000, plate_loss=1.0,
                      reader=tmp_path / "reader.safetensors", plate_share=1.0, progress=False)
    trainer = Trainer(cfg)
    before = [p.detach().clone() for p in trainer.g.parameters()]
    hr, boxes, texts = PlateCropSampler(labelled_plate_images(20, seed=4), crop=64, scale=4, seed=1).batch(4)
    logs = trainer.train_step(hr, plates=(boxes, texts))
    assert logs["read"] > 0 and logs["loss"] > logs["l1"], "the reader's CTC term is in the loss"
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.g.parameters()))
    trainer.fit(resume=False)  # and the loop's plate batches run end to end
    assert trainer.step == 6 and trainer.plate_sampler is not None


def test_the_cli_trains_a_plate_reader_and_refuses_a_plate_loss_without_one(tmp_path, capsys):
    from ultrares_stream.cli import main

    assert main(["train", "--stage", "reader", "--out", str(tmp_path / "reader"), "--plates", "12",
                 "--steps", "3", "--batch", "4"]) == 0
    assert (tmp_path / "reader" / "plate-reader.safetensors").is_file()
    assert "held-out synthetic plates read exactly" in capsys.readouterr().out
    code = main(["train", "--out", str(tmp_path / "run"), "--plate-loss", "0.01", "--steps", "1"])
    assert code != 0 and "--plate-loss needs --reader" in capsys.readouterr().err
