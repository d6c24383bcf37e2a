"""Recorded footage: frame count and audio kept, temp name then rename, graceful stop, clear errors."""
import os
import signal
import subprocess
import sys
import time

import av
import pytest

from ultrares_stream.errors import UserError
from ultrares_stream.recorded import enhance_video, is_video
from ultrares_stream.upscaler import Upscaler

pytestmark = pytest.mark.timeout(180)


def describe(path):
    with av.open(str(path)) as c:
        out = {"frames": sum(1 for _ in c.decode(video=0))}
    with av.open(str(path)) as c:
        for s in c.streams:
            out[s.type] = float(s.duration * s.time_base) if s.duration else None
            if s.type == "video":
                out["size"] = (s.codec_context.width, s.codec_context.height)
        a = [s for s in c.streams if s.type == "audio"]
        if a:
            out["audio_samples"] = sum(f.samples for f in c.decode(a[0]))
    return out


@pytest.fixture(scope="module")
def upscaler(tiny_model):
    return Upscaler(tiny_model, device="cpu", precision="fp32", engine="eager", tile=0)


def test_keeps_frame_count_and_audio(tmp_path, upscaler, make_clip):
    src = make_clip(tmp_path / "in.mp4", frames=20, audio=True)
    dst = tmp_path / "out" / "enhanced.mp4"
    stats = enhance_video(src, dst, upscaler, progress=False, max_batch=3)
    a, b = describe(src), describe(dst)
    assert stats["frames"] == a["frames"] == b["frames"] == 20
    assert b["size"] == (128, 96)
    assert b["audio"] == pytest.approx(a["audio"], abs=0.05)
    assert b["audio_samples"] == a["audio_samples"]
    assert b["video"] == pytest.approx(a["video"], abs=0.11)
    assert stats["fps"] > 0 and stats["copied_packets"] > 0
    assert [p.name for p in dst.parent.iterdir()] == ["enhanced.mp4"]  # the temporary name is gone

def test_the_last_frame_is_in_the_output_however_late_it_reaches_the_queue(tmp_path, upscaler, make_clip, monkeypatch):
    """A file job closes its output once every frame read is back; the last frame, slow on its way
    into the output queue (a busy or paused process), is still written."""
    from ultrares_stream.batcher import Enhanced
    from ultrares_stream.frame_queue import FrameQueue

    put = FrameQueue.put

    def late_put(self, item, timeout=None):
        if isinstance(item, Enhanced) and item.source.index == 19:
            time.sleep(0.5)
        return put(self, item, timeout)

    monkeypatch.setattr(FrameQueue, "put", late_put)
    src = make_clip(tmp_path / "in.mp4", frames=20)
    dst = tmp_path / "out.mp4"
    stats = enhance_video(src, dst, upscaler, progress=False)
    assert stats["frames"] == describe(dst)["frames"] == 20


@pytest.mark.parametrize("suffix", [".mkv", ".avi", ".mov"])
def test_output_size_and_containers(tmp_path, upscaler, suffix, make_clip):
    src = make_clip(tmp_path / "in.mp4", frames=6, audio=False)
    dst = tmp_path / f"out{suffix}"
    enhance_video(src, dst, upscaler, size=(100, 76), progress=False)
    d = describe(dst)
    assert d["frames"] == 6 and d["size"] == (100, 76)


def test_is_video_sniffs_content(tmp_path, make_clip):
    clip = make_clip(tmp_path / "clip.bin", frames=3, audio=False, fmt="mp4")  # a video with a misleading name
    assert is_video(clip)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "pic.mp4", format="PNG")  # an image named .mp4
    assert not is_video(tmp_path / "pic.mp4")
    (tmp_path / "notes.txt").write_text("hello")
    assert not is_video(tmp_path / "notes.txt")
    assert not is_video(tmp_path / "missing.mp4")


def test_bad_input_and_output_are_user_errors(tmp_path, upscaler, make_clip):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(UserError, match="bad.mp4"):
        enhance_video(bad, tmp_path / "o.mp4", upscaler, progress=False)
    with pytest.raises(UserError, match="no such file"):
        enhance_video(tmp_path / "missing.mp4", tmp_path / "o.mp4", upscaler, progress=False)
    good = make_clip(tmp_path / "g.mp4", frames=2, audio=False)
    with pytest.raises(UserError, match=".mkv"):
        enhance_video(good, tmp_path / "o.webm", upscaler, progress=False)
    with pytest.raises(UserError, match="overwrite"):
        enhance_video(good, good, upscaler, progress=False)
    assert not list(tmp_path.glob(".*partial*"))


