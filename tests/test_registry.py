"""Model registry: entries, local lookup, download verification (on local files only)."""
from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import need_data
from ultrares_stream.cli import main
from ultrares_stream.errors import ModelError
from ultrares_stream.models.archs import SRVGGNetCompact
from ultrares_stream.models.checkpoint import save_checkpoint
from ultrares_stream.models.registry import (DEFAULT_MODEL, ENTRIES, PAIRS, entry_path, fetch, local_path, resolve,
                                             verify_download)

ANIME = ENTRIES["realesr-animevideov3"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_entries_and_pairs_are_consistent():
    assert DEFAULT_MODEL in PAIRS
    wanted = {"RRDB_PSNR_x4", "RRDB_ESRGAN_x4", "RealESRNet_x4plus", "RealESRGAN_x4plus", "realesr-general-x4v3",
              "realesr-general-wdn-x4v3", "realesr-animevideov3"}
    assert wanted <= set(ENTRIES)
    for name, (a, b) in PAIRS.items():
        assert ENTRIES[a].arch == ENTRIES[b].arch and ENTRIES[a].scale == ENTRIES[b].scale, name
    for e in ENTRIES.values():
        if e.url is not None:
            assert e.url.startswith("https://") and e.size_bytes, e.name
            # the NTIRE file is stored under the name the shared data folder gives it
            assert e.url.endswith(e.filename) or "drive.google.com" in e.url or e.name == "span-ch28-x4"


def test_published_hash_and_size_match_the_real_file():
    path = need_data("weights", "realesr-animevideov3.pth")
    assert _sha256(path) == ANIME.sha256
    assert path.stat().st_size == ANIME.size_bytes
    verify_download(ANIME, path, _sha256(path))


def test_local_lookup_honours_weights_dir(monkeypatch, tmp_path):
    folder = need_data("weights")
    monkeypatch.setenv("ULTRARES_WEIGHTS_DIR", str(folder))
    monkeypatch.setenv("ULTRARES_CACHE", str(tmp_path / "cache"))
    assert local_path(ANIME) == folder / ANIME.filename
    assert local_path(ENTRIES["RealESRGAN_x4plus"]) is None
    resolved = resolve("realesr-animevideov3")
    assert resolved.name == "realesr-animevideov3" and not resolved.is_pair
    monkeypatch.setenv("ULTRARES_WEIGHTS_DIR", str(tmp_path / "empty"))
    assert local_path(ANIME) == folder / ANIME.filename  # still found: the shared data folder's weights/
    monkeypatch.setenv("ULTRARES_DATA", str(tmp_path / "no-data"))
    with pytest.raises(ModelError, match="not available locally.*--fetch realesr-animevideov3"):
        entry_path("realesr-animevideov3", download=False)


def test_resolve_paths_and_adhoc_pairs(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(SRVGGNetCompact(num_feat=8, num_conv=2).state_dict(), tmp_path / "a.safetensors")
    torch.manual_seed(1)
    save_checkpoint(SRVGGNetCompact(num_feat=8, num_conv=2).state_dict(), tmp_path / "b.pth")
    single = resolve(str(tmp_path / "a.safetensors"))
    assert single.name == "a" and not single.is_pair
    pair = resolve(f"{tmp_path / 'a.safetensors'}+{tmp_path / 'b.pth'}")
    assert pair.is_pair and pair.name == "a+b"  # file stems only: status pages never show server paths
    with pytest.raises(ModelError, match="unknown model 'no-such-model'"):
        resolve("no-such-model")


def test_verify_download_checks_hash_size_and_architecture(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "m.pth"
    save_checkpoint(SRVGGNetCompact(num_feat=8, num_conv=2).state_dict(), path)
    digest, size = _sha256(path), path.stat().st_size
    entry = replace(ANIME, filename="m.pth", sha256=digest, size_bytes=size)
    verify_download(entry, path, digest)
    verify_download(replace(entry, sha256=None, sha256_prefix=digest[:8]), path, digest)
    with pytest.raises(ModelError, match="does not match the published"):
        verify_download(replace(entry, sha256="0" * 64), path, digest)
    with pytest.raises(ModelError, match="does not start with"):
        verify_download(replace(entry, sha256=None, sha256_prefix="deadbeef"), path, digest)
    with pytest.raises(ModelError, match="bytes, expected about"):
        verify_download(replace(entry, size_bytes=size * 3), path, digest)
    with pytest.raises(ModelError, match="expected RRDBNet x4"):
        verify_download(replace(entry, arch="RRDBNet"), path, digest)


def test_fetch_from_a_local_url_verifies_and_renames(tmp_path):
    """The whole download path (stream, hash, verify, rename) on a file:// URL: no network."""
    src = need_data("weights", "realesr-animevideov3.pth")
    dest = tmp_path / "cache"
    got = fetch(replace(ANIME, url=src.as_uri()), dest_dir=dest)
    assert got == dest / ANIME.filename and _sha256(got) == ANIME.sha256
    bad = tmp_path / "bad.pth"
    bad.write_bytes(src.read_bytes()[:-100] + b"x" * 100)
    with pytest.raises(ModelError, match="sha256"):
        fetch(replace(ANIME, url=bad.as_uri(), filename="other.pth"), dest_dir=dest)
    assert sorted(p.name for p in dest.iterdir()) == [ANIME.filename]  # no partial file left


def test_models_command_lists_entries_and_local_weights(monkeypatch, capsys, tmp_path):
    folder = need_data("weights")
    monkeypatch.setenv("ULTRARES_WEIGHTS_DIR", str(folder))
    monkeypatch.setenv("ULTRARES_CACHE", str(tmp_path))
    assert main(["models"]) == 0  # captured: not a terminal, so tab-separated lines with whole names
    rows = {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.splitlines()}
    assert rows.pop("name") == ["name", "kind", "architecture", "scale", "local", "notes"]
    assert set(rows) == set(ENTRIES) | set(PAIRS)
    assert rows["realesr-animevideov3"][1:5] == ["single", "SRVGGNetCompact", "x4", "yes"]
    assert rows["ultrares-compact-x4"][4] == "shipped"
    assert rows["RealESRGAN_x4plus"][4] == "no"
