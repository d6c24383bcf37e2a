"""The declared pipeline: a new device stage is a class and one entry in the stage list, and it
runs for a live camera's pipeline and a recorded file alike (real clips, encoders, the batcher)."""
from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from ultrares_stream import stages
from ultrares_stream.stages import DeviceBatch, split_point

pytestmark = pytest.mark.timeout(180)

BITS, BLOCK = 6, 8  # the frame number as 6 black/white blocks of 8x8 output pixels, top left


class FrameNumber:
    """A test-only stage: draws each frame's source index into its output."""

    name, ordered = "frame_number", False

    def process(self, batch: DeviceBatch) -> DeviceBatch:
        for n, item in enumerate(batch.items):
            for bit in range(BITS):
                value = float((item.frame.index >> bit) & 1)
                batch.out[n, :, :BLOCK, bit * BLOCK:(bit + 1) * BLOCK] = value
        return batch


def read_numbers(path) -> list[int]:
    numbers = []
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            luma = frame.to_ndarray(format="gray").astype(np.float32)
            blocks = [luma[2:BLOCK - 2, b * BLOCK + 2:(b + 1) * BLOCK - 2].mean() for b in range(BITS)]
            numbers.append(sum(1 << b for b, v in enumerate(blocks) if v > 128))
    return numbers


@pytest.fixture
def numbered(monkeypatch):
    """One line: the stage inserted before the conversion back to yuv420p."""
    monkeypatch.setattr(stages, "DEVICE_STAGES", (*stages.DEVICE_STAGES[:-1], FrameNumber(), stages.DEVICE_STAGES[-1]))


def test_split_point_runs_ordered_stages_on_the_finisher():
    s = stages.DEVICE_STAGES
    assert [x.name for x in s[:split_point(s, parallel=True)]] == ["to_rgb", "upscale"]
    assert [x.name for x in s[:split_point(s, parallel=False)]] == ["to_rgb", "upscale", "stabilise"]


def test_a_new_stage_runs_for_a_camera(numbered, tmp_path, tiny_model, make_clip):
    from ultrares_stream.batcher import Batcher
    from ultrares_stream.config import CameraConfig
    from ultrares_stream.stream import Stream, UpscalerPool

    clip = make_clip(tmp_path / "cam.mp4", frames=30, w=64, h=48)
    batcher = Batcher("cpu", max_batch=2, max_wait_ms=5).start()
    stream = Stream(CameraConfig(name="cam", input=str(clip), output=str(tmp_path / "out.mkv"), model=tiny_model),
                    batcher=batcher, pool=UpscalerPool(device="cpu", precision="fp32", engine="eager", tile=0))
    try:
        stream.start()
        assert stream.wait_finished(60), stream.status()
    finally:
        stream.stop(5)
        batcher.stop(5)
    assert read_numbers(tmp_path / "out.mkv") == list(range(30))


def test_a_new_stage_runs_for_a_recorded_file(numbered, tmp_path, tiny_model, make_clip):
    from ultrares_stream.recorded import enhance_video
    from ultrares_stream.temporal import StabiliserSettings
    from ultrares_stream.upscaler import Upscaler

    clip = make_clip(tmp_path / "rec.mp4", frames=30, w=64, h=48)
    up = Upscaler(tiny_model, device="cpu", precision="fp32", engine="eager", tile=0)
    enhance_video(clip, tmp_path / "rec-out.mkv", up, progress=False, stabilise=StabiliserSettings())
    assert read_numbers(tmp_path / "rec-out.mkv") == list(range(30))


def test_frames_carry_the_route_that_made_them(tiny_model):
    """Provenance follows the frame: what the batcher hands back names the model view it ran."""
    from ultrares_stream.stages import Route, enhance_frames
    from ultrares_stream.upscaler import Upscaler

    up = Upscaler(tiny_model, device="cpu", precision="fp32", engine="eager", tile=0)
    route = Route(up, None)
    assert route.model == str(up.model_name) and route.ensemble == 1
    frames = [np.full((72, 64), 100, np.uint8)]
    with torch.inference_mode():
        out = enhance_frames(up, frames, 64, 48)
    assert out.shape == (1, 96 * 3 // 2, 128)
