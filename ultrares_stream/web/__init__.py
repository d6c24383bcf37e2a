"""Web page and HTTP API (FastAPI): upscale images in the browser, watch and steer the
live cameras. ``create_app`` builds the app; ``ultrares web`` and ``ultrares serve`` run it."""
from __future__ import annotations


def create_app(*args, **kwargs):
    """See :func:`ultrares_stream.web.app.create_app` (imported lazily: FastAPI is only
    loaded by the commands that serve HTTP)."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)
