"""Backend choice (decision table with injected availability probes), graceful TensorRT absence,
the compile and eager backends on the CPU, the uint8 frame pipe, and the benchmark matrix."""
from __future__ import annotations

import sys

import pytest
import torch

from ultrares_stream.engine import EagerEngine
from ultrares_stream.engine.compile import CompiledEngine, batch_bucket
from ultrares_stream.engine.select import Probes, choose_backend, make_engine
from ultrares_stream.errors import UserError
from ultrares_stream.models.archs import SRVGGNetCompact

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
YES, NO = (lambda *a: (True, "ok")), (lambda *a: (False, "missing"))


def tiny_net(seed: int = 0) -> SRVGGNetCompact:
    torch.manual_seed(seed)
    return SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2, act_type="prelu").eval()


@pytest.mark.parametrize("device, trt, comp, expected", [
    (CUDA, YES, YES, "tensorrt"),
    (CUDA, NO, YES, "compile"),
    (CUDA, NO, NO, "eager"),
    (CUDA, YES, NO, "tensorrt"),
    (CPU, YES, YES, "eager"),  # CPU: eager is as fast and compiles nothing (measured; see select.py)
    (CPU, NO, NO, "eager"),
])
def test_auto_decision_table(device, trt, comp, expected):
    backend, why = choose_backend("auto", device, Probes(tensorrt=trt, compile=comp))
    assert backend == expected
    assert why  # the log line says why


def test_auto_reason_names_what_was_skipped():
    backend, why = choose_backend("auto", CUDA, Probes(tensorrt=lambda: (False, "no libnvinfer"), compile=YES))
    assert backend == "compile" and "no libnvinfer" in why


@pytest.mark.parametrize("requested, device, trt, comp, message", [
    ("tensorrt", CPU, YES, YES, "CUDA only"),
    ("tensorrt", CUDA, lambda: (False, "libnvinfer.so.10 not found"), YES, "libnvinfer.so.10 not found"),
    ("compile", CUDA, YES, lambda d: (False, "Triton is not installed"), "Triton"),
    ("warp-drive", CPU, YES, YES, "engine must be one of"),
])
def test_named_backend_unavailable_is_a_user_error(requested, device, trt, comp, message):
    with pytest.raises(UserError, match=message) as err:
        choose_backend(requested, device, Probes(tensorrt=trt, compile=comp))
    assert "\n" not in str(err.value)


def test_named_backend_available_is_used():
    assert choose_backend("compile", CUDA, Probes(tensorrt=NO, compile=YES))[0] == "compile"
    assert choose_backend("eager", CUDA, Probes(tensorrt=YES, compile=YES))[0] == "eager"


