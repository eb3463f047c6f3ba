"""Tables: Private Evolution on a table with a public schema (Tab-PE).

Where each part lives: the public schema and its codes in :mod:`privevo.tabular.schema`, the
CSV and Parquet loaders in :mod:`privevo.tabular.data`, the random and variation APIs in
:mod:`privevo.tabular.model`, the vote's embedding in :mod:`privevo.tabular.embedding`, the
metrics and report views in :mod:`privevo.tabular.metrics`, the population file and the
export's CSV and Parquet in :mod:`privevo.tabular.table_io`, the DP warm start's marginals in
:mod:`privevo.tabular.warm_start`, and what the shared steps call in
:mod:`privevo.tabular.modality` (:class:`TabularModality`). Importing this package imports none
of them (the config reads :data:`TABULAR_MODELS` and :data:`TABULAR_EMBEDDINGS` from here).
"""

from __future__ import annotations

from typing import Any

#: model.kind values of modality tabular -> "module:class": Tab-PE's random and variation APIs on the public schema
#: (no weights, so no model.path).
TABULAR_MODELS: dict[str, str] = {
    "tabular": "privevo.tabular.model:TabularModel",
}

#: embedding.name values of modality tabular -> "module:class": numerics scaled by their public bounds, categoricals
#: one-hot.
TABULAR_EMBEDDINGS: dict[str, str] = {
    "tabular": "privevo.tabular.embedding:TabularEmbedding",
}


def __getattr__(name: str) -> Any:
    """``TabularModality``, imported on first use (the registry names it ``privevo.tabular:TabularModality``)."""
    if name == "TabularModality":
        from privevo.tabular.modality import TabularModality

        return TabularModality
    raise AttributeError(name)
