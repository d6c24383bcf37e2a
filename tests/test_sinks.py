"""Encoders and publishers: settings, timestamps, files and HLS written with PyAV and read back."""
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from ultrares_stream.errors import UserError
from ultrares_stream.publisher import (EncoderSettings, Publisher, codec_options, output_args, parse_bitrate,
                                       pick_codec)
from ultrares_stream.sinks import TimestampMapper, rtsp_server_answers


def test_timestamps_keep_source_spacing_and_stay_monotonic_across_reconnects():
    m = TimestampMapper(Fraction(25))
    first = [m.map(10.0 + i / 25, epoch=1) for i in range(5)]
    assert first == [0, 1, 2, 3, 4]
    assert m.map(10.0 + 8 / 25, epoch=1) == 8  # dropped frames leave a gap: real-time playback
    # the camera reconnects and its clock restarts at 0: output continues right after the last frame
    after = [m.map(i / 25, epoch=2) for i in range(3)]
    assert after == [9, 10, 11]
    assert m.map(0.0, epoch=2) == 12  # a repeated or backwards time never goes back
    assert m.map(None, epoch=2) == 13


def test_parse_bitrate():
    assert parse_bitrate("4M") == 4_000_000 and parse_bitrate("800k") == 800_000 and parse_bitrate("1500") == 1500
    with pytest.raises(UserError):
        parse_bitrate("fast")


def test_codec_options_live_and_file():
    opts, br, gop = codec_options(EncoderSettings(), Fraction(25))
    assert opts["tune"] == "zerolatency" and opts["crf"] == "23" and opts["preset"] == "veryfast"
    # inference on the CPU too: the encoder stays light so it does not slow the model
    assert codec_options(EncoderSettings(cpu_inference=True), Fraction(25))[0]["preset"] == "ultrafast"
    assert codec_options(EncoderSettings(preset="medium", cpu_inference=True), Fraction(25))[0]["preset"] == "medium"
    assert codec_options(EncoderSettings(codec="h264_nvenc"), Fraction(25))[0]["preset"] == "p4"
    assert br is None and gop == 50 and "keyint=50" in opts["x264-params"]
    opts, br, gop = codec_options(EncoderSettings(bitrate="2M", gop=10, tune=None), Fraction(30))
    assert "crf" not in opts and "tune" not in opts and br == 2_000_000 and gop == 10


def test_output_kinds():
    assert output_args("rtsp://h:1/push/x")[1:] == ("rtsp", {"rtsp_transport": "tcp", "timeout": "5000000"})
    assert output_args("/tmp/a.mkv")[1] == "matroska"
    assert output_args("/tmp/a.mp4", live=True)[2]["movflags"].startswith("frag_keyframe")
    assert output_args("/tmp/a.m3u8")[1] == "hls"
    with pytest.raises(UserError, match="unknown output"):
        output_args("/tmp/a.xyz")
    with pytest.raises(UserError):
        pick_codec("no_such_encoder")
    assert pick_codec("auto") in ("libx264", "h264_nvenc")


def test_auto_codec_uses_nvenc_only_where_it_opens():
    import torch

    from ultrares_stream.publisher import encoder_problem

    assert encoder_problem("libx264") is None
    assert encoder_problem("no_such_encoder") == "no_such_encoder is not in this FFmpeg build"
    if torch.cuda.is_available():
        assert pick_codec("auto") == ("libx264" if encoder_problem("h264_nvenc") else "h264_nvenc")
    else:  # no GPU: NVENC, even when built into FFmpeg as here, cannot open
        assert pick_codec("auto") == "libx264"
        from ultrares_stream.publisher import codec_available

        if codec_available("h264_nvenc"):
            assert encoder_problem("h264_nvenc")


def frames(n, w=64, h=48):
    for i in range(n):
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[:, (i * 4) % w] = 255
        yield av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()


