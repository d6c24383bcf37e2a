"""GPU engine tests (``-m gpu``; skipped without CUDA by conftest): every backend against eager
fp32, TensorRT refit against a rebuilt engine, the engine cache across starts, and the
overlapped uint8 frame pipe. TensorRT tests also skip when torch-tensorrt is not importable."""
from __future__ import annotations

import time

import pytest
import torch

from ultrares_stream.engine.cache import EngineCache, ShapeRange
from ultrares_stream.engine.select import make_engine
from ultrares_stream.engine.tensorrt import relative_error, tensorrt_available
from ultrares_stream.models.archs import RRDBNet, SRVGGNetCompact

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(900)]
CUDA = torch.device("cuda")
SHAPES = ShapeRange(batch=(1, 2, 4), height=(64, 96, 96), width=(64, 128, 128))


def compact(seed: int) -> SRVGGNetCompact:
    torch.manual_seed(seed)
    return SRVGGNetCompact(num_feat=64, num_conv=16, upscale=4).eval()


def rrdb(seed: int) -> RRDBNet:
    torch.manual_seed(seed)
    return RRDBNet(num_feat=32, num_block=4, num_grow_ch=16, scale=4).eval()


def need_tensorrt():
    ok, why = tensorrt_available()
    if not ok:
        pytest.skip(f"torch-tensorrt not usable here: {why}")


