"""The DP warm start of a table: each column's 1-way marginal in bins fixed by the public schema.

A categorical column has one bin per category. A numeric column has one bin per declared atom, then
``warm_start_bins`` intervals over its declared bounds (equal-width, or equal-width in log1p(x - min) for
``scale: log``); an integer column with at most that many values has one bin per value instead. A value
equal to an atom falls in the atom's bin, any other in its interval. Every bin is a function of the
config, never of the private table. With ``tabular.warm_start_given_label`` each column but the label
is counted per class of the label column (its 2-way table with the label): a record still falls in one
bin of each of the C tables, so the sensitivity is the same, and the model draws the label first, then
each other column given it.

The privacy module releases the noisy counts (:func:`privevo.privacy.release_warm_start`); from them,
post-processing only, each column's distribution (per class) is its noisy counts clipped at 0 and
normalised (uniform over its bins if nothing is left), and a value is drawn as a bin, then uniformly
inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from privevo.errors import UserError
from privevo.tabular.schema import ColumnSpec, Schema, check_codes

if TYPE_CHECKING:
    from privevo.tabular.model import TabularModel


@dataclass(frozen=True)
class ColumnBins:
    """One column's bins: point bins (categories' codes, atoms or every integer value) first, then intervals."""

    points: np.ndarray  # sorted values
    edges: np.ndarray  # interval edges (len intervals + 1; empty: none); integers: [e_i, e_i+1) of whole values
    integer: bool

    @property
    def size(self) -> int:
        return len(self.points) + max(len(self.edges) - 1, 0)

    def index(self, values: np.ndarray) -> np.ndarray:
        """Each value's bin."""
        at = np.clip(np.searchsorted(self.points, values), 0, max(len(self.points) - 1, 0))
        is_point = (self.points[at] == values) if len(self.points) else np.zeros(len(values), bool)
        if len(self.edges) < 2:
            if not is_point.all():
                raise UserError("a value falls in no bin of the warm start's marginal")
            return at
        interval = np.clip(np.searchsorted(self.edges, values, side="right") - 1, 0, len(self.edges) - 2)
        return np.where(is_point, at, len(self.points) + interval)

    def value(self, bins: np.ndarray, u: np.ndarray) -> np.ndarray:
        """The value of each drawn bin, uniform inside an interval (``u`` in [0, 1))."""
        out = np.empty(len(bins), np.float64)
        point = bins < len(self.points)
        out[point] = self.points[bins[point]]
        i = bins[~point] - len(self.points)
        low, high = self.edges[i], self.edges[i + 1]
        inside = low + u[~point] * (high - low)
        out[~point] = np.minimum(np.floor(inside), high - 1) if self.integer else inside
        return out


def column_bins(column: ColumnSpec, intervals: int) -> ColumnBins:
    """The public bins of one column's marginal (see the module's docstring)."""
    if column.type == "categorical":
        return ColumnBins(np.arange(len(column.categories or []), dtype=np.float64), np.empty(0), integer=True)
    assert column.min is not None and column.max is not None
    low, high, integer = float(column.min), float(column.max), column.type == "integer"
    if integer and high - low + 1 <= intervals:
        return ColumnBins(np.arange(low, high + 1), np.empty(0), integer=True)
    steps = np.linspace(0.0, 1.0, intervals + 1)
    edges = low + (np.expm1(steps * np.log1p(high - low)) if column.scale == "log" else steps * (high - low))
    if integer:  # whole-value intervals [e_i, e_i+1), the last one closed at max
        edges = np.unique(np.round(edges))
        edges[-1] = high + 1
    return ColumnBins(np.unique(np.asarray(column.atoms, np.float64)), edges, integer)


class TabularWarmStart:
    """The table's warm start (:class:`privevo.modalities.WarmStart`): one marginal per schema column; with
    ``given_label``, each other column's marginal per class of the label column (its 2-way table with the label)."""

    def __init__(self, schema: Schema, intervals: int, given_label: bool = False) -> None:
        self.schema = schema
        self.columns = [column_bins(column, intervals) for column in schema.columns]
        self.label = schema.label_index if given_label else None
        self.classes = 1 if self.label is None else len(schema.columns[self.label].categories or [])
        self.bins = [c.size * (1 if j == self.label else self.classes) for j, c in enumerate(self.columns)]

    def counts(self, samples: np.ndarray) -> np.ndarray:
        """The clean counts of every column's bins (per class), concatenated: PRIVATE."""
        check_codes(self.schema, samples)
        given = np.zeros(len(samples), np.int64) if self.label is None else samples[:, self.label].astype(np.int64)
        return np.concatenate([
            np.bincount(c.index(samples[:, j]) + (0 if j == self.label else given * c.size), minlength=size)
            for j, (c, size) in enumerate(zip(self.columns, self.bins, strict=True))]).astype(np.int64)

    def marginals(self, noisy: np.ndarray) -> Marginals:
        """Each column's distribution (per class) from the released noisy counts (post-processing)."""
        if noisy.shape != (sum(self.bins),):
            raise UserError(f"the warm start's release holds {noisy.shape} counts, its config's bins "
                            f"{sum(self.bins)}: the release belongs to another schema")
        parts = np.split(np.maximum(np.asarray(noisy, np.float64), 0.0), np.cumsum(self.bins)[:-1])
        tables = [p.reshape(-1, c.size) for p, c in zip(parts, self.columns, strict=True)]
        return Marginals(self.columns, [_normalised(t) for t in tables], self.label)

    def apply(self, model: Any, noisy: np.ndarray) -> TabularModel:
        """The model drawing from the noisy marginals (:meth:`TabularModel.with_marginals`)."""
        return model.with_marginals(self.marginals(noisy))


def _normalised(table: np.ndarray) -> np.ndarray:
    """Each row of clipped counts as probabilities (uniform where nothing is left)."""
    totals = table.sum(axis=1, keepdims=True)
    return np.where(totals > 0, table / np.where(totals > 0, totals, 1), 1 / table.shape[1])


@dataclass(frozen=True)
class Marginals:
    """Per column: its bins and the probability of each (from the noisy marginal), one row per class of column
    ``label`` when given it (else one row)."""

    columns: list[ColumnBins]
    probabilities: list[np.ndarray]
    label: int | None = None

    @property
    def order(self) -> list[int]:
        """The columns in the order to draw them: the label column first, the others may be drawn given it."""
        rest = [j for j in range(len(self.columns)) if j != self.label]
        return rest if self.label is None else [self.label, *rest]

    def draw(self, j: int, u_bin: np.ndarray, u_value: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Values of column ``j`` for ``rows`` (their label column already drawn): a bin by its probability
        (``u_bin``), then a value inside it (``u_value``)."""
        table = self.probabilities[j]
        given = (np.zeros(len(rows), np.int64) if len(table) == 1 or self.label is None
                 else rows[:, self.label].astype(np.int64))
        cumulative = np.cumsum(table, axis=1)[given]
        bins = np.minimum((cumulative <= (u_bin * cumulative[:, -1])[:, None]).sum(axis=1), table.shape[1] - 1)
        return self.columns[j].value(bins, u_value)
