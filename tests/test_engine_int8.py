"""int8 on the OpenVINO engine: real NNCF quantisation of small real architectures, calibrated on
the demo scene's generated traffic frames (no shared data needed), compared with eager fp32;
alpha changes quantise again off the frame path; int8 is refused where it cannot run."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ultrares_stream.engine import EagerEngine
from ultrares_stream.engine.base import ThreadPlan, pick_precision
from ultrares_stream.engine.cache import EngineCache
from ultrares_stream.engine.openvino import OpenVINOEngine, openvino_available
from ultrares_stream.engine.quantise import (DEFAULT_SETTINGS, end_convs, nncf_available, quantise, scene_frames,
                                             tail_ops, traffic_frames)
from ultrares_stream.engine.select import backend_for_precision, make_engine
from ultrares_stream.errors import UserError
from ultrares_stream.models.archs import RLFN, SRVGGNetCompact

CPU = torch.device("cpu")
OV_OK, OV_WHY = openvino_available()
NNCF_OK, NNCF_WHY = nncf_available()
needs_int8 = pytest.mark.skipif(not (OV_OK and NNCF_OK), reason=(
    f"int8 needs openvino and nncf: {OV_WHY}; {NNCF_WHY} (pip install 'ultrares-stream[int8]')"))
PLAN = ThreadPlan(1, 1)
#: int8 against eager fp32 on a scene frame the calibration did not see: the bound a test fails below
MIN_PSNR_DB = 50.0  # int8 against fp32 on a real frame; every op quantised fails it
ARCHS = {
    "compact": lambda: SRVGGNetCompact(num_feat=8, num_conv=4, upscale=4, act_type="prelu"),  # 6 convs, 2 in float
    "rlfn": lambda: RLFN(num_feat=12, num_block=1),  # residual adds, ESA pooling, sigmoid gate
}


def calibration() -> list[np.ndarray]:
    """Six 48x64 corners of the generated traffic scene (the engine's default reads clips)."""
    return [f[..., 60:108, 100:164].copy() for f in scene_frames(6)]


def frame() -> torch.Tensor:
    from ultrares_stream.demo.scene import render_scene_frame

    rgb = render_scene_frame(401, 320, 240)[120:168, 40:104]  # a later frame, elsewhere in the scene
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float()[None] / 255


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def build(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ARCHS[kind]().eval()


@pytest.fixture
def cache(tmp_path) -> EngineCache:
    return EngineCache(tmp_path / "cache")


def int8_engine(kind: str, cache: EngineCache) -> OpenVINOEngine:
    return OpenVINOEngine(build(kind), CPU, "int8", plan=PLAN, cache=cache, calibration=calibration)


@needs_int8
@pytest.mark.parametrize("kind", sorted(ARCHS))
def test_int8_is_close_to_fp32_but_not_fp32(kind, cache):
    net = build(kind)
    engine = int8_engine(kind, cache)
    engine.load_weights(net.state_dict())
    x = frame()
    with torch.no_grad():
        ref, out = net(x), engine(x)
    assert out.shape == ref.shape and engine.precision == "int8"
    assert psnr(out, ref) >= MIN_PSNR_DB, f"int8 {psnr(out, ref):.1f} dB from fp32"
    assert float((out - ref).abs().max()) > 1e-5  # quantised: not the fp32 graph under another name


@needs_int8
def test_quantised_graph_has_int8_convolutions_and_float_ends(cache):
    from ultrares_stream.engine.openvino import load_graph

    net = build("compact")
    model = load_graph(net, cache).with_weights(net.state_dict())
    tail = set(tail_ops(model))
    ends = end_convs(model, DEFAULT_SETTINGS.float_first, DEFAULT_SETTINGS.float_last)
    quantised = quantise(model, calibration())
    fq = [op for op in quantised.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    fed = {t.get_node() for op in fq for t in op.output(0).get_target_inputs()}
    convs = [op.get_friendly_name() for op in quantised.get_ordered_ops() if op.get_type_name() == "Convolution"]
    assert {op.get_type_name() for op in fed} == {"Convolution"}  # only convolutions' inputs quantised
    assert set(ends) == {convs[0], convs[-1]}  # the 3-channel input conv and the upsampler's
    assert {op.get_friendly_name() for op in fed} == set(convs) - set(ends)  # every other conv in int8
    assert any(name.endswith("aten::add/Add") for name in tail)  # the input's residual: the output image
    assert not {op.get_friendly_name() for op in fed} & tail


@needs_int8
def test_an_alpha_change_is_quantised_again_and_going_back_is_a_swap(cache):
    nets = [build("compact", seed) for seed in (1, 2)]
    engine = int8_engine("compact", cache)
    engine.load_weights(nets[0].state_dict())
    x = frame()
    first = engine(x)
    commit = engine.prepare_weights(nets[1].state_dict())  # the slow part: quantise + compile, off the frame path
    assert engine.compiles == 2 and torch.equal(engine(x), first)  # not live before the commit
    commit()
    with torch.no_grad():
        assert psnr(engine(x), nets[1](x)) >= MIN_PSNR_DB
    engine.prepare_weights(nets[0].state_dict())()
    assert engine.compiles == 2 and torch.equal(engine(x), first)  # the last weight sets stay compiled


def test_int8_runs_only_on_the_openvino_cpu_engine():
    assert backend_for_precision("auto", "int8") == "openvino"
    assert backend_for_precision("openvino", "int8") == "openvino"
    assert backend_for_precision("eager", "bf16") == "eager"
    with pytest.raises(UserError, match="int8 runs on the openvino engine, not eager"):
        make_engine("eager", build("compact"), CPU, "int8")
    with pytest.raises(UserError, match="int8 runs on the CPU"):
        pick_precision("int8", torch.device("cuda"))
    assert pick_precision("int8", CPU) == "int8"
    assert pick_precision("auto", CPU) != "int8"  # only ever asked for (docs/benchmarks.md)


@pytest.mark.skipif(not OV_OK, reason=f"openvino not usable here: {OV_WHY}")
def test_int8_without_nncf_is_refused_with_the_install_hint(monkeypatch):
    from ultrares_stream.engine import quantise as q

    monkeypatch.setattr(q, "nncf_available", lambda: (False, "nncf cannot be imported (ImportError)"))
    with pytest.raises(UserError, match=r"int8 needs NNCF.*ultrares-stream\[int8\]"):
        OpenVINOEngine(build("compact"), CPU, "int8", plan=PLAN)
    eager = EagerEngine(build("compact"), CPU, "fp32")  # the other precisions do not need it
    assert eager.precision == "fp32"


def test_calibration_frames_come_from_the_clips_first_half_or_the_scene(tmp_path):
    frames = traffic_frames(4, tmp_path)  # no clips there: the generated scene
    assert len(frames) == 4 and frames[0].shape == (1, 3, 240, 320)
    assert all(f.dtype == np.float32 and 0 <= f.min() and f.max() <= 1 for f in frames)
    from ultrares_stream.settings import data_dir

    clips = data_dir() / "video"
    if not clips.is_dir():
        pytest.skip(f"no traffic clips in {clips} (ULTRARES_DATA)")
    real = traffic_frames(5, clips)
    assert len(real) == 5 and all(f.shape[:2] == (1, 3) and f.shape[2] <= 180 for f in real)  # shrunk x4
    assert not any(np.array_equal(real[0], s) for s in frames)


@needs_int8
def test_quantising_writes_nothing_to_stdout(cache, capsys):
    net = build("compact")
    from ultrares_stream.engine.openvino import load_graph

    quantise(load_graph(net, cache).with_weights(net.state_dict()), calibration())
    assert capsys.readouterr().out == ""  # bench --json prints its rows there


def test_the_int8_rule_is_the_measured_loss_plates_and_speed():
    from ultrares_stream.engine.quantise import MAX_LOSS_DB, Int8Verdict

    assert MAX_LOSS_DB == 0.05
    assert Int8Verdict(-0.05, plates=0.0, speedup=1.2).passes() and Int8Verdict(-0.01, 0.002, 1.75).passes()
    assert not Int8Verdict(-0.052, plates=0.002, speedup=1.43).passes()  # the loss over 0.05 dB
    assert not Int8Verdict(-0.01, plates=-0.001, speedup=1.5).passes()  # plates read worse
    assert not Int8Verdict(-0.01, plates=None, speedup=1.5).passes()  # plates not measured
    assert not Int8Verdict(-0.002, plates=0.001, speedup=0.97).passes()  # no faster than eager bf16


def test_auto_times_int8_only_for_a_pair_that_passed(monkeypatch, cache):
    from ultrares_stream.engine import quantise as q
    from ultrares_stream.engine.select import CHOICE_FILE, INT8_CANDIDATE, Probes, choose_cpu_engine, cpu_candidates

    monkeypatch.setattr(q, "INT8_VERDICTS", {"passed": q.Int8Verdict(-0.03, 0.01, 1.5),
                                             "lost": q.Int8Verdict(-0.07, 0.01, 1.5)})
    monkeypatch.setattr(q, "nncf_available", lambda: (True, "nncf"))
    assert INT8_CANDIDATE in cpu_candidates("passed")
    assert all(INT8_CANDIDATE not in cpu_candidates(pair) for pair in ("lost", "unmeasured", None))
    monkeypatch.setattr(q, "nncf_available", lambda: (False, "nncf cannot be imported"))
    assert INT8_CANDIDATE not in cpu_candidates("passed")  # not installed: not a candidate, no warning each start
    if not (OV_OK and NNCF_OK):
        return
    monkeypatch.setattr(q, "nncf_available", lambda: (True, "nncf"))
    timed = []
    probes = Probes(timing=lambda engines, plan, size: timed.append(sorted(engines)) or {
        n: (0.01 if n == INT8_CANDIDATE else 0.02) for n in engines}, min_params=0)
    engine, why = choose_cpu_engine(build("compact"), "bf16", probes=probes, cache=cache, plan=PLAN, pair="passed")
    assert engine.precision == "int8" and engine.name == "openvino" and why.startswith(INT8_CANDIDATE)
    assert INT8_CANDIDATE in timed[0] and (cache.root / CHOICE_FILE).is_file()
    engine, _ = choose_cpu_engine(build("compact"), "bf16", probes=probes, cache=cache, plan=PLAN, pair="lost")
    assert engine.precision == "bf16" and INT8_CANDIDATE not in timed[1]


def assert_quantised_once_more(cache, net, monkeypatch, caplog, said: str) -> None:
    """A new int8 engine for ``net`` runs NNCF exactly once (the cache entry was refused, the log
    says ``said``), and its output is still close to the float network's."""
    from ultrares_stream.engine import quantise as q

    count = Counting()
    monkeypatch.setattr(q, "quantise", count)
    engine = int8_engine("compact", cache)
    engine.load_weights(net.state_dict())
    assert count.calls == 1 and said in caplog.text
    x = frame()
    with torch.no_grad():
        assert psnr(engine(x), net(x)) >= MIN_PSNR_DB


class Counting:
    """:func:`quantise` that counts its calls and can be told to refuse (a second NNCF run)."""

    def __init__(self, allowed: int = 99):
        self.calls, self.allowed = 0, allowed

    def __call__(self, model, frames, settings):
        self.calls += 1
        if self.calls > self.allowed:
            raise AssertionError("NNCF called again: the cached int8 model was not used")
        return quantise(model, frames, settings)


def cached_int8(net, cache, quantiser):
    from ultrares_stream.engine.openvino import IR_STORE, load_graph
    from ultrares_stream.engine.quantise import cached_quantise, frames_digest, int8_key
    from ultrares_stream.engine.tensorrt import _describe
    from ultrares_stream.models.checkpoint import state_dict_hash

    frames = calibration()
    key = int8_key(weights=state_dict_hash(net.state_dict()), arch=_describe(net), calibration=frames_digest(frames))
    model = load_graph(net, cache).with_weights(net.state_dict())
    return cached_quantise(model, frames, key, IR_STORE, cache=cache, quantiser=quantiser), key


@needs_int8
def test_the_same_weights_are_quantised_once_and_other_weights_miss_the_cache(cache):
    count = Counting()
    (first, how), key = cached_int8(build("compact"), cache, count)
    assert how == "built" and count.calls == 1 and cache.path_for(key).is_dir()
    (again, how), _ = cached_int8(build("compact"), cache, count)
    assert how == "hit" and count.calls == 1
    fq = [sum(op.get_type_name() == "FakeQuantize" for op in m.get_ordered_ops()) for m in (first, again)]
    assert fq[0] == fq[1] > 0  # the quantised graph itself, not the float one
    (_, how), other = cached_int8(build("compact", seed=3), cache, count)
    assert how == "built" and count.calls == 2 and other.digest() != key.digest()


@needs_int8
def test_the_int8_key_follows_settings_calibration_and_versions():
    import dataclasses

    from ultrares_stream.engine.quantise import frames_digest, int8_key

    frames = calibration()
    base = int8_key(weights="w", arch="a", calibration=frames_digest(frames))
    assert base == int8_key(weights="w", arch="a", calibration=frames_digest(calibration()))
    assert base != int8_key(weights="w", arch="a", calibration=frames_digest(frames[:5]))
    assert base != int8_key(weights="w", arch="a", calibration=frames_digest(frames),
                            settings=dataclasses.replace(DEFAULT_SETTINGS, preset="performance"))
    assert base != int8_key(weights="w", arch="a", calibration=frames_digest(frames), input_policy="static")
    assert "openvino=" in base.settings and "nncf=" in base.settings


@needs_int8
@pytest.mark.parametrize("damage", ["truncate", "xml"])
def test_a_damaged_cached_int8_model_is_quantised_again_and_still_close(cache, damage, monkeypatch, caplog):
    import zipfile

    from ultrares_stream.engine import quantise as q
    from ultrares_stream.engine.cache import ARTEFACT, META

    net = build("compact")
    int8_engine("compact", cache).load_weights(net.state_dict())
    [entry] = [e.path for e in cache.entries() if e.key.backend == "openvino-int8"]
    artefact = entry / ARTEFACT
    if damage == "truncate":  # the .bin cut short, as by a crash mid-write without the rename
        artefact.write_bytes(artefact.read_bytes()[: artefact.stat().st_size // 2])
    else:  # an .xml that is no IR, checksum made to match: only loading it finds out
        import json

        from ultrares_stream.engine.cache import _sha256

        with zipfile.ZipFile(artefact) as zf:
            weights = zf.read("model.bin")
        with zipfile.ZipFile(artefact, "w") as zf:
            zf.writestr("model.xml", "<net>")
            zf.writestr("model.bin", weights)
        meta = json.loads((entry / META).read_text())
        meta.update(sha256=_sha256(artefact), size_bytes=artefact.stat().st_size)
        (entry / META).write_text(json.dumps(meta))
    assert_quantised_once_more(cache, net, monkeypatch, caplog, "unusable")
    monkeypatch.setattr(q, "quantise", Counting(allowed=0))  # rebuilt entry: read, NNCF not called
    int8_engine("compact", cache).load_weights(net.state_dict())


@needs_int8
def test_a_second_engine_reads_the_quantised_model_and_alphas_share_the_cache(cache, monkeypatch):
    from ultrares_stream.engine import quantise as q

    nets = [build("compact", seed) for seed in (1, 2)]
    first = int8_engine("compact", cache)
    first.load_weights(nets[0].state_dict())
    first.prepare_weights(nets[1].state_dict())  # an alpha change: quantised off the frame path, cached
    monkeypatch.setattr(q, "quantise", Counting(allowed=0))
    second = int8_engine("compact", cache)
    for net in nets:
        second.prepare_weights(net.state_dict())()
        x = frame()
        with torch.no_grad():
            assert psnr(second(x), net(x)) >= MIN_PSNR_DB


@needs_int8
def test_a_cached_int8_model_that_loads_but_is_wrong_is_quantised_again(cache, monkeypatch, caplog):
    from ultrares_stream.engine.openvino import load_graph, save_ir

    net, other = build("compact"), build("compact", seed=5)
    int8_engine("compact", cache).load_weights(net.state_dict())
    [entry] = [e for e in cache.entries() if e.key.backend == "openvino-int8"]
    wrong = quantise(load_graph(other, cache).with_weights(other.state_dict()), calibration())
    cache.save(entry.key, lambda path: save_ir(wrong, path))  # intact file, other weights' model
    assert_quantised_once_more(cache, net, monkeypatch, caplog, "quantising again")
