"""Tables: Private Evolution on a table with a public schema (Tab-PE).

Where each part lives: the public schema and its codes in :mod:`privevo.tabular.schema`, the
CSV and Parquet loaders in :mod:`privevo.tabular.data`, the random and variation APIs in
:mod:`privevo.tabular.model`, the vote's embedding in :mod:`privevo.tabular.embedding`, the
metrics and report views in :mod:`privevo.tabular.metrics`, the population file and the
export's CSV and Parquet in :mod:`privevo.tabular.table_io`, and what the shared steps call in
:mod:`privevo.tabular.modality` (:class:`TabularModality`). Importing this package imports none
of them (the config imports the schema from here).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """``TabularModality``, imported on first use (the registry names it ``privevo.tabular:TabularModality``)."""
    if name == "TabularModality":
        from privevo.tabular.modality import TabularModality

        return TabularModality
    raise AttributeError(name)
