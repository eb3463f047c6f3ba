"""The table modality: what the shared steps, evaluation, report, export and audit call for ``modality: tabular``."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from privevo import registry, storage
from privevo.errors import UserError
from privevo.modalities import Modality, SampleSet, Scores, row_hashes
from privevo.population import Population
from privevo.tabular import TABULAR_EMBEDDINGS, TABULAR_MODELS, table_io
from privevo.tabular.schema import Schema, SchemaSpec, load_schema_spec

if TYPE_CHECKING:
    from pathlib import Path

    from privevo.config import Config, DataConfig, TabularConfig
    from privevo.data_quality import DataQuality
    from privevo.run_record import Run
    from privevo.tabular.warm_start import TabularWarmStart

logger = logging.getLogger(__name__)

HISTOGRAMS_PNG = "table_histograms.png"
EXPORT_FILES = {"csv": "synthetic.csv", "parquet": "synthetic.parquet"}
#: A numeric column of at least this many declared values holds distinctive values (see
#: :meth:`TabularModality.leak_fingerprints`): a chance match of one is unlikely.
DISTINCTIVE_VALUES = 1000
#: The final row's utility scalars (the KFP UI's final metrics) -> (trained on, measure) in its ``utility``.
UTILITY_KEYS = {"downstream_accuracy": ("synthetic", "accuracy"), "downstream_roc_auc": ("synthetic", "roc_auc"),
                "real_rows_accuracy": ("real", "accuracy"), "real_rows_roc_auc": ("real", "roc_auc")}


def tabular_section(config: Config) -> TabularConfig:
    """``config.tabular``, required for modality tabular."""
    if config.tabular is None:
        raise UserError("modality tabular needs a tabular section with the table's public schema")
    return config.tabular


@lru_cache(maxsize=8)
def _schema(spec_json: str) -> Schema:
    return Schema(SchemaSpec.model_validate_json(spec_json))


def config_schema(config: Config) -> Schema:
    """The public schema the config declares (inline or in ``tabular.schema_file``)."""
    section = tabular_section(config)
    return _schema(load_schema_spec(section.columns, section.label, section.schema_file).model_dump_json())


class TabularModality(Modality):
    """Rows of schema codes: float64 (N, n_columns), one column per schema column."""

    name = "tabular"
    population_suffix = ".parquet"
    export_formats = ("csv", "parquet")
    summary_keys = ("tvd_1way", "tvd_2way", "tvd_3way", "wasserstein")
    headline_keys = ("tvd_3way", "wasserstein")

    def encode_population(self, population: Population) -> bytes:
        """Parquet of the codes (:func:`privevo.tabular.table_io.encode_population`)."""
        return table_io.encode_population(population)

    def decode_population(self, data: bytes, source: str) -> Population:
        """:func:`privevo.tabular.table_io.decode_population`."""
        return table_io.decode_population(data, source)

    def load_private(self, run: Run, quality: DataQuality) -> SampleSet:
        """The private table: records that cannot be coded are skipped, clipped or ``other`` values counted, all in
        ``quality`` (private tier)."""
        from privevo.tabular.data import load_table

        adjusted: Counter[str] = Counter()
        codes, labels = load_table(run.config.private, config_schema(run.config), run.seed("private-subset"),
                                   quality, adjusted)
        quality.adjusted.update(sorted(adjusted.items()))
        return SampleSet(codes, labels)

    def load_reference(self, run: Run) -> SampleSet | None:
        """The held-out table of ``evaluation.reference``."""
        from privevo.tabular.data import load_table

        data = run.config.evaluation.reference
        if data is None:
            return None
        codes, labels = load_table(data, config_schema(run.config), run.seed("reference-subset"))
        return SampleSet(codes, labels)

    def may_share_records(self, a: DataConfig, b: DataConfig) -> bool:
        """Tables are single files: two selections share records when they read the same file."""
        from privevo.layout import normalised

        return normalised(a.path) == normalised(b.path)

    def load_model(self, config: Config) -> Any:
        """The model ``model.kind`` names in :data:`~privevo.tabular.TABULAR_MODELS` (Tab-PE's APIs on the schema,
        :class:`privevo.tabular.model.TabularModel`), with the public prior table."""
        from privevo.tabular.data import read_table

        schema = config_schema(config)
        section = tabular_section(config)
        prior = read_table(section.prior, schema) if section.prior is not None else None
        model = registry.registered_class(TABULAR_MODELS, config.model.kind, "tabular model kind")
        return model(schema, atom_rate=section.atom_rate, prior=prior, batch_size=config.model.batch_size)

    def model_fields(self, config: Config) -> tuple[str, ...]:
        """What the model declares it reads (the schema and the prior are the ``tabular`` section's)."""
        return registry.registered_class(TABULAR_MODELS, config.model.kind, "tabular model kind").config_fields

    def embedding_fields(self, config: Config) -> tuple[str, ...]:
        """The embedding's name and the schema with its categorical weight."""
        return ("embedding", "tabular")

    def load_embedding(self, config: Config) -> Any:
        """The embedding ``embedding.name`` names in :data:`~privevo.tabular.TABULAR_EMBEDDINGS` (numerics scaled by
        the public bounds, categoricals one-hot: :mod:`privevo.tabular.embedding`)."""
        embedding = registry.registered_class(TABULAR_EMBEDDINGS, config.embedding.name, "tabular embedding")
        return embedding(config_schema(config), tabular_section(config).categorical_weight)

    def warm_start(self, config: Config) -> TabularWarmStart:
        """Each column's 1-way marginal in public bins (:mod:`privevo.tabular.warm_start`)."""
        from privevo.tabular.warm_start import TabularWarmStart

        section = tabular_section(config)
        return TabularWarmStart(config_schema(config), section.warm_start_bins, section.warm_start_given_label)

    def scorer(self, run: Run) -> Callable[[SampleSet | None, int, bool], Scores]:
        """Marginal TVDs and Wasserstein per generation; the final row adds downstream utility."""

        def score(real: SampleSet | None, last: int, log_rows: bool) -> Scores:
            return _score(run, real, last, log_rows)

        return score

    def metrics_fields(self, final: dict[str, Any]) -> dict[str, Any]:
        """How the table metrics are measured."""
        from privevo.tabular import metrics

        return {"table_metrics": metrics.__doc__.split("\n\n", 1)[1].strip() if metrics.__doc__ else ""}

    def curve_panels(self, result: dict[str, Any]) -> list[tuple[str, list[str]]]:
        """The marginal TVDs on one panel, the mean Wasserstein distance on another."""
        return [("mean marginal TVD against the reference", ["tvd_1way", "tvd_2way", "tvd_3way"]),
                ("Wasserstein distance / declared range (numeric columns)", ["wasserstein"])]

    def headline(self, result: dict[str, Any]) -> list[tuple[str, Any]]:
        """The marginal TVDs, Wasserstein, and the downstream classifier's accuracy and ROC AUC."""
        final = result["final"]
        return [("1-way TVD", final.get("tvd_1way")), ("2-way TVD", final.get("tvd_2way")),
                ("3-way TVD", final.get("tvd_3way")), ("Wasserstein", final.get("wasserstein")),
                ("downstream accuracy", final.get("downstream_accuracy")),
                ("downstream ROC AUC", final.get("downstream_roc_auc"))]

    def write_report_views(self, run: Run, result: dict[str, Any]) -> None:
        """Per-column histograms of the last generation beside the reference (the TVD curve is the report's)."""
        from privevo.report import reference_may_be_private
        from privevo.steps import load_population
        from privevo.tabular import metrics

        rows = result["generations"]
        if reference_may_be_private(run.config):
            return
        reference = self.load_reference(run)
        if reference is not None:
            population = load_population(run, rows[-1]["generation"])
            storage.write_bytes(run.layout.report_file(HISTOGRAMS_PNG),
                                metrics.histograms_png(config_schema(run.config), population.samples,
                                                       reference.samples))

    def results_html(self, run: Run, result: dict[str, Any], figure: Callable[..., str]) -> dict[str, str]:
        """The histograms (final) and the utility table (extra)."""
        from privevo.tabular.metrics import utility_html

        last = result["generations"][-1]["generation"]
        final = (figure(HISTOGRAMS_PNG, f"per-column histograms: generation {last} (final) beside the reference",
                        wide=True)
                 if storage.exists(run.layout.report_file(HISTOGRAMS_PNG))
                 else '<p class="note">No histograms: the config names no evaluation reference apart from the '
                      "private data.</p>")
        utility = utility_html((result.get("final") or {}).get("utility"))
        extra = f"\n<h3>Downstream utility</h3>\n{utility}\n" if utility else ""
        return {"final": final, "extra": extra, "gallery": ""}

    def export(self, run: Run, population: Population, export_format: str, folder: Path) -> None:
        """synthetic.csv or synthetic.parquet: the rows decoded to values under the schema's column names."""
        schema = config_schema(run.config)
        data = (table_io.csv_bytes if export_format == "csv" else table_io.parquet_bytes)(schema, population.samples)
        (folder / EXPORT_FILES[export_format]).write_bytes(data)

    def describe_release(self, run: Run, count: int) -> str:
        """e.g. "1000 synthetic rows of 15 columns"."""
        return f"{count} synthetic rows of {len(config_schema(run.config).columns)} columns"

    def leak_fingerprints(self, config: Config, samples: np.ndarray) -> set[str]:
        """Row hashes (:func:`~privevo.modalities.row_hashes`) of the rows that chance would hardly reproduce: those
        with at least one distinctive value.

        Good synthetic data reproduces the frequent rows of a table with a small domain: where a row's values are all
        categories, narrow integers (an age, hours per week) or declared atoms (a capital gain of 0), a synthetic row
        equal to a private one is expected of a sound run and is no copy, so the audit cannot hold it against the run.
        A value is distinctive when its column is a float or an integer of at least :data:`DISTINCTIVE_VALUES`
        declared values (fnlwgt) and it is none of the column's atoms. A copied private record matches on every
        column, its distinctive values included, so the audit still finds a copy of every row that has one; rows
        without one are not checked (the DP vote protects them, as it protects every row).
        """
        schema = config_schema(config)
        distinctive = np.zeros(len(samples), dtype=bool)
        for j, column in enumerate(schema.columns):
            wide = column.type == "float" or (column.type == "integer"
                                              and float(column.max) - float(column.min) + 1 >= DISTINCTIVE_VALUES)  # type: ignore[arg-type]
            if wide:
                distinctive |= ~np.isin(samples[:, j], np.asarray(column.atoms, dtype=samples.dtype))
        return row_hashes(samples[distinctive]) if distinctive.any() else set()


def _score(run: Run, real: SampleSet | None, last: int, log_rows: bool) -> Scores:
    """Per-generation rows and the final row of table metrics against ``real`` (None: every metric null)."""
    from privevo.evaluation import format_row
    from privevo.steps import load_population
    from privevo.tabular.metrics import table_metrics

    schema = config_schema(run.config)
    ledger = run.ledger()
    rows = []
    for generation in range(last + 1):
        row: dict[str, Any] = {"generation": generation, "tvd_1way": None, "tvd_2way": None, "tvd_3way": None,
                               "wasserstein": None, "epsilon": ledger.epsilon(upto_generation=generation),
                               "non_dp": False}
        if real is not None:
            samples = load_population(run, generation).samples
            found = table_metrics(schema, samples, real.samples, with_utility=False)
            row.update({key: found.get(key) for key in ("tvd_1way", "tvd_2way", "tvd_3way", "wasserstein")})
        rows.append(row)
        if log_rows:
            logger.info("evaluated generation %d: %s", generation, format_row(row))
    final = dict(rows[-1])
    final.update(dict.fromkeys(("wasserstein_per_column", "utility", *UTILITY_KEYS)))
    if real is not None:
        found = table_metrics(schema, load_population(run, last).samples, real.samples, seed=run.config.seed)
        final["wasserstein_per_column"] = found["wasserstein_per_column"]
        final["utility"] = utility = found["utility"]
        if utility is not None:
            for key, (trained_on, measure) in UTILITY_KEYS.items():
                final[key] = utility[trained_on][measure]
    return rows, final
