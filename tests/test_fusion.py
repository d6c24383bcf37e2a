"""Multi-frame plate evidence: registration, tracking through real H.264, fusion that recovers
characters one frame cannot, provenance on every fused crop, and ``ultrares zoom`` end to end."""
from __future__ import annotations

import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from conftest import panning_scene_clip
from ultrares_stream.cli import main
from ultrares_stream.demo.scene import render_scene_frame
from ultrares_stream.fusion.crop import FusionSettings, fuse_box
from ultrares_stream.fusion.evidence import UNREADABLE, tags
from ultrares_stream.fusion.fuse import FuseSettings
from ultrares_stream.fusion.registration import register, translation
from ultrares_stream.fusion.synthetic import PassSettings, render, synthetic_pass
from ultrares_stream.fusion.tracking import track
from ultrares_stream.quality.matlab_resize import imresize
from ultrares_stream.quality.plate_reading import char_accuracy

pytestmark = pytest.mark.timeout(180)

SCALE = 4
FRAME_90_PLATES = None


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


def plate_passes(frame_index: int = 90, seed: int = 0):
    """The demo scene's plates (HR 640x480, 20 px high: 5 px after x1/4), each seen in a 16-frame
    synthetic pass: (text, LR frames, LR box, HR ground truth of the box)."""
    boxes: list = []
    img = render_scene_frame(frame_index, 640, 480, plates=boxes)
    out = []
    for x, y, w, h, text in boxes:
        frames, _ = synthetic_pass(img, (x + w / 2, y + h / 2), np.random.default_rng(seed), SCALE)
        box = (x // 4 - 1, y // 4 - 1, (x + w) // 4 - x // 4 + 3, (y + h) // 4 - y // 4 + 3)
        hr = img[box[1] * 4: (box[1] + box[3]) * 4, box[0] * 4: (box[0] + box[2]) * 4]
        out.append((text, frames, box, hr))
    assert out
    return out


@pytest.fixture(scope="module")
def passes():
    return plate_passes()


@pytest.fixture(scope="module")
def reader():
    pytest.importorskip("rapidocr_onnxruntime")
    from ultrares_stream.quality.plate_reading import rapidocr_reader

    return rapidocr_reader()


def fused(frames, box, n=16):
    return fuse_box(frames[:n], [k / 25 for k in range(n)], 0, box)


def single_frame(frames, box):
    """What one frame gives: MATLAB bicubic x4 of the reference frame's box."""
    x, y, w, h = box
    return imresize(np.ascontiguousarray(frames[0][y: y + h, x: x + w]), scale=SCALE)


def assert_recovers_characters(outputs, passes, reader, floor=0.3):
    """The plates read from ``outputs`` (one x4 picture per plate) reach ``floor`` character
    accuracy on average (O/0 and I/1 folded), and beat the ground truth's PSNR of one frame by 1.5 dB."""
    accuracy = [char_accuracy(reader(np.ascontiguousarray(out)), text, fold=True)
                for out, (text, _, _, _) in zip(outputs, passes)]
    assert np.mean(accuracy) >= floor, accuracy
    for out, (_, frames, box, hr) in zip(outputs, passes):
        assert psnr(out, hr) >= psnr(single_frame(frames, box), hr) + 1.5


def test_fusion_recovers_characters_a_single_frame_cannot(passes, reader):
    assert_recovers_characters([fused(frames, box).image for _, frames, box, _ in passes], passes, reader)


@pytest.mark.parametrize("kind", ["bicubic", "fusion of one frame"])
def test_the_check_fails_for_single_frame_output(passes, reader, kind):
    outputs = [single_frame(frames, box) if kind == "bicubic" else fused(frames, box, 1).image
               for _, frames, box, _ in passes]
    with pytest.raises(AssertionError):
        assert_recovers_characters(outputs, passes, reader)


def test_fused_pixels_beat_every_single_frame(passes):
    """PSNR against the ground truth: 16 frames fused beat the reference frame's bicubic by 2 dB."""
    for _, frames, box, hr in passes:
        assert psnr(fused(frames, box).image, hr) > psnr(single_frame(frames, box), hr) + 2.0


def test_accelerated_fusion_reaches_the_plain_solution_in_half_the_steps(passes):
    """Nesterov momentum: the default 32 steps are as close to the ground truth as 64 plain ones."""
    plain = FusionSettings(fuse=FuseSettings(iterations=64, momentum=False))
    for _, frames, box, hr in passes:
        slow = fuse_box(frames, [k / 25 for k in range(16)], 0, box, plain).image
        assert psnr(fused(frames, box).image, hr) >= psnr(slow, hr) - 0.2


def test_registration_recovers_known_subpixel_shifts():
    boxes: list = []
    img = render_scene_frame(90, 640, 480, plates=boxes)
    x, y, w, h, _ = boxes[0]
    ref_box = (x // 4 - 4, y // 4 - 4, w // 4 + 8, h // 4 + 8)
    ref = render(img, np.eye(3), SCALE)[ref_box[1]: ref_box[1] + ref_box[3], ref_box[0]: ref_box[0] + ref_box[2]]
    for dx, dy in [(0.3, -0.45), (0.75, 0.2), (-0.6, 0.9), (1.4, -1.1)]:  # LR pixels
        frame = render(img, translation(-dx * SCALE, -dy * SCALE), SCALE)  # content moved by (dx, dy)
        pad = 4
        patch = frame[ref_box[1] - pad: ref_box[1] + ref_box[3] + pad, ref_box[0] - pad: ref_box[0] + ref_box[2] + pad]
        reg = register(ref, patch)
        got = np.array(reg.shift) - pad
        assert np.abs(got - [dx, dy]).max() < 0.25, (dx, dy, got)
        assert reg.correlation > 0.9


def test_every_fused_output_carries_provenance(passes):
    text, frames, box, _ = passes[0]
    for n in (1, 4, 16):
        crop = fused(frames, box, n)
        t = tags(crop)
        assert t["Comment"].startswith(f"Machine-fused from {len(crop.used)} frames")
        assert "not an original recording" in t["Comment"].lower()
        assert len(t["ultrares:timestamps"].split(",")) == len(crop.used) == n
        assert len(t["ultrares:residuals"].split(",")) == n
        assert t["ultrares:method"] and t["ultrares:box"] == ",".join(map(str, box))
        assert (t["ultrares:verdict"] == "fused") == (n >= 3)


def test_unreadable_when_fusion_cannot_help(passes):
    _, frames, box, _ = passes[0]
    tiny = fused(frames, (box[0] + 4, box[1] + 1, 6, 3))
    assert tiny.verdict == UNREADABLE and "too small" in tiny.reason
    assert "unreadable" in tags(tiny)["Comment"] and "unreadable" in tiny.summary()
    rng = np.random.default_rng(1)
    noise = [frames[0]] + [rng.integers(0, 256, frames[0].shape, np.uint8) for _ in range(7)]
    disagree = fused(noise, box, 8)
    assert disagree.verdict == UNREADABLE and "agree" in disagree.reason
    assert len(disagree.used) < 3


# ------------------------------------------------------------------ a real H.264 clip

CLIP_FRAMES = 24
VELOCITY = (0.65, 0.3)  # LR pixels per frame the scene moves


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """An H.264 MP4 (libx264, 25 fps) of the demo scene panning; and the plate boxes in frame 0."""
    path, _, boxes = panning_scene_clip(tmp_path_factory.mktemp("clip") / "pass.mp4", CLIP_FRAMES, VELOCITY,
                                        tune="zerolatency", crf="20")
    return path, boxes


def test_a_marked_box_is_tracked_across_a_real_h264_clip(clip):
    path, boxes = clip
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == CLIP_FRAMES
    ref = 12
    x, y, w, h = boxes[0]
    box = (x + round(VELOCITY[0] * ref), y + round(VELOCITY[1] * ref), w, h)  # where the plate is at frame 12
    _, (cx, cy, _, _), tracked = track(frames, ref, box)
    errors = []
    for k, t in enumerate(tracked):
        assert t.registration is not None and t.registration.correlation > 0.8, k
        got = np.array(t.origin) + t.registration.shift - (cx, cy)
        errors.append(np.abs(got - np.array(VELOCITY) * (k - ref)).max())
    assert max(errors) < 0.75 and np.median(errors) < 0.25, np.round(errors, 2)  # LR pixels, through H.264


def test_zoom_command_end_to_end(clip, tmp_path):
    path, boxes = clip
    x, y, w, h = boxes[0]
    at = 8 / 25  # frame 8
    box = (x + round(VELOCITY[0] * 8), y + round(VELOCITY[1] * 8), w, h)
    out = tmp_path / "plate.png"
    proc = subprocess.run([sys.executable, "-m", "ultrares_stream", "zoom", str(path), "--at", f"{at}",
                           "--box", ",".join(map(str, box)), "--frames", "16", "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "machine-fused from 16 of 16 frames" in lines[0], proc.stdout
    with Image.open(out) as im:
        assert im.size == (w * 4, h * 4)
        info = dict(im.info)
    assert info["Comment"].startswith("Machine-fused from 16 frames")
    assert info["ultrares:reference"] == f"{at:.3f}"
    assert len(info["ultrares:timestamps"].split(",")) == 16


@pytest.mark.parametrize("argv, message", [
    (["--at", "0.2", "--box", "150,100,30,10"], "outside the 160x120 frame"),
    (["--at", "30", "--box", "10,10,30,10"], "past the end"),
    (["--at", "0.2", "--box", "10,10,30"], "--box must be X,Y,W,H"),
    (["--at", "-1", "--box", "10,10,30,10"], "must be >= 0"),
])
def test_zoom_errors_are_one_line(clip, tmp_path, capsys, argv, message):
    path, _ = clip
    assert main(["zoom", str(path), *argv, "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ultrares zoom: error:") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.png").exists()


def test_zoom_refuses_a_corrupt_or_missing_clip(tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    for clip_path, message in ((bad, "cannot decode"), (tmp_path / "nope.mp4", "clip not found")):
        assert main(["zoom", str(clip_path), "--at", "0", "--box", "1,1,8,4", "-o", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_pass_settings_make_distinct_subpixel_phases():
    img = np.zeros((64, 64, 3), np.uint8)
    frames, warps = synthetic_pass(img, (32, 32), np.random.default_rng(0), SCALE, PassSettings(frames=8))
    assert len(frames) == 8 and frames[0].shape == (16, 16, 3)
    assert np.allclose(warps[0], np.eye(3))
    phases = {(round(w[0, 2] % 1, 2), round(w[1, 2] % 1, 2)) for w in warps[1:]}
    assert len(phases) == 7


# ------------------------------------------------------------------ --auto: regions, tracks, a contact sheet

def test_regions_are_merged_into_plates_and_tracked_by_iou_and_velocity():
    from ultrares_stream.fusion.regions import Track, iou, merge_lines, plate_like, update_tracks

    assert merge_lines([(10, 20, 20, 8), (34, 21, 14, 7), (10, 60, 20, 8)]) == [(10, 20, 38, 8), (10, 60, 20, 8)]
    assert plate_like((0, 0, 40, 10)) and not plate_like((0, 0, 10, 10)) and not plate_like((0, 0, 12, 3))
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(1 / 3)
    tracks: list[Track] = []
    for pos in range(0, 30, 5):  # one plate moving 3 px a frame (15 px between detections), one still
        tracks = update_tracks(tracks, [(10 + 3 * pos, 50, 30, 8), (200, 10, 30, 8)], pos)
    assert len(tracks) == 2 and all(len(t.seen) == 6 for t in tracks)
    moving = next(t for t in tracks if t.seen[0][1] == 50)
    assert moving.velocity == pytest.approx((3.0, 0.0))


def test_zoom_auto_fuses_every_tracked_plate_with_a_contact_sheet(tmp_path):
    pytest.importorskip("rapidocr_onnxruntime")
    from ultrares_stream.demo.scene import make_scene_video
    from ultrares_stream.fusion.regions import iou

    clip_path = make_scene_video(tmp_path / "scene.mp4", 320, 240, 25, seconds=2)
    out = tmp_path / "plates"
    assert main(["zoom", str(clip_path), "--auto", "-o", str(out)]) == 0
    crops = sorted(out.glob("plate-*.png"))
    texts = set()
    for path in crops:
        with Image.open(path) as im:
            info = dict(im.info)
        assert info["Comment"].startswith("Machine-fused from") and info["ultrares:track"]
        box = tuple(int(v) for v in info["ultrares:box"].split(","))
        truth: list = []
        render_scene_frame(round(float(info["ultrares:reference"]) * 25), 320, 240, plates=truth)
        best = max(truth, key=lambda t: iou(box, t[:4]))
        assert iou(box, best[:4]) > 0.5, (box, truth)  # every region found is a real plate
        texts.add(best[4])
    assert len(texts) >= 5, texts  # the scene shows six vehicles; most pass wholly in 2 s
    with Image.open(out / "contact-sheet.png") as sheet:
        assert "Not an original recording" in sheet.info["Comment"] and sheet.width >= 2 * 4 * 40
        assert sheet.info["ultrares:rows"].count("#") == len(crops)


def test_zoom_auto_without_its_detector_or_with_a_box_is_a_one_line_error(clip, tmp_path, capsys, monkeypatch):
    path, _ = clip
    for argv, message in ((["--auto", "--at", "1"], "give no --at or --box"), (["--at", "1"], "give --at TIME and --box")):
        assert main(["zoom", str(path), *argv, "-o", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # not installed
    assert main(["zoom", str(path), "--auto", "-o", str(tmp_path / "plates")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install rapidocr-onnxruntime" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "plates").exists()


def test_zoom_read_gives_each_character_a_confidence_and_never_reads_an_unreadable_crop(clip, tmp_path):
    pytest.importorskip("rapidocr_onnxruntime")
    path, boxes = clip
    x, y, w, h = boxes[0]
    runs = {}
    for name, box in (("plate", (x, y, w, h)), ("tiny", (x, y, 8, 4))):
        out = tmp_path / f"{name}.png"
        proc = subprocess.run([sys.executable, "-m", "ultrares_stream", "zoom", str(path), "--at", "0",
                               "--box", ",".join(map(str, box)), "--read", "-o", str(out)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        with Image.open(out) as im:
            runs[name] = (proc.stdout, dict(im.info))
    said, info = runs["plate"]
    text, confidences = info["ultrares:read"], info["ultrares:read-confidence"].split()
    assert text and f"read: {text} (" in said
    assert [c.split("=")[0] for c in confidences] == list(text)
    assert all(0.0 <= float(c.split("=")[1]) <= 1.0 for c in confidences)
    said, info = runs["tiny"]
    assert "not read (unreadable)" in said and "ultrares:read" not in info


def test_the_learned_refinement_is_nearer_the_truth_than_the_classical_fusion():
    """On plates drawn like its training data but from seeds it never saw, through real libx264
    at 0.3 bit/pixel, the refined crop is nearer the picture than the classical fusion, every time."""
    from ultrares_stream.fusion.crop import LEARNED
    from ultrares_stream.fusion.learned import refiner
    from ultrares_stream.fusion.synthetic import random_motions
    from ultrares_stream.quality.plates_clip import encode
    from ultrares_stream.train.plate_images import plate_image

    if refiner() is None:
        pytest.skip("the learned fusion's weights or torch are not installed")
    gains = []
    for seed in range(4):
        rng, labels = np.random.default_rng([999, seed]), []  # the training script's seeds are [0, step]
        picture = plate_image(rng, 256, labels)
        (x, y, w, h), _ = labels[0]
        frames, _ = encode([render(picture, m, SCALE) for m in random_motions(rng, (x + w / 2, y + h / 2), SCALE)],
                           "0.3bpp")
        box = (max(2, x // 4 - 2), max(2, y // 4 - 2), min(60 - x // 4, w // 4 + 4), h // 4 + 4)
        hr = picture[box[1] * 4: (box[1] + box[3]) * 4, box[0] * 4: (box[0] + box[2]) * 4]
        times = [k / 25 for k in range(16)]
        plain = fuse_box(frames, times, 0, box, FusionSettings(learned=False))
        refined = fuse_box(frames, times, 0, box)
        assert refined.method.endswith(LEARNED) and not plain.method.endswith(LEARNED)
        gains.append(psnr(refined.image, hr) - psnr(plain.image, hr))
    assert min(gains) > 0 and np.mean(gains) > 0.4, np.round(gains, 2)
