"""The synthetic population of one generation: samples of any data type with their labels and parents.

Its file format belongs to the run's modality (:meth:`privevo.modalities.Modality.encode_population`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Population:
    """Synthetic samples of one generation with their labels and parents.

    ``samples`` is in the modality's form (images: uint8 NHWC; tables: a 2-D array of schema
    codes; text: a str array), one sample per row of its first axis. ``labels`` is -1
    everywhere for unconditional runs; ``parent_ids`` indexes the previous generation's
    population (-1 for generation 0).
    """

    samples: np.ndarray
    labels: np.ndarray  # int64 (N,)
    parent_ids: np.ndarray  # int64 (N,)
    generation: int

    def __post_init__(self) -> None:
        n = len(self.samples)
        if self.samples.ndim < 1:
            raise ValueError("population samples must be an array with one sample per row")
        if self.labels.shape != (n,) or self.parent_ids.shape != (n,):
            raise ValueError("labels and parent_ids must have one entry per sample")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def images(self) -> np.ndarray:
        """The samples of an image run (uint8 NHWC), by the name the Python API gave them before other data types."""
        return self.samples

    @property
    def conditional(self) -> bool:
        """Whether every sample has a class label."""
        return bool(np.all(self.labels >= 0))

    @classmethod
    def concatenate(cls, parts: list[Population]) -> Population:
        """Merge shards (in order) into one population."""
        generations = {p.generation for p in parts}
        if len(generations) != 1:
            raise ValueError(f"cannot merge shards of different generations {sorted(generations)}")
        return cls(
            samples=np.concatenate([p.samples for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            parent_ids=np.concatenate([p.parent_ids for p in parts]),
            generation=generations.pop(),
        )
