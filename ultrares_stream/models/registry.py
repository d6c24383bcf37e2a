"""Named models: the shipped UltraRes pair and the third-party checkpoints users want.

A *model spec* names what to run. It is one of

* a pair name (``ultrares-compact-x4``, ``esrgan-x4``, ``realesrgan-x4plus``,
  ``realesr-general-x4v3``): a PSNR-oriented and a GAN-oriented network that
  ``alpha`` interpolates between;
* a single entry name (``realesr-animevideov3``, ``RRDB_ESRGAN_x4`` ...): alpha has no effect;
* a checkpoint path, or two joined by ``+`` (``psnr.pth+gan.pth``) for an ad-hoc pair.

Third-party weights are looked up in ``ULTRARES_WEIGHTS_DIR`` first, then the
download cache, then the shared data folder's ``weights/``; :func:`fetch` downloads them once, with a progress bar and a
size/hash check. Nothing downloads implicitly in tests: set
``ULTRARES_OFFLINE=1`` (the test suite does) and a missing file is an error.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from ..settings import SHIPPED_WEIGHTS_DIR, cache_dir, data_dir, weights_dir
from .archs import StateDict, compact, rlfn, rrdbnet, span
from .checkpoint import infer_arch, read_checkpoint
from .defaults import DEFAULT_MODEL, DEFAULT_MODELS, default_model

__all__ = ["DEFAULT_MODEL", "DEFAULT_MODELS", "ENTRIES", "PAIRS", "ModelEntry", "ResolvedModel", "default_model",
           "entry_path", "fetch", "local_path", "resolve", "verify_download"]

_RE = "https://github.com/xinntao/Real-ESRGAN/releases/download"
_GDRIVE = "https://drive.google.com/uc?export=download&id="
_RLFN_ZOO = "https://github.com/bytedance/RLFN/raw/bccfde91bf8b2de80789ec033a029e6f2a932330/model_zoo"
_SPAN_ZOO = "https://github.com/Amazingren/NTIRE2024_ESR/raw/6404fa48dde4a4adbf241a51debdc661aef20449/model_zoo"
#: the architectures of the entries, as their descriptors name them
_COMPACT, _RLFN, _RRDB, _SPAN = (a.ARCH.name for a in (compact, rlfn, rrdbnet, span))


@dataclass(frozen=True)
class ModelEntry:
    name: str
    filename: str
    arch: str
    scale: int
    url: str | None  # None: shipped inside the package
    size_bytes: int | None = None  # approximate published size, None if unknown
    sha256: str | None = None  # full hash, where one is known
    sha256_prefix: str | None = None  # hash prefix published in the file name (BasicSR style)
    note: str = ""


ENTRIES: dict[str, ModelEntry] = {e.name: e for e in [
    ModelEntry("ultrares-compact-x4-psnr", "ultrares-compact-x4-psnr.safetensors", _COMPACT, 4, None,
               note="shipped; trained by this project (L1), see docs/model_card.md"),
    ModelEntry("ultrares-compact-x4-gan", "ultrares-compact-x4-gan.safetensors", _COMPACT, 4, None,
               note="shipped; trained by this project (L1 + perceptual + RaGAN)"),
    ModelEntry("ultrares-wide-x4-psnr", "ultrares-wide-x4-psnr.safetensors", _COMPACT, 4, None,
               note="shipped; trained by this project (L1), 64 feat / 16 conv: for GPUs and recorded footage"),
    ModelEntry("ultrares-wide-x4-gan", "ultrares-wide-x4-gan.safetensors", _COMPACT, 4, None,
               note="shipped; trained by this project (L1 + perceptual + RaGAN), 64 feat / 16 conv"),
    ModelEntry("ultrares-traffic-x4-psnr", "ultrares-traffic-x4-psnr.safetensors", _RLFN, 4, None,
               note="shipped; RLFN fine-tuned by this project on traffic degradations (L1), then with a plate "
                    "reader's loss, from bytedance/RLFN (Apache-2.0, ultrares-traffic-x4.NOTICE.md): for GPUs "
                    "and recorded footage"),
    ModelEntry("ultrares-traffic-x4-gan", "ultrares-traffic-x4-gan.safetensors", _RLFN, 4, None,
               note="shipped; fine-tuned from ultrares-traffic-x4-psnr (L1 + perceptual + RaGAN)"),
    ModelEntry("RRDB_PSNR_x4", "RRDB_PSNR_x4.pth", _RRDB, 4, _GDRIVE + "1pJ_T-V1dpb1ewoEra1TGSWl5e6H7M4NN",
               size_bytes=66_900_000, note="ESRGAN paper, PSNR-oriented; no hash published upstream"),
    ModelEntry("RRDB_ESRGAN_x4", "RRDB_ESRGAN_x4.pth", _RRDB, 4, _GDRIVE + "1TPrz5QKd8DHHt1k8SRtm6tMiPjz_Qene",
               size_bytes=66_900_000, note="ESRGAN paper, final GAN model; no hash published upstream"),
    ModelEntry("RealESRNet_x4plus", "RealESRNet_x4plus.pth", _RRDB, 4, f"{_RE}/v0.1.1/RealESRNet_x4plus.pth",
               size_bytes=67_000_000, note="Real-ESRGAN, L1-trained on synthetic degradations"),
    ModelEntry("RealESRGAN_x4plus", "RealESRGAN_x4plus.pth", _RRDB, 4, f"{_RE}/v0.1.0/RealESRGAN_x4plus.pth",
               size_bytes=67_000_000, note="Real-ESRGAN, GAN-trained"),
    ModelEntry("realesr-general-x4v3", "realesr-general-x4v3.pth", _COMPACT, 4,
               f"{_RE}/v0.2.5.0/realesr-general-x4v3.pth", size_bytes=4_900_000,
               note="Real-ESRGAN general compact (denoising)"),
    ModelEntry("realesr-general-wdn-x4v3", "realesr-general-wdn-x4v3.pth", _COMPACT, 4,
               f"{_RE}/v0.2.5.0/realesr-general-wdn-x4v3.pth", size_bytes=4_900_000,
               note="Real-ESRGAN general compact, weak denoise (keeps texture)"),
    ModelEntry("realesr-animevideov3", "realesr-animevideov3.pth", _COMPACT, 4,
               f"{_RE}/v0.2.5.0/realesr-animevideov3.pth", size_bytes=2_334_339,
               sha256="4e1e09ba96d08bd4b8455e8897c3242a3501e3766f359941ea894122e158a932",
               note="Real-ESRGAN anime video compact"),
    ModelEntry("rlfn-x4", "rlfn_x4.pth", _RLFN, 4, f"{_RLFN_ZOO}/rlfn_x4.pth", size_bytes=2_212_893,
               sha256="8c7edb57dfc89048bafba29d591d4c27d4099964b4a9e22df23d6dc257a637c0",
               note="RLFN (Apache-2.0), PSNR-oriented, clean bicubic pairs"),
    ModelEntry("rlfn-s-x4", "rlfn_s_x4.pth", _RLFN, 4, f"{_RLFN_ZOO}/rlfn_s_x4.pth", size_bytes=1_919_005,
               sha256="f769c5a88433786b2db0c2b24da6ca6c92a24c62344b9354a390f8a74388e89d",
               note="RLFN-S (Apache-2.0), PSNR-oriented, clean bicubic pairs"),
    ModelEntry("span-ch28-x4", "span_ch28_x4.pth", _SPAN, 4, f"{_SPAN_ZOO}/team38_span_ch28_slim.pth",
               size_bytes=618_658, sha256="6c80f05048313289c6526e5fc9726688d7bb3dfdd6ae3c8b1e7dd09f601e5971",
               note="SPAN 28 ch, collapsed (MIT), PSNR-oriented, clean bicubic pairs"),
]}

#: pair name -> (PSNR-oriented entry, GAN-oriented entry); alpha goes from the first to the second.
PAIRS: dict[str, tuple[str, str]] = {
    "ultrares-compact-x4": ("ultrares-compact-x4-psnr", "ultrares-compact-x4-gan"),
    "ultrares-wide-x4": ("ultrares-wide-x4-psnr", "ultrares-wide-x4-gan"),
    "ultrares-traffic-x4": ("ultrares-traffic-x4-psnr", "ultrares-traffic-x4-gan"),
    "esrgan-x4": ("RRDB_PSNR_x4", "RRDB_ESRGAN_x4"),
    "realesrgan-x4plus": ("RealESRNet_x4plus", "RealESRGAN_x4plus"),
    "realesr-general-x4v3": ("realesr-general-x4v3", "realesr-general-wdn-x4v3"),
}


@dataclass
class ResolvedModel:
    """The state dicts behind a model spec: one network, or a PSNR/GAN pair."""

    name: str
    psnr: StateDict
    gan: StateDict | None = None

    @property
    def is_pair(self) -> bool:
        return self.gan is not None


def local_path(entry: ModelEntry) -> Path | None:
    """Where an entry's file is on this machine, or None."""
    if entry.url is None:
        path = SHIPPED_WEIGHTS_DIR / entry.filename
        return path if path.is_file() else None
    for folder in (weights_dir(), cache_dir(), data_dir() / "weights"):
        if folder is not None and (folder / entry.filename).is_file():
            return folder / entry.filename
    return None


