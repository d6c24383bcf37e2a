"""Engine cache: compiled engine artefacts on disk, keyed by everything that makes them valid.

An entry is a folder ``<root>/<digest>/`` holding the artefact (``engine.pt2``) and
``meta.json`` (the full key, the artefact's SHA-256 and size, when it was built).
The digest covers the model weights hash, architecture (layers and activations, not only
parameter shapes), backend, precision, shape ranges, the build settings (:func:`settings_string`
of the backend's build options), GPU name and compute capability, and the torch / torch-tensorrt / TensorRT
versions, so an engine is only ever reused where it was built for.

Entries whose keys differ only in the weights (one :meth:`EngineKey.structure_digest`) are
*variants* of one engine, e.g. one per alpha of a model pair. Each engine keeps its
:data:`KEEP_VARIANTS` most recently used variants (``EngineCache(keep_variants=...)``): after a
``save``, the least recently used ones beyond that are evicted (:func:`evictable`), never the entry
just written, never another engine's. An entry's last use is the modification time of its
``meta.json``, set when it is saved and each time it is loaded; the artefact is never rewritten.

Nothing here crashes the service: an entry whose artefact is missing, truncated,
altered or refuses to load is logged, deleted and rebuilt. Entries built by other
versions or GPUs are *stale*: never loaded, listed as such, removed by ``prune``.
An entry removed by another process meanwhile is skipped.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import UserError
from ..settings import engine_cache_dir

log = logging.getLogger(__name__)

FORMAT = 2  # bump when the on-disk layout changes; older entries become stale
ARTEFACT = "engine.pt2"  # torch.export / torch_tensorrt.save archives
META = "meta.json"  # its modification time is the entry's last use (save or load)
KEEP_VARIANTS = 8  # weight sets (alphas) kept per engine structure, most recently used


@dataclass(frozen=True)
class ShapeRange:
    """Input shapes an engine accepts: batch and spatial (input pixels) min / opt / max."""

    batch: tuple[int, int, int] = (1, 4, 8)
    height: tuple[int, int, int] = (270, 540, 720)  # as config.DEFAULT_ENGINE_SHAPE: 704x576 and 1280x720 fit
    width: tuple[int, int, int] = (480, 960, 1280)
    channels: int = 3

    def __post_init__(self) -> None:
        for name in ("batch", "height", "width"):
            lo, opt, hi = getattr(self, name)
            if not (1 <= lo <= opt <= hi):
                raise UserError(f"{name} range must satisfy 1 <= min <= opt <= max, got {lo}/{opt}/{hi}")

    def shape(self, which: int) -> tuple[int, int, int, int]:
        """NCHW shape for 0 = min, 1 = opt, 2 = max."""
        return (self.batch[which], self.channels, self.height[which], self.width[which])

    @property
    def min_shape(self) -> tuple[int, int, int, int]:
        return self.shape(0)

    @property
    def opt_shape(self) -> tuple[int, int, int, int]:
        return self.shape(1)

    @property
    def max_shape(self) -> tuple[int, int, int, int]:
        return self.shape(2)

    def accepts(self, shape: tuple[int, ...] | torch.Size) -> bool:
        n, c, h, w = tuple(shape)
        return (c == self.channels and self.batch[0] <= n <= self.batch[2]
                and self.height[0] <= h <= self.height[2] and self.width[0] <= w <= self.width[2])

    def describe(self) -> str:
        b, h, w = self.batch, self.height, self.width
        return f"batch {b[0]}-{b[2]} (opt {b[1]}), {w[0]}x{h[0]} to {w[2]}x{h[2]} (opt {w[1]}x{h[1]})"

    @classmethod
    def parse(cls, sizes: str, batch: str | tuple[int, int, int] = (1, 4, 8)) -> ShapeRange:
        """``960x540`` or ``480x270:960x540:1920x1080`` (input frame sizes, MIN:OPT:MAX) and a batch
        range ``1:4:8`` (or one number, exactly that batch) -> a ShapeRange."""
        from ..sizes import parse_size_range

        if isinstance(batch, str):
            try:
                nums = tuple(int(p) for p in batch.split(":"))
            except ValueError:
                nums = ()
            if len(nums) not in (1, 3):
                raise UserError(f"batch range {batch!r}: expected MIN:OPT:MAX or one number, e.g. 1:4:8")
            batch = nums * 3 if len(nums) == 1 else nums
        parsed = parse_size_range(sizes)
        return cls(batch=tuple(batch), width=tuple(s[0] for s in parsed), height=tuple(s[1] for s in parsed))

    @classmethod
    def for_frames(cls, width: int, height: int, max_batch: int = 8, opt_batch: int | None = None) -> ShapeRange:
        """A range for one frame size (static spatial dims), batches 1..max_batch."""
        opt = opt_batch or max(1, min(max_batch, 4))
        return cls(batch=(1, opt, max_batch), height=(height, height, height), width=(width, width, width))


def settings_string(options: dict[str, Any]) -> str:
    """Build options as one stable string for :class:`EngineKey` (sorted ``key=value``; sets sorted)."""
    def text(v: Any) -> str:
        if isinstance(v, (set, frozenset, list, tuple)):
            return "[" + ",".join(sorted(text(x) for x in v)) + "]"
        return str(v)

    return ";".join(f"{k}={text(v)}" for k, v in sorted(options.items()))


def device_fingerprint(device: torch.device | str = "cuda") -> dict[str, str]:
    """GPU name and compute capability (``cpu`` on the CPU), and the library versions."""
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu, cc = props.name, f"{props.major}.{props.minor}"
    else:
        gpu, cc = "cpu", "-"
    return {"gpu": gpu, "compute_capability": cc, "torch": torch.__version__,
            "torch_tensorrt": _version("torch_tensorrt"), "tensorrt": _version("tensorrt")}


def _version(module: str) -> str:
    """Installed version of a distribution, without importing it (importing TensorRT is slow and may raise)."""
    from importlib import metadata

    names = {"torch_tensorrt": ("torch-tensorrt", "torch_tensorrt"),
             "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt_cu12", "tensorrt-cu13", "tensorrt_cu13")}
    for name in names.get(module, (module,)):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "none"


@dataclass(frozen=True)
class EngineKey:
    """Everything a compiled engine depends on. Two keys with one field different name different engines."""

    model_hash: str
    arch: str
    backend: str
    precision: str
    shapes: ShapeRange
    gpu: str
    compute_capability: str
    torch: str
    torch_tensorrt: str
    tensorrt: str
    settings: str = ""  # the backend's build options (settings_string); "" in FORMAT 1 entries

    @classmethod
    def for_device(cls, *, model_hash: str, arch: str, backend: str, precision: str, shapes: ShapeRange,
                   device: torch.device | str = "cuda", fingerprint: dict[str, str] | None = None,
                   settings: str = "") -> EngineKey:
        env = fingerprint if fingerprint is not None else device_fingerprint(device)
        return cls(model_hash=model_hash, arch=arch, backend=backend, precision=precision, shapes=shapes,
                   settings=settings, **env)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shapes"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["shapes"].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineKey:
        d = dict(d)
        s = d["shapes"]
        d["shapes"] = ShapeRange(batch=tuple(s["batch"]), height=tuple(s["height"]), width=tuple(s["width"]),
                                 channels=int(s.get("channels", 3)))
        return cls(**d)

    def digest(self) -> str:
        """Folder name of the entry: a hash of every field and the cache format."""
        blob = json.dumps({"format": FORMAT, **self.to_dict()}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    def structure_digest(self) -> str:
        """The digest without the weights: entries sharing it hold the same engine up to its weights,
        so a refittable one can be refitted instead of rebuilt."""
        return dataclasses.replace(self, model_hash="*").digest()


@dataclass
class CacheEntry:
    """One folder in the cache, as ``ultrares engine list`` shows it."""

    path: Path
    key: EngineKey | None
    size_bytes: int
    created: float
    refittable: bool
    state: str  # "ok", "stale" (other versions / GPU / format) or "corrupt" (unreadable meta)
    used: float = 0.0  # last save or load (meta.json's modification time)


def evictable(entries: list[CacheEntry], saved: EngineKey, keep: int) -> list[CacheEntry]:
    """The entries to remove once ``saved`` is written, least recently used first: the intact
    variants of its engine (same :meth:`EngineKey.structure_digest`, other weights) beyond the
    ``keep`` most recently used, ``saved`` itself counted first and never returned. Entries of
    other structures are not considered, nor stale or corrupt ones (``prune`` removes those)."""
    want = saved.structure_digest()
    variants = [e for e in entries if e.state == "ok" and e.key is not None and e.path.name != saved.digest()
                and e.key.structure_digest() == want]
    variants.sort(key=lambda e: (e.used, e.created, e.path.name), reverse=True)
    return variants[max(keep - 1, 0):][::-1]


class EngineCache:
    """Engine artefacts on disk. ``save`` / ``load`` take the backend's own save and load functions;
    each engine structure keeps its ``keep_variants`` most recently used weight sets."""

    def __init__(self, root: str | Path | None = None, keep_variants: int = KEEP_VARIANTS):
        if keep_variants < 1:
            raise UserError(f"keep_variants must be at least 1 (the entry just saved), got {keep_variants}")
        self.root = Path(root) if root is not None else engine_cache_dir()
        self.keep_variants = keep_variants

    def path_for(self, key: EngineKey) -> Path:
        return self.root / key.digest()

    def load(self, key: EngineKey, loader: Callable[[Path], Any]) -> Any | None:
        """The cached engine for ``key``, or None when absent; a corrupt entry is removed (-> rebuild)."""
        entry = self.path_for(key)
        if not entry.exists():
            return None
        problem = self._check(entry, key)
        if problem is None:
            try:
                obj = loader(entry / ARTEFACT)
            except Exception as exc:  # any backend failure loading a bad artefact
                problem = f"artefact does not load ({exc.__class__.__name__}: {exc})"
            else:
                _touch(entry / META)
                log.info("engine cache hit: %s (%s)", entry.name, key.backend)
                return obj
        log.warning("engine cache entry %s is unusable (%s); removing it, the engine will be rebuilt",
                    entry, problem)
        self.remove(entry)
        return None

    def save(self, key: EngineKey, saver: Callable[[Path], None], refittable: bool = False) -> Path | None:
        """Write an entry atomically (temporary folder, then rename), then evict the least recently
        used variants of its engine beyond ``keep_variants``. Failures are logged, not raised: a
        cache that cannot be written costs a rebuild next start, nothing more."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=self.root))
            try:
                saver(tmp / ARTEFACT)
                artefact = tmp / ARTEFACT
                meta = {"format": FORMAT, "key": key.to_dict(), "sha256": _sha256(artefact),
                        "size_bytes": artefact.stat().st_size, "created": time.time(), "refittable": refittable}
                (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
                _touch(tmp / META)
                dest = self.path_for(key)
                if dest.exists():
                    self.remove(dest)
                os.replace(tmp, dest)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        except Exception as exc:
            log.warning("could not write engine cache entry for %s in %s (%s: %s)", key.backend, self.root,
                        exc.__class__.__name__, exc)
            return None
        log.info("engine cached: %s (%s, %s)", dest, key.backend, key.shapes.describe())
        self._evict(key)
        return dest

    def _evict(self, saved: EngineKey) -> None:
        """Remove the variants of ``saved``'s engine that :func:`evictable` names, one log line each.
        Never raises: an eviction that fails costs disk space, nothing more."""
        try:
            for entry in evictable(self.entries(), saved, self.keep_variants):
                self.remove(entry.path)
                log.info("engine cache: evicted %s (%s, weights %s; the %d most recently used variants stay)",
                         entry.path.name, entry.key.backend, entry.key.model_hash, self.keep_variants)
        except Exception as exc:
            log.warning("could not evict old engine cache entries in %s (%s: %s)", self.root,
                        exc.__class__.__name__, exc)

    def get_or_build(self, key: EngineKey, build: Callable[[], Any], saver: Callable[[Any, Path], None],
                     loader: Callable[[Path], Any], refittable: bool = False) -> tuple[Any, str]:
        """Load ``key`` or build it (and cache it). Returns (engine, "hit" | "built")."""
        obj = self.load(key, loader)
        if obj is not None:
            return obj, "hit"
        t0 = time.perf_counter()
        obj = build()
        log.info("built %s engine in %.1f s", key.backend, time.perf_counter() - t0)
        self.save(key, lambda path: saver(obj, path), refittable=refittable)
        return obj, "built"

    def find_refittable(self, key: EngineKey) -> Path | None:
        """An intact refittable entry with the same engine structure as ``key`` but other weights."""
        want = key.structure_digest()
        for entry in self.entries():
            if (entry.state == "ok" and entry.refittable and entry.key is not None
                    and entry.key.structure_digest() == want and entry.key != key):
                return entry.path
        return None

    def entries(self, fingerprint: dict[str, str] | None = None) -> list[CacheEntry]:
        """Every entry, newest first. With ``fingerprint`` (see :func:`device_fingerprint`), entries
        built for another GPU or other library versions are marked stale."""
        if not self.root.is_dir():
            return []
        out = []
        for path in self.root.iterdir():
            if not path.is_dir() or path.name.startswith("."):
                continue
            try:
                meta = json.loads((path / META).read_text())
                used = (path / META).stat().st_mtime
                key = EngineKey.from_dict(meta["key"])
                state = "ok"
                if meta.get("format") != FORMAT or key.digest() != path.name:
                    state = "stale"
                elif fingerprint is not None and any(getattr(key, k) != v for k, v in fingerprint.items()):
                    state = "stale"
                out.append(CacheEntry(path, key, int(meta.get("size_bytes", 0)), float(meta.get("created", 0)),
                                      bool(meta.get("refittable", False)), state, used))
            except (OSError, ValueError, KeyError, TypeError, UserError):
                try:
                    mtime = path.stat().st_mtime
                    out.append(CacheEntry(path, None, _folder_size(path), mtime, False, "corrupt", mtime))
                except OSError:  # removed by another process meanwhile
                    continue
        return sorted(out, key=lambda e: e.created, reverse=True)

    def prune(self, fingerprint: dict[str, str] | None = None) -> list[Path]:
        """Remove stale and corrupt entries; returns what was removed."""
        removed = [e.path for e in self.entries(fingerprint) if e.state != "ok"]
        for path in removed:
            self.remove(path)
        return removed

    def remove(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def _check(entry: Path, key: EngineKey) -> str | None:
        try:
            meta = json.loads((entry / META).read_text())
        except (OSError, ValueError) as exc:
            return f"meta.json unreadable: {exc}"
        if meta.get("format") != FORMAT:
            return f"cache format {meta.get('format')} (this version writes {FORMAT})"
        try:
            if EngineKey.from_dict(meta["key"]) != key:
                return "key in meta.json does not match"
        except (KeyError, TypeError, ValueError, UserError) as exc:
            return f"key in meta.json unreadable: {exc}"
        artefact = entry / ARTEFACT
        if not artefact.is_file():
            return "artefact missing"
        if artefact.stat().st_size != meta.get("size_bytes") or _sha256(artefact) != meta.get("sha256"):
            return "artefact checksum mismatch (truncated or altered)"
        return None


def _touch(meta: Path) -> None:
    """Record a use of an entry: its ``meta.json``'s modification time becomes now (exact, not the
    file system's coarse clock). Never creates the file: an entry removed meanwhile stays removed;
    a read-only cache keeps its old times."""
    now = time.time_ns()
    try:
        os.utime(meta, ns=(now, now))
    except OSError:
        pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
