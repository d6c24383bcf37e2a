"""int8 for the OpenVINO engine: NNCF post-training quantisation, calibrated on traffic frames.

:func:`quantise` takes an OpenVINO model holding real weights (``Graph.with_weights``) and
returns NNCF's int8 version of it: weights quantised per output channel, activations per tensor,
their ranges measured on calibration frames. Only the convolutions' inputs are quantised
(:data:`FLOAT_TYPES`), and nothing after the last convolutions (:func:`tail_ops`): quantising the
pixel shuffle and the input's residual rounds the output image itself to a coarser grid than
uint8 (0.07 dB of traffic PSNR on the compact pair). The first convolution (it reads the image)
and the last (the upsampler's, it writes the output's sub-pixels) stay in float too
(:func:`end_convs`): measured one conv at a time on the traffic pair, they and the conv before
the upsampler carry most of the int8 error (30 %, 20 % and 9 % of it; no other conv over 5 %).
The CPU plugin runs the quantised convolutions in int8 (VNNI where the CPU has it) and the rest
in fp32.

Calibration frames (:func:`traffic_frames`) are camera-resolution inputs like the network sees
live: frames spread over the first half of each clip in ``$ULTRARES_DATA/video`` (the half the
traffic evaluation does not score), shrunk x4 with MATLAB bicubic as the evaluation's LR is.
Without clips, the demo's generated traffic scene is used, and the log says so. The frames are
read once a process; each weight set (alpha) is quantised again on them, off the frame path
(:meth:`~ultrares_stream.engine.openvino.OpenVINOEngine.prepare_weights`).

A quantised model is cached on disk (:func:`cached_quantise`): the IR (``openvino.save_model``)
in an entry of the engine cache, keyed by the weights, the settings, the calibration frames, the
input shape policy and the OpenVINO / NNCF versions (:func:`int8_key`), so a later start (or
``auto``'s timing of the same weights) reads it instead of quantising again.

int8 runs when asked for (``--precision int8``, ``inference.precision: int8``), and ``auto``
(engine and precision) also times it for the pairs of :data:`INT8_VERDICTS` that pass the quality
rule (:data:`MAX_LOSS_DB`, plate score not lower). The measured losses are in
docs/benchmarks.md ("int8 (NNCF) on the CPU").
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .cache import EngineCache, EngineKey, ShapeRange, settings_string

log = logging.getLogger(__name__)

CALIBRATION_FRAMES = 96  # frames the activation ranges are measured on (24: 0.003 dB worse on the traffic pair)
CALIBRATION_SCALE = 4  # clip frames are shrunk by this to camera resolution (the evaluation's LR)
Calibration = Callable[[], list[np.ndarray]]  # -> NCHW float32 frames in [0, 1], batch 1


#: ops left in float: only the convolutions' inputs are quantised. RLFN's residual adds and its
#: attention's (ESA) pooling, interpolation and sigmoid gate quantised too cost 0.59 dB on traffic
FLOAT_TYPES = ("Add", "Multiply", "Interpolate", "MaxPool", "Sigmoid")


@dataclass(frozen=True)
class QuantiseSettings:
    """NNCF's knobs (``nncf.quantize``): ``preset`` ``performance`` (symmetric activations) or
    ``mixed`` (asymmetric activations: ranges that do not straddle zero, as after a ReLU);
    ``fast_bias_correction``: the cheap bias correction (False: the slower full one)."""

    preset: str = "mixed"
    fast_bias_correction: bool = True
    subset_size: int = CALIBRATION_FRAMES
    float_tail: bool = True  # the ops after the last convolutions (pixel shuffle, the input's residual) in float
    float_first: int = 1  # convolutions left in float from the input on (graph order): the 3-channel one
    float_last: int = 1  # convolutions left in float before the output: the upsampler's (writes the sub-pixels)
    float_types: tuple[str, ...] = FLOAT_TYPES  # OpenVINO op types whose inputs are not quantised
    float_patterns: tuple[str, ...] = ()  # regular expressions of op names left in float (e.g. ".*esa.*")
    ranges: str = "mean_minmax"  # activation range estimator: RangeEstimatorParametersSet's name, lower case
    overflow_fix: str = "first_layer_only"  # 7-bit weights (CPUs without VNNI): enable, first_layer_only, disable


DEFAULT_SETTINGS = QuantiseSettings()

#: the quality rule for int8 beside the other precisions: a traffic-protocol PSNR loss of at most
#: this against fp32, and a plate score not lower
MAX_LOSS_DB = 0.05


@dataclass(frozen=True)
class Int8Verdict:
    """int8 (:data:`DEFAULT_SETTINGS`) of one pair against OpenVINO fp32 at alpha 0, measured by
    ``scripts/int8_eval.py --plates`` (docs/benchmarks.md, "int8 (NNCF) on the CPU")."""

    loss_db: float  # traffic-protocol PSNR-Y, int8 minus fp32 (negative: a loss)
    plates: float | None  # plate character accuracy, int8 minus fp32; None: not measured
    speedup: float  # model alone, int8 / eager bf16 side by side (``bench --matrix``)

    def passes(self) -> bool:
        """Within the loss, plates not lower, and faster than eager bf16 where it was measured (a
        pair int8 does not speed up would cost every start a quantisation for its timing)."""
        return (self.loss_db >= -MAX_LOSS_DB and self.plates is not None and self.plates >= 0
                and self.speedup > 1.0)


#: the measured pairs: ``--engine auto --precision auto`` times int8 beside the fp32/bf16 engines
#: only for a pair whose verdict passes (:func:`int8_passed`); others run int8 only when asked for
INT8_VERDICTS: dict[str, Int8Verdict] = {
    "ultrares-traffic-x4": Int8Verdict(loss_db=-0.031, plates=+0.006, speedup=1.75),
    "ultrares-compact-x4": Int8Verdict(loss_db=-0.002, plates=+0.001, speedup=0.97),  # no faster
    "ultrares-wide-x4": Int8Verdict(loss_db=-0.004, plates=-0.003, speedup=1.86),  # plates lower
}


def int8_passed(pair: str | None) -> bool:
    """``pair``'s int8 met :data:`MAX_LOSS_DB` and kept its plate score (:data:`INT8_VERDICTS`)."""
    verdict = INT8_VERDICTS.get(pair or "")
    return verdict is not None and verdict.passes()


