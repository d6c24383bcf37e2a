"""Engine fallbacks: an fp16 engine without a guard of its own (what a TensorRT
fp16 engine is) whose probe check fails, or whose output overflows to Inf, moves to the next
backend in a precision with fp32's range instead of raising."""
from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from ultrares_stream.engine.eager import EagerEngine
from ultrares_stream.engine.select import FallbackEngine, NonFiniteOutput, check_finite, fallback_for
from ultrares_stream.engine.tensorrt import EngineCheckError, refit_or_rebuild, relative_error
from ultrares_stream.errors import UserError

CPU = torch.device("cpu")


class Overflowing(nn.Module):
    """Finite in fp32 (about 1 out), Inf in fp16: the first layer's activations pass 65504."""

    def __init__(self):
        super().__init__()
        self.up = nn.Conv2d(3, 3, 1)
        self.down = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.up.weight.fill_(4e4)
            self.up.bias.zero_()
            self.down.weight.fill_(1e-5)
            self.down.bias.zero_()

    def forward(self, x):
        return self.down(self.up(x))


class Fp16Engine:
    """An fp16 engine with no NaN/Inf fallback of its own; ``load_weights`` checks the engine against
    fp32 on a probe frame with the TensorRT backend's own check (``refit_or_rebuild``) when ``probe``."""

    name = "tensorrt"
    slow_weights = True

    def __init__(self, net: nn.Module, probe: bool):
        self.device, self.precision, self.probe = CPU, "fp16", probe
        self.template, self.net = net, copy.deepcopy(net).half()

    def load_weights(self, state_dict):
        self.prepare_weights(state_dict)()

    def prepare_weights(self, state_dict):
        ref = copy.deepcopy(self.template)
        ref.load_state_dict(state_dict)
        half = copy.deepcopy(ref).half()
        x = torch.rand(1, 3, 4, 4)
        if self.probe:
            half, _, _ = refit_or_rebuild(None, lambda: half, lambda m: relative_error(m(x.half()), ref(x)))
        return lambda: setattr(self, "net", half)

    def __call__(self, x):
        return self.net(x.half()).float()


def built(log):
    def build(backend, precision):
        log.append((backend, precision))
        if backend == "compile":
            raise UserError("engine 'compile' is not available on cpu: no C++ compiler")
        return EagerEngine(Overflowing(), CPU, precision)
    return build


def test_fallback_table():
    assert fallback_for("tensorrt", "fp16", bf16=True) == ("compile", "bf16")
    assert fallback_for("tensorrt", "fp16", bf16=False) == ("compile", "fp32")
    assert fallback_for("compile", "bf16", bf16=True) == ("eager", "bf16")
    assert fallback_for("eager", "bf16", bf16=True) == ("eager", "fp32")
    assert fallback_for("eager", "fp32", bf16=True) is None


def test_check_finite_only_checks_fp16():
    bad = torch.tensor([float("inf")])
    with pytest.raises(NonFiniteOutput):
        check_finite(bad, "fp16")
    assert check_finite(bad, "fp32") is bad


def test_a_failed_probe_falls_back_instead_of_raising(caplog):
    net = Overflowing()
    with pytest.raises(EngineCheckError):  # what the engine alone does
        Fp16Engine(net, probe=True).load_weights(net.state_dict())
    tried = []
    engine = FallbackEngine(Fp16Engine(net, probe=True), built(tried), bf16=False)
    caplog.set_level(logging.WARNING)
    engine.load_weights(net.state_dict())
    assert tried == [("compile", "fp32"), ("eager", "fp32")]  # compile unavailable: the next one
    assert (engine.name, engine.precision) == ("eager", "fp32")
    x = torch.rand(1, 3, 5, 5)
    torch.testing.assert_close(engine(x), net(x))
    assert len([r for r in caplog.records if "from now on" in r.getMessage()]) == 1


def test_an_overflowing_fp16_output_falls_back_and_the_batch_runs_again():
    net = Overflowing()
    x = torch.rand(2, 3, 5, 5)
    alone = Fp16Engine(net, probe=False)
    assert not torch.isfinite(alone(x)).all()  # the unguarded engine gives Inf
    engine = FallbackEngine(Fp16Engine(net, probe=False), built([]), bf16=True)
    engine.load_weights(net.state_dict())
    out = engine(x)
    assert torch.isfinite(out).all() and engine.precision == "bf16" and engine.moves
    torch.testing.assert_close(out, net(x), rtol=2e-2, atol=2e-2)
