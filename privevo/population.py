"""The synthetic population of one generation, saved as a versioned ``.npz``."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np

from privevo.errors import UserError

FORMAT_VERSION = 1


@dataclass
class Population:
    """Synthetic images of one generation with their labels and parents.

    ``labels`` is -1 everywhere for unconditional runs; ``parent_ids`` indexes the
    previous generation's population (-1 for generation 0).
    """

    images: np.ndarray  # uint8 NHWC
    labels: np.ndarray  # int64 (N,)
    parent_ids: np.ndarray  # int64 (N,)
    generation: int

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"population images must be uint8 NHWC, got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (n,) or self.parent_ids.shape != (n,):
            raise ValueError("labels and parent_ids must have one entry per image")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def conditional(self) -> bool:
        return bool(np.all(self.labels >= 0))

    def to_bytes(self) -> bytes:
        """The ``.npz`` encoding (deterministic for the same arrays)."""
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            format_version=np.int64(FORMAT_VERSION),
            images=self.images,
            labels=self.labels.astype(np.int64),
            parent_ids=self.parent_ids.astype(np.int64),
            generation=np.int64(self.generation),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "population") -> Population:
        """Decode and check the format version."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                version = int(npz["format_version"])
                if version != FORMAT_VERSION:
                    raise UserError(f"{source} has population format {version}, this version reads {FORMAT_VERSION}")
                return cls(
                    images=npz["images"],
                    labels=npz["labels"],
                    parent_ids=npz["parent_ids"],
                    generation=int(npz["generation"]),
                )
        except (OSError, KeyError, ValueError) as error:
            raise UserError(f"{source} is not a readable population file ({type(error).__name__})") from None

    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def concatenate(cls, parts: list[Population]) -> Population:
        """Merge shards (in order) into one population."""
        generations = {p.generation for p in parts}
        if len(generations) != 1:
            raise ValueError(f"cannot merge shards of different generations {sorted(generations)}")
        return cls(
            images=np.concatenate([p.images for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            parent_ids=np.concatenate([p.parent_ids for p in parts]),
            generation=generations.pop(),
        )
