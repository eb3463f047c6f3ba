"""The vote's feature space for tables: numerics min-max scaled by the public bounds, categoricals one-hot.

A numeric value x of a column with bounds [min, max] becomes (x - min) / (max - min) in [0, 1], or
log1p(x - min) / log1p(max - min) where the schema declares ``scale: log`` (a long tail such as a
capital gain, where 3,000 and 15,000 would otherwise differ by 0.12 of the range);
a categorical value becomes a one-hot vector over its declared categories scaled by
``categorical_weight`` (Tab-PE's 1/3, so that a category change weighs about as much as a
third of a numeric column's range). A numeric column with declared atoms (``atoms: [0]``) adds one
indicator per atom, ``categorical_weight`` where the value is that atom: a point mass such as
``capital_gain = 0`` is then as visible to the vote as a category, where the scaled value alone
tells 0 from 500 by 0.005. Only the schema's public domain is used. The vote then runs the
shared exact L2 nearest-neighbour search on these rows.
"""

from __future__ import annotations

import numpy as np

from privevo.errors import UserError
from privevo.tabular.schema import Schema


class TabularEmbedding:
    """Codes (N, n_columns) to float32 features (N, dim)."""

    name = "tabular"

    def __init__(self, schema: Schema, categorical_weight: float = 1 / 3) -> None:
        if not categorical_weight > 0:
            raise UserError(f"tabular.categorical_weight must be positive, got {categorical_weight}")
        self.schema = schema
        self.categorical_weight = categorical_weight
        self.dim = sum(len(c.categories or []) if c.type == "categorical" else 1 + len(c.atoms) for c in schema.columns)

    def embed(self, samples: np.ndarray, batch_size: int = 256, progress: bool = True) -> np.ndarray:
        """Features of ``samples`` as float32 (N, dim); ``batch_size`` and ``progress`` are accepted for the
        shared interface (one vectorised pass, no progress bar: it would tell the private set's size).

        Only the form is checked, not the domain: the vote's padding rows (zeros) are embedded like real rows."""
        if samples.dtype != np.float64 or samples.ndim != 2 or samples.shape[1] != len(self.schema.columns):
            raise UserError(f"tables are float64 (N, {len(self.schema.columns)}) code arrays, "
                            f"got {samples.dtype} {samples.shape}")
        samples = np.clip(samples, self.schema.low, self.schema.high)
        parts = []
        for j, column in enumerate(self.schema.columns):
            values = samples[:, j]
            if column.type == "categorical":
                one_hot = np.zeros((len(samples), len(column.categories or [])), dtype=np.float32)
                one_hot[np.arange(len(samples)), values.astype(np.int64)] = self.categorical_weight
                parts.append(one_hot)
            else:
                assert column.min is not None and column.max is not None
                if column.scale == "log":
                    scaled = np.log1p(values - column.min) / np.log1p(column.max - column.min)
                else:
                    scaled = (values - column.min) / (column.max - column.min)
                parts.append(scaled.astype(np.float32)[:, None])
                if column.atoms:
                    at_atom = values[:, None] == np.asarray(column.atoms, dtype=np.float64)[None, :]
                    parts.append(at_atom.astype(np.float32) * np.float32(self.categorical_weight))
        if not parts:
            return np.zeros((len(samples), 0), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)
