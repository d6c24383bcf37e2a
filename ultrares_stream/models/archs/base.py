"""What the package knows about one network architecture: an :class:`ArchDescriptor`.

Each architecture has a file in this package holding its ``nn.Module`` classes and its
descriptor; :data:`~ultrares_stream.models.archs.ARCHS` lists them. Whatever depends on the
architecture (recognising its checkpoints, building the network from them, the input sizes it
takes, the context a tile needs, its memory per pixel, the precisions it runs in) is read from
the descriptor, never decided by comparing an architecture's name.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import ModelError

StateDict = dict[str, torch.Tensor]
HyperParameters = Mapping[str, object]

#: context pixels around a tile where an architecture declares no other: wide enough that the far
#: context of the deep nets contributes below 1/255 to a tile's core (tests/test_tiling.py)
TILE_PAD = 16
#: the precisions the engines run (engine.base.Precision)
PRECISIONS = frozenset({"fp32", "fp16", "bf16", "int8"})


@dataclass(frozen=True)
class InputSizes:
    """The frames a network takes: height and width multiples of ``multiple``, at least ``minimum``
    (a network pads smaller ones itself; an engine whose traced graph lost that pad pads them)."""

    multiple: int = 1
    minimum: int = 1


def _any_size(hp: HyperParameters) -> int:
    return 1


def _default_tile_pad(hp: HyperParameters) -> int:
    return TILE_PAD


@dataclass(frozen=True)
class ArchDescriptor:
    """One architecture.

    ``detect(sd)``: the canonical keys and shapes of ``sd`` are this architecture's (the
    descriptors' predicates exclude each other: :func:`~ultrares_stream.models.archs.detect`
    refuses a state dict two of them claim). ``hyperparameters(sd, source)``: the constructor
    arguments of ``network`` that ``sd`` was saved from (:class:`ModelError` naming ``source``
    when they make no sense). ``summary``: how :meth:`ArchSpec.describe` shows them (a format
    string over them). ``scale_parameter``: the one that is the upscale factor.
    ``activation_bytes(hp, element_bytes)``: rough peak activation memory per *input* pixel of a
    forward pass. ``size_multiple(hp)`` and ``min_size``: the input sizes (:class:`InputSizes`).
    ``tile_pad(hp)``: context pixels around a tile. ``precisions``: those the network is safe in.
    ``convert(sd)``: ``sd`` with keys of the architecture's other published layouts renamed to the
    canonical ones (unchanged when it has none of them).
    """

    name: str
    network: Callable[..., nn.Module]
    detect: Callable[[StateDict], bool]
    hyperparameters: Callable[[StateDict, str], dict[str, object]]
    summary: str
    activation_bytes: Callable[[HyperParameters, int], float]
    scale_parameter: str = "upscale"
    size_multiple: Callable[[HyperParameters], int] = _any_size
    min_size: int = 1
    tile_pad: Callable[[HyperParameters], int] = _default_tile_pad
    precisions: frozenset[str] = PRECISIONS
    convert: Callable[[StateDict], StateDict] | None = None

    def spec(self, sd: StateDict, source: str = "checkpoint") -> ArchSpec:
        """This architecture with the hyper-parameters ``sd`` gives it."""
        return ArchSpec(self, tuple(self.hyperparameters(sd, source).items()))


@dataclass(frozen=True)
class ArchSpec:
    """What a state dict describes: an architecture and its constructor arguments."""

    descriptor: ArchDescriptor
    kwargs: tuple[tuple[str, object], ...]

    @property
    def arch(self) -> str:
        """The architecture's name (for people: logs, listings, cache keys)."""
        return self.descriptor.name

    @property
    def hyperparameters(self) -> dict[str, object]:
        return dict(self.kwargs)

    @property
    def scale(self) -> int:
        return int(self.hyperparameters[self.descriptor.scale_parameter])

    def build(self) -> nn.Module:
        return self.descriptor.network(**self.hyperparameters)

    def describe(self) -> str:
        return f"{self.arch} x{self.scale} ({self.descriptor.summary.format(**self.hyperparameters)})"

    @property
    def input_sizes(self) -> InputSizes:
        return InputSizes(int(self.descriptor.size_multiple(self.hyperparameters)), self.descriptor.min_size)

    @property
    def tile_pad(self) -> int:
        """Context pixels around a tile (input pixels)."""
        return int(self.descriptor.tile_pad(self.hyperparameters))

    def bytes_per_pixel(self, precision: str) -> float:
        """Rough peak activation memory per *input* pixel of a forward pass in ``precision``."""
        return self.descriptor.activation_bytes(self.hyperparameters, 2 if precision in ("fp16", "bf16") else 4)

    def supports(self, precision: str) -> bool:
        return precision in self.descriptor.precisions


# -- helpers the descriptors share ----------------------------------------------------------------

def indices(sd: StateDict, pattern: str) -> set[int]:
    """The distinct integers group 1 of ``pattern`` matches at the start of ``sd``'s keys."""
    return {int(m[1]) for k in sd if (m := re.match(pattern, k))}


def shuffle_scale(out_channels: int, num_out: int, source: str) -> int:
    """Scale of a pixel-shuffle upsampler whose conv has ``out_channels`` = num_out * scale**2."""
    scale = round((out_channels / num_out) ** 0.5)
    if scale * scale * num_out != out_channels:
        raise ModelError(f"{source}: upsampler has {out_channels} channels; no integer scale")
    return scale


def lr_feature_bytes(hp: HyperParameters, element_bytes: int) -> float:
    """Activation bytes per input pixel of a net that runs at LR with ``num_feat`` features and
    upsamples (by ``upscale``) once at its end: three LR feature maps, the fp32 HR output a few times."""
    s2 = int(hp["upscale"]) ** 2
    return int(hp["num_feat"]) * 3 * element_bytes + 3 * s2 * 4 * 3


class PixelShuffleUpsampler(nn.Sequential):
    """One 3x3 conv to ``out_ch * scale**2`` channels, then pixel shuffle (ESPCN)."""

    def __init__(self, in_ch: int, out_ch: int, scale: int):
        super().__init__(nn.Conv2d(in_ch, out_ch * scale * scale, 3, 1, 1), nn.PixelShuffle(scale))
