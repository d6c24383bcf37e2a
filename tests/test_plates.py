"""Plate readability (quality.plate_reading, ``ultrares eval --task plates``) with the real OCR on the
demo scene's synthetic plates, and the scoring's pure parts."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ultrares_stream.demo.scene import render_scene_frame
from ultrares_stream.errors import UserError
from ultrares_stream.quality import plate_reading as P

pytest.importorskip("rapidocr_onnxruntime", reason="RapidOCR is installed by the [dev] extra")


def test_char_accuracy_and_gap():
    assert P.edit_distance("kitten", "sitting") == 3
    assert P.char_accuracy("AB-12 cd", "AB12CD") == 1.0
    assert P.char_accuracy("AB12C", "AB12CD") == pytest.approx(5 / 6)
    assert P.char_accuracy("", "AB12CD") == 0.0
    assert P.char_accuracy("XXXXXXXXXXXX", "AB") == 0.0  # never negative
    assert P.gap_closed(0.7, 0.5, 0.9) == pytest.approx(0.5)
    assert np.isnan(P.gap_closed(0.7, 0.9, 0.9))


def test_context_crop_is_scale_aligned_and_keeps_the_box():
    img = np.arange(100 * 120 * 3, dtype=np.uint8).reshape(100, 120, 3)
    crop, (x, y, w, h) = P.context_crop(img, (50, 41, 13, 7), 4, context=10)
    assert crop.shape[0] % 4 == 0 and crop.shape[1] % 4 == 0
    assert (w, h) == (13, 7)
    assert np.array_equal(crop[y:y + h, x:x + w], img[41:48, 50:63])


def _scene_samples(frames=(30, 60)):
    samples = []
    for i in frames:
        boxes: list = []
        img = render_scene_frame(i, 640, 480, plates=boxes)
        samples += [(f"scene{i}", img, (x, y, w, h), text) for x, y, w, h, text in boxes]
    assert samples
    return samples


def test_the_original_reads_better_than_bicubic_from_a_quarter():
    result = P.score_plates(_scene_samples(), {}, P.rapidocr_reader(), scale=4)
    assert result.accuracy["original"] >= 0.75, result.reads
    assert result.accuracy["original"] > result.accuracy["bicubic"] + 0.2, result.accuracy


def test_a_method_is_scored_on_the_same_boxes():
    """The original handed back as a method's output reads exactly as the original does."""
    samples = _scene_samples((30,))
    originals = iter(P.context_crop(img, box, 4)[0] for _, img, box, _ in samples)
    result = P.score_plates(samples, {"oracle": lambda lr: next(originals)}, P.rapidocr_reader(), scale=4)
    assert result.accuracy["oracle"] == result.accuracy["original"]
    assert result.gap("oracle") == pytest.approx(1.0)


def test_annotation_errors_name_the_line(tmp_path):
    with pytest.raises(UserError, match="no annotated plates"):
        P.read_annotations(tmp_path)
    Image.new("RGB", (64, 48)).save(tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_text("a.jpg 1 2 three 4 AB12\n")
    with pytest.raises(UserError, match=r"a.txt:1: expected"):
        P.read_annotations(tmp_path)


def test_eval_plates_command(tmp_path, tiny_model):
    folder = tmp_path / "plates"
    folder.mkdir()
    boxes: list = []
    Image.fromarray(render_scene_frame(30, 640, 480, plates=boxes)).save(folder / "scene.png")
    (folder / "scene.txt").write_text("".join(f"scene.png {x} {y} {w} {h} {t.replace(' ', '')}\n"
                                              for x, y, w, h, t in boxes))
    up4 = tmp_path / "x4.safetensors"
    _x4_model(up4)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "ultrares_stream.cli", "eval", "--task", "plates",
                           "--dataset", str(folder), "--model", str(up4), "--out-dir", str(out), "--device", "cpu",
                           "--ensemble", "1", "--ensemble", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    md = (out / "plates.md").read_text()
    assert "| original |" in md and "| bicubic |" in md and "| x4 |" in md and "| x4 x2 ensemble |" in md
    rows = (out / "plates.csv").read_text().splitlines()
    assert len(rows) == 1 + len(boxes) and rows[0].startswith("image,truth,original,bicubic,x4,x4 x2 ensemble")


def _x4_model(path):
    import torch

    from ultrares_stream.models.archs import SRVGGNetCompact
    from ultrares_stream.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(SRVGGNetCompact(num_feat=4, num_conv=1, upscale=4).state_dict(), path)