@functools.lru_cache(maxsize=1)
def nncf_available() -> tuple[bool, str]:
    """(usable, reason): nncf imports (the extra ``int8``: ``pip install 'ultrares-stream[int8]'``)."""
    try:
        import nncf
    except Exception as exc:  # ImportError, or a broken dependency of it
        return False, f"nncf cannot be imported ({exc.__class__.__name__}: {str(exc).splitlines()[0][:160]})"
    return True, f"nncf {nncf.__version__}"


def _nncf():
    ok, why = nncf_available()
    if not ok:
        raise UserError(f"int8 needs NNCF: {why} (pip install 'ultrares-stream[int8]')")
    import nncf

    return nncf


def quantise(model: Any, frames: list[np.ndarray], settings: QuantiseSettings = DEFAULT_SETTINGS) -> Any:
    """NNCF's int8 version of the OpenVINO ``model`` (real weights), calibrated on ``frames``."""
    nncf = _nncf()
    if not frames:
        raise UserError("int8: no calibration frames")
    presets = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}
    names = (tail_ops(model) if settings.float_tail else []) + end_convs(model, settings.float_first,
                                                                          settings.float_last)
    ignored = nncf.IgnoredScope(names=names,
                                types=list(settings.float_types), patterns=list(settings.float_patterns),
                                validate=False)
    nncf.set_log_level(logging.WARNING)  # its INFO lines name every op left in float
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bar: stdout is for output (bench --json)
        quantised = nncf.quantize(model, nncf.Dataset(frames), preset=presets[settings.preset],
                                  target_device=nncf.TargetDevice.CPU,
                                  subset_size=min(settings.subset_size, len(frames)),
                                  fast_bias_correction=settings.fast_bias_correction, ignored_scope=ignored,
                                  advanced_parameters=_advanced(settings))
    log.info("quantised to int8 in %.1f s on %d calibration frames (%s)", time.perf_counter() - t0,
             len(frames), settings)
    return quantised


INT8_FORMAT = 1  # bump when the cached quantised model's layout changes
#: the graph's input (``openvino.convert``): part of the cached model's key
INPUT_POLICY = "NCHW, 3 channels, dynamic batch, height and width"
Quantiser = Callable[[Any, list[np.ndarray], QuantiseSettings], Any]  # :func:`quantise`'s signature


