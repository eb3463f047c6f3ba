"""Tab-PE's two APIs on a public schema, in numpy: RANDOM_API and VARIATION_API for tables.

RANDOM_API draws each column from its public domain: uniformly (a category, an integer in
[min, max], a float in [min, max)), or, when the config names a public prior table with the
same schema, from that table's column, or, with the DP warm start, from the column's released
noisy marginal (:mod:`privevo.tabular.warm_start`). VARIATION_API resamples each categorical
value uniformly with probability p, shifts each numeric value by U(-p, p) x (max - min), rounds
integers and clips to the bounds; with the warm start, each value (numerics included) is instead
drawn again from its noisy marginal with probability p (given the row's label, which is kept,
when the marginals are per class); with ``atom_rate`` > 0 a numeric value of a column with
declared atoms moves to one of them (uniformly) with probability ``atom_rate`` x p instead.

p is the shared variation ``degree`` of the generation (``population.degrees``): the
mutation-rate decay of Tab-PE is that list, :func:`mutation_rates` computes it. Nothing here
reads the private table: the domains are the schema's, the marginals a DP release.

Each sample draws its uniforms from its own generator, seeded by (seed, first_index + i, API),
so shards of one call give exactly the samples of the whole call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from privevo.errors import UserError
from privevo.tabular.schema import Schema, check_codes

if TYPE_CHECKING:
    from privevo.tabular.warm_start import Marginals

Labels = np.ndarray | int | None

_RANDOM, _VARIATION = 0, 1  # the API's tag in each sample's seed


def mutation_rates(generations: int, init: float = 0.5, final: float = 0.01, gamma: float = 0.2,
                   decay: Literal["polynomial", "linear"] = "polynomial") -> list[float]:
    """Tab-PE's mutation rate of generations 1..T: ``init - (init - final) * (t / T) ** gamma`` (linear: gamma 1).

    Use it as ``population.degrees``: generation T varies with ``final``.
    """
    if generations < 1 or not 0 <= final <= init <= 1 or gamma <= 0:
        raise UserError("mutation rates need generations >= 1, 0 <= final <= init <= 1 and gamma > 0")
    power = gamma if decay == "polynomial" else 1.0
    return [init - (init - final) * (t / generations) ** power for t in range(1, generations + 1)]


def sample_uniforms(seed: int, first_index: int, n: int, width: int, api: int) -> np.ndarray:
    """(n, width) uniforms in [0, 1): row i from its own generator seeded by (seed, first_index + i, api)."""
    out = np.empty((n, width), dtype=np.float64)
    for i in range(n):
        generator = np.random.default_rng(np.random.SeedSequence([int(seed), int(first_index) + i, api]))
        out[i] = generator.random(width)
    return out


class TabularModel:
    """The random and variation APIs of a table schema (no network, no weights)."""

    name = "tabular"
    #: The experiment config's fields (dotted keys) this model is built from (the schema, prior and atom rate are the
    #: ``tabular`` section's): a process keeps its loaded model while their values stay the same.
    config_fields = ("model", "tabular")
    #: In process: no API calls to record (:class:`privevo.remote_calls.RecordedModel`).
    ledger = None

    def __init__(self, schema: Schema, atom_rate: float = 0.0, prior: np.ndarray | None = None,
                 batch_size: int = 4096, marginals: Marginals | None = None) -> None:
        if not 0 <= atom_rate <= 1:
            raise UserError(f"tabular.atom_rate must lie in [0, 1], got {atom_rate}")
        if prior is not None:
            check_codes(schema, prior)
            if len(prior) == 0:
                raise UserError("the public prior table has no rows the schema accepts")
        self.schema = schema
        self.atom_rate = atom_rate
        self.prior = prior
        self.batch_size = batch_size
        self.marginals = marginals
        class_names = schema.class_names
        self.num_classes: int | None = None if class_names is None else len(class_names)
        self._sizes = np.array([len(c.categories or []) for c in schema.columns], dtype=np.float64)

    def with_marginals(self, marginals: Marginals) -> TabularModel:
        """This model drawing from the DP warm start's noisy marginals (``privacy.warm_start_share``)."""
        if self.prior is not None:
            raise UserError("tabular.prior and privacy.warm_start_share are two priors of the random API: use one")
        return TabularModel(self.schema, self.atom_rate, None, self.batch_size, marginals)

    # ------------------------------------------------------------------ the shared model interface

    def random(self, n: int, labels: Labels = None, seed: int = 0, first_index: int = 0) -> np.ndarray:
        """``n`` new rows (RANDOM_API) as codes (n, n_columns); ``labels`` >= 0 pin the label column."""
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise UserError(f"number of samples must be a non-negative integer, got {n!r}")
        width = len(self.schema.columns)
        if self.marginals is not None:
            u = sample_uniforms(seed, first_index, int(n), 2 * width, _RANDOM)
            out = np.zeros((int(n), width))
            for j in self.marginals.order:  # the label column first (pinned), then the others, maybe given it
                out[:, j] = self.marginals.draw(j, u[:, j], u[:, width + j], out)
                out = self._pin_labels(out, labels)
            return out
        u = sample_uniforms(seed, first_index, int(n), width, _RANDOM)
        if self.prior is not None:
            rows = np.minimum((u * len(self.prior)).astype(np.int64), len(self.prior) - 1)
            out = np.take_along_axis(self.prior, rows, axis=0)
        else:
            out = self._uniform_values(u)
        return self._pin_labels(out, labels)

    def variation(self, samples: np.ndarray, degree: float, labels: Labels = None, seed: int = 0,
                  first_index: int = 0) -> np.ndarray:
        """One variation of each row (VARIATION_API) with mutation rate p = ``degree``: 0 keeps it."""
        check_codes(self.schema, samples)
        if not 0 <= degree <= 1:
            raise UserError(f"the variation degree must lie in [0, 1], got {degree}")
        width = len(self.schema.columns)
        blocks = 5 if self.marginals is not None else 4  # the warm start's draws add a value inside a bin
        u = sample_uniforms(seed, first_index, len(samples), blocks * width, _VARIATION)
        mutate, value, shift, jump = (u[:, i * width:(i + 1) * width] for i in range(4))
        out = samples.copy()
        if self.marginals is not None:
            self._resample(out, mutate < degree, value, u[:, 4 * width:])
        else:
            low, high = self.schema.low, self.schema.high
            categorical = self.schema.categorical
            resampled = np.minimum(np.floor(value * self._sizes), self._sizes - 1)
            change = (mutate < degree) & categorical
            out[change] = resampled[change]
            shifted = samples + (2 * shift - 1) * degree * (high - low)
            integer = np.array([c.type == "integer" for c in self.schema.columns])
            shifted[:, integer] = np.round(shifted[:, integer])
            numeric = ~categorical
            out[:, numeric] = np.clip(shifted, low, high)[:, numeric]
        for j, column in enumerate(self.schema.columns):
            if column.atoms and self.atom_rate > 0:
                atoms = np.array(column.atoms)
                to_atom = jump[:, j] < self.atom_rate * degree
                picked = atoms[np.minimum((value[:, j] * len(atoms)).astype(np.int64), len(atoms) - 1)]
                out[to_atom, j] = picked[to_atom]
        return self._pin_labels(out, labels)

    # ------------------------------------------------------------------ helpers

    def _resample(self, out: np.ndarray, change: np.ndarray, value: np.ndarray, inside: np.ndarray) -> None:
        """The warm start's variation, in place: each value ``change`` picks is drawn again from its column's noisy
        marginal (numerics too, instead of a uniform shift), given the row's label when the marginals are per class
        (the label itself is then kept: the row's other columns vary within its class)."""
        assert self.marginals is not None
        for j in self.marginals.order:
            if j != self.marginals.label:
                rows = change[:, j]
                out[rows, j] = self.marginals.draw(j, value[rows, j], inside[rows, j], out[rows])

    def _uniform_values(self, u: np.ndarray) -> np.ndarray:
        """Each column uniform on its declared domain."""
        low, high = self.schema.low, self.schema.high
        out = low + u * (high - low)
        discrete = np.array([c.type != "float" for c in self.schema.columns])
        counts = high - low + 1
        out[:, discrete] = np.minimum(low + np.floor(u * counts), high)[:, discrete]
        return out

    def _pin_labels(self, rows: np.ndarray, labels: Labels) -> np.ndarray:
        """Set the label column to ``labels`` where they are >= 0 (conditional PE); -1 or None leaves it free."""
        index = self.schema.label_index
        if labels is None or index is None:
            return rows
        wanted = np.broadcast_to(np.asarray(labels, dtype=np.int64), (len(rows),))
        assert self.num_classes is not None
        if np.any(wanted >= self.num_classes):
            raise UserError(f"labels must lie in [0, {self.num_classes}) for the table's label column")
        pinned = wanted >= 0
        rows[pinned, index] = wanted[pinned]
        return rows
