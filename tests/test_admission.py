"""Admission by cost: no input starves the rest.

Images are refused from their header before anything is allocated (declared size, page count),
decoding stops at a deadline, truncated JPEGs are refused; a camera whose output frame would be
over its budget is refused naming ``cameras[i].output_size``. Real files and real processes."""
from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import yaml
from PIL import Image, ImageFile

from ultrares_stream import images
from ultrares_stream.cli import main
from ultrares_stream.errors import UserError


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _big_black_png(path, w, h):
    """A ``w`` x ``h`` RGB PNG of black rows, compressed row by row (never held whole in memory)."""
    z = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * w)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))
    return path


def _many_page_tiff(pages: int) -> bytes:
    """A little-endian TIFF of ``pages`` 1x1 grey pages, each IFD pointing at one shared pixel."""
    entries = [(256, 3, 1), (257, 3, 1), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (277, 3, 1),
               (278, 3, 1), (279, 4, 1)]
    size = 2 + 12 * len(entries) + 4
    out = [b"II*\x00" + struct.pack("<I", 12) + b"\x80\x00\x00\x00"]
    for i in range(pages):
        ifd = struct.pack("<H", len(entries))
        for tag, kind, value in entries:
            ifd += struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3
                                                        else struct.pack("<I", value))
        out.append(ifd + struct.pack("<I", 0 if i == pages - 1 else 12 + (i + 1) * size))
    return b"".join(out)


def _photo(w=256, h=192, seed=0):
    """A photo-like picture: smooth gradients plus sensor noise."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h) + 60], -1)
    noise = np.random.default_rng(seed).normal(0, 12, base.shape)
    return (base + noise).clip(0, 255).astype(np.uint8)


def _jpeg(arr, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


# ---------------------------------------------------------------- images


MEASURE = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(proc.returncode, peak_kb)
sys.stderr.write(proc.stderr)
"""


def test_a_huge_declared_image_is_refused_before_it_is_decoded(tmp_path, tiny_model):
    """A 9000x9000 PNG of ~240 KB: refused in one line, and the process never comes near the
    gigabytes decoding it takes (its peak memory measured by a parent of its own)."""
    big = _big_black_png(tmp_path / "big.png", 9000, 9000)
    assert big.stat().st_size < 400_000
    cmd = [sys.executable, "-m", "ultrares_stream", "enhance", str(big), "-o", str(tmp_path / "out.png"),
           "--model", tiny_model, "--device", "cpu"]
    proc = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, timeout=300)
    code, peak_kb = map(int, proc.stdout.split())
    assert code == 1, proc.stderr[-2000:]
    assert peak_kb < 1_500_000, f"peak RSS {peak_kb / 1e6:.2f} GB"
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ultrares enhance: error:")]
    assert len(errors) == 1 and "9000x9000" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out.png").exists()


def test_the_declared_size_is_checked_before_decoding(tmp_path, monkeypatch):
    big = _big_black_png(tmp_path / "big.png", 8000, 6000)
    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(1))
    with pytest.raises(UserError, match=r"8000x6000 = 48,000,000 pixels, more than the limit of 40,000,000"):
        images.read_image(big)
    with pytest.raises(UserError, match="more than the limit of 1,000"):
        images.read_image(big, max_pixels=1000)
    assert loads == []  # nothing decoded


def test_a_tiff_of_many_pages_is_refused_without_walking_them(tmp_path, tiny_model, capsys):
    """225,000 one-pixel pages (a 25 MB file): Pillow's n_frames walks every one (seconds,
    holding the web worker); refused after reading at most MAX_FRAMES page headers."""
    data = _many_page_tiff(225_000)
    assert 20e6 < len(data) < 30e6
    start = time.monotonic()
    with pytest.raises(UserError, match="more than 1000 pages"):
        images.read_image(data, name="upload.tif")
    assert time.monotonic() - start < 5.0
    few = _many_page_tiff(3)
    with Image.open(io.BytesIO(few)) as im:
        assert im.n_frames == 3  # the generator makes real TIFFs
    assert images.read_image(few).width == 1
    # the CLI (one line, exit 1) and the web upload path (400, within its timeout) use the same check
    path = tmp_path / "pages.tif"
    path.write_bytes(data)
    assert main(["enhance", str(path), "-o", str(tmp_path / "o.png"), "--model", tiny_model, "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "pages or frames" in err and "Traceback" not in err
    from ultrares_stream.web import uploads
    from ultrares_stream.web.errors import ApiError

    start = time.monotonic()
    with pytest.raises(ApiError) as exc:
        uploads.decode(uploads.identify(data, 2048 * 2048))
    assert exc.value.status == 400 and "pages" in str(exc.value)
    assert time.monotonic() - start < 5.0


def test_a_gif_of_many_frames_is_counted_without_decoding_them():
    frames = [Image.fromarray(np.full((4, 4), i % 250, np.uint8), "L").convert("P") for i in range(1200)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=10, optimize=False)
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as im:
        assert im.n_frames > images.MAX_FRAMES
        assert images.count_frames(im, data) == images.MAX_FRAMES + 1
    with pytest.raises(UserError, match="pages or frames"):
        images.read_image(data, formats=("GIF",))
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:5], duration=10)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert images.count_frames(im, buf.getvalue()) == im.n_frames == 5


