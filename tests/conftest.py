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
        if "gpu" in item.keywords:
            item.add_marker(skip)
