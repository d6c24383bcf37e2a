"""The camera encoder's quantisers in the fusion verdict: real H.264 streams (PyAV, libx264) decoded
with their per-block QP, the rule that calls a box too small for its quantiser unreadable, and
``ultrares zoom`` saying so on a clip encoded hard, while the same clip encoded gently is fused."""
from __future__ import annotations

import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from ultrares_stream.fusion.codec import box_quantiser
from ultrares_stream.fusion.decode import first_seconds, frames_around
from ultrares_stream.fusion.evidence import MIN_BOX, MIN_HEIGHT_AT_QP, READABLE, UNREADABLE, FrameUse, judge, min_height
from ultrares_stream.sources import Source

from conftest import panning_scene_clip

pytestmark = pytest.mark.timeout(180)

FRAMES = 20
SIZE = (160, 120)


def scene_clip(path, codec: str = "libx264", **options) -> tuple:
    """A clip (160x120, 25 fps) of the demo scene panning slowly (B-frames with libx264's
    defaults), encoded with ``options``; the plate boxes of frame 0 (LR pixels)."""
    path, _, boxes = panning_scene_clip(path, FRAMES, (0.5, 0.25), codec, **options)
    return path, boxes


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("qp")
    return {crf: scene_clip(d / f"crf{crf}.mp4", crf=str(crf)) for crf in (18, 44)}


