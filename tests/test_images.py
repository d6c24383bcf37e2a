"""Image files: formats by content, alpha, grayscale, 16-bit PNG, bad files, atomic writes."""
from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from ultrares_stream import images as images_mod
from ultrares_stream.errors import UserError
from ultrares_stream.images import (Picture, enhance_image, output_name, output_size, read_image, upscale_picture,
                                    write_image)
from ultrares_stream.models.archs import SRVGGNetCompact
from ultrares_stream.models.registry import ResolvedModel
from ultrares_stream.upscaler import Upscaler


@pytest.fixture(scope="module")
def upscaler():
    torch.manual_seed(0)
    sd = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2).state_dict()
    return Upscaler(ResolvedModel("tiny", sd), device="cpu", precision="fp32", tile=0)


def _rgb(h=12, w=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt,ext", [("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp"), ("BMP", ".bmp"),
                                     ("TIFF", ".tif")])
def test_each_format_round_trips(tmp_path, upscaler, fmt, ext):
    src = tmp_path / f"in{ext}"
    Image.fromarray(_rgb()).save(src, format=fmt)
    pic = read_image(src)
    assert pic.format == fmt and pic.colour.shape == (1, 3, 12, 16) and pic.bits == 8
    expected = np.asarray(Image.open(src).convert("RGB"))
    assert np.array_equal(np.round(pic.colour[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8), expected)
    info = enhance_image(src, tmp_path / f"out{ext}", upscaler, fmt=fmt)
    with Image.open(info["output"]) as out:
        assert out.format == fmt and out.size == (32, 24) and out.mode == "RGB"


def test_type_comes_from_content_not_name(tmp_path):
    src = tmp_path / "really_a_png.jpg"
    Image.fromarray(_rgb()).save(src, format="PNG")
    assert read_image(src).format == "PNG"
    assert output_name(src, "PNG") == "really_a_png.png"
    assert output_name(tmp_path / "a.JPEG", "JPEG") == "a.JPEG"


def test_rgba_keeps_alpha_through_the_model(tmp_path, upscaler):
    rgba = np.dstack([_rgb(), np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (12, 1))])
    src = tmp_path / "a.png"
    Image.fromarray(rgba).save(src)
    enhance_image(src, tmp_path / "o.png", upscaler)
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert out.shape == (24, 32, 4)
    # alpha = the model run on the alpha plane as a grey image, then luma
    a = torch.from_numpy(rgba[..., 3:].astype(np.float32) / 255).permute(2, 0, 1)[None].expand(-1, 3, -1, -1)
    grey = (upscaler.upscale(a) * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)[0]
    assert np.abs(out[..., 3].astype(int) - np.round(grey.numpy() * 255).astype(int)).max() <= 1
    # and the colour planes are the RGB run
    rgb = torch.from_numpy(rgba[..., :3].astype(np.float32) / 255).permute(2, 0, 1)[None]
    col = np.round(upscaler.upscale(rgb)[0].permute(1, 2, 0).numpy() * 255).astype(int)
    assert np.abs(out[..., :3].astype(int) - col).max() <= 1


def test_alpha_bicubic_mode_and_unknown_mode(upscaler):
    pic = Picture(torch.rand(1, 3, 6, 8), torch.full((1, 1, 6, 8), 0.25))
    out = upscale_picture(pic, upscaler, alpha_mode="bicubic")
    assert out.alpha.shape == (1, 1, 12, 16) and torch.allclose(out.alpha, torch.tensor(0.25), atol=1e-6)
    with pytest.raises(UserError, match="alpha mode"):
        upscale_picture(pic, upscaler, alpha_mode="nearest")


