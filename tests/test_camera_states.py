"""A camera's state always has its cause, and a camera over its cost budget never reaches the
shared batcher. Real clips, a real Service with its batcher and publishers."""
from __future__ import annotations

import pytest

from conftest import wait_for
from ultrares_stream.config import parse_config
from ultrares_stream.service import Service

pytestmark = pytest.mark.timeout(120)


def service(tmp_path, model, cams, **defaults):
    return Service(parse_config({
        "inference": {"device": "cpu", "precision": "fp32", "engine": "eager", "max_batch": 2, "max_wait_ms": 5},
        "defaults": {"model": model, **defaults}, "cameras": cams}))


def test_a_camera_over_the_pixel_budget_is_refused_before_any_frame_is_upscaled(tmp_path, tiny_model, make_clip):
    """A camera over the pixel budget starves no other: a 1920x1080 camera at x4 (7680x4320) would
    hold the device for minutes, so its first frame is checked against max_output_pixels: refused with
    a cause that names the setting, and none of its frames reaches the batcher; the other camera
    publishes every frame."""
    big = make_clip(tmp_path / "big.mp4", frames=3, w=640, h=480)
    small = make_clip(tmp_path / "small.mp4", frames=12, w=48, h=32)
    svc = service(tmp_path, tiny_model, [
        {"name": "big", "input": str(big), "output": str(tmp_path / "big-out.mkv")},
        {"name": "small", "input": str(small), "output": str(tmp_path / "small-out.mkv")},
    ], max_output_pixels=640 * 480)  # x2 of 640x480 is four times that
    svc.start()
    try:
        assert wait_for(lambda: svc.cameras["small"].finished and svc.cameras["big"].state == "failed", 60), \
            svc.status()
        big_status, small_status = (svc.cameras[n].status() for n in ("big", "small"))
        assert "output_size" in big_status["cause"] and "max_output_pixels" in big_status["cause"]
        assert "1280x960" in big_status["cause"]
        assert big_status["frames_in"] == 0 and small_status["frames_out"] == 12
        assert svc.batcher.frames == 12  # only the small camera's frames were upscaled
        assert not svc.ready()
    finally:
        svc.stop(10)


def test_a_configured_output_size_over_the_budget_is_refused_by_the_config(tiny_model):
    from ultrares_stream.errors import UserError

    with pytest.raises(UserError, match=r"cameras\[0\]\.output_size"):
        parse_config({"defaults": {"model": tiny_model},
                      "cameras": [{"name": "a", "input": "rtsp://127.0.0.1/a", "output": "a.mp4",
                                   "output_size": "7680x4320"}]})


def test_an_unwritable_output_makes_the_camera_say_why(tmp_path, tiny_model, make_clip):
    """A live camera with a read-only output says why: an error state with its cause, never 'starting' forever."""
    from ultrares_stream.demo.server import RtspServer

    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    with RtspServer(port=0, video=make_clip(tmp_path / "cam.mp4", frames=50, w=64, h=48, fps=25)).start(timeout=30) as cam:
        svc = service(tmp_path, tiny_model, [{"name": "cam", "input": cam.camera_url,
                                              "output": str(blocker / "cam.mp4")}])
        svc.start()
        try:
            assert wait_for(lambda: svc.cameras["cam"].state == "output-error", 40), svc.status()
            cause = svc.cameras["cam"].status()["cause"]
            assert "not-a-folder" in cause and "Not a directory" in cause, cause
            sample = svc.metrics.registry.get_sample_value
            assert sample("ultrares_camera_state", {"camera": "cam", "state": "output-error"}) == 1
            assert sample("ultrares_camera_state", {"camera": "cam", "state": "running"}) == 0
        finally:
            svc.stop(10)
