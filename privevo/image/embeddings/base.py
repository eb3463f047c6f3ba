"""The embedding interface: uint8 NHWC images in, float32 feature rows out."""

import abc
from typing import TYPE_CHECKING, Self

import numpy as np

from privevo.errors import UserError

if TYPE_CHECKING:
    from privevo.config import Config


class Embedding(abc.ABC):
    """Maps uint8 NHWC images to float32 feature rows."""

    name: str
    dim: int

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: "Config") -> Self:
        """The embedding as an experiment config sets it up (``config.embedding`` and the image shape)."""

    @abc.abstractmethod
    def embed(self, images: np.ndarray, batch_size: int = 256, progress: bool = True) -> np.ndarray:
        """Features of ``images`` (uint8 NHWC) as a float32 array (N, dim).

        ``progress=False`` shows nothing: a progress bar over the private set would tell its size.
        """

    @staticmethod
    def _check_images(images: np.ndarray) -> None:
        """Reject anything but uint8 NHWC with a one-line UserError."""
        if images.dtype != np.uint8 or images.ndim != 4:
            raise UserError(f"embeddings take uint8 NHWC images, got {images.dtype} with shape {images.shape}")
