"""Engine cache: keys, real save/load of a torch.export artefact on the CPU, corrupt and stale
entries, refit-or-rebuild decisions, and the ``ultrares engine`` command."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time

import pytest
import torch

from ultrares_stream.engine.cache import ARTEFACT, META, EngineCache, EngineKey, ShapeRange
from ultrares_stream.engine.tensorrt import (EngineCheckError, export_program, refit_or_rebuild,
                                             relative_error)
from ultrares_stream.errors import UserError
from ultrares_stream.models.archs import RRDBNet, SRVGGNetCompact
from ultrares_stream.models.checkpoint import state_dict_hash

SHAPES = ShapeRange(batch=(1, 2, 3), height=(8, 12, 16), width=(8, 12, 16))
ENV = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "torch": "2.13.0", "torch_tensorrt": "2.13.0",
       "tensorrt": "10.14.1"}


def tiny_net(seed: int = 0) -> SRVGGNetCompact:
    torch.manual_seed(seed)
    return SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2).eval()


def make_key(**changes) -> EngineKey:
    key = EngineKey.for_device(model_hash=state_dict_hash(tiny_net().state_dict()), arch="SRVGGNetCompact-tiny",
                               backend="tensorrt", precision="fp16", shapes=SHAPES, fingerprint=ENV)
    return dataclasses.replace(key, **changes)


# -- keys ----------------------------------------------------------------------------------
CHANGES = {
    "model_hash": "0123456789abcdef", "arch": "RRDBNet-x", "backend": "compile", "precision": "fp32",
    "shapes": dataclasses.replace(SHAPES, batch=(1, 2, 4)), "gpu": "NVIDIA A100-SXM4-80GB",
    "compute_capability": "8.0", "torch": "2.14.0", "torch_tensorrt": "2.14.0", "tensorrt": "10.15.0",
    "settings": "immutable_weights=True;min_block_size=1",
}


def test_changes_cover_every_key_field():
    assert set(CHANGES) == {f.name for f in dataclasses.fields(EngineKey)}


@pytest.mark.parametrize("field", sorted(CHANGES), ids=lambda f: f"field-{f}")  # an id "gpu" would be skipped as a GPU test
def test_key_digest_changes_with_every_component(field):
    base = make_key()
    changed = make_key(**{field: CHANGES[field]})
    assert changed.digest() != base.digest()
    # only the weights are outside the structure digest: those engines can be refitted into each other
    assert (changed.structure_digest() == base.structure_digest()) == (field == "model_hash")


def test_two_build_settings_make_two_keys():
    from ultrares_stream.engine.cache import settings_string
    from ultrares_stream.engine.tensorrt import build_options

    explicit = settings_string(build_options({"use_explicit_typing", "enabled_precisions"}, torch.float16))
    legacy = settings_string(build_options({"enabled_precisions"}, torch.float16))
    assert explicit != legacy and "use_explicit_typing=True" in explicit and "float16" in legacy
    assert make_key(settings=explicit).digest() != make_key(settings=legacy).digest()


def test_activation_variants_with_equal_shapes_have_different_arch_strings():
    from ultrares_stream.engine.tensorrt import _describe

    relu = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2, act_type="relu")
    leaky = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2, act_type="lrelu")
    assert [v.shape for v in relu.state_dict().values()] == [v.shape for v in leaky.state_dict().values()]
    assert _describe(relu) != _describe(leaky) and _describe(relu) == _describe(SRVGGNetCompact(
        num_feat=8, num_conv=2, upscale=2, act_type="relu"))


def test_default_engine_range_covers_720p_and_pal_cameras():
    from ultrares_stream.config import DEFAULT_ENGINE_SHAPE

    default = ShapeRange.parse(DEFAULT_ENGINE_SHAPE)
    assert default == ShapeRange()  # one default, in the config and for make_engine
    for w, h in ((1280, 720), (704, 576), (960, 540), (480, 270)):
        assert default.accepts((1, 3, h, w)), f"{w}x{h} would run on eager"


def test_key_round_trips_through_json_and_is_stable():
    key = make_key()
    again = EngineKey.from_dict(json.loads(json.dumps(key.to_dict())))
    assert again == key and again.digest() == key.digest() == make_key().digest()


def test_shape_ranges_reject_nonsense_and_accept_their_shapes():
    with pytest.raises(UserError, match="min <= opt <= max"):
        ShapeRange(batch=(4, 2, 8))
    assert SHAPES.accepts((3, 3, 16, 8)) and not SHAPES.accepts((4, 3, 16, 8)) and not SHAPES.accepts((1, 3, 17, 8))
    assert ShapeRange.for_frames(960, 540, max_batch=8).opt_shape == (4, 3, 540, 960)


# -- a real CPU artefact: a torch.export program with dynamic batch / height / width ----------
def save_program(program, path):
    torch.export.save(program, str(path))


def load_program(path):
    return torch.export.load(str(path)).module()


def test_export_program_is_dynamic_and_saved_and_loaded_through_the_cache(tmp_path):
    net = tiny_net()
    cache = EngineCache(tmp_path)
    key = make_key()
    builds = []

    def build():
        builds.append(1)
        return export_program(net, SHAPES)

    program, how = cache.get_or_build(key, build, save_program, load_program, refittable=True)
    assert how == "built" and len(builds) == 1
    module, how = cache.get_or_build(key, build, save_program, load_program)
    assert how == "hit" and len(builds) == 1  # reused on the next start, not rebuilt
    for shape in [(1, 3, 8, 8), (3, 3, 16, 12), (2, 3, 10, 15)]:  # anywhere in the range
        x = torch.rand(shape)
        with torch.no_grad():
            torch.testing.assert_close(module(x), net(x))
    (entry,) = cache.entries()
    assert entry.state == "ok" and entry.refittable and entry.key == key and entry.size_bytes > 0


def test_export_program_respects_the_size_multiple_of_rrdbnet_x2():
    net = RRDBNet(num_feat=4, num_block=1, num_grow_ch=4, scale=2).eval()
    program = export_program(net, ShapeRange(batch=(1, 1, 2), height=(8, 12, 16), width=(8, 8, 8)))
    x = torch.rand(2, 3, 14, 8)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), net(x))


def _cached(tmp_path):
    cache = EngineCache(tmp_path)
    key = make_key()
    cache.get_or_build(key, lambda: export_program(tiny_net(), SHAPES), save_program, load_program)
    return cache, key


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "meta-garbage", "meta-other-key"])
def test_corrupt_entries_are_removed_and_rebuilt_never_raise(tmp_path, damage, caplog):
    cache, key = _cached(tmp_path)
    entry = cache.path_for(key)
    artefact, meta = entry / ARTEFACT, entry / META
    if damage == "truncate":
        artefact.write_bytes(artefact.read_bytes()[: artefact.stat().st_size // 2])
    elif damage == "flip":
        data = bytearray(artefact.read_bytes())
        data[len(data) // 2] ^= 0xFF
        artefact.write_bytes(bytes(data))
    elif damage == "delete":
        artefact.unlink()
    elif damage == "meta-garbage":
        meta.write_text("{not json")
    else:
        m = json.loads(meta.read_text())
        m["key"]["precision"] = "fp32"
        meta.write_text(json.dumps(m))
    assert cache.load(key, load_program) is None
    assert not entry.exists()
    assert "unusable" in caplog.text
    _, how = cache.get_or_build(key, lambda: export_program(tiny_net(), SHAPES), save_program, load_program)
    assert how == "built" and cache.get_or_build(key, None, None, load_program)[1] == "hit"


def test_artefact_that_fails_to_load_is_rebuilt(tmp_path):
    """Intact checksum, but the backend cannot load it (e.g. written by a broken build)."""
    cache = EngineCache(tmp_path)
    key = make_key()
    cache.save(key, lambda path: path.write_bytes(b"not an exported program"))
    obj, how = cache.get_or_build(key, lambda: export_program(tiny_net(), SHAPES), save_program, load_program)
    assert how == "built"
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(obj.module()(x), tiny_net()(x))


def test_failed_save_is_logged_not_raised(tmp_path, caplog):
    cache = EngineCache(tmp_path)

    def bad_saver(path):
        raise OSError("disk full")

    assert cache.save(make_key(), bad_saver) is None
    assert "disk full" in caplog.text and cache.entries() == []


def test_entries_for_other_gpus_or_versions_are_stale_and_pruned(tmp_path):
    cache, key = _cached(tmp_path)
    other = dataclasses.replace(key, torch="2.14.0")
    cache.save(other, lambda path: save_program(export_program(tiny_net(), SHAPES), path))
    (tmp_path / "junk").mkdir()  # a folder without meta.json
    states = {e.path.name: e.state for e in cache.entries(ENV)}
    assert states == {key.digest(): "ok", other.digest(): "stale", "junk": "corrupt"}
    removed = cache.prune(ENV)
    assert sorted(p.name for p in removed) == sorted([other.digest(), "junk"])
    assert [e.key for e in cache.entries(ENV)] == [key]


def test_find_refittable_matches_structure_not_weights(tmp_path):
    cache = EngineCache(tmp_path)
    key = make_key()
    cache.save(key, lambda path: path.write_bytes(b"x"), refittable=True)
    new_weights = make_key(model_hash=state_dict_hash(tiny_net(1).state_dict()))
    assert cache.find_refittable(new_weights) == cache.path_for(key)
    assert cache.find_refittable(make_key(model_hash="f" * 16, precision="fp32")) is None
    cache.save(make_key(model_hash="e" * 16, backend="compile"), lambda p: p.write_bytes(b"y"), refittable=False)
    assert cache.find_refittable(make_key(model_hash="e" * 16, backend="compile", arch="z")) is None


# -- variants: each engine keeps its most recently used weight sets -----------------------------
def variant(i: int, **changes) -> EngineKey:
    """The engine of :func:`make_key` with weight set ``i`` (one alpha of a model pair, say)."""
    return make_key(model_hash=f"{i:016x}", **changes)


def save_variant(cache: EngineCache, key: EngineKey):
    return cache.save(key, lambda path: path.write_bytes(key.model_hash.encode()), refittable=True)


def cached_weights(cache: EngineCache, **changes) -> set[str]:
    want = variant(0, **changes).structure_digest()
    return {e.key.model_hash for e in cache.entries() if e.key is not None and e.key.structure_digest() == want}


def test_each_engine_keeps_its_most_recently_used_weight_sets(tmp_path, caplog):
    from ultrares_stream.engine.cache import KEEP_VARIANTS

    caplog.set_level(logging.INFO, logger="ultrares_stream.engine.cache")
    assert KEEP_VARIANTS == 8 and EngineCache(tmp_path).keep_variants == KEEP_VARIANTS
    with pytest.raises(UserError, match="at least 1"):
        EngineCache(tmp_path, keep_variants=0)
    cache = EngineCache(tmp_path, keep_variants=8)
    for i in range(8):
        save_variant(cache, variant(i))
    assert cache.load(variant(0), lambda path: path.read_bytes()) == variant(0).model_hash.encode()  # used again
    caplog.clear()
    for i in (8, 9):
        save_variant(cache, variant(i))
    # weight sets 1 and 2 were the least recently used; 0 was loaded after them
    assert cached_weights(cache) == {variant(i).model_hash for i in (0, 3, 4, 5, 6, 7, 8, 9)}
    evicted = [r.getMessage() for r in caplog.records if "evicted" in r.getMessage()]
    assert len(evicted) == 2 and variant(1).digest() in evicted[0] and variant(2).digest() in evicted[1]
    assert all(r.levelno == logging.INFO for r in caplog.records if "evicted" in r.getMessage())
    assert cache.load(variant(1), lambda path: path.read_bytes()) is None  # gone: rebuilt when needed


def test_eviction_leaves_other_engines_and_stale_or_corrupt_entries_alone(tmp_path):
    wide = EngineCache(tmp_path, keep_variants=10)
    for i in range(4):
        save_variant(wide, variant(i, precision="fp32"))  # another engine (structure)
        save_variant(wide, variant(i, backend="compile"))  # and another
    old_format = variant(90)
    save_variant(wide, old_format)
    meta = wide.path_for(old_format) / META
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "format": 1}))  # stale: prune's business
    (tmp_path / "junk").mkdir()  # corrupt: prune's business
    cache = EngineCache(tmp_path, keep_variants=1)
    for i in range(3):
        save_variant(cache, variant(i))
    assert cached_weights(cache) == {variant(2).model_hash, old_format.model_hash}
    four = {variant(i).model_hash for i in range(4)}
    assert cached_weights(cache, precision="fp32") == four and cached_weights(cache, backend="compile") == four
    assert sorted(p.name for p in cache.prune()) == sorted([old_format.digest(), "junk"])


def test_the_entry_just_saved_is_never_evicted(tmp_path):
    cache = EngineCache(tmp_path, keep_variants=1)
    save_variant(cache, variant(0))
    assert cached_weights(cache) == {variant(0).model_hash}
    wide = EngineCache(tmp_path, keep_variants=10)
    for i in (1, 2):
        save_variant(wide, variant(i))
        later = time.time() + 3600  # used "later" than now: another process, a clock ahead
        os.utime(wide.path_for(variant(i)) / META, (later, later))
    assert save_variant(cache, variant(3)) == cache.path_for(variant(3))
    assert cached_weights(cache) == {variant(3).model_hash}
    save_variant(cache, variant(3))  # saved again (rebuilt): still the one kept
    assert cached_weights(cache) == {variant(3).model_hash}


def test_entries_removed_by_another_process_during_eviction_never_raise(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ultrares_stream.engine.cache")
    wide = EngineCache(tmp_path, keep_variants=10)
    for i in range(5):
        save_variant(wide, variant(i))
    cache = EngineCache(tmp_path, keep_variants=2)

    def racing_saver(path):  # while this entry is built, another process evicts weight sets 0 and 1
        (cache.path_for(variant(0)) / META).unlink()
        shutil.rmtree(cache.path_for(variant(1)))
        path.write_bytes(b"five")

    class RemovesTheNextVictim(logging.Handler):  # ... and weight set 3's meta.json, mid-eviction
        def emit(self, record):
            if "evicted" in record.getMessage():
                (cache.path_for(variant(3)) / META).unlink(missing_ok=True)

    handler = RemovesTheNextVictim()
    logging.getLogger("ultrares_stream.engine.cache").addHandler(handler)
    try:
        assert cache.save(variant(5), racing_saver) == cache.path_for(variant(5))
    finally:
        logging.getLogger("ultrares_stream.engine.cache").removeHandler(handler)
    assert cached_weights(cache) == {variant(4).model_hash, variant(5).model_hash}
    assert not cache.path_for(variant(2)).exists() and not cache.path_for(variant(3)).exists()
    assert [e.state for e in cache.entries() if e.key is None] == ["corrupt"]  # weight set 0: left to prune
    assert "could not" not in caplog.text


# -- refit or rebuild ------------------------------------------------------------------------
@pytest.fixture
def programs():
    """A 'live engine' (exported program module of weights A), the new weights B, and checks vs eager B."""
    old, new = tiny_net(0), tiny_net(1)
    live = export_program(old, SHAPES).module()
    probe = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        ref = new(probe)

    def check(module):
        with torch.no_grad():
            return relative_error(module(probe), ref)

    def good_refit():  # what refit_module_weights does: same engine, new weights
        module = export_program(old, SHAPES).module()
        module.load_state_dict(new.state_dict())
        return module

    def rebuild():
        return export_program(new, SHAPES).module()

    return live, good_refit, rebuild, check


def test_successful_refit_is_used(programs):
    live, good_refit, rebuild, check = programs
    assert check(live) > 1e-2  # the old engine really differs
    module, how, err = refit_or_rebuild(good_refit, rebuild, check)
    assert how == "refit" and err < 1e-5


def test_refit_with_wrong_output_falls_back_to_rebuild(programs, caplog):
    live, _, rebuild, check = programs
    module, how, err = refit_or_rebuild(lambda: live, rebuild, check)  # "refit" that kept the old weights
    assert how == "rebuild" and err < 1e-5 and "differs from eager" in caplog.text


def test_refit_that_raises_falls_back_to_rebuild(programs, caplog):
    _, _, rebuild, check = programs

    def failing():
        raise AssertionError("Refitting failed.")

    module, how, _ = refit_or_rebuild(failing, rebuild, check)
    assert how == "rebuild" and "Refitting failed" in caplog.text


def test_not_refittable_rebuilds_and_bad_rebuild_raises(programs):
    live, _, rebuild, check = programs
    assert refit_or_rebuild(None, rebuild, check)[1] == "rebuild"
    with pytest.raises(EngineCheckError):
        refit_or_rebuild(None, lambda: live, check)


def test_alpha_refits_start_from_a_saved_copy_never_the_live_engine(programs, tmp_path):
    """The refit runs on a fresh copy loaded from the cache (torch.export's saved program here, a
    TensorRT engine on a GPU): the live engine keeps its weights and output until the swap."""
    from ultrares_stream.engine.tensorrt import separate_refit

    live, _, rebuild, check = programs
    saved = tmp_path / "engine.pt2"
    torch.export.save(export_program(tiny_net(0), SHAPES), saved)
    probe = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        before = live(probe)
    new = tiny_net(1)

    def refit(copy):  # what refit_module_weights(in_place=True) would do, on the copy it is given
        copy.load_state_dict(new.state_dict())
        return copy

    module, how, err = refit_or_rebuild(separate_refit(saved, lambda p: torch.export.load(p).module(), refit),
                                        rebuild, check)
    assert how == "refit" and err < 1e-5 and module is not live
    with torch.no_grad():
        assert torch.equal(live(probe), before)  # the running engine never changed
    assert separate_refit(None, torch.export.load, refit) is None  # nothing saved: rebuild instead
    gone = separate_refit(tmp_path / "pruned.pt2", lambda p: torch.export.load(p).module(), refit)
    assert refit_or_rebuild(gone, rebuild, check)[1] == "rebuild"  # a copy pruned from the cache


def test_relative_error_flags_nan():
    ref = torch.ones(2, 2)
    assert relative_error(torch.full((2, 2), float("nan")), ref) == float("inf")
    assert relative_error(ref * 1.001, ref) == pytest.approx(1e-3, rel=1e-2)


# -- the command ------------------------------------------------------------------------------
def test_engine_list_build_and_prune_commands(tmp_path, monkeypatch, capsys):
    from ultrares_stream.cli import main

    monkeypatch.setenv("ULTRARES_ENGINE_CACHE", str(tmp_path))
    cache, key = _cached(tmp_path)
    (tmp_path / "broken").mkdir()
    assert main(["engine", "list"]) == 0
    out = capsys.readouterr().out
    assert key.digest() in out and "corrupt" in out and "SRVGGNetCompact-tiny" in out
    assert main(["engine", "prune"]) == 0
    assert "removed 1" in capsys.readouterr().out
    assert [e.path.name for e in cache.entries()] == [key.digest()]
    if not torch.cuda.is_available():
        assert main(["engine", "build", "--shape", "480x270"]) == 2
        err = capsys.readouterr().err
        assert "error:" in err and "CUDA" in err and len(err.strip().splitlines()) == 1
    assert main(["engine", "build", "--batch", "8:4:1", "--device", "cpu"]) == 2
    assert "min <= opt <= max" in capsys.readouterr().err
    assert main(["engine", "build", "--shape", "big"]) == 2
    assert "'big'" in capsys.readouterr().err


def test_shape_ranges_parse_from_text():
    from ultrares_stream.engine.cache import ShapeRange

    assert ShapeRange.parse("960x540", "8").batch == (8, 8, 8)
    s = ShapeRange.parse("480x270:960x540:1920x1080", "1:4:8")
    assert s.min_shape == (1, 3, 270, 480) and s.opt_shape == (4, 3, 540, 960) and s.max_shape == (8, 3, 1080, 1920)
    with pytest.raises(UserError, match="batch range"):
        ShapeRange.parse("960x540", "1:x")
    with pytest.raises(UserError, match="MIN <= OPT <= MAX"):
        ShapeRange.parse("960x540:480x270:1920x1080")