class _RaisingFinder:
    """Makes ``import torch_tensorrt`` raise a plain Exception, as it does when TensorRT's libs are missing."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch_tensorrt" or name.startswith("torch_tensorrt."):
            raise Exception("Unable to load libnvinfer.so.10: cannot open shared object file")
        return None


@pytest.fixture
def broken_tensorrt(monkeypatch):
    from ultrares_stream.engine import tensorrt

    for mod in [m for m in sys.modules if m == "torch_tensorrt" or m.startswith("torch_tensorrt.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(sys, "meta_path", [_RaisingFinder(), *sys.meta_path])
    tensorrt.tensorrt_available.cache_clear()
    yield
    tensorrt.tensorrt_available.cache_clear()


def test_tensorrt_import_raising_exception_is_skipped_gracefully(broken_tensorrt):
    from ultrares_stream.engine.tensorrt import TensorRTEngine, tensorrt_available
    from ultrares_stream.engine.cache import ShapeRange

    ok, why = tensorrt_available()
    assert not ok and "libnvinfer" in why
    # auto on a CUDA machine without TensorRT moves on to the next backend
    probes = Probes(compile=YES)
    assert choose_backend("auto", CUDA, probes)[0] == "compile"
    with pytest.raises(UserError, match="tensorrt.*libnvinfer"):
        choose_backend("tensorrt", CUDA, Probes())
    with pytest.raises(UserError, match="not available"):
        TensorRTEngine(tiny_net(), CUDA, "fp16", shapes=ShapeRange())
    # and the product still runs: auto on this machine builds a working engine
    engine = make_engine("auto", tiny_net(), CPU, "fp32", probes=Probes())
    assert engine.name == "eager"


def test_make_engine_auto_on_cpu_runs_the_net():
    net = tiny_net()
    x = torch.rand(2, 3, 12, 16)
    with torch.no_grad():
        want = net(x)
    engine = make_engine("auto", tiny_net(), CPU, "fp32")
    assert isinstance(engine, EagerEngine)
    torch.testing.assert_close(engine(x), want)


@pytest.mark.parametrize("n, max_batch, expected", [(1, 8, 1), (2, 8, 2), (3, 8, 4), (5, 8, 8), (8, 8, 8),
                                                    (11, 8, 8), (3, 6, 4), (5, 6, 6), (1, 1, 1)])
def test_batch_bucket(n, max_batch, expected):
    assert batch_bucket(n, max_batch) == expected


def test_compile_engine_on_cpu_matches_eager_and_swaps_weights_in_place():
    """A real torch.compile (Inductor, C++ kernels) of a tiny net: same output as eager, alpha
    changes land without recompiling, odd batch sizes are padded to buckets and cropped back."""
    ok, why = Probes().check("compile", CPU)
    if not ok:
        pytest.skip(f"torch.compile unavailable here: {why}")
    net_a, net_b = tiny_net(0), tiny_net(1)
    engine = make_engine("compile", tiny_net(0), CPU, "fp32", max_batch=4)
    assert isinstance(engine, CompiledEngine)
    x = torch.rand(3, 3, 10, 14)
    with torch.no_grad():
        want_a, want_b = net_a(x), net_b(x)
    torch.testing.assert_close(engine(x), want_a, rtol=1e-4, atol=1e-4)
    engine.load_weights(net_b.state_dict())
    torch.testing.assert_close(engine(x), want_b, rtol=1e-4, atol=1e-4)
    big = torch.rand(5, 3, 10, 14)  # more than max_batch: two chunks (4 + 1)
    with torch.no_grad():
        torch.testing.assert_close(engine(big), net_b(big), rtol=1e-4, atol=1e-4)


def test_bench_matrix_on_cpu_measures_and_reports_unavailable_backends():
    from ultrares_stream.engine.matrix import BenchCase, format_table, run_matrix

    case = BenchCase("tiny x2", tiny_net, 32, 24, scale=2)
    rows = run_matrix(["eager", "tensorrt"], batches=(1, 2), device="cpu", precision="fp32",
                      cases=(case,), warmup=1, iters=2)
    eager = [r for r in rows if r["engine"] == "eager"]
    trt = [r for r in rows if r["engine"] == "tensorrt"]
    assert [r["batch"] for r in eager] == [1, 2]
    assert all(r["fps"] > 0 and r["latency_ms_p95"] >= r["latency_ms_p50"] > 0 for r in eager)
    assert eager[0]["output"] == "64x48" and eager[0]["device"] == "cpu"
    assert len(trt) == 2 and all("not available" in r["error"] for r in trt)
    table = format_table(rows)
    assert "| tiny x2 | 32x24 -> 64x48 | 1 | eager |" in table and "n/a" in table


def test_service_engines_are_built_for_the_configured_batch_and_frame_sizes(monkeypatch, tiny_model):
    """inference.max_batch and inference.engine_shape reach make_engine through the upscaler pool."""
    from ultrares_stream import upscaler as upscaler_module
    from ultrares_stream.config import parse_config
    from ultrares_stream.engine.cache import ShapeRange
    from ultrares_stream.stream import UpscalerPool

    seen = {}
    real = upscaler_module.make_engine

    def spy(name, net, device, precision, **kw):
        seen.update(kw)
        return real(name, net, device, precision, **kw)

    monkeypatch.setattr(upscaler_module, "make_engine", spy)
    cfg = parse_config({"inference": {"device": "cpu", "engine": "eager", "max_batch": 6,
                                      "engine_shape": "320x240:640x480:1280x720"},
                        "cameras": [{"name": "a", "input": "rtsp://h/x", "output": "/tmp/a.mkv"}]})
    UpscalerPool.from_config(cfg.inference, torch.device("cpu")).get(tiny_model, 0.0)
    assert seen["max_batch"] == 6
    assert seen["shapes"] == ShapeRange(batch=(1, 4, 6), width=(320, 640, 1280), height=(240, 480, 720))


def test_engine_shape_errors_name_the_field(tmp_path, capsys):
    import yaml

    from ultrares_stream.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"inference": {"engine_shape": "960x540:480x270:960x540"},
                                   "cameras": [{"name": "a", "input": "rtsp://h/x", "output": "/tmp/a.mkv"}]}))
    for argv in (["serve", "--config", str(bad), "--check"], ["engine", "build", "--config", str(bad)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "inference.engine_shape" in err and "MIN <= OPT <= MAX" in err and "Traceback" not in err
