"""The model used when none is named, per device type (docs/model_card.md, "Defaults").

Apart from :mod:`.registry`, which reads the architectures (and so imports torch), so that
``ultrares COMMAND --help`` can name them without importing torch.
"""
from __future__ import annotations

DEFAULT_MODEL = "ultrares-compact-x4"  # the CPU's default, and the default of `ultrares eval`
#: the default pair per device type: in real time on a 2-core CPU, the compact pair; on a GPU,
#: where speed is not the limit, the strong traffic pair
DEFAULT_MODELS = {"cpu": DEFAULT_MODEL, "cuda": "ultrares-traffic-x4"}


def default_model(device_type: str = "cpu") -> str:
    """The pair used when none is named, for a device type (``cpu``, ``cuda``)."""
    return DEFAULT_MODELS.get(device_type, DEFAULT_MODEL)