SCRIPT = """
import sys, time, logging
from ultrares_stream.upscaler import Upscaler
from ultrares_stream.recorded import enhance_video, EnhanceInterrupted

class Slow(Upscaler):
    def upscale(self, x, size=None):
        time.sleep(0.1)
        return super().upscale(x, size)

up = Slow(sys.argv[1], device="cpu", precision="fp32", engine="eager", tile=0)
print("READY", flush=True)
try:
    enhance_video(sys.argv[2], sys.argv[3], up, progress=False, max_batch=1)
    print("DONE", flush=True)
except EnhanceInterrupted as exc:
    print("INTERRUPTED", exc.stats["frames"], flush=True)
    sys.exit(130)
"""


def test_sigterm_finishes_a_playable_file_of_frames_done(tmp_path, tiny_model, make_clip):
    src = make_clip(tmp_path / "long.mp4", frames=150, audio=True)
    dst = tmp_path / "partial.mp4"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, tiny_model, str(src), str(dst)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    done = int(out.split("INTERRUPTED")[1].split()[0])
    assert 0 < done < 150
    d = describe(dst)
    assert d["frames"] == done  # playable, and holds exactly the frames done
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_audio_and_video_start_together(tmp_path, upscaler, make_clip, suffix):
    """The Matroska partial file shifts every stream by the AAC priming; the copy into MP4/MOV
    takes it back off (edit lists), so audio and video start within a frame of each other."""
    fps = 30
    src = make_clip(tmp_path / "in.mp4", frames=30, fps=fps, audio=True)
    dst = tmp_path / f"out{suffix}"
    enhance_video(src, dst, upscaler, progress=False)
    with av.open(str(dst)) as c:
        starts = {s.type: float(s.start_time * s.time_base) for s in c.streams}
        tags = {k.lower(): v for k, v in c.metadata.items()}
    assert abs(starts["video"] - starts["audio"]) < 1 / fps, starts
    assert starts["video"] == pytest.approx(0.0, abs=1 / fps)
    assert "Machine-enhanced" in tags.get("comment", "")
    b = describe(dst)
    assert b["frames"] == 30 and b["audio_samples"] == describe(src)["audio_samples"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_sigkill_leaves_a_playable_partial_file(tmp_path, tiny_model, make_clip):
    """A killed job cannot finish its file: what it leaves (.NAME.partial.mkv) plays, audio included."""
    src = make_clip(tmp_path / "long.mp4", frames=600, w=160, h=120, fps=30, audio=True)
    dst = tmp_path / "out.mp4"
    partial = tmp_path / ".out.partial.mkv"
    exe = os.path.join(os.path.dirname(sys.executable), "ultrares")
    proc = subprocess.Popen([exe, "enhance", str(src), "-o", str(dst), "--model", tiny_model, "--device", "cpu",
                             "--threads", "1", "--preset", "veryslow", "--no-stabilise"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (partial.exists() and partial.stat().st_size > 30_000):  # clusters of frames are on disk
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "no frames written"
            time.sleep(0.1)
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL  # killed before it finished
    assert not dst.exists()
    d = describe(partial)
    assert 1 <= d["frames"] < 600
    assert d["size"] == (320, 240)
    assert d.get("audio_samples", 0) > 0


def test_sigterm_during_the_copy_into_mp4_keeps_the_partial_file_and_names_it(tmp_path, upscaler, make_clip,
                                                                               monkeypatch):
    """All frames are done and the Matroska partial file is being copied into MP4 when SIGTERM comes:
    the copy stops, no half-written MP4 is left, and the error names the partial file, which plays."""
    from ultrares_stream import recorded, remux

    copy = remux.remux

    def sigterm_then_copy(*args, **kwargs):  # the signal arrives as the stream copy starts
        os.kill(os.getpid(), signal.SIGTERM)
        return copy(*args, **kwargs)

    monkeypatch.setattr(remux, "remux", sigterm_then_copy)
    handler = signal.getsignal(signal.SIGTERM)
    src = make_clip(tmp_path / "in.mp4", frames=20, audio=True)
    dst = tmp_path / "out.mp4"
    partial = tmp_path / ".out.partial.mkv"
    with pytest.raises(recorded.EnhanceInterrupted) as caught:
        enhance_video(src, dst, upscaler, progress=False)
    assert caught.value.stats["output"] == str(partial) and str(partial) in str(caught.value)
    assert caught.value.stats["frames"] == 20
    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [partial.name]
    kept = describe(partial)
    # all of the audio too (Matroska keeps the AAC priming samples that MP4's edit list hides)
    assert kept["frames"] == 20 and kept["audio_samples"] >= describe(src)["audio_samples"]
    assert signal.getsignal(signal.SIGTERM) is handler  # the job's handler is gone again


def late_video_clip(path, frames=6, start_s=5.4, fps=10, w=160, h=120):
    """Audio from 0 s and video only from ``start_s``: what is left of a recording whose first
    seconds of video were lost. libx264 reorders these frames (B-frames)."""
    from fractions import Fraction

    import numpy as np

    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        a = c.add_stream("aac", rate=16000, layout="mono")
        n = int(16000 * (start_s + frames / fps))
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 16000)).astype(np.float32)[None]
        for s in range(0, n, 1024):
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, s:s + 1024]), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 16000, s
            for p in a.encode(fr):
                c.mux(p)
        for p in a.encode(None):
            c.mux(p)
        first = round(start_s * fps)
        for k in range(first, first + frames):
            img = np.full((h, w, 3), (k * 20) % 200, np.uint8)
            img[:, (k * 3) % w] = 255
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = k, Fraction(1, fps)
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".ts"])
def test_video_that_starts_late_is_copied_into_any_container(tmp_path, upscaler, suffix):
    """Matroska's demuxer cannot infer the decode times of reordered frames when the video starts
    seconds after the audio; the copy into MP4/MPEG-TS rebuilds them from the presentation times
    instead of failing, so every frame decoded reaches the output."""
    src = late_video_clip(tmp_path / "late.mp4")
    dst = tmp_path / f"out{suffix}"
    stats = enhance_video(src, dst, upscaler, progress=False)
    assert stats["frames"] == 6 and describe(dst)["frames"] == 6
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_decode_times_rebuilt_from_presentation_times():
    from ultrares_stream.remux import dts_from_pts

    assert dts_from_pts([0, 1, 2]) == [0, 1, 2]  # nothing reordered: unchanged
    dts = dts_from_pts([5464, 5664, 5564, 5764, 5864, 5964])  # I P B P P P, one frame of reordering
    assert dts == [5364, 5464, 5564, 5664, 5764, 5864]
    assert all(d <= p for d, p in zip(dts, [5464, 5664, 5564, 5764, 5864, 5964]))


