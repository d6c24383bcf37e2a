"""``ultrares enhance`` end to end: folders mirrored, options, bad files reported in one
line while the batch goes on, exit codes, help, video dispatch."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ultrares_stream.cli import main
from ultrares_stream.models.archs import SRVGGNetCompact
from ultrares_stream.models.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_checkpoint(SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4).state_dict(), path)
    return str(path)


def _img(path, size=(16, 12), mode="RGB", fmt=None):
    arr = np.random.default_rng(len(str(path))).integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    Image.fromarray(arr[..., 0] if mode == "L" else arr).save(path, format=fmt)


def test_folder_is_mirrored_and_bad_files_reported(tmp_path, model, capsys):
    src = tmp_path / "in"
    (src / "sub" / "deeper").mkdir(parents=True)
    _img(src / "a.png")
    _img(src / "sub" / "b.jpg")
    _img(src / "sub" / "deeper" / "c.webp", mode="RGBA")
    _img(src / "sub" / "grey.bmp", mode="L")
    _img(src / "sub" / "misnamed.tiff", fmt="PNG")
    (src / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (src / "notes.txt").write_text("not an image")
    (src / ".hidden.png").write_bytes(b"junk")
    out = tmp_path / "out"
    code = main(["enhance", str(src), "-o", str(out), "--model", model])
    err = capsys.readouterr().err
    assert code == 1
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["a.png", "sub/b.jpg", "sub/deeper/c.webp", "sub/grey.bmp", "sub/misnamed.png"]
    with Image.open(out / "sub" / "deeper" / "c.webp") as im:
        assert im.size == (64, 48) and im.mode == "RGBA"
    with Image.open(out / "sub" / "grey.bmp") as im:
        assert im.mode == "L"
    errors = [ln for ln in err.splitlines() if ln.startswith("ultrares enhance: error:")]
    assert len(errors) == 1 and "broken.png" in errors[0]
    assert "Traceback" not in err


def test_single_file_size_and_scale(tmp_path, model):
    _img(tmp_path / "in.png", size=(40, 30))
    assert main(["enhance", str(tmp_path / "in.png"), "-o", str(tmp_path / "big.jpg"), "--model", model,
                 "--size", "100x100"]) == 0
    with Image.open(tmp_path / "big.jpg") as im:
        assert im.format == "JPEG" and im.size == (100, 75)
    assert main(["enhance", str(tmp_path / "in.png"), "-o", str(tmp_path / "x2.png"), "--model", model,
                 "--scale", "2", "--tile", "16", "--device", "cpu", "--precision", "fp32"]) == 0
    with Image.open(tmp_path / "x2.png") as im:
        assert im.size == (80, 60)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


@pytest.mark.parametrize("argv,message", [
    (["--size", "huge"], "output size 'huge'"),
    (["--alpha", "1.5"], "alpha must be between 0"),
    (["--model", "/nonexistent/model.pth"], "checkpoint file not found"),
    (["--precision", "fp16", "--device", "cpu"], "fp16 is not supported on the CPU"),
])
def test_bad_options_are_one_line_errors(tmp_path, model, capsys, argv, message):
    _img(tmp_path / "in.png")
    args = ["enhance", str(tmp_path / "in.png"), "-o", str(tmp_path / "o.png"), "--model", model, *argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


def test_output_must_not_overwrite_input(tmp_path, model, capsys):
    _img(tmp_path / "in.png")
    assert main(["enhance", str(tmp_path / "in.png"), "-o", str(tmp_path / "in.png"), "--model", model]) == 1
    assert "would overwrite the input" in capsys.readouterr().err


def test_missing_input_is_an_error(tmp_path, model, capsys):
    assert main(["enhance", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o"), "--model", model]) == 2
    assert "nope.png: no such file" in capsys.readouterr().err


def test_help_runs_as_a_program():
    env = dict(os.environ, COLUMNS="120")
    res = subprocess.run([sys.executable, "-m", "ultrares_stream", "enhance", "--help"], capture_output=True,
                         text=True, timeout=120, env=env)
    assert res.returncode == 0
    for opt in ("--model", "--alpha", "--scale", "--size", "--tile", "--device", "--precision", "1080p"):
        assert opt in res.stdout


def test_video_input_is_enhanced_with_the_chosen_quality(tmp_path, model, capsys, make_clip):
    import av

    clip = make_clip(tmp_path / "clip.mp4", frames=6, w=32, h=24)
    sizes = {}
    for crf in (10, 51):
        out = tmp_path / f"out-{crf}.mp4"
        code = main(["enhance", str(clip), "-o", str(out), "--model", model, "--crf", str(crf),
                     "--preset", "ultrafast"])
        assert code == 0, capsys.readouterr().err
        with av.open(str(out)) as c:
            v = c.streams.video[0]
            assert (v.codec_context.width, v.codec_context.height) == (128, 96)
            assert sum(1 for _ in c.decode(v)) == 6
        sizes[crf] = out.stat().st_size
    assert sizes[51] < sizes[10]  # --crf reaches the encoder
    with pytest.raises(SystemExit) as exit_info:
        main(["enhance", str(clip), "-o", str(tmp_path / "x.mp4"), "--crf", "60"])
    assert exit_info.value.code == 2 and "--crf: must be a whole number from 0 to 51" in capsys.readouterr().err
