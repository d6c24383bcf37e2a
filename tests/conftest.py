"""Shared test fixtures. Data from ../shared/data is found through ULTRARES_DATA
(default ../shared/data beside the checkout); tests that need it skip with a reason when absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("ULTRARES_OFFLINE", "1")  # never download weights in tests

from ultrares_stream.demo.server import free_port  # noqa: E402,F401 - for the tests
from ultrares_stream.settings import data_dir  # noqa: E402

DATA = data_dir()


def need_data(*parts: str) -> Path:
    """Path under the shared data dir, or skip the calling test with a clear reason."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (set ULTRARES_DATA to the shared data folder)")
    return path


def wait_for(cond, timeout, step=0.05):
    """Poll ``cond()`` until it is true or ``timeout`` seconds passed; its last value."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


@pytest.fixture
def data():
    return need_data


@pytest.fixture
def anime_weights() -> Path:
    return need_data("weights", "realesr-animevideov3.pth")


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Pipelines set torch's process-wide CPU thread count (batcher.cpu_inference_plan);
    restore it after each test so later tests run as configured."""
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


# --- demo RTSP server (ultrares_stream.demo) --------------------------------------------------


@pytest.fixture(scope="session")
def gst_rtsp():
    """Skip unless Debian's /usr/bin/python3 can run GStreamer's RTSP server."""
    from ultrares_stream.demo.server import gst_rtsp_unavailable

    reason = gst_rtsp_unavailable()
    if reason:
        pytest.skip(f"GStreamer RTSP server unavailable: {reason}")


@pytest.fixture
def rtsp_server(gst_rtsp):
    """A started demo RtspServer on a free 127.0.0.1 port (camera: default_camera_video()), stopped afterwards."""
    from ultrares_stream.demo.server import RtspServer

    srv = RtspServer(port=0).start(timeout=30)
    try:
        yield srv
    finally:
        srv.stop()


def panning_scene_clip(path, frames: int, velocity: tuple[float, float], codec: str = "libx264", **options):
    """A 160x120 clip at 25 fps of the demo scene (frame 90, HR 640x480) panning by ``velocity`` LR
    pixels a frame (x, y), each frame x1/4 by MATLAB bicubic, encoded by ``codec`` with
    ``options`` over preset veryfast; (path, the HR picture, its plate boxes in frame 0 in LR pixels)."""
    from fractions import Fraction

    import av

    from ultrares_stream.demo.scene import render_scene_frame
    from ultrares_stream.fusion.registration import translation
    from ultrares_stream.fusion.synthetic import render

    boxes: list = []
    picture = render_scene_frame(90, 640, 480, plates=boxes)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.options = {"preset": "veryfast", **options}
        stream.time_base = Fraction(1, 25)
        for k in range(frames):
            moved = render(picture, translation(-velocity[0] * 4 * k, -velocity[1] * 4 * k), 4)
            frame = av.VideoFrame.from_ndarray(moved, format="rgb24")
            frame.pts = k
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path, picture, [(x // 4, y // 4, w // 4 + 1, h // 4 + 1) for x, y, w, h, _ in boxes]


def _make_clip(path, frames=20, w=64, h=48, fps=10, audio=False, fmt=None):
    """An H.264 clip (a bright column moving across a ramp of grey levels), with an optional
    440 Hz AAC tone as long as the video."""
    import av
    import numpy as np

    with av.open(str(path), "w", format=fmt) as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        a = c.add_stream("aac", rate=16000, layout="mono") if audio else None
        for i in range(frames):
            img = np.full((h, w, 3), (i * 20) % 200, np.uint8)
            img[:, (i * 3) % w] = 255
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        if a is not None:
            n = 16000 * frames // fps
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 16000)).astype(np.float32)[None]
            for s in range(0, n, 1024):
                fr = av.AudioFrame.from_ndarray(tone[:, s:s + 1024], format="fltp", layout="mono")
                fr.sample_rate, fr.pts = 16000, s
                for p in a.encode(fr):
                    c.mux(p)
            for p in a.encode(None):
                c.mux(p)
    return path


@pytest.fixture
def make_clip():
    """``make_clip(path, frames=20, w=64, h=48, fps=10, audio=False, fmt=None) -> path``."""
    return _make_clip


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A real (randomly initialised) compact x2 net, fast enough for CPU pipeline tests."""
    import torch

    from ultrares_stream.models.archs import SRVGGNetCompact
    from ultrares_stream.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny-x2.safetensors"
    save_checkpoint(SRVGGNetCompact(num_feat=4, num_conv=1, upscale=2).state_dict(), path)
    return str(path)
