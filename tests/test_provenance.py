"""Every enhanced output says it was machine-enhanced, by which model at which alpha."""
from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image

from ultrares_stream import images, provenance
from ultrares_stream.recorded import enhance_video
from ultrares_stream.publisher import Publisher
from ultrares_stream.upscaler import Upscaler


@pytest.fixture(scope="module")
def upscaler(tiny_model):
    return Upscaler(tiny_model, device="cpu", precision="fp32", engine="eager", tile=0)


def test_tags_name_the_model_alpha_and_version():
    tags = provenance.tags("ultrares-compact-x4", 0.25, 4)
    assert tags["ultrares:model"] == "ultrares-compact-x4" and tags["ultrares:alpha"] == "0.25"
    assert "Machine-enhanced" in tags["Comment"] and "alpha 0.25" in tags["Comment"] and "x4" in tags["Comment"]
    assert tags["Software"] == f"UltraRes Stream {provenance.version()}"
    assert provenance.tags("net", None)["ultrares:alpha"] == ""


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tiff"])
def test_enhanced_images_carry_provenance(tmp_path, upscaler, suffix):
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(src)
    dst = tmp_path / f"out{suffix}"
    images.enhance_image(src, dst, upscaler)
    with Image.open(dst) as im:
        im.load()
        if suffix == ".png":
            text = im.text["Comment"]
            assert im.text["ultrares:model"] == upscaler.model_name
        elif suffix == ".jpg":
            text = im.info["comment"].decode()
        else:
            text = im.getexif()[0x010E]
    assert text.startswith("Machine-enhanced by UltraRes Stream") and upscaler.model_name in text


def test_sixteen_bit_png_keeps_its_samples_and_gets_text(tmp_path):
    pic = images.Picture(torch.rand(1, 3, 8, 8, dtype=torch.float32), None, 16, "PNG", None)
    data = images.encode_image(pic, "PNG", provenance=provenance.tags("m", 0.5))
    path = tmp_path / "x.png"
    path.write_bytes(data)
    with Image.open(path) as im:
        im.load()
        assert im.text["ultrares:alpha"] == "0.5" and "Machine-enhanced" in im.text["Comment"]
    back = images.read_image(path)
    assert back.bits == 16 and torch.allclose(back.colour, pic.colour, atol=1 / 65535)


def test_enhanced_video_carries_provenance(tmp_path, upscaler, make_clip):
    src = make_clip(tmp_path / "in.mp4", frames=6)
    for suffix in (".mp4", ".mkv"):
        dst = tmp_path / f"out{suffix}"
        enhance_video(src, dst, upscaler, progress=False)
        with av.open(str(dst)) as c:
            tags = {k.lower(): v for k, v in c.metadata.items()}  # Matroska upper-cases tag names
        assert "Machine-enhanced" in tags.get("comment", ""), tags
        assert tags.get("ultrares_model") == upscaler.model_name


def test_live_file_output_carries_provenance(tmp_path):
    """What ``serve`` records to a file (fragmented MP4) holds the tags too."""
    dst = tmp_path / "live.mp4"
    pub = Publisher(str(dst), live=True, metadata=provenance.video_metadata(provenance.tags("m", 0.3, 4)))
    pub.open(64, 48, 10)
    for i in range(3):
        pub.write(np.full((72, 64), 128, np.uint8), i)
    pub.close()
    with av.open(str(dst)) as c:
        assert "alpha 0.3" in c.metadata.get("comment", "")


def test_live_outputs_say_they_are_machine_enhanced(tmp_path):
    """HLS segments (MPEG-TS service) carry the marking, not only files."""
    dst = tmp_path / "hls" / "live.m3u8"
    pub = Publisher(str(dst), live=True, metadata=provenance.video_metadata(provenance.tags("m", 0.3, 4)))
    pub.open(64, 48, 10)
    for i in range(25):
        pub.write(np.full((72, 64), 128, np.uint8), i)
    pub.close()
    for segment in sorted(dst.parent.glob("*.ts")):  # the service descriptor (SDT) of every segment
        assert provenance.LIVE_TITLE.encode() in segment.read_bytes(), segment.name


def test_snapshots_carry_a_jpeg_comment():
    from io import BytesIO
    from types import SimpleNamespace

    from PIL import Image

    from ultrares_stream.stream import Stream

    fake = SimpleNamespace(_jpeg=None, _latest=SimpleNamespace(data=np.full((72, 64), 128, np.uint8),
                                                               source=SimpleNamespace(index=0)))
    jpeg = Stream.snapshot_jpeg(fake)
    assert b"Machine-enhanced" in Image.open(BytesIO(jpeg)).info.get("comment", b"")
