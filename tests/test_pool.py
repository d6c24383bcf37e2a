"""One upscaler pool per process: cameras, the web page and the API share one
engine per model; an alpha change is a view of the same engine whose weights are swapped in place
between two forward passes: no engine built, no checkpoint read, no frame dropped."""
from __future__ import annotations

import time

import av
import numpy as np
import pytest
import torch

from conftest import wait_for
from ultrares_stream.batcher import Batcher
from ultrares_stream.stages import enhance_frames
from ultrares_stream.config import CameraConfig
from ultrares_stream.engine import select
from ultrares_stream.metrics import Metrics
from ultrares_stream.models.archs import SRVGGNetCompact
from ultrares_stream.models.checkpoint import save_checkpoint
from ultrares_stream.stream import Stream
from ultrares_stream.upscaler import FrameUpscaler, Upscaler, UpscalerPool
from ultrares_stream.web.upscaling import UpscalerCache


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> str:
    """A PSNR+GAN pair of two different tiny compact x2 nets."""
    folder = tmp_path_factory.mktemp("pair")
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        net = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.2)
        paths.append(folder / f"net{seed}.safetensors")
        save_checkpoint(net.state_dict(), paths[-1])
    return "+".join(str(p) for p in paths)


def still_clip(path, frames: int, w: int = 64, h: int = 48):
    """A lossless H.264 clip of one still noise picture (every decoded frame is the same)."""
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=25, options={"qp": "0", "preset": "ultrafast"})
        v.width, v.height, v.pix_fmt = w, h, "yuv444p"
        for _ in range(frames):
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
    return path


def cpu_pool(**kw) -> UpscalerPool:
    return UpscalerPool(device="cpu", precision="fp32", engine="eager", tile=0, **kw)


def params(up: Upscaler) -> list[torch.Tensor]:
    return list(up.engine.net.parameters())


def test_cameras_on_one_model_share_one_engine_and_alphas_are_views_of_it(pair):
    pool = cpu_pool()
    made = select.engines_made()
    a, b = pool.get(pair, 0.3), pool.get(pair, 0.3)
    c = pool.get(pair, 0.8)
    assert a is b, "cameras on the same model and alpha get one upscaler (they batch together)"
    assert c is not a and c.shares_engine_with(a) and c.engine is a.engine
    assert pool.built == 1 and select.engines_made() == made + 1
    assert all(isinstance(up, FrameUpscaler) for up in (a, c)), "the pool's views are FrameUpscalers"
    assert (a.alpha, c.alpha) == (0.3, 0.8)
    e, e_again = pool.get(pair, 0.3, ensemble=2), pool.get(pair, 0.3, 2)
    assert e is e_again and e is not a and e.shares_engine_with(a) and (e.alpha, e.ensemble, a.ensemble) == (0.3, 2, 1)
    for v in (a, b, c, e, e_again):
        pool.release(v)
    assert pool.models() == [pair], "an idle model stays loaded for the next user (keep_idle)"


def test_no_model_and_the_default_model_by_name_share_one_engine():
    """A camera without a model and a web upload naming the device's default pair: one load."""
    from ultrares_stream.models.registry import default_model

    pool = cpu_pool()
    camera, web = pool.get(None, 0.0), pool.get(default_model("cpu"), 0.25)
    assert pool.built == 1 and web.shares_engine_with(camera)
    assert pool.models() == [default_model("cpu")]


def test_an_alpha_swap_copies_into_the_same_parameter_storage_and_matches_a_fresh_upscaler(pair):
    pool = cpu_pool()
    low, high = pool.get(pair, 0.0), pool.get(pair, 1.0)
    storage = [p.data_ptr() for p in params(low)]
    x = torch.rand(1, 3, 24, 32)
    with torch.inference_mode():
        out_low, out_high, again = low.upscale(x), high.upscale(x), low.upscale(x)
        fresh = Upscaler(pair, alpha=1.0, device="cpu", precision="fp32", engine="eager", tile=0).upscale(x)
    assert [p.data_ptr() for p in params(low)] == storage, "weights copied in place (compiled graphs stay valid)"
    assert low.weight_swaps == 2
    assert not torch.allclose(out_low, out_high, atol=1e-3)
    torch.testing.assert_close(out_high, fresh)
    torch.testing.assert_close(again, out_low)


def test_the_web_page_uses_the_service_pool(pair):
    pool = cpu_pool()
    camera = pool.get(pair, 0.0)
    web = UpscalerCache(device="cpu", pool=pool)
    made = select.engines_made()
    view = web.view(pair, 0.6)
    assert view.shares_engine_with(camera) and select.engines_made() == made and pool.built == 1
    with torch.inference_mode():
        view.upscale(torch.rand(1, 3, 16, 16))
    web.release(view)
    assert camera.alpha == 0.0, "a web request never changes a camera's alpha"


