"""A model's checkpoints in memory: one network, or a PSNR/GAN pair that alpha interpolates between
(ESRGAN's network interpolation), with their architecture, and the weights at any alpha."""
from __future__ import annotations

import threading
from collections import OrderedDict

from .archs import ArchSpec, StateDict, detect
from .interpolation import check_compatible, interpolate
from .registry import ResolvedModel, resolve

#: interpolated weight sets a model keeps ready (host memory), most recently used last
WEIGHT_SETS = 4


class ModelPair:
    """The state dicts behind a model spec and the architecture they describe.

    :meth:`weights_at` interpolates the pair at an alpha once and keeps the :data:`WEIGHT_SETS`
    last alphas' sets; a single network has the same weights at every alpha.
    """

    def __init__(self, resolved: ResolvedModel):
        self.name = resolved.name
        self.psnr, self.gan = resolved.psnr, resolved.gan
        if self.gan is not None:
            check_compatible(self.psnr, self.gan)
        self.spec: ArchSpec = detect(self.psnr, resolved.name)
        self._sets: OrderedDict[float, StateDict] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model: str | ResolvedModel | None, device_type: str = "cpu") -> ModelPair:
        """``model`` as resolved already, or a model spec read now (None: the device type's default)."""
        return cls(model if isinstance(model, ResolvedModel) else resolve(model, device_type=device_type))

    @property
    def is_pair(self) -> bool:
        return self.gan is not None

    def weights_at(self, alpha: float) -> StateDict:
        """``(1 - alpha) * PSNR + alpha * GAN``: the PSNR network's own weights for a single network."""
        if self.gan is None:
            return self.psnr
        with self._lock:
            weights = self._sets.get(alpha)
            if weights is None:
                weights = self._sets[alpha] = interpolate(self.psnr, self.gan, alpha)
                while len(self._sets) > WEIGHT_SETS:
                    self._sets.popitem(last=False)
            self._sets.move_to_end(alpha)
            return weights
