"""The scheme table (urls.SCHEMES) is the one answer to 'what does this URL mean' for the config,
the sources and the sinks: each of them follows it."""
import pytest

from ultrares_stream.config import CameraConfig
from ultrares_stream.errors import UserError
from ultrares_stream.publisher import output_args
from ultrares_stream.sources import open_args
from ultrares_stream.urls import SCHEMES, is_live, scheme_of


def test_scheme_of_urls_devices_and_paths():
    assert scheme_of("RTSP://cam/1") == "rtsp"
    assert scheme_of("/dev/video0") == scheme_of("v4l2:///dev/video0") == "v4l2"
    assert scheme_of("/srv/clip.mp4") == scheme_of("clip.mkv") == ""


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_config_sources_and_sinks_follow_the_table(name):
    url = f"{name}://host:1234/path"
    row = SCHEMES[name]
    CameraConfig(name="c", input=url, output="/tmp/out.mkv")  # every scheme of the table is accepted
    assert is_live(url) is row.live
    if row.timeout_option:  # every network input has a bounded read
        assert open_args(url, "tcp", 4)["options"][row.timeout_option] in ("4000000", "2000000")
    if row.publish_format:
        target, fmt, options = output_args(url, timeout_s=3)
        assert (target, fmt) == (url, row.publish_format)
        if row.publish_timeout:  # and a bounded write, where the muxer takes the option
            assert options[row.timeout_option] == "3000000"
        else:
            assert row.timeout_option not in options
    elif row.live:
        with pytest.raises(UserError, match=f"publishing over {name}:// is not supported; use rtsp://"):
            output_args(url)


def test_unknown_scheme_is_refused_naming_the_field_and_the_choices():
    with pytest.raises(ValueError, match=r"output[\s\S]*unknown URL scheme 'rstp'[\s\S]*rtmp, rtmps, rtp, rtsp"):
        CameraConfig(name="c", input="/tmp/in.mp4", output="rstp://typo/x")


def test_file_scheme_is_a_file_to_both_sides():
    assert not is_live("file:///tmp/a.mp4")
    assert output_args("file:///tmp/a.mkv")[1] == "matroska"