@pytest.mark.parametrize("mode", ["L", "LA"])
def test_grayscale_stays_grayscale(tmp_path, upscaler, mode):
    grey = _rgb()[..., 0]
    im = Image.fromarray(grey)
    if mode == "LA":
        im.putalpha(200)
    im.save(tmp_path / "g.png")
    enhance_image(tmp_path / "g.png", tmp_path / "o.png", upscaler)
    with Image.open(tmp_path / "o.png") as out:
        assert out.mode == mode and out.size == (32, 24)
        arr = np.asarray(out)
    x = torch.from_numpy(grey.astype(np.float32) / 255)[None, None].expand(-1, 3, -1, -1)
    ref = (upscaler.upscale(x) * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)[0]
    plane = arr if mode == "L" else arr[..., 0]
    assert np.abs(plane.astype(int) - np.round(ref.numpy() * 255).astype(int)).max() <= 1


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_png_round_trip_is_exact(tmp_path, channels):
    rng = np.random.default_rng(channels)
    values = rng.integers(0, 65536, (9, 11, channels)).astype(np.float32)
    x = torch.from_numpy(values / 65535).permute(2, 0, 1)[None]
    colour, alpha = (x[:, :-1], x[:, -1:]) if channels in (2, 4) else (x, None)
    write_image(Picture(colour, alpha, bits=16), tmp_path / "p.png")
    head = (tmp_path / "p.png").read_bytes()[:26]
    assert head[24] == 16 and head[25] == {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    back = read_image(tmp_path / "p.png")
    assert back.bits == 16 and back.grey == (channels < 3) and (back.alpha is not None) == (channels in (2, 4))
    got = back.colour if back.alpha is None else torch.cat((back.colour, back.alpha), 1)
    assert np.array_equal(np.round(got[0].permute(1, 2, 0).numpy() * 65535), values)
    # Pillow, reading independently: exact for grey, the high byte for colour
    with Image.open(tmp_path / "p.png") as im:
        ref = np.asarray(im)
    if channels == 1:
        assert np.array_equal(ref.astype(np.float32), values[..., 0])
    elif channels == 3:
        assert np.array_equal(ref, (values.astype(np.uint16) >> 8).astype(np.uint8))


def test_16bit_png_enhanced_stays_16bit(tmp_path, upscaler):
    ramp = (np.linspace(0, 65535, 16 * 12).reshape(12, 16, 1) * np.ones(3)).astype(np.float32)
    write_image(Picture(torch.from_numpy(ramp / 65535).permute(2, 0, 1)[None].contiguous(), bits=16),
                tmp_path / "in.png")
    enhance_image(tmp_path / "in.png", tmp_path / "out.png", upscaler)
    out = read_image(tmp_path / "out.png")
    assert out.bits == 16 and out.colour.shape == (1, 3, 24, 32)
    levels = np.round(out.colour.numpy() * 65535).astype(np.int64)
    assert (levels % 257 != 0).mean() > 0.5  # genuinely 16-bit, not 8-bit values scaled up


def test_16bit_grey_tiff_stays_16bit(tmp_path, upscaler):
    values = np.random.default_rng(3).integers(0, 65536, (12, 16)).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g.tif")
    pic = read_image(tmp_path / "g.tif")
    assert pic.bits == 16 and pic.grey
    assert np.array_equal(np.round(pic.colour[0, 0].numpy() * 65535).astype(np.uint16), values)
    enhance_image(tmp_path / "g.tif", tmp_path / "o.tif", upscaler)
    with Image.open(tmp_path / "o.tif") as im:
        assert im.mode.startswith("I;16") and im.size == (32, 24)


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_bad_files_name_the_file(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(_rgb(64, 64)).save(good)
    cases = {
        "noise.png": np.random.default_rng(0).bytes(500),
        "truncated.png": good.read_bytes()[: len(good.read_bytes()) // 2],
        "empty.jpg": b"",
    }
    jpg = tmp_path / "j.jpg"
    Image.fromarray(_rgb(64, 64)).save(jpg, quality=90)
    cases["truncated.jpg"] = jpg.read_bytes()[:600]
    # a decompression bomb: a valid PNG header declaring 100000 x 100000 pixels
    cases["bomb.png"] = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
                         + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100)) + _png_chunk(b"IEND", b""))
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError) as err:
            read_image(tmp_path / name)
        msg = str(err.value)
        assert msg.startswith(str(tmp_path / name)) and "\n" not in msg, msg
        if name == "bomb.png":
            assert "too large" in msg
    Image.fromarray(_rgb()).save(tmp_path / "anim.gif")
    with pytest.raises(UserError, match="anim.gif: GIF images are not supported"):
        read_image(tmp_path / "anim.gif")
    with pytest.raises(UserError, match="no such file"):
        read_image(tmp_path / "missing.png")


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    pic = Picture(torch.rand(1, 3, 8, 8))
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            raise OSError("disk full")

    monkeypatch.setattr(images_mod.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="disk full"):
        write_image(pic, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_output_size_rules():
    assert output_size(100, 50, 4) == (400, 200)
    assert output_size(100, 50, 4, scale=2.5) == (250, 125)
    assert output_size(640, 480, 4, size=(1920, 1080)) == (1440, 1080)
    with pytest.raises(UserError):
        output_size(10, 10, 4, scale=2, size=(100, 100))
    with pytest.raises(UserError, match="more than the limit"):
        upscale_picture(Picture(torch.rand(1, 3, 4, 4)), type("U", (), {"scale": 4})(), size=(20000, 20000))


def test_jpeg_output_of_rgba_drops_alpha_with_warning(tmp_path, caplog):
    write_image(Picture(torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8)), tmp_path / "x.jpg")
    with Image.open(tmp_path / "x.jpg") as im:
        assert im.mode == "RGB"
    assert "transparency dropped" in caplog.text
