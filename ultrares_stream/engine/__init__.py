"""Inference engines: one interface, several backends (eager now; compile and TensorRT on CUDA)."""
from .base import Engine, Precision, pick_device, pick_precision
from .eager import EagerEngine

__all__ = ["Engine", "EagerEngine", "Precision", "pick_device", "pick_precision"]
