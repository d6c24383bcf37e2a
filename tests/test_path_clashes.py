"""No path is written by two writers or is a job's own input.

Config: two cameras with one output file or URL, or an output that is an input file, are refused
by ``serve --check`` naming the field, links resolved. Recorded jobs: a second ``ultrares enhance``
with the same ``-o`` stops before writing (lock on the partial file); an input that is the output's
partial file, or another input of the run, is never overwritten. Real files, real processes."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import av
import numpy as np
import pytest
import yaml
from PIL import Image

from ultrares_stream.cli import main


def _check(tmp_path, cams, capsys, defaults=None):
    cfg = tmp_path / "cams.yaml"
    cfg.write_text(yaml.safe_dump({"cameras": cams, **({"defaults": defaults} if defaults else {})}))
    code = main(["serve", "--config", str(cfg), "--check"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


def _cam(name, src, dst, **extra):
    return {"name": name, "input": str(src), "output": str(dst), **extra}


def test_two_cameras_writing_one_file_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    cams = [_cam("a", "rtsp://h/a", tmp_path / "real" / "out.mkv"), _cam("b", "rtsp://h/b", "link/./out.mkv")]
    code, err = _check(tmp_path, cams, capsys)
    assert code == 2
    assert f"cameras[1].output: same file as cameras[0].output ({tmp_path / 'real' / 'out.mkv'})" in err
    cams[1]["output"] = "link/other.mkv"
    assert _check(tmp_path, cams, capsys)[0] == 0
    # an existing file under a hard link is the same file too
    (tmp_path / "real" / "out.mkv").write_bytes(b"x")
    os.link(tmp_path / "real" / "out.mkv", tmp_path / "hard.mkv")
    cams[1]["output"] = "hard.mkv"
    code, err = _check(tmp_path, cams, capsys)
    assert code == 2 and "cameras[1].output: same file as cameras[0].output" in err


def test_hls_playlists_and_network_outputs_clash_when_the_same(tmp_path, capsys):
    hls = [_cam("a", "rtsp://h/a", tmp_path / "hls" / "index.m3u8"),
           _cam("b", "rtsp://h/b", tmp_path / "hls" / ".." / "hls" / "index.m3u8")]
    code, err = _check(tmp_path, hls, capsys)
    assert code == 2 and "cameras[1].output: same file as cameras[0].output" in err
    urls = [_cam("a", "rtsp://h/a", "rtsp://user:secret@Media.local:8554//push/x/"),
            _cam("b", "rtsp://h/b", "RTSP://media.local:8554/push/x")]
    code, err = _check(tmp_path, urls, capsys)
    assert code == 2
    assert "cameras[1].output: same URL as cameras[0].output (rtsp://media.local:8554/push/x)" in err
    assert "secret" not in err
    urls[1]["output"] = "rtsp://media.local:554/push/x"  # another port: another stream
    assert _check(tmp_path, urls, capsys)[0] == 0
    urls[1]["output"] = "rtsp://media.local/push/x"  # RTSP's default port is 554
    assert _check(tmp_path, urls, capsys)[0] == 0
    urls[0]["output"] = "rtsp://media.local:554/push/x"
    assert _check(tmp_path, urls, capsys)[0] == 2
    loop = [_cam("a", "rtsp://media.local/push/x", "rtsp://media.local:554/push/x/")]  # reads what it writes
    code, err = _check(tmp_path, loop, capsys)
    assert code == 2 and "cameras[0].output: same URL as cameras[0].input" in err


def test_a_file_camera_writing_over_an_input_is_refused(tmp_path, capsys, make_clip):
    clip = make_clip(tmp_path / "clip.mp4", frames=4)
    before = clip.read_bytes()
    (tmp_path / "alias.mp4").symlink_to(clip)
    code, err = _check(tmp_path, [_cam("a", clip, tmp_path / "alias.mp4")], capsys)
    assert code == 2 and f"cameras[0].output: same file as cameras[0].input ({clip})" in err
    other = make_clip(tmp_path / "other.mp4", frames=4)
    code, err = _check(tmp_path, [_cam("a", clip, tmp_path / "a.mkv"), _cam("b", other, clip)], capsys)
    assert code == 2 and f"cameras[1].output: same file as cameras[0].input ({clip})" in err
    # a disabled camera writes nothing: no clash
    cams = [_cam("a", clip, tmp_path / "a.mkv"), _cam("b", other, clip, enabled=False)]
    assert _check(tmp_path, cams, capsys)[0] == 0
    assert clip.read_bytes() == before


def test_a_camera_over_its_own_input_is_refused_by_serve_before_any_write(tmp_path, tiny_model, make_clip):
    """The real ``serve`` (not only --check) stops before it opens the output: the input stays whole."""
    clip = make_clip(tmp_path / "clip.mp4", frames=8)
    before = clip.read_bytes()
    cfg = tmp_path / "cams.yaml"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg.write_text(yaml.safe_dump({"server": {"port": port}, "inference": {"device": "cpu"},
                                   "defaults": {"model": tiny_model}, "cameras": [_cam("a", clip, clip)]}))
    exe = os.path.join(os.path.dirname(sys.executable), "ultrares")
    proc = subprocess.run([exe, "serve", "--config", str(cfg), "--duration", "5"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cameras[0].output: same file as cameras[0].input" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert clip.read_bytes() == before


# ---------------------------------------------------------------- recorded jobs


def _frames(path):
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def _enhance(*args):
    exe = os.path.join(os.path.dirname(sys.executable), "ultrares")
    return [exe, "enhance", *map(str, args), "--device", "cpu", "--no-stabilise"]


def test_a_second_job_with_the_same_output_stops_before_writing(tmp_path, tiny_model, make_clip):
    """Job A writes out.mp4 and is frozen (SIGSTOP) holding its partial file; job B with the same -o
    exits non-zero with one line and writes nothing; A, resumed, finishes every frame of its input."""
    src_a = make_clip(tmp_path / "a.mp4", frames=200, w=96, h=64)
    src_b = make_clip(tmp_path / "b.mp4", frames=7)
    dst, partial = tmp_path / "out.mp4", tmp_path / ".out.partial.mkv"
    a = subprocess.Popen(_enhance(src_a, "-o", dst, "--model", tiny_model, "--threads", "1", "--preset", "veryslow"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (partial.exists() and partial.stat().st_size > 2000):  # A has written frames
            assert a.poll() is None, a.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "job A wrote nothing"
            time.sleep(0.05)
        a.send_signal(signal.SIGSTOP)
        held = partial.read_bytes()
        b = subprocess.run(_enhance(src_b, "-o", dst, "--model", tiny_model), capture_output=True, text=True,
                           timeout=120)
        assert partial.read_bytes() == held  # B did not touch A's file
        a.send_signal(signal.SIGCONT)
        _, err_a = a.communicate(timeout=300)
    finally:
        if a.poll() is None:
            a.send_signal(signal.SIGCONT)
            a.kill()
    assert b.returncode != 0
    errors = [ln for ln in b.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and f"another job is writing {dst}" in errors[0], b.stderr[-2000:]
    assert "Traceback" not in b.stderr
    assert a.returncode == 0, err_a[-2000:]
    assert _frames(dst) == 200  # A's frames, all of them, none of B's
    assert not partial.exists()


def test_the_partial_file_of_the_output_is_never_the_input(tmp_path, tiny_model, make_clip):
    """``ultrares enhance .x.partial.mkv -o x.mp4`` (or through a symlink) would truncate its own input."""
    partial = make_clip(tmp_path / ".x.partial.mkv", frames=30, fmt="matroska")
    before = partial.read_bytes()
    (tmp_path / "link.mkv").symlink_to(partial)
    for src in (partial, tmp_path / "link.mkv"):
        proc = subprocess.run(_enhance(src, "-o", tmp_path / "x.mp4", "--model", tiny_model),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0
        assert "the input is the partial file of the output" in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert partial.read_bytes() == before
        assert not (tmp_path / "x.mp4").exists()


def test_a_batch_never_writes_over_another_of_its_inputs(tmp_path, tiny_model, make_clip):
    """Folder batches: a job's output (or its partial file) that is another input of the run is refused."""
    out = tmp_path / "out"
    out.mkdir()
    held = make_clip(out / ".y.partial.mkv", frames=10, fmt="matroska")  # y.mp4's partial file, given as input
    clip = make_clip(tmp_path / "y.mp4", frames=10)
    before = held.read_bytes()
    proc = subprocess.run(_enhance(held, clip, "-o", out, "--model", tiny_model), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert held.read_bytes() == before
    assert "another input of this run" in proc.stderr and "Traceback" not in proc.stderr
    # images: b/p.png would be written over a/p.png, an input of the same run
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        Image.fromarray(np.full((8, 8, 3), 40 if d == "a" else 200, np.uint8)).save(tmp_path / d / "p.png")
    image_before = (tmp_path / "a" / "p.png").read_bytes()
    proc = subprocess.run(_enhance(tmp_path / "a" / "p.png", tmp_path / "b" / "p.png", "-o", tmp_path / "a",
                                   "--model", tiny_model), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert (tmp_path / "a" / "p.png").read_bytes() == image_before


def test_writer_lock_is_exclusive_between_processes(tmp_path):
    """The lock itself: held by one process, a second one is refused at once; released, it is free."""
    from ultrares_stream.errors import UserError
    from ultrares_stream.recorded import writer_lock

    dst, tmp = tmp_path / "o.mp4", tmp_path / ".o.partial.mkv"
    probe = ("import sys; from pathlib import Path; from ultrares_stream.recorded import writer_lock\n"
             "try:\n    with writer_lock(Path(sys.argv[1]), Path(sys.argv[2])): print('GOT')\n"
             "except Exception as e: print('REFUSED', e)\n")
    with writer_lock(tmp, dst):
        tmp.write_bytes(b"frames")  # the job's first packet
        out = subprocess.run([sys.executable, "-c", probe, str(tmp), str(dst)], capture_output=True, text=True,
                             timeout=60).stdout
        assert out.startswith("REFUSED another job is writing"), out
        with pytest.raises(UserError, match="another job is writing"):
            with writer_lock(tmp, dst):
                pass
    assert tmp.read_bytes() == b"frames"
    out = subprocess.run([sys.executable, "-c", probe, str(tmp), str(dst)], capture_output=True, text=True,
                         timeout=60).stdout
    assert out.startswith("GOT"), out
