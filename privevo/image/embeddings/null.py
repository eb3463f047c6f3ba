"""The ``null`` embedding: seeded random vectors of a configured dimension, for benchmarks and tests only.

A sample's vector is drawn from a generator seeded by a hash of its bytes, so equal images get equal vectors in any
batch, shard or process (the vote and the lookahead's mean behave as with a real embedding), at the size of a real
one (2,048 like Inception's pool3) and a few microseconds per image. Refused unless ``model.allow_null: true``.
"""

import hashlib
from typing import TYPE_CHECKING, Self

import numpy as np

from privevo.image.embeddings.base import Embedding

if TYPE_CHECKING:
    from privevo.config import Config


class NullEmbedding(Embedding):
    """Standard normal float32 rows of ``dim`` features, seeded by each image's content."""

    name = "null"

    def __init__(self, dim: int = 2048) -> None:
        self.dim = dim

    @classmethod
    def from_config(cls, config: "Config") -> Self:
        """Vectors of ``embedding.dim`` features."""
        return cls(config.embedding.dim)

    def embed(self, images: np.ndarray, batch_size: int = 256, progress: bool = True) -> np.ndarray:
        self._check_images(images)
        out = np.empty((len(images), self.dim), np.float32)
        for i, image in enumerate(images):
            seed = int.from_bytes(hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=8).digest(), "little")
            out[i] = np.random.default_rng(seed).standard_normal(self.dim, np.float32)
        return out
