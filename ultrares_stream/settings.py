"""Where things live on disk. Every location can be changed with an environment variable."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
SHIPPED_WEIGHTS_DIR = PACKAGE_DIR / "models" / "weights"


def data_dir() -> Path:
    """Shared data (SR benchmarks, traffic clips, third-party weights): ``ULTRARES_DATA``,
    by default ``../shared/data`` beside the checkout."""
    return Path(os.environ.get("ULTRARES_DATA", REPO_DIR.parent / "shared" / "data")).resolve()


def weights_dir() -> Path | None:
    """A local folder of third-party weights to use instead of downloading (``ULTRARES_WEIGHTS_DIR``)."""
    value = os.environ.get("ULTRARES_WEIGHTS_DIR")
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """Downloaded weights (``ULTRARES_CACHE``, default ``~/.cache/ultrares``)."""
    base = os.environ.get("ULTRARES_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ultrares"
    return Path(base).expanduser()


def engine_cache_dir() -> Path:
    """Compiled engines (``ULTRARES_ENGINE_CACHE``, default ``engines/cache`` in the checkout)."""
    return Path(os.environ.get("ULTRARES_ENGINE_CACHE", REPO_DIR / "engines" / "cache")).expanduser()
