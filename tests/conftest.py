"""Shared test fixtures. Data from ../shared/data is found through ULTRARES_DATA
(default ../shared/data beside the checkout); tests that need it skip with a reason when absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("ULTRARES_OFFLINE", "1")  # never download weights in tests

from ultrares_stream.settings import data_dir  # noqa: E402

DATA = data_dir()


def need_data(*parts: str) -> Path:
    """Path under the shared data dir, or skip the calling test with a clear reason."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (set ULTRARES_DATA to the shared data folder)")
    return path


@pytest.fixture
def data():
    return need_data


@pytest.fixture
def anime_weights() -> Path:
    return need_data("weights", "realesr-animevideov3.pth")


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
