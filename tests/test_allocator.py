"""The CLI keeps freed frame-sized buffers mapped (glibc mallopt): applied on glibc, harmless elsewhere."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")
def test_settings_are_applied_on_glibc():
    code = "from ultrares_stream.allocator import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_nothing_happens_without_a_c_library(monkeypatch):
    import ctypes.util

    from ultrares_stream import allocator

    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert allocator.keep_freed_memory() is False
