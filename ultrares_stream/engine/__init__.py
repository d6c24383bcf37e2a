"""Inference engines: one interface, several backends.

``eager`` (PyTorch), ``compile`` (torch.compile, CUDA graphs on CUDA) and ``tensorrt``
(torch-tensorrt, optional extra); :func:`select.make_engine` builds one by name and
``auto`` picks the fastest usable (see :mod:`.select`). Compiled engines are cached
on disk (:mod:`.cache`); :mod:`.matrix` measures the backends side by side.
"""
from .base import Engine, Precision, pick_device, pick_precision
from .cache import EngineCache, EngineKey, ShapeRange
from .eager import EagerEngine
from .select import BACKENDS, choose_backend, make_engine

__all__ = ["Engine", "EagerEngine", "Precision", "pick_device", "pick_precision", "EngineCache", "EngineKey",
           "ShapeRange", "BACKENDS", "choose_backend", "make_engine"]
