"""The ``pixels`` embedding: raw pixels scaled to [0, 1], flattened (no model, no torch)."""

from typing import TYPE_CHECKING, Self

import numpy as np

from privevo.image.embeddings.base import Embedding

if TYPE_CHECKING:
    from privevo.config import Config


class PixelEmbedding(Embedding):
    """Raw pixels scaled to [0, 1], flattened: cheap, for tests and tiny runs."""

    name = "pixels"

    def __init__(self, image_size: int, channels: int) -> None:
        self.dim = image_size * image_size * channels

    @classmethod
    def from_config(cls, config: "Config") -> Self:
        """One feature per pixel and channel of the experiment's images."""
        from privevo.image import image_shape

        return cls(*image_shape(config))

    def embed(self, images: np.ndarray, batch_size: int = 256, progress: bool = True) -> np.ndarray:
        self._check_images(images)
        return images.reshape(len(images), -1).astype(np.float32) / 255.0
