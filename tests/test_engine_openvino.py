"""The OpenVINO engine: real conversions of small real architectures (random weights), output
agreement with eager fp32, dynamic shapes, alpha changes that never hold up inference, and the
measured CPU choice of ``auto`` with an injected timing probe (no real timing is asserted)."""
from __future__ import annotations

import math
import threading
import time

import pytest
import torch

from ultrares_stream.engine import EagerEngine
from ultrares_stream.engine.base import ThreadPlan
from ultrares_stream.engine.cache import EngineCache
from ultrares_stream.engine.openvino import openvino_available
from ultrares_stream.engine.select import CHOICE_FILE, Probes, choose_cpu_engine, make_engine
from ultrares_stream.errors import UserError
from ultrares_stream.models.archs import RLFN, SPAN, RRDBNet, SRVGGNetCompact

CPU = torch.device("cpu")
OK, WHY = openvino_available()
needs_openvino = pytest.mark.skipif(not OK, reason=f"openvino not usable here: {WHY}")
PLAN = ThreadPlan(2, 1)

#: small real architectures: every shipped kind, each with what makes it different
ARCHS = {
    "compact-prelu": lambda: SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4, act_type="prelu"),
    "compact-lrelu-x2": lambda: SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2, act_type="lrelu"),
    "rlfn": lambda: RLFN(num_feat=12, num_block=2),  # ESA pooling, x255 scaling, pads < 17 px
    "span": lambda: SPAN(num_feat=8),  # mean shift, sigmoid attention, concatenation
    "rrdb-x4": lambda: RRDBNet(num_feat=8, num_block=1, num_grow_ch=4),  # x0.2 residuals, nearest upsampling
    "rrdb-x2": lambda: RRDBNet(scale=2, num_feat=8, num_block=1, num_grow_ch=4),  # pixel unshuffle
}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def build(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ARCHS[kind]().eval()


@pytest.fixture
def cache(tmp_path) -> EngineCache:
    return EngineCache(tmp_path / "cache")


@needs_openvino
@pytest.mark.parametrize("kind", sorted(ARCHS))
def test_openvino_matches_eager_fp32_on_two_frame_sizes(kind, cache):
    net = build(kind)
    engine = make_engine("openvino", build(kind), CPU, "fp32", cache=cache)
    engine.load_weights(net.state_dict())
    assert engine.name == "openvino" and engine.concurrent_passes and engine.slow_weights
    for shape in [(1, 3, 24, 32), (2, 3, 16, 12)]:  # dynamic batch, height and width: one compiled model
        x = torch.rand(shape)
        with torch.no_grad():
            want = net(x)
        got = engine(x)
        assert got.shape == want.shape
        assert psnr(got.clamp(0, 1), want.clamp(0, 1)) >= 50, kind
    assert engine.compiles == 1


@needs_openvino
def test_graph_is_cached_per_architecture_and_reloaded(cache):
    from ultrares_stream.engine import openvino

    openvino._graphs.clear()  # converted earlier in this process: convert again, into this cache
    net = build("rlfn")
    make_engine("openvino", net, CPU, "fp32", cache=cache)
    entries = [e for e in cache.entries() if e.key.backend == "openvino-graph"]
    assert len(entries) == 1 and entries[0].state == "ok"
    openvino._graphs.clear()  # a new process: the graph comes from the cache, not a conversion
    other = build("rlfn", seed=5)  # other weights, same architecture: the same entry
    engine = make_engine("openvino", other, CPU, "fp32", cache=cache)
    engine.load_weights(other.state_dict())
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        assert psnr(engine(x), other(x)) >= 50
    assert len([e for e in cache.entries() if e.key.backend == "openvino-graph"]) == 1


@needs_openvino
def test_weight_change_is_prepared_then_committed_and_recent_sets_stay_compiled(cache):
    a, b = build("compact-prelu", 1), build("compact-prelu", 2)
    engine = make_engine("openvino", build("compact-prelu"), CPU, "fp32", cache=cache)
    engine.load_weights(a.state_dict())
    x = torch.rand(1, 3, 10, 14)
    with torch.no_grad():
        want_a, want_b = a(x), b(x)
    commit = engine.prepare_weights(b.state_dict())
    assert psnr(engine(x), want_a) >= 50  # prepared, not live yet
    commit()
    assert psnr(engine(x), want_b) >= 50
    compiles = engine.compiles
    engine.load_weights(a.state_dict())  # back to a recent set: a swap, no compile
    assert psnr(engine(x), want_a) >= 50 and engine.compiles == compiles


@needs_openvino
def test_a_weight_change_never_holds_up_inference(cache):
    """While the new weights compile (held open here until inference has run), passes on the live
    weights complete, from another thread: a frame never waits for a compile."""
    a, b = build("compact-prelu", 1), build("compact-prelu", 2)
    engine = make_engine("openvino", build("compact-prelu"), CPU, "fp32", cache=cache)
    engine.load_weights(a.state_dict())
    compiling, release = threading.Event(), threading.Event()
    real_compile = engine._compile

    def held_compile(model):
        compiling.set()
        out = real_compile(model)
        assert release.wait(30), "inference did not finish while the compile was held"
        return out

    engine._compile = held_compile
    commits: list = []
    worker = threading.Thread(target=lambda: commits.append(engine.prepare_weights(b.state_dict())))
    worker.start()
    assert compiling.wait(30)
    x = torch.rand(1, 3, 12, 12)
    done = []
    infer = threading.Thread(target=lambda: done.extend(engine(x) for _ in range(3)))
    t0 = time.monotonic()
    infer.start()
    infer.join(20)
    assert not infer.is_alive() and len(done) == 3, "inference waited for the compile"
    assert worker.is_alive()  # the compile was still held all that time
    release.set()
    worker.join(30)
    with torch.no_grad():
        assert psnr(done[0], a(x)) >= 50  # the live weights, not half-swapped ones
        commits[0]()
        assert psnr(engine(x), b(x)) >= 50
    assert time.monotonic() - t0 < 60


@needs_openvino
def test_upscaler_alpha_change_on_openvino_keeps_frames_on_the_old_weights_until_ready(tmp_path, monkeypatch):
    from ultrares_stream.models.registry import ResolvedModel
    from ultrares_stream.upscaler import Upscaler

    monkeypatch.setenv("ULTRARES_ENGINE_CACHE", str(tmp_path / "cache"))
    psnr_net, gan_net = build("compact-prelu", 1), build("compact-prelu", 2)
    pair = ResolvedModel("pair", psnr_net.state_dict(), gan_net.state_dict())
    up = Upscaler(pair, alpha=0.0, device="cpu", precision="fp32", engine="openvino", tile=0)
    ref = Upscaler(pair, alpha=0.0, device="cpu", precision="fp32", engine="eager", tile=0)
    x = torch.rand(1, 3, 12, 16)
    view, ref_view = up.at(1.0), ref.at(1.0)
    deadline = time.monotonic() + 30
    while not view.weights_ready():  # prepared on the model's worker thread
        assert psnr(up.upscale(x), ref.upscale(x)) >= 50  # alpha 0 keeps running meanwhile
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert psnr(view.upscale(x), ref_view.upscale(x)) >= 50
    assert psnr(up.upscale(x), ref.upscale(x)) >= 50  # and back: a kept commit


def test_named_openvino_on_cuda_or_when_absent_is_a_user_error():
    with pytest.raises(UserError, match="CPU"):
        make_engine("openvino", build("compact-prelu"), torch.device("cuda"), "fp16",
                    probes=Probes(openvino=lambda: (True, "ok")))
    with pytest.raises(UserError, match="pip install openvino"):
        make_engine("openvino", build("compact-prelu"), CPU, "fp32",
                    probes=Probes(openvino=lambda: (False, "No module named 'openvino'")))


def _timing(ms: dict[str, float]):
    calls = []

    def timing(engines, plan, size):
        calls.append((sorted(engines), plan, size))
        return {name: ms[name] / 1000 for name in engines}

    return timing, calls


def test_auto_on_cpu_picks_the_fastest_measured_and_remembers_it(cache):
    timing, calls = _timing({"openvino": 30.0, "eager-channels-last": 10.0, "eager-nchw": 20.0})
    probes = Probes(openvino=lambda: (False, "not installed"), timing=timing, min_params=0)
    engine, why = choose_cpu_engine(build("compact-prelu"), "fp32", probes=probes, cache=cache, plan=PLAN)
    assert isinstance(engine, EagerEngine) and engine.channels_last
    assert "eager-channels-last, fastest measured" in why and "10.0 ms" in why and "not installed" in why
    assert calls[0][0] == ["eager-channels-last", "eager-nchw"] and calls[0][1] == PLAN
    assert (cache.root / CHOICE_FILE).is_file()
    engine, why = choose_cpu_engine(build("compact-prelu"), "fp32", probes=probes, cache=cache, plan=PLAN)
    assert len(calls) == 1 and "as measured earlier" in why and engine.channels_last  # no second measurement
    choose_cpu_engine(build("compact-prelu"), "fp32", probes=probes, cache=cache, plan=ThreadPlan(1, 2))
    assert len(calls) == 2  # another thread plan is measured again


def test_auto_on_cpu_prefers_nchw_where_it_measures_faster(cache):
    timing, _ = _timing({"eager-channels-last": 25.0, "eager-nchw": 20.0})
    probes = Probes(openvino=lambda: (False, "not installed"), timing=timing, min_params=0)
    engine, _ = choose_cpu_engine(build("compact-prelu"), "fp32", probes=probes, cache=cache, plan=PLAN)
    assert isinstance(engine, EagerEngine) and not engine.channels_last


@needs_openvino
def test_auto_on_cpu_picks_openvino_where_it_measures_faster(cache):
    timing, calls = _timing({"openvino": 5.0, "eager-channels-last": 10.0, "eager-nchw": 20.0})
    probes = Probes(timing=timing, min_params=0)
    net = build("compact-prelu")
    engine = make_engine("auto", build("compact-prelu"), CPU, "fp32", cache=cache, probes=probes)
    assert engine.name == "openvino" and calls[0][0] == ["eager-channels-last", "eager-nchw", "openvino"]
    engine.load_weights(net.state_dict())
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert psnr(engine(x), net(x)) >= 50


def test_auto_on_cpu_does_not_measure_tiny_networks(cache):
    timing, calls = _timing({})
    engine = make_engine("auto", build("compact-prelu"), CPU, "fp32", cache=cache, probes=Probes(timing=timing))
    assert isinstance(engine, EagerEngine) and not calls


def test_real_timing_probe_runs_each_engine_under_the_plan():
    """The default timing: interleaved rounds, ``plan.streams`` passes at once; only that it
    returns a positive time per engine is asserted (CI machines may be loaded)."""
    from ultrares_stream.engine.timing import time_cpu_engines

    engines = {"a": EagerEngine(build("compact-prelu"), CPU, "fp32"),
               "b": EagerEngine(build("compact-prelu"), CPU, "fp32", channels_last=True)}
    seconds = time_cpu_engines(engines, PLAN, (16, 16), rounds=2, passes=1)
    assert set(seconds) == {"a", "b"} and all(s > 0 for s in seconds.values())


def test_cpu_matrix_rows_side_by_side():
    from ultrares_stream.engine.matrix import BenchCase, run_cpu_matrix

    case = BenchCase("tiny x4", lambda: build("compact-prelu"), 16, 12)
    engines = ["eager-nchw", "openvino"] if OK else ["eager-nchw", "eager-channels-last"]
    rows = run_cpu_matrix(engines + ["tensorrt"], precision="fp32", cases=(case,), rounds=2, passes=1)
    ok = [r for r in rows if "error" not in r]
    assert sorted(r["engine"] for r in ok) == sorted(engines)
    assert all(r["fps"] > 0 and len(r["fps_rounds"]) == 2 and r["output"] == "64x48" for r in ok)
    assert [r for r in rows if r["engine"] == "tensorrt" and "CUDA only" in r["error"]]
