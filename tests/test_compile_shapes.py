"""engine/compile.py across many frame sizes on the CPU with inductor: past the
engine's compiled-shape budget and past torch's recompile limit it runs eagerly, never raises."""
from __future__ import annotations

import logging
import shutil

import pytest
import torch
from torch import nn

from ultrares_stream.engine.compile import CompiledEngine, plan_shape, reserve_recompiles
from ultrares_stream.models.archs import SRVGGNetCompact

CPU = torch.device("cpu")
needs_compiler = pytest.mark.skipif(shutil.which("g++") is None, reason="inductor on the CPU needs g++")


def test_plan_shape_compiles_up_to_the_budget_then_runs_eagerly():
    compiled, eager = {(1, 8, 8), (1, 8, 16)}, {(1, 32, 32)}
    assert plan_shape((1, 8, 8), compiled, eager, 2) == "compiled"  # seen
    assert plan_shape((1, 16, 16), compiled, eager, 2) == "eager"  # budget spent
    assert plan_shape((1, 16, 16), compiled, eager, 3) == "compiled"
    assert plan_shape((1, 32, 32), compiled, eager, 8) == "eager"  # once eager, stays eager
    assert plan_shape((1, 16, 16), compiled, eager, 3, seen=2, compile_after=3) == "warming"
    assert plan_shape((1, 16, 16), compiled, eager, 3, seen=3, compile_after=3) == "compiled"
    assert plan_shape((1, 16, 16), compiled, eager, 2, seen=3, compile_after=3) == "eager"


def test_reserving_shapes_raises_torchs_recompile_limit():
    before = torch._dynamo.config.recompile_limit
    try:
        limit = reserve_recompiles(40)
        assert limit > 40 and torch._dynamo.config.recompile_limit == limit
    finally:
        torch._dynamo.config.recompile_limit = before


@needs_compiler
def test_compile_runs_twelve_frame_sizes_with_a_budget_of_three(caplog):
    torch.manual_seed(0)
    net = SRVGGNetCompact(num_feat=4, num_conv=1, upscale=2)
    ref = SRVGGNetCompact(num_feat=4, num_conv=1, upscale=2)
    ref.load_state_dict(net.state_dict())
    engine = CompiledEngine(net, CPU, "fp32", max_batch=1, max_shapes=3, compile_after=1)
    caplog.set_level(logging.WARNING, "ultrares_stream.engine.compile")
    with torch.no_grad():
        for i in range(12):
            x = torch.rand(1, 3, 8 + 2 * i, 10)
            torch.testing.assert_close(engine(x), ref(x), rtol=1e-4, atol=1e-4)
        engine(torch.rand(1, 3, 30, 10))  # seen: no second warning
    assert len(engine.compiled_shapes) == 3 and len(engine.eager_shapes) == 9
    assert len([r for r in caplog.records if "runs eagerly" in r.getMessage()]) == 9


class _Doubler(nn.Module):
    """A net of its own class, so its ``forward`` has its own recompile count."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x) * 2


@needs_compiler
def test_hitting_torchs_recompile_limit_runs_eagerly_instead_of_raising():
    torch.manual_seed(0)
    net = _Doubler()
    engine = CompiledEngine(net, CPU, "fp32", max_batch=1, max_shapes=12, compile_after=1)
    before = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = 1  # fullgraph=True raises past it
    try:
        with torch.no_grad():
            for h in (6, 7, 9):
                x = torch.rand(1, 3, h, 5)
                torch.testing.assert_close(engine(x), net(x), rtol=1e-4, atol=1e-4)
    finally:
        torch._dynamo.config.recompile_limit = before
    assert len(engine.compiled_shapes) == 1 and len(engine.eager_shapes) == 2


@needs_compiler
def test_one_off_sizes_never_compile_so_recurring_camera_sizes_keep_the_budget():
    torch.manual_seed(0)
    net = SRVGGNetCompact(num_feat=4, num_conv=1, upscale=2)
    engine = CompiledEngine(net, CPU, "fp32", max_batch=1, max_shapes=2)  # default: compile after 3 sightings
    with torch.no_grad():
        for i in range(10):  # ten web uploads of ten sizes
            engine(torch.rand(1, 3, 12 + 2 * i, 14))
        assert not engine.compiled_shapes and not engine.eager_shapes, "one-off sizes ran eagerly, nothing spent"
        for _ in range(4):  # then two cameras' frames
            for h in (8, 10):
                x = torch.rand(1, 3, h, 10)
                torch.testing.assert_close(engine(x), net(x), rtol=1e-4, atol=1e-4)
    assert engine.compiled_shapes == {(1, 8, 10), (1, 10, 10)}