def test_every_decoded_h264_frame_carries_its_block_quantisers(clips):
    gentle, _ = clips[18]
    hard, _ = clips[44]
    blocks = -(-SIZE[0] // 16) * -(-SIZE[1] // 16)
    box = (40, 30, 60, 40)
    medians = {}
    for path in (gentle, hard):
        frames = first_seconds(path, 10.0)
        assert len(frames) == FRAMES and len(frames.quantisers) == FRAMES
        with av.open(str(path)) as c:
            bidirectional = [f.pict_type == av.video.frame.PictureType.B for f in c.decode(video=0)]
        assert 0 < sum(bidirectional) < FRAMES  # the clip has B-frames: they carry none (their blocks are skipped)
        assert [q is None for q in frames.quantisers] == bidirectional
        for q in filter(None, frames.quantisers):
            assert q.codec == "h264" and q.blocks.shape == (blocks, 5)
            assert (q.blocks[:, 2:4] == 16).all() and 0 <= q.blocks[:, 4].min() <= q.blocks[:, 4].max() <= 51
        medians[path] = np.median([q.over(box) for q in frames.quantisers if q is not None])
        # the frames around a time carry the same maps
        around = frames_around(path, 0.4, 8)
        assert [q and q.blocks.tolist() for q in around.quantisers] == \
            [q and q.blocks.tolist() for q in frames.quantisers[around_start(frames.times, around.times)]]
    assert medians[hard] > medians[gentle] + 15, medians
    # the pipeline's source decodes them too (the live zoom's history holds them)
    source = Source(str(hard), "cam", live=False)
    source.quantisers = True  # as a camera's pipeline sets it
    frame = next(iter(source.frames()))  # an I-frame
    assert frame.quantisers is not None and frame.quantisers.codec == "h264"
    assert next(iter(Source(str(hard), "cam", live=False).frames())).quantisers is None  # recorded jobs: none kept


def around_start(times: list[float], window: list[float]) -> slice:
    lo = times.index(window[0])
    return slice(lo, lo + len(window))


def test_the_quantiser_under_a_box_is_the_blocks_it_covers_weighted_by_area():
    from ultrares_stream.fusion.codec import QuantiserMap

    blocks = np.array([[0, 0, 16, 16, 20], [16, 0, 16, 16, 40]], np.int32)
    q = QuantiserMap("h264", blocks)
    assert q.over((0, 0, 16, 16)) == 20 and q.over((16, 0, 8, 8)) == 40
    assert q.over((8, 0, 16, 16)) == pytest.approx(30) and q.over((12, 0, 16, 4)) == pytest.approx(35)
    assert q.over((40, 40, 4, 4)) is None  # under no block
    other = QuantiserMap("vp9", blocks)
    assert box_quantiser([(q, (0, 0, 4, 4)), (q, (16, 0, 4, 4)), (q, (20, 0, 4, 4))]) == ("h264", 40.0)
    assert box_quantiser([(q, (0, 0, 4, 4)), (None, (0, 0, 4, 4)), (None, (0, 0, 4, 4))]) == ("h264", 20.0)
    assert box_quantiser([(None, (0, 0, 4, 4))]) is None
    assert box_quantiser([(q, (0, 0, 4, 4)), (other, (0, 0, 4, 4))]) is None  # two codecs: two scales


def test_a_box_too_small_for_its_quantiser_is_unreadable_whatever_the_frames_agree():
    uses = [FrameUse(k / 25, 1.0, 0.99, 1.0) for k in range(16)]
    rules = MIN_HEIGHT_AT_QP["h264"]
    heights = [h for _, h in rules]
    assert heights == sorted(heights) and [q for q, _ in rules] == sorted(q for q, _ in rules)
    (qp, height), (qp2, _) = rules[0], rules[1]
    assert judge((0, 0, 40, height - 1), uses, ("h264", qp2))[0] == UNREADABLE
    verdict, reason = judge((0, 0, 40, height - 1), uses, ("h264", qp + 0.5))
    assert verdict == UNREADABLE and f"QP {qp + 0.5:.0f}" in reason and str(height) in reason
    assert judge((0, 0, 40, height), uses, ("h264", qp + 0.5)) == (READABLE, "")
    assert judge((0, 0, 40, height - 1), uses, ("h264", qp - 1)) == (READABLE, "")  # gently quantised
    assert judge((0, 0, 40, height - 1), uses, None) == (READABLE, "")  # quantiser not known
    assert judge((0, 0, 40, height - 1), uses, ("hevc", 51)) == (READABLE, "")  # no rule for its scale
    assert min_height(None) == MIN_BOX[1] and min_height(("h264", 60)) == heights[-1]


@pytest.mark.parametrize("crf, verdict", [(18, "fused"), (44, UNREADABLE)])
def test_zoom_says_unreadable_where_the_camera_quantised_the_plate_away(clips, tmp_path, crf, verdict):
    path, boxes = clips[crf]
    x, y, w, h = boxes[0]
    at = 8 / 25
    box = (x + 4, y + 2, w, h)  # where the plate is at frame 8 (0.5, 0.25 LR pixels a frame)
    out = tmp_path / "plate.png"
    proc = subprocess.run([sys.executable, "-m", "ultrares_stream", "zoom", str(path), "--at", f"{at}",
                           "--box", ",".join(map(str, box)), "-o", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with Image.open(out) as im:
        info = dict(im.info)
    assert info["ultrares:quantiser"].startswith("h264 QP "), info
    qp = float(info["ultrares:quantiser"].split()[2])
    assert f"h264 QP {qp:.0f} under the box" in proc.stdout, proc.stdout  # the one line says it too
    assert info["ultrares:verdict"].startswith(verdict), info["ultrares:verdict"]
    if verdict == UNREADABLE:
        assert qp >= MIN_HEIGHT_AT_QP["h264"][0][0] and "quantised the box" in info["ultrares:verdict"]
        assert "unreadable" in proc.stdout
    else:
        assert qp < MIN_HEIGHT_AT_QP["h264"][0][0]


def test_a_codec_without_quantisers_is_judged_without_them(tmp_path):
    if "libx265" not in av.codecs_available:
        pytest.skip("this PyAV build has no libx265 encoder")
    path, boxes = scene_clip(tmp_path / "hevc.mp4", codec="libx265", crf="40")
    frames = frames_around(path, 0.3, 8)
    assert frames.quantisers == [None] * len(frames)
    x, y, w, h = boxes[0]
    out = tmp_path / "plate.png"
    proc = subprocess.run([sys.executable, "-m", "ultrares_stream", "zoom", str(path), "--at", "0.3",
                           "--box", f"{x + 4},{y + 2},{w},{h}", "--frames", "8", "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with Image.open(out) as im:
        assert im.info["ultrares:quantiser"].startswith("not known")