def _cut(src, dst, share):
    """``head -c``: the first ``share`` of ``src``'s bytes, as a copy interrupted mid-file leaves it."""
    data = src.read_bytes()
    dst.write_bytes(data[:int(len(data) * share)])
    return dst


def _faststart(src, dst):
    """``src``'s packets in an MP4 whose index comes first (a truncated one still opens)."""
    with av.open(str(src)) as i, av.open(str(dst), "w", options={"movflags": "+faststart"}) as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
        for p in i.demux():
            if p.size:
                p.stream = streams[p.stream.index]
                o.mux(p)
    return dst


def test_a_truncated_input_leaves_its_frames_and_is_named(tmp_path, upscaler, make_clip, caplog):
    """An input cut short is enhanced as far as it decodes, and the warning names the input."""
    whole = make_clip(tmp_path / "whole.mkv", frames=60, w=96, h=64, audio=True)
    src = _cut(whole, tmp_path / "cut.mkv", 0.6)
    dst = tmp_path / "out.mp4"
    with caplog.at_level("WARNING", logger="ultrares_stream.recorded"):
        stats = enhance_video(src, dst, upscaler, progress=False)
    assert 10 < stats["frames"] < 60 and describe(dst)["frames"] == stats["frames"]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("cut.mkv: the input is damaged or truncated" in m and "frames its header announces" in m
               for m in warned), warned


def test_a_failed_copy_of_a_truncated_input_blames_the_input(tmp_path, upscaler, make_clip, monkeypatch):
    """When the final copy into the output's container fails on what a damaged input gave, the
    error names the input, says it is damaged or truncated, and keeps the frames it could decode."""
    from ultrares_stream import remux

    whole = _faststart(make_clip(tmp_path / "whole.mkv", frames=60, w=96, h=64, audio=True), tmp_path / "fast.mp4")
    src = _cut(whole, tmp_path / "cut.mp4", 0.6)

    def refuse(*_args, **_kwargs):
        raise av.error.ArgumentError(22, "Invalid argument")  # what a muxer says of packets it cannot take

    monkeypatch.setattr(remux, "remux", refuse)
    with pytest.raises(UserError) as caught:
        enhance_video(src, tmp_path / "out.mp4", upscaler, progress=False)
    message = str(caught.value)
    assert message.startswith(f"{src}: the input is damaged or truncated"), message
    partial = tmp_path / ".out.partial.mkv"
    assert str(partial) in message and not (tmp_path / "out.mp4").exists()
    with av.open(str(partial)) as kept:  # (its audio ends in the input's cut-off packet)
        assert 10 < sum(1 for _ in kept.decode(video=0)) < 60