def eager_fp32(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.to(CUDA).float()(x)


@pytest.mark.parametrize("backend", ["eager", "compile", "tensorrt"])
@pytest.mark.parametrize("build", [compact, rrdb], ids=["compact", "rrdb"])
def test_backend_matches_eager_fp32(backend, build, tmp_path):
    if backend == "tensorrt":
        need_tensorrt()
    engine = make_engine(backend, build(0), CUDA, "fp16", shapes=SHAPES, cache=EngineCache(tmp_path), max_batch=4)
    engine.load_weights(build(0).state_dict())
    x = torch.rand(3, 3, 80, 112, device=CUDA)
    out = engine(x)
    assert out.dtype == torch.float32 and out.shape == (3, 3, 320, 448)
    assert relative_error(out, eager_fp32(build(0), x)) < 1e-2


def test_tensorrt_prepared_weights_leave_the_live_engine_alone_until_committed(tmp_path):
    need_tensorrt()
    from ultrares_stream.engine.tensorrt import TensorRTEngine

    a, b = compact(0).state_dict(), compact(1).state_dict()
    x = torch.rand(2, 3, 96, 128, device=CUDA)
    engine = TensorRTEngine(compact(0), CUDA, "fp16", shapes=SHAPES, cache=EngineCache(tmp_path))
    assert engine.slow_weights
    engine.load_weights(a)
    before = engine(x)
    commit_b = engine.prepare_weights(b)  # the refit: the live engine still runs a
    assert relative_error(engine(x), before) < 1e-3
    commit_b()
    assert relative_error(engine(x), eager_fp32(compact(1), x)) < 1e-2
    commit_a = engine.prepare_weights(a)
    commit_a()
    commit_b()  # commits can be made live again: an alpha going back is a swap, not a refit
    assert relative_error(engine(x), eager_fp32(compact(1), x)) < 1e-2


def test_tensorrt_refit_matches_rebuilt_engine_and_cache_is_reused(tmp_path):
    need_tensorrt()
    from ultrares_stream.engine.tensorrt import TensorRTEngine

    a, b = compact(0).state_dict(), compact(1).state_dict()
    x = torch.rand(2, 3, 96, 128, device=CUDA)
    live = TensorRTEngine(compact(0), CUDA, "fp16", shapes=SHAPES, cache=EngineCache(tmp_path / "one"))
    live.load_weights(a)
    assert live.last_weights_update == "built"
    before = live(x)
    live.load_weights(b)  # alpha change: refit, not rebuild
    assert live.last_weights_update == "refit"
    refitted = live(x)
    rebuilt = TensorRTEngine(compact(1), CUDA, "fp16", shapes=SHAPES, cache=EngineCache(tmp_path / "two"))
    rebuilt.load_weights(b)
    assert rebuilt.last_weights_update == "built"
    assert relative_error(refitted, rebuilt(x)) < 1e-2
    assert relative_error(refitted, eager_fp32(compact(1), x)) < 1e-2
    assert relative_error(before, refitted) > 1e-2  # the weights really changed
    # next start with the same weights: loaded from the cache, not built
    again = TensorRTEngine(compact(0), CUDA, "fp16", shapes=SHAPES, cache=EngineCache(tmp_path / "one"))
    again.load_weights(a)
    assert again.last_weights_update == "hit"
    assert relative_error(again(x), before) < 1e-3
    # other weights, same structure: the cached engine is refitted instead of built from scratch
    other = TensorRTEngine(compact(2), CUDA, "fp16", shapes=SHAPES, cache=EngineCache(tmp_path / "one"))
    other.load_weights(compact(2).state_dict())
    assert other.last_weights_update == "refit"
    assert relative_error(other(x), eager_fp32(compact(2), x)) < 1e-2


def test_compile_engine_swaps_weights_in_place_on_cuda():
    engine = make_engine("compile", compact(0), CUDA, "fp16", max_batch=4)
    x = torch.rand(2, 3, 64, 64, device=CUDA)
    engine.load_weights(compact(0).state_dict())
    first = engine(x)
    engine.load_weights(compact(1).state_dict())
    second = engine(x)
    assert relative_error(first, eager_fp32(compact(0), x)) < 1e-2
    assert relative_error(second, eager_fp32(compact(1), x)) < 1e-2


def test_tensorrt_frames_outside_the_shape_range_run_on_eager(tmp_path, caplog):
    need_tensorrt()
    engine = make_engine("tensorrt", compact(0), CUDA, "fp16", shapes=SHAPES, cache=EngineCache(tmp_path))
    engine.load_weights(compact(0).state_dict())
    x = torch.rand(1, 3, 120, 200, device=CUDA)  # wider than the engine's max
    assert relative_error(engine(x), eager_fp32(compact(0), x)) < 1e-2
    assert "outside the TensorRT engine's range" in caplog.text
    engine.load_weights(compact(1).state_dict())  # the fallback follows alpha changes too
    assert relative_error(engine(x), eager_fp32(compact(1), x)) < 1e-2


def test_an_alpha_change_on_tensorrt_is_refitted_in_the_background_then_swapped(tmp_path, monkeypatch):
    need_tensorrt()
    from ultrares_stream.models.checkpoint import save_checkpoint
    from ultrares_stream.upscaler import Upscaler, UpscalerPool

    monkeypatch.setenv("ULTRARES_ENGINE_CACHE", str(tmp_path / "cache"))
    paths = []
    for seed in (0, 1):
        paths.append(tmp_path / f"net{seed}.safetensors")
        save_checkpoint(compact(seed).state_dict(), paths[-1])
    pair = "+".join(map(str, paths))
    pool = UpscalerPool(device="cuda", precision="fp16", engine="tensorrt", tile=0, shapes=SHAPES, max_batch=4)
    live = pool.get(pair, 0.0)
    x = torch.rand(2, 3, 96, 128, device=CUDA)
    before = live.upscale(x)
    view = pool.get(pair, 1.0)
    assert view.engine is live.engine and pool.built == 1
    deadline = time.monotonic() + 600
    while not view.weights_ready():  # refitting on the slot's worker thread
        assert relative_error(live.upscale(x), before) < 1e-3, "the live engine changed during the refit"
        assert time.monotonic() < deadline
    fresh = Upscaler(pair, alpha=1.0, device="cuda", precision="fp32", engine="eager", tile=0)
    assert relative_error(view.upscale(x), fresh.upscale(x)) < 2e-2
    assert relative_error(live.upscale(x), before) < 1e-3, "back to alpha 0: a swap of the kept engine"
    assert live.engine.last_weights_update in ("refit", "built", "hit")