@pytest.mark.parametrize("name", ["out.mkv", "out.mp4"])
def test_file_publisher_writes_every_frame_at_the_input_rate(tmp_path, name):
    path = tmp_path / name
    pub = Publisher(str(path), EncoderSettings(), live=True)
    pub.open(64, 48, Fraction(25))
    for i, data in enumerate(frames(30)):
        pub.write(data, i)
    pub.close()
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        got = list(c.decode(s))
    assert len(got) == 30 and (got[0].width, got[0].height) == (64, 48)
    times = [f.time for f in got]
    assert all(b > a for a, b in zip(times, times[1:]))
    assert times[-1] - times[0] == pytest.approx(29 / 25, abs=0.01)


def test_hls_publisher(tmp_path):
    path = tmp_path / "hls" / "live.m3u8"
    pub = Publisher(str(path), EncoderSettings(gop=10), live=False)
    pub.open(64, 48, Fraction(10))
    for i, data in enumerate(frames(40)):
        pub.write(data, i)
    pub.close()
    assert "#EXTM3U" in path.read_text()
    assert len(list(path.parent.glob("*.ts"))) >= 2
    with av.open(str(path)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 40


def test_watchdog_probe_sees_a_silent_server():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)  # accepts (kernel backlog) but never answers, like a SIGSTOPped server
        assert rtsp_server_answers(f"rtsp://127.0.0.1:{s.getsockname()[1]}/x", timeout_s=0.5) is False


def test_files_can_keep_the_source_timestamps():
    """Recorded jobs keep the input's times (their copied audio keeps its own); reconnects still continue."""
    m = TimestampMapper(Fraction(25), rebase=False)
    assert [m.map(2.0 + i / 25) for i in range(3)] == [50, 51, 52]
    assert m.map(0.0, epoch=1) == 53


def test_one_suffix_table_for_every_file_output():
    from ultrares_stream.recorded import output_container
    from ultrares_stream.publisher import OUTPUT_CONTAINERS, container_for

    for suffix, fmt in OUTPUT_CONTAINERS.items():
        assert output_args(f"/tmp/a{suffix}")[1] == fmt == container_for(f"/tmp/A{suffix.upper()}")
    assert container_for("/tmp/a.mov") == "mov" == output_container(Path("/tmp/a.mov"))
    with pytest.raises(UserError, match=".mkv"):
        output_container(Path("/tmp/a.webm"))  # the sink writes WebM; recorded jobs cannot copy audio into it
    # recorded jobs: MP4 written whole (edit lists keep encoder delay and copied audio in sync)
    assert output_args("/tmp/a.mp4", live=False, keep_times=True)[2]["movflags"] == "+faststart+use_metadata_tags"


def test_hardware_encoders_are_probed_at_the_output_size_and_fall_back_once(caplog):
    """h264_nvenc is in this FFmpeg build but cannot open without a GPU (and on a GPU not above
    4096x4096): asked for by name, outputs get libx264, with one warning per size, not one per
    reconnect."""
    import logging

    import torch

    from ultrares_stream.publisher import codec_available, encoder_problem

    assert encoder_problem("libx264", 5120, 2880) is None  # software: the size is no problem
    if not codec_available("h264_nvenc") or (torch.cuda.is_available() and not encoder_problem("h264_nvenc")):
        pytest.skip("needs an FFmpeg with h264_nvenc that cannot open it (a machine without a GPU)")
    with caplog.at_level(logging.WARNING, logger="ultrares_stream.publisher"):
        picks = [pick_codec("h264_nvenc", (5120, 2880)) for _ in range(3)]
        picks.append(pick_codec("h264_nvenc", (1280, 720)))
    assert picks == ["libx264"] * 4
    warnings = [r.getMessage() for r in caplog.records if "cannot encode" in r.getMessage()]
    assert len(warnings) == 2 and "5120x2880" in warnings[0] and "1280x720" in warnings[1]


@pytest.mark.gpu
@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs CUDA")
def test_nvenc_is_used_below_its_size_limit_and_not_above():
    from ultrares_stream.publisher import encoder_problem

    if encoder_problem("h264_nvenc", 1920, 1080):
        pytest.skip(f"NVENC unusable here: {encoder_problem('h264_nvenc', 1920, 1080)}")
    assert pick_codec("auto", (1920, 1080)) == "h264_nvenc"
    assert pick_codec("auto", (5120, 2880)) == "libx264"  # over H.264 NVENC's 4096x4096
