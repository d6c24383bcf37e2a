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


@pytest.mark.parametrize("env, called", [(None, True), ("0", False)])
def test_the_cli_applies_them_unless_told_not_to(monkeypatch, tmp_path, env, called):
    import yaml

    from ultrares_stream import allocator
    from ultrares_stream.cli import main

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    if env is None:
        monkeypatch.delenv("ULTRARES_KEEP_FREED_MEMORY", raising=False)
    else:
        monkeypatch.setenv("ULTRARES_KEEP_FREED_MEMORY", env)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"cameras": [{"name": "a", "input": "rtsp://h/a", "output": "/tmp/a.mkv"}]}))
    assert main(["shard", "--config", str(cfg), "--replicas", "1"]) == 0
    assert bool(calls) is called