def test_idle_models_beyond_keep_idle_are_unloaded(pair, tiny_model):
    pool = cpu_pool(keep_idle=0)
    v = pool.get(pair, 0.5)
    pool.release(pool.get(tiny_model, 0.5))
    assert pool.models() == [pair]
    pool.release(v)
    assert pool.models() == []


def test_alpha_change_on_a_running_camera_builds_nothing_drops_nothing_and_changes_the_output(pair, tmp_path):
    src = still_clip(tmp_path / "still.mkv", frames=400)
    pool, metrics = cpu_pool(), Metrics()
    batcher = Batcher("cpu", max_batch=1, max_wait_ms=5, metrics=metrics).start()
    camera = CameraConfig(name="cam", input=str(src), output=str(tmp_path / "out.mkv"), model=pair, alpha=0.0)
    stream = Stream(camera, batcher=batcher, pool=pool, metrics=metrics).start()
    try:
        assert stream.first_output.wait(30)
        before = stream._latest.data.copy()
        made, built, swaps = select.engines_made(), pool.built, stream.upscaler.weight_swaps
        t0 = time.perf_counter()
        stream.set_alpha(1.0)
        call_s = time.perf_counter() - t0
        assert wait_for(lambda: not np.array_equal(stream._latest.data, before), 20, step=0.001), "output unchanged"
        changed_s = time.perf_counter() - t0
        assert select.engines_made() == made and pool.built == built, "an alpha change built an engine"
        assert stream.upscaler.weight_swaps == swaps + 1 and stream.upscaler.alpha == 1.0
        assert stream.wait_finished(60)
    finally:
        stream.stop(10)
        batcher.stop(5)
    assert stream.frames_out == stream.frames_in == 400 and stream.source_drops() == 0 and stream.failed == 0
    # the new frames are what the model gives at alpha 1
    with av.open(str(src)) as c:
        frame = next(c.decode(video=0)).reformat(format="yuv420p").to_ndarray()
    fresh = Upscaler(pair, alpha=1.0, device="cpu", precision="fp32", engine="eager", tile=0)
    expect = enhance_frames(fresh, [frame], 64, 48)[0]
    assert np.array_equal(stream._latest.data, expect)
    print(f"\nalpha change: set_alpha {call_s * 1e3:.2f} ms in the caller's thread, weight swap "
          f"{stream.upscaler.last_swap_s * 1e3:.2f} ms in the batcher, first new frame published "
          f"{changed_s * 1e3:.1f} ms after the call")


class SlowRefit:
    """The live engine of an upscaler, with weight changes that take ``delay`` seconds to prepare
    as a TensorRT refit does (``slow_weights``); the preparation never touches the live weights."""

    slow_weights = True

    def __init__(self, engine, delay: float):
        self.engine, self.delay, self.prepared = engine, delay, 0

    def __getattr__(self, attr):
        return getattr(self.engine, attr)

    def __call__(self, x):
        return self.engine(x)

    def load_weights(self, state_dict):
        self.prepare_weights(state_dict)()

    def prepare_weights(self, state_dict):
        time.sleep(self.delay)
        self.prepared += 1
        return self.engine.prepare_weights(state_dict)


def test_a_slow_weight_change_is_prepared_off_the_frame_path_and_frames_never_wait(pair, tmp_path):
    delay = 1.5
    src = still_clip(tmp_path / "still.mkv", frames=3000)
    pool, metrics = cpu_pool(), Metrics()
    base = pool.upscaler(pair, 0.0)
    base._weights.engine = slow = SlowRefit(base.engine, delay)
    batcher = Batcher("cpu", max_batch=1, max_wait_ms=5, metrics=metrics).start()
    camera = CameraConfig(name="cam", input=str(src), output=str(tmp_path / "out.mkv"), model=pair, alpha=0.0)
    stream = Stream(camera, batcher=batcher, pool=pool, metrics=metrics).start()
    with av.open(str(src)) as c:
        frame = next(c.decode(video=0)).reformat(format="yuv420p").to_ndarray()
    expect = {a: enhance_frames(Upscaler(pair, alpha=a, device="cpu", precision="fp32", engine="eager", tile=0),
                               [frame], 64, 48)[0] for a in (0.0, 0.5, 1.0)}
    try:
        assert stream.first_output.wait(30)
        t0 = time.perf_counter()
        stream.set_alpha(1.0)
        call_s = time.perf_counter() - t0
        assert call_s < delay / 3, f"set_alpha waited for the preparation ({call_s:.2f} s)"
        assert stream.status()["pending"] == {"model": str(base.model_name), "alpha": 1.0}
        assert stream.alpha == 0.0, "the live alpha changes when the new weights are in"
        stream.set_model(pair)  # a model change meanwhile keeps the alpha asked for, not the live one
        assert stream.status()["pending"] == {"model": str(base.model_name), "alpha": 1.0}
        # meanwhile frames keep flowing at the old alpha
        last, last_at, longest, old_alpha_frames = stream.frames_out, time.perf_counter(), 0.0, 0
        while stream.status()["pending"] is not None:
            assert time.perf_counter() - t0 < 30, "the new weights never arrived"
            now = time.perf_counter()
            if stream.frames_out != last:
                longest, last, last_at = max(longest, now - last_at), stream.frames_out, now
                old_alpha_frames += np.array_equal(stream._latest.data, expect[0.0])
            time.sleep(0.005)
        switched_s = time.perf_counter() - t0
        assert wait_for(lambda: np.array_equal(stream._latest.data, expect[1.0]), 10, step=0.001)
        assert stream.alpha == 1.0 and stream.upscaler.alpha == 1.0
        assert switched_s >= delay, "switched before the weights were prepared"
        assert old_alpha_frames > 0 and longest < delay / 2, (
            f"frames stalled for {longest:.2f} s while the weights were prepared")
        # a web upload at another alpha waits for its own weights (prepared off the camera's path)
        x = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(3))
        web = pool.get(pair, 0.5)
        out_web = web.upscale(x)
        pool.release(web)
        fresh_web = Upscaler(pair, alpha=0.5, device="cpu", precision="fp32", engine="eager", tile=0)
        assert torch.equal(out_web, fresh_web.upscale(x))
        assert stream.wait_finished(120)
    finally:
        stream.stop(10)
        batcher.stop(5)
    assert stream.frames_out == stream.frames_in == 3000 and stream.source_drops() == 0 and stream.failed == 0
    assert slow.prepared == 2, "alpha 1 for the camera and alpha 0.5 for the web page, each prepared once"
    print(f"\nslow weight change ({delay} s to prepare): set_alpha {call_s * 1e3:.1f} ms, switched after "
          f"{switched_s:.2f} s, longest gap between published frames meanwhile {longest * 1e3:.0f} ms")


