"""``ultrares engine``: build TensorRT engines ahead of time, list and prune the engine cache."""
from __future__ import annotations

import argparse
import logging

from ..config import DEFAULT_ENGINE_SHAPE
from .options import add_device

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("engine", help="build TensorRT engines ahead of time; list or prune the engine cache",
                       description="Compiled engines are cached (ULTRARES_ENGINE_CACHE, default engines/cache), keyed "
                                   "by model weights, precision, shape ranges, GPU and library versions, and reused "
                                   "on the next start. Build them ahead of time so a camera starts at once.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    b = actions.add_parser("build", help="build (or verify) the TensorRT engine for a model and shape range",
                           description="Build a refittable TensorRT engine for MODEL at ALPHA and store it in the "
                                       "cache. Needs CUDA and the tensorrt extra "
                                       "(pip install 'ultrares-stream[tensorrt]').")
    b.add_argument("--model", default=None, help="model name, pair or checkpoint path (default: the shipped pair)")
    b.add_argument("--alpha", type=float, default=0.5, help="PSNR -> GAN interpolation to build with (default 0.5; "
                                                            "other alphas are refitted, not rebuilt)")
    b.add_argument("--batch", default="1:4:4", metavar="MIN:OPT:MAX",
                   help="batch sizes the engine accepts, MIN:OPT:MAX or one number (default 1:4:4, as a "
                        "service with the default max_batch 4 on CUDA)")
    b.add_argument("--shape", default=DEFAULT_ENGINE_SHAPE, metavar="WxH[:WxH:WxH]",
                   help="input frame size, or MIN:OPT:MAX sizes for a dynamic range (default "
                        f"{DEFAULT_ENGINE_SHAPE}, as the service's inference.engine_shape)")
    b.add_argument("--config", metavar="FILE",
                   help="take the batch and shape range from this service config (inference.max_batch and "
                        "inference.engine_shape), so `ultrares serve` reuses the engine; overrides --batch/--shape")
    b.add_argument("--precision", default="auto", choices=["auto", "fp16", "bf16", "fp32"],
                   help="engine precision (default auto = fp16 on CUDA)")
    add_device(b, default="cuda")
    b.set_defaults(func=build)

    ls = actions.add_parser("list", help="show the engine cache",
                            description="List cached engines; entries built for another GPU or other torch / "
                                        "TensorRT versions are marked stale (never loaded; `engine prune` removes them).")
    ls.set_defaults(func=list_entries)

    pr = actions.add_parser("prune", help="remove stale and corrupt cache entries")
    pr.set_defaults(func=prune)


def build(args: argparse.Namespace) -> int:
    from ..engine.base import pick_device, pick_precision
    from ..engine.cache import EngineCache, ShapeRange
    from ..engine.tensorrt import TensorRTEngine
    from ..models.checkpoint import infer_arch
    from ..models.interpolation import check_alpha, interpolate
    from ..models.registry import resolve

    if args.config:  # exactly the range `ultrares serve --config` builds, so the service reuses it
        from ..config import load_config

        shapes = load_config(args.config).inference.engine_shapes("cuda")
    else:
        shapes = ShapeRange.parse(args.shape, args.batch)
    alpha = check_alpha(args.alpha)
    device = pick_device(args.device)
    precision = pick_precision(args.precision, device)
    resolved = resolve(args.model)
    weights = interpolate(resolved.psnr, resolved.gan, alpha) if resolved.gan is not None else resolved.psnr
    arch = infer_arch(weights, resolved.name)
    cache = EngineCache()
    engine = TensorRTEngine(arch.build(), device, precision, shapes=shapes, cache=cache)
    engine.load_weights(weights)
    print(f"{resolved.name} ({arch.describe()}), alpha {alpha}, {precision}, {shapes.describe()}: "
          f"{engine.last_weights_update} -> {cache.root}")
    return 0


def list_entries(args: argparse.Namespace) -> int:
    import datetime

    import torch

    from ..engine.cache import EngineCache, device_fingerprint

    cache = EngineCache()
    fingerprint = device_fingerprint("cuda") if torch.cuda.is_available() else None
    entries = cache.entries(fingerprint)
    print(f"engine cache: {cache.root} ({len(entries)} entr{'y' if len(entries) == 1 else 'ies'})")
    for e in entries:
        built = datetime.datetime.fromtimestamp(e.created).strftime("%Y-%m-%d %H:%M")
        state = e.state + (", refittable" if e.refittable else "")
        if e.key is None:
            print(f"{e.path.name}  [{state}]  unreadable meta.json, {e.size_bytes / 1e6:.1f} MB")
            continue
        k = e.key
        print(f"{e.path.name}  [{state}]  {k.backend} {k.precision}  {k.arch}  weights {k.model_hash}\n"
              f"    shapes: {k.shapes.describe()}\n"
              f"    built for: {k.gpu} (compute {k.compute_capability}), torch {k.torch}, "
              f"torch-tensorrt {k.torch_tensorrt}, TensorRT {k.tensorrt}\n"
              f"    {e.size_bytes / 1e6:.1f} MB, built {built}")
    if not entries:
        print("no engines cached (build one with `ultrares engine build`)")
    if any(e.state != "ok" for e in entries):
        print("stale / corrupt entries are never loaded; `ultrares engine prune` removes them")
    return 0


def prune(args: argparse.Namespace) -> int:
    import torch

    from ..engine.cache import EngineCache, device_fingerprint

    cache = EngineCache()
    removed = cache.prune(device_fingerprint("cuda") if torch.cuda.is_available() else None)
    print(f"removed {len(removed)} stale or corrupt entr{'y' if len(removed) == 1 else 'ies'} from {cache.root}")
    return 0