def test_decoding_stops_at_its_deadline(tmp_path, monkeypatch):
    """A clock that moves a second per look: with a 10 s deadline the decode of a large PNG stops
    after about ten reads of the file instead of the ~100 it needs, with DecodeTimeout."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)).save(
        buf, "PNG", compress_level=0)
    data = buf.getvalue()
    reads = []
    real_read = images._Deadline.read
    monkeypatch.setattr(images._Deadline, "read", lambda self, size=-1: reads.append(size) or real_read(self, size))
    images.read_image(data, deadline_s=None)
    needed = len(reads)
    assert needed > 50
    clock = iter(range(10**6))
    monkeypatch.setattr(images.time, "monotonic", lambda: float(next(clock)))
    reads.clear()
    with pytest.raises(images.DecodeTimeout, match="decoding took longer than 10 s"):
        images.read_image(data, name="slow.png", deadline_s=10)
    assert len(reads) <= 12


def test_a_truncated_jpeg_is_refused(tmp_path, tiny_model, capsys, monkeypatch):
    """A real JPEG cut short, with or without the end marker after the cut, and one whose header
    says 2048x2048 over 16x16 of data: refused (libjpeg would fill the rest with flat grey)."""
    whole = _jpeg(_photo())
    assert images.read_image(whole).width == 256
    cut = whole[: len(whole) // 3]
    header_lies = bytearray(_jpeg(_photo(16, 16)))
    sof = header_lies.find(b"\xff\xc0")
    header_lies[sof + 5:sof + 9] = struct.pack(">HH", 2048, 2048)
    cases = {"cut.jpg": cut, "cut_marked.jpg": cut + b"\xff\xd9", "late_cut.jpg": whole[:-200] + b"\xff\xd9",
             "header_lies.jpg": bytes(header_lies)}
    for name, data in cases.items():
        with pytest.raises(UserError, match="truncated"):
            images.read_image(data, name=name)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # someone turned it on: still refused
    with pytest.raises(UserError, match="truncated"):
        images.read_image(cut, name="cut.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    path = tmp_path / "header_lies.jpg"
    path.write_bytes(cases["header_lies.jpg"])
    assert main(["enhance", str(path), "-o", str(tmp_path / "o.png"), "--model", tiny_model, "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "truncated" in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("kw", [{}, {"progressive": True}, {"subsampling": 0}, {"restart_marker_blocks": 3},
                                {"optimize": True}])
def test_complete_jpegs_are_complete(kw):
    data = _jpeg(_photo(), **kw)
    assert images.jpeg_is_complete(data)
    assert images.jpeg_is_complete(data + b"trailing bytes after the end marker")
    grey = io.BytesIO()
    Image.fromarray(_photo()).convert("L").save(grey, "JPEG", **kw)
    assert images.jpeg_is_complete(grey.getvalue())


# ---------------------------------------------------------------- cameras


def test_a_camera_over_the_output_budget_is_refused_naming_the_field(tmp_path, capsys):
    cfg = tmp_path / "cams.yaml"
    cams = [{"name": "a", "input": "rtsp://h/a", "output": str(tmp_path / "a.mkv"), "output_size": "1080p"},
            {"name": "b", "input": "rtsp://h/b", "output": str(tmp_path / "b.mkv"), "output_size": "7680x4320"}]
    cfg.write_text(yaml.safe_dump({"cameras": cams}))
    assert main(["serve", "--config", str(cfg), "--check"]) == 2
    err = capsys.readouterr().err
    assert "cameras[1].output_size: 7680x4320 is 33.2 megapixels a frame, over the limit of 8.3" in err
    assert "output_size: 4k" in err and "Traceback" not in err
    cams[1]["max_output_pixels"] = 7680 * 4320  # a camera allowed more
    cfg.write_text(yaml.safe_dump({"cameras": cams}))
    assert main(["serve", "--config", str(cfg), "--check"]) == 0
    del cams[1]["max_output_pixels"]
    cfg.write_text(yaml.safe_dump({"cameras": cams, "defaults": {"max_output_pixels": 1280 * 720}}))
    assert main(["serve", "--config", str(cfg), "--check"]) == 2
    err = capsys.readouterr().err
    assert "cameras[0].output_size: 1080p = 1920x1080" in err and "output_size: 720p" in err
    capsys.readouterr()


def test_admit_output_size_refuses_a_1080p_camera_at_x4():
    from ultrares_stream.admission import DEFAULT_MAX_OUTPUT_PIXELS, admit_output_size
    from ultrares_stream.config import parse_config

    cfg = parse_config({"cameras": [{"name": "a", "input": "rtsp://h/a", "output": "rtsp://h/o"},
                                    {"name": "junction-12", "input": "rtsp://h/b", "output": "rtsp://h/p"}]})
    cam = cfg.resolved_camera(cfg.cameras[1])
    assert cam.max_output_pixels == DEFAULT_MAX_OUTPUT_PIXELS == 3840 * 2160
    with pytest.raises(UserError) as exc:
        admit_output_size(cam.name, 1920, 1080, 4, cam.output_size, cam, index=1)
    msg = str(exc.value)
    assert msg.startswith("cameras[1].output_size: camera 'junction-12' would output 7680x4320")
    assert "output_size: 4k" in msg and "\n" not in msg
    assert admit_output_size(cam.name, 1920, 1080, 4, "4k", cam) == (3840, 2160)
    assert admit_output_size(cam.name, 1920, 1080, 2, None, cam) == (3840, 2160)
    assert admit_output_size(cam.name, 320, 240, 4, None, cam) == (1280, 960)
    assert admit_output_size(cam.name, 1920, 1080, 4, None, 0) == (7680, 4320)  # 0: no limit
    with pytest.raises(UserError, match="output_size of camera 'x'"):
        admit_output_size("x", 1920, 1080, 4, None, 1000)
