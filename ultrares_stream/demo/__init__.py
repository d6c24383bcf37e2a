"""Demo camera simulator: a local GStreamer RTSP server (``server.RtspServer``, which runs the
standalone ``rtsp_server.py`` with Debian's python3) and the footage it plays (``scene``: a
synthetic traffic scene or a real clip from the shared data). See docs/demo.md."""
from __future__ import annotations

__all__ = ["RtspServer", "RtspServerError", "default_camera_video", "make_scene_video"]


def __getattr__(name: str):  # lazy: importing the package must not load PyAV/numpy
    if name in ("RtspServer", "RtspServerError"):
        from . import server

        return getattr(server, name)
    if name in ("default_camera_video", "make_scene_video"):
        from . import scene

        return getattr(scene, name)
    raise AttributeError(name)