def test_a_pass_interrupted_while_waiting_for_its_turn_does_not_shut_the_gate():
    """Passes are admitted in arrival order; one whose thread is interrupted (Ctrl-C) while it
    waits must give its turn up, or every later pass on that engine would wait forever."""
    import ctypes
    import threading

    from ultrares_stream.pass_gate import PassGate

    gate, swaps = PassGate(), []
    inside, release = threading.Event(), threading.Event()

    def first():  # holds a pass at alpha 0 open
        with gate.passing(0.0, swaps.append):
            inside.set()
            release.wait(10)

    interrupted = []

    def second():  # waits for alpha 1, behind the open pass
        try:
            with gate.passing(1.0, swaps.append):
                pass
        except KeyboardInterrupt:
            interrupted.append(True)

    t1 = threading.Thread(target=first, daemon=True)
    t1.start()
    assert inside.wait(5)
    t2 = threading.Thread(target=second, daemon=True)
    t2.start()
    assert wait_for(lambda: gate.tickets == 2, 5)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t2.ident), ctypes.py_object(KeyboardInterrupt))
    with gate._cond:
        gate._cond.notify_all()  # wake it so the interruption is raised in its wait
    t2.join(5)
    assert interrupted and not t2.is_alive()
    third_ran = threading.Event()

    def third():
        with gate.passing(0.5, swaps.append):
            third_ran.set()

    t3 = threading.Thread(target=third, daemon=True)
    t3.start()
    release.set()
    assert third_ran.wait(5), "the interrupted pass kept its turn: the gate is shut"
    t1.join(5), t3.join(5)
    assert swaps == [0.0, 0.5] and gate.active == 0


def test_a_self_ensemble_on_slow_weights_takes_one_turn_so_two_alphas_refit_once_per_call(pair):
    """On a refit engine, two cameras at two alphas with eight passes each: every orientation
    taking its own turn would refit up to eight times a call; one turn per call refits at most once."""
    import threading

    base = Upscaler(pair, alpha=0.0, device="cpu", precision="fp32", engine="eager", tile=0)
    base._weights.engine = SlowRefit(base.engine, delay=0.0)
    views = [base.at(0.0).with_ensemble(8), base.at(1.0).with_ensemble(8)]
    x = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(5))
    fresh = {a: Upscaler(pair, alpha=a, device="cpu", precision="fp32", engine="eager", tile=0, ensemble=8)
             for a in (0.0, 1.0)}
    with torch.inference_mode():
        want = {a: fresh[a].upscale(x) for a in fresh}
        tickets = base._gate.tickets
        views[0].upscale(x)
        assert base._gate.tickets - tickets == 1  # the eight orientations were admitted as one
        calls, errors, outs = 20, [], {0.0: [], 1.0: []}
        swaps = base.weight_swaps

        def camera(view):
            try:
                with torch.inference_mode():
                    for _ in range(calls):
                        outs[view.alpha].append(view.upscale(x))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=camera, args=(v,)) for v in views]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert base.weight_swaps - swaps <= 2 * calls, "an ensemble call refitted more than once"
    for a, got in outs.items():  # and every call computed its own alpha's ensemble
        assert len(got) == calls and all(torch.allclose(g, want[a], atol=1e-6) for g in got), a