def frames_digest(frames: list[np.ndarray]) -> str:
    """The calibration frames' identity: a hash of their count, shapes, types and pixels."""
    h = hashlib.sha256(f"{len(frames)}".encode())
    for f in frames:
        a = np.ascontiguousarray(f)
        h.update(f"|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def library_versions() -> dict[str, str]:
    """The OpenVINO and NNCF versions a quantised model was made with (cache key)."""
    import openvino

    return {"openvino": openvino.__version__, "nncf": _nncf().__version__}


def int8_key(*, weights: str, arch: str, calibration: str, settings: QuantiseSettings = DEFAULT_SETTINGS,
             input_policy: str = INPUT_POLICY, graph_format: int = 1) -> EngineKey:
    """The engine-cache key of the quantised model of ``weights`` (a state-dict hash) for ``arch``,
    calibrated on frames of digest ``calibration``, with ``settings``."""
    fields = {f"quantise.{k}": v for k, v in dataclasses.asdict(settings).items()}
    options = {**fields, **library_versions(), "calibration": calibration, "input": input_policy,
               "graph": graph_format, "format": INT8_FORMAT}
    return EngineKey.for_device(model_hash=weights, arch=arch, backend="openvino-int8", precision="int8",
                                shapes=ShapeRange(), device="cpu", settings=settings_string(options))


@dataclass(frozen=True)
class IRStore:
    """How a quantised model is written to and read from one artefact file (the OpenVINO engine's
    :func:`~ultrares_stream.engine.openvino.save_ir` / ``read_ir``)."""

    save: Callable[[Any, Path], None]
    load: Callable[[Path], Any]


def cached_quantise(model: Any, frames: list[np.ndarray], key: EngineKey, store: IRStore, *,
                    cache: EngineCache | None = None, settings: QuantiseSettings = DEFAULT_SETTINGS,
                    quantiser: Quantiser | None = None) -> tuple[Any, str]:
    """The int8 version of ``model`` from the engine cache under ``key``, else quantised (by
    ``quantiser``, default :func:`quantise`) and cached. Returns (model, "hit" | "built"); an
    unreadable entry is logged, removed and quantised again."""
    run = quantiser or quantise
    return (cache or EngineCache()).get_or_build(key, lambda: run(model, frames, settings), store.save,
                                                 store.load)


def tail_ops(model: Any) -> list[str]:
    """The ops between the last convolutions and the output (up to a convolution on every path
    back from the result): quantising their inputs rounds the output image itself to 8 bits."""
    seen: set[str] = set()
    stack = [r.input(0).get_source_output().get_node() for r in model.get_results()]
    while stack:
        op = stack.pop()
        name = op.get_friendly_name()
        if name in seen or op.get_type_name() in ("Convolution", "Constant", "Parameter"):
            continue
        seen.add(name)
        stack.extend(i.get_source_output().get_node() for i in op.inputs())
    return sorted(seen)


def end_convs(model: Any, first: int, last: int) -> list[str]:
    """The first ``first`` and the last ``last`` convolutions of ``model`` in graph order: the
    most sensitive to 8 bits (measured per layer on the traffic pair: the first conv sees the
    image itself, the last ones write the sub-pixels of the output)."""
    convs = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    return sorted(set(convs[:first]) | set(convs[len(convs) - last:] if last else ()))


def _advanced(settings: QuantiseSettings) -> Any:
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    return AdvancedQuantizationParameters(
        overflow_fix=OverflowFix(settings.overflow_fix),
        activations_range_estimator_params=getattr(RangeEstimatorParametersSet, settings.ranges.upper()))


def _evenly(n: int, count: int, stop: float = 0.5) -> list[int]:
    """``count`` frame indices spread over the first ``stop`` of ``n`` frames."""
    last = max(1, int(n * stop))
    return sorted({int((k + 0.5) * last / count) for k in range(count)})


def _clip_frames(path: Path, count: int) -> list[np.ndarray]:
    import av

    from ..quality.datasets import frame_count

    wanted = set(_evenly(frame_count(path), count))
    frames = []
    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i in wanted:
                frames.append(frame.to_ndarray(format="rgb24"))
            if i >= max(wanted):
                break
    return frames


def _to_input(rgb: np.ndarray, scale: int) -> np.ndarray:
    from ..quality.matlab_resize import imresize

    lr = imresize(rgb, scale=1 / scale) if scale > 1 else rgb
    return np.ascontiguousarray(lr.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


@functools.lru_cache(maxsize=4)
def traffic_frames(count: int = CALIBRATION_FRAMES, folder: Path | None = None,
                   scale: int = CALIBRATION_SCALE) -> tuple[np.ndarray, ...]:
    """``count`` calibration inputs from the clips in ``folder`` (default ``$ULTRARES_DATA/video``),
    the same number from each clip's first half, shrunk x``scale``; the demo scene where none."""
    from ..quality.datasets import videos_in
    from ..settings import data_dir

    folder = Path(folder) if folder is not None else data_dir() / "video"
    clips = videos_in(folder) if folder.is_dir() else []
    if not clips:
        log.warning("int8: no traffic clips in %s; calibrating on the demo's generated scene", folder)
        return scene_frames(count)
    each = -(-count // len(clips))
    frames = [f for clip in clips for f in _clip_frames(clip, each)]
    picked = frames[:: max(1, len(frames) // count)][:count]
    return tuple(_to_input(f, scale) for f in picked)


@functools.lru_cache(maxsize=2)
def scene_frames(count: int = CALIBRATION_FRAMES) -> tuple[np.ndarray, ...]:
    """``count`` frames of the demo's generated traffic scene at 320x240 (no data needed)."""
    from ..demo.scene import render_scene_frame

    return tuple(_to_input(render_scene_frame(i * 7, 320, 240), 1) for i in range(count))


def default_calibration() -> list[np.ndarray]:
    return list(traffic_frames())