def entry_path(name: str, download: bool | None = None) -> Path:
    """Path of a registry entry's weights, downloading them if allowed and needed."""
    if name not in ENTRIES:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(set(ENTRIES) | set(PAIRS)))}")
    entry = ENTRIES[name]
    path = local_path(entry)
    if path is not None:
        return path
    if entry.url is None:
        raise ModelError(f"shipped weights {entry.filename} are missing from {SHIPPED_WEIGHTS_DIR}")
    if download is None:
        download = os.environ.get("ULTRARES_OFFLINE", "") not in ("1", "true", "yes")
    if not download:
        raise ModelError(f"{name} is not available locally (put {entry.filename} in ULTRARES_WEIGHTS_DIR "
                         f"or run `ultrares models --fetch {name}`)")
    return fetch(entry)


def fetch(entry: ModelEntry, dest_dir: Path | None = None) -> Path:
    """Download an entry into the cache with a progress bar; verify size and hash; rename on success."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    dest_dir = dest_dir or cache_dir()
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / entry.filename
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{entry.filename}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry.url, timeout=30) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                          TransferSpeedColumn()) as bar:
                task = bar.add_task(f"downloading {entry.filename}", total=total)
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(task, advance=len(chunk))
        verify_download(entry, Path(tmp_name), digest.hexdigest())
        shutil.move(tmp_name, dest)
    except OSError as exc:
        raise ModelError(f"could not download {entry.name} from {entry.url}: {exc}") from None
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return dest


def verify_download(entry: ModelEntry, path: Path, sha256: str) -> None:
    """Check a downloaded file against the published hash (full or prefix) and size, and that it loads."""
    if entry.sha256 and sha256 != entry.sha256:
        raise ModelError(f"{entry.filename}: sha256 {sha256} does not match the published {entry.sha256}")
    if entry.sha256_prefix and not sha256.startswith(entry.sha256_prefix):
        raise ModelError(f"{entry.filename}: sha256 {sha256[:12]}... does not start with {entry.sha256_prefix}")
    size = path.stat().st_size
    if entry.size_bytes and not 0.9 * entry.size_bytes <= size <= 1.1 * entry.size_bytes:
        raise ModelError(f"{entry.filename}: {size} bytes, expected about {entry.size_bytes}")
    spec = infer_arch(read_checkpoint(path), entry.filename)
    if spec.arch != entry.arch or spec.scale != entry.scale:
        raise ModelError(f"{entry.filename}: holds {spec.describe()}, expected {entry.arch} x{entry.scale}")


def resolve(spec: str | None = None, download: bool | None = None, device_type: str = "cpu") -> ResolvedModel:
    """Turn a model spec into state dicts (see the module docstring); no spec: the device's default."""
    spec = spec or default_model(device_type)
    if spec in PAIRS:
        a, b = PAIRS[spec]
        return ResolvedModel(spec, read_checkpoint(entry_path(a, download)), read_checkpoint(entry_path(b, download)))
    if spec in ENTRIES:
        return ResolvedModel(spec, read_checkpoint(entry_path(spec, download)))
    if "+" in spec:
        a, b = spec.split("+", 1)  # named by file stems: status pages must not show server paths
        return ResolvedModel(f"{Path(a).stem}+{Path(b).stem}", read_checkpoint(a), read_checkpoint(b))
    path = Path(spec).expanduser()
    if path.suffix in (".pth", ".pt", ".safetensors") or path.exists():
        return ResolvedModel(path.stem, read_checkpoint(path))
    raise ModelError(f"unknown model {spec!r}; known: {', '.join(sorted(set(ENTRIES) | set(PAIRS)))} "
                     "or a .pth/.safetensors path (two joined by '+' for a PSNR+GAN pair)")
