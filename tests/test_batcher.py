"""Cross-camera batcher: colour/uint8 conversion once on the device, grouping, per-camera order."""
import threading
import time

import av
import numpy as np
import pytest
import torch

from ultrares_stream.batcher import Batcher
from ultrares_stream.stages import DEVICE_STAGES, Route, enhance_frames
from ultrares_stream.colour import pack_yuv420p, split_yuv420p
from ultrares_stream.frame_queue import FrameQueue
from ultrares_stream.metrics import Metrics
from ultrares_stream.models.archs import SRVGGNetCompact
from ultrares_stream.models.checkpoint import save_checkpoint
from ultrares_stream.sources import Frame
from ultrares_stream.upscaler import Upscaler


def nearest_model(path, scale=2):
    """A real compact net whose last conv is zero: it upsamples by pure nearest neighbour."""
    torch.manual_seed(0)
    net = SRVGGNetCompact(num_feat=4, num_conv=1, upscale=scale)
    last = net.body[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    save_checkpoint(net.state_dict(), path)
    return Upscaler(str(path), device="cpu", precision="fp32", engine="eager", tile=0)


@pytest.fixture(scope="module")
def upscaler(tmp_path_factory):
    return nearest_model(tmp_path_factory.mktemp("m") / "nearest.safetensors")


def yuv_frame(w, h, seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(40, 215, (h // 2, w // 2, 3), dtype=np.uint8).repeat(2, 0).repeat(2, 1)
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()


def test_split_and_pack_are_inverse():
    data = np.random.default_rng(1).integers(0, 255, (3, 30 * 3 // 2, 20), dtype=np.uint8)
    t = torch.from_numpy(data)
    y, u, v = split_yuv420p(t, 20, 30)
    assert y.shape == (3, 30, 20) and u.shape == v.shape == (3, 15, 10)
    assert torch.equal(pack_yuv420p(y, u, v), t)


def test_enhance_frames_converts_colour_once_and_exactly(upscaler):
    frames = [yuv_frame(32, 24, s) for s in range(3)]
    out = enhance_frames(upscaler, frames, 32, 24)
    assert out.shape == (3, 48 * 3 // 2, 64) and out.dtype == np.uint8
    for src, dst in zip(frames, out):
        y_in = src[:24].astype(int).repeat(2, 0).repeat(2, 1)
        diff = np.abs(dst[:48].astype(int) - y_in)
        assert diff.mean() < 1.0 and diff.max() <= 3  # yuv -> rgb -> yuv round trip, rounding only
        assert np.abs(dst[48:].astype(int).mean() - src[24:].astype(int).mean()) < 1.0


def test_enhance_frames_output_size(upscaler):
    out = enhance_frames(upscaler, [yuv_frame(32, 24)], 32, 24, size=(50, 40))
    assert out.shape == (1, 60, 50)


class Client:
    stabiliser = None
    stages = DEVICE_STAGES

    def __init__(self, name, size, upscaler):
        self.name, self.upscaler = name, upscaler
        self.queue = FrameQueue(64, "block")
        self.got = []
        self.size = size
        self.done = threading.Event()

    def route(self):
        return Route(self.upscaler)

    def deliver(self, out):
        self.got.append(out)


def test_batches_across_cameras_and_returns_frames_in_order(upscaler):
    metrics = Metrics()
    b = Batcher("cpu", max_batch=4, max_wait_ms=50, metrics=metrics)
    cams = [Client("a", (32, 24), upscaler), Client("b", (16, 16), upscaler)]
    for c in cams:
        b.attach(c)
    for c in cams:  # queued before the worker starts: full batches from the start
        w, h = c.size
        for i in range(10):
            c.queue.put(Frame(yuv_frame(w, h, i), w, h, i, i / 25))
    b.start()
    deadline = time.monotonic() + 60
    while sum(len(c.got) for c in cams) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    b.stop()
    for c in cams:
        assert [e.source.index for e in c.got] == list(range(10))
        assert all((e.width, e.height) == (c.size[0] * 2, c.size[1] * 2) for e in c.got)
    assert b.frames == 20 and b.batches < 20  # frames were batched
    assert max(e.batch_size for c in cams for e in c.got) > 1
    count = metrics.registry.get_sample_value("ultrares_batch_size_count", {"device": "cpu"})
    total = metrics.registry.get_sample_value("ultrares_batch_size_sum", {"device": "cpu"})
    assert count == b.batches and total == 20


def test_inference_error_does_not_kill_the_worker(upscaler):
    class Broken:
        device = torch.device("cpu")
        scale = 2

        def upscale(self, x, size=None):
            raise RuntimeError("boom")

    bad, good = Client("bad", (16, 16), Broken()), Client("good", (16, 16), upscaler)
    metrics = Metrics()
    b = Batcher("cpu", max_batch=2, max_wait_ms=0, metrics=metrics).start()
    b.attach(bad)
    b.attach(good)
    bad.queue.put(Frame(yuv_frame(16, 16), 16, 16, 0, 0.0))
    good.queue.put(Frame(yuv_frame(16, 16), 16, 16, 0, 0.0))
    deadline = time.monotonic() + 20
    while not good.got and time.monotonic() < deadline:
        time.sleep(0.02)
    assert b.alive
    b.stop()
    assert len(good.got) == 1 and not bad.got
    assert metrics.registry.get_sample_value("ultrares_errors_total", {"camera": "bad", "stage": "inference"}) == 1


def test_the_cpu_plan_is_one_single_threaded_batch_per_core_unless_threads_are_set(monkeypatch):
    import os

    from ultrares_stream.batcher import cpu_inference_plan

    assert cpu_inference_plan(3) == (1, 3)  # configured: one batch at a time on that many threads
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert cpu_inference_plan() == (4, 1)
    assert Batcher("cpu").workers == 4 and Batcher("cpu").threads == 1
    assert (Batcher("cpu", threads=2).workers, Batcher("cpu", threads=2).threads) == (1, 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert cpu_inference_plan() == (1, 1)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_worker_runs_the_network_with_the_configured_threads(upscaler, threads):
    seen = []

    class Counting(Client):
        def route(self):
            seen.append(torch.get_num_threads())  # called on the worker thread, before the network
            return super().route()

    cam = Counting("a", (16, 16), upscaler)
    b = Batcher("cpu", max_batch=1, max_wait_ms=0, threads=threads).start()
    try:
        b.attach(cam)
        cam.queue.put(Frame(yuv_frame(16, 16), 16, 16, 0, 0.0))
        deadline = time.monotonic() + 20
        while not cam.got and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        b.stop()
    assert seen == [threads] and len(cam.got) == 1


def test_frame_parallel_workers_return_every_frame_in_order_and_ran_side_by_side(upscaler):
    class Slow(Client):  # records how many batches ran at once
        running = peak = 0
        lock = threading.Lock()

    seen_threads = []
    inner = upscaler.upscale

    def upscale(x, size=None, cancel=None):
        with Slow.lock:
            Slow.running += 1
            Slow.peak = max(Slow.peak, Slow.running)
        seen_threads.append(torch.get_num_threads())
        time.sleep(0.05)  # long enough for the next batch to start beside this one
        try:
            return inner(x, size=size)
        finally:
            with Slow.lock:
                Slow.running -= 1

    up = upscaler.at(upscaler.alpha)
    up.upscale = upscale
    cams = [Slow("a", (16, 16), up), Slow("b", (32, 24), up)]
    b = Batcher("cpu", max_batch=1, max_wait_ms=0, workers=3)
    for c in cams:
        b.attach(c)
    b.start()
    try:
        for i in range(12):
            for c in cams:
                w, h = c.size
                c.queue.put(Frame(yuv_frame(w, h, seed=i), w, h, i, i / 25))
        deadline = time.monotonic() + 30
        while sum(len(c.got) for c in cams) < 24 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        b.stop()
    for c in cams:
        w, h = c.size
        assert [e.source.index for e in c.got] == list(range(12)), "every frame, in decode order"
        for i, e in enumerate(c.got):
            assert np.array_equal(e.data, enhance_frames(upscaler, [yuv_frame(w, h, seed=i)], w, h)[0])
    assert Slow.peak >= 2, "batches ran one after another"
    assert set(seen_threads) == {1}, "each batch on one torch thread"


def test_inference_time_is_counted_once_per_batch_after_it_finished(upscaler):
    """busy_s and the inference histogram come from the batch's own clock (CUDA events on a GPU),
    read by the finisher; on the CPU their sum is the batches' wall time."""
    from ultrares_stream.batcher import DeviceClock

    clock = DeviceClock(torch.device("cpu"))
    start = clock.mark()
    time.sleep(0.05)
    assert 0.04 < clock.elapsed_s(start, clock.mark()) < 1.0
    metrics = Metrics()
    b = Batcher("cpu", max_batch=2, max_wait_ms=20, metrics=metrics)
    cam = Client("a", (32, 24), upscaler)
    b.attach(cam)
    for i in range(6):
        cam.queue.put(Frame(yuv_frame(32, 24, i), 32, 24, i, i / 25))
    b.start()
    deadline = time.monotonic() + 60
    while len(cam.got) < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    b.stop()
    count = metrics.registry.get_sample_value("ultrares_batch_inference_seconds_count", {"device": "cpu"})
    total = metrics.registry.get_sample_value("ultrares_batch_inference_seconds_sum", {"device": "cpu"})
    assert count == b.batches and b.frames == 6
    assert total == pytest.approx(b.busy_s) and total > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_download_on_the_side_stream_matches_the_cpu():
    from ultrares_stream.stages import to_packed_yuv

    rgb = torch.rand(3, 3, 64, 96)
    ref = to_packed_yuv(rgb)
    on_gpu = rgb.cuda()
    event = torch.cuda.Event()
    event.record()
    got = to_packed_yuv(on_gpu, after=event)
    assert got.shape == ref.shape and np.abs(got.astype(int) - ref.astype(int)).max() <= 1
