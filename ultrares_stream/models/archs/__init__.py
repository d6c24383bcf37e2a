"""Generator architectures, written in the project, one file each, and the registry of them.

Each file holds an architecture's ``nn.Module`` classes and its :class:`ArchDescriptor` (``ARCH``):
how its checkpoints are recognised and converted, how the network is built from them, and the
facts the upscaler and the engines need (input sizes, tile context, memory per pixel, safe
precisions). :data:`ARCHS` is the one list of them; nothing outside this package compares an
architecture's name. Parameter names follow BasicSR / Real-ESRGAN or the authors' checkpoints,
so that published weights load strictly.

To add an architecture: write its file with an ``ARCH`` descriptor and add it to :data:`ARCHS`.
"""
from __future__ import annotations

from torch import nn

from ...errors import ModelError
from . import compact, rlfn, rrdbnet, span
from .base import ArchDescriptor, ArchSpec, InputSizes, StateDict
from .compact import SRVGGNetCompact, shuffle_add_nearest
from .rlfn import RLFN
from .rrdbnet import RRDBNet
from .span import SPAN

__all__ = ["ARCHS", "ArchDescriptor", "ArchSpec", "InputSizes", "RLFN", "RRDBNet", "SPAN", "SRVGGNetCompact",
           "StateDict", "canonical_layout", "detect", "input_sizes", "shuffle_add_nearest"]

#: every architecture the package reads; their ``detect`` predicates exclude each other
ARCHS: tuple[ArchDescriptor, ...] = (rrdbnet.ARCH, compact.ARCH, rlfn.ARCH, span.ARCH)


def canonical_layout(sd: StateDict) -> StateDict:
    """``sd`` with the keys of any architecture's older layouts renamed to its canonical ones."""
    for arch in ARCHS:
        if arch.convert is not None:
            sd = arch.convert(sd)
    return sd


def detect(sd: StateDict, source: str = "checkpoint") -> ArchSpec:
    """The architecture and hyper-parameters of a canonical state dict (:class:`ModelError` when no
    architecture, or more than one, recognises its keys)."""
    found = [arch for arch in ARCHS if arch.detect(sd)]
    if len(found) == 1:
        return found[0].spec(sd, source)
    if found:
        raise ModelError(f"{source}: the keys fit more than one architecture ({', '.join(a.name for a in found)})")
    names = [a.name for a in ARCHS]
    raise ModelError(f"{source}: unrecognised checkpoint layout (first key {next(iter(sd))!r}); expected the "
                     f"weights of {', '.join(names[:-1])} or {names[-1]}")


def input_sizes(net: nn.Module) -> InputSizes:
    """The frame sizes ``net`` takes, as its architecture declares them (recognised from its
    weights); any size for a network of no known architecture."""
    try:
        return detect(net.state_dict(), type(net).__name__).input_sizes
    except ModelError:
        return InputSizes()
