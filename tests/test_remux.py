"""The copy of a recorded job's Matroska partial file into the requested container: the
Matroska muxer's shift is found from a copied stream and nothing else."""
from ultrares_stream.remux import muxer_shift


def test_shift_is_read_from_the_first_copied_stream():
    # AAC priming: the input's audio starts at -64 ms, so Matroska moved everything 64 ms later
    assert muxer_shift({0: 0.064, 1: 0.0}, {0: 0.0, 1: -0.064}, [1]) == 0.064
    # 44.1 kHz priming (-23.2 ms): Matroska rounds the shift up to whole ms and each time to the nearest
    assert muxer_shift({0: 0.024, 1: 0.001}, {0: 0.0, 1: -1024 / 44100}, [1]) == 0.024
    # the input's audio is stream 2 (stream 1 was not copied): partial stream 1 is input stream 2
    assert muxer_shift({0: 5.0, 1: 4.98}, {0: 5.0, 1: 0.0, 2: 4.98}, [2]) == 0.0


def test_no_copied_stream_means_no_shift():
    assert muxer_shift({0: 0.0}, {0: 0.0}, []) == 0.0
    assert muxer_shift({0: 0.0}, {0: 0.0, 1: -0.064}, [1]) == 0.0  # the audio never reached the partial file
