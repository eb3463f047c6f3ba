"""The ``null`` backend: seeded random images at no model cost, for benchmarks and tests only.

Everything around the model (the vote, storage, the run layout, the manifests, the audit, memory per step) can be
measured at full scale on a CPU with it (``bench/bench_scale.py``). It is refused unless the config says
``model.allow_null: true``: its samples are noise, never synthetic data.
"""

from typing import TYPE_CHECKING, Self

import numpy as np

from privevo import runtime

runtime.prefer_passive_waiting()  # before torch loads OpenMP: see privevo.runtime
import torch  # noqa: E402

from privevo.image.models.base import LocalModel  # noqa: E402

if TYPE_CHECKING:
    from privevo.config import Config


class NullModel(LocalModel):
    """RANDOM_API draws uniform noise; VARIATION_API replaces a ``degree`` share of the pixels with noise.

    Each sample's pixels come from its own generator (seeded like the real backends' samples), so a sharded run draws
    the same images as an unsharded one, and the cost per sample is a few microseconds whatever the degree.
    """

    def __init__(self, image_size: int, channels: int, num_classes: int | None = None, batch_size: int = 64) -> None:
        self.image_size, self.channels, self.num_classes = image_size, channels, num_classes
        self.batch_size = batch_size
        self.name = "null"
        self.device = torch.device("cpu")

    config_fields = ("model", "image_size", "channels", "class_names")

    @classmethod
    def from_config(cls, config: "Config") -> Self:
        """Images of the experiment's shape; one class per class name (labels are accepted and ignored)."""
        from privevo.image import image_shape

        size, channels = image_shape(config)
        return cls(size, channels, len(config.class_names) if config.class_names else None, config.model.batch_size)

    def _noise(self, generator: torch.Generator) -> torch.Tensor:
        """One sample's uint8 noise image, HWC."""
        return torch.randint(0, 256, (self.image_size, self.image_size, self.channels), dtype=torch.uint8,
                             generator=generator)

    def _random_batch(self, labels: np.ndarray | None, generators: list[torch.Generator]) -> np.ndarray:
        return torch.stack([self._noise(g) for g in generators]).numpy()

    def _variation_batch(
        self, images: np.ndarray, degree: float, labels: np.ndarray | None, generators: list[torch.Generator]
    ) -> np.ndarray:
        out = torch.from_numpy(np.array(images))
        for i, generator in enumerate(generators):
            replaced = torch.rand((self.image_size, self.image_size, 1), generator=generator) < degree
            out[i] = torch.where(replaced, self._noise(generator), out[i])
        return out.numpy()
