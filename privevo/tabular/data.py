"""Load a table (CSV or Parquet, local or gs://) as schema codes.

Each row is coded by the public schema (:meth:`Schema.encode`): values outside the declared
domain are clipped or mapped to ``other``, records that cannot be coded are skipped, and all
of it is counted in a :class:`TableQuality` (the private tier's data-quality report). Errors
are about the file's form (a missing file, a missing column) and never quote a value.
"""

from __future__ import annotations

import csv
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from privevo import storage
from privevo.errors import UserError
from privevo.tabular.schema import CsvOptions, Schema

if TYPE_CHECKING:
    from privevo.config import DataConfig
    from privevo.data_quality import DataQuality

SOURCES = ("csv", "parquet")


def _csv_rows(data: bytes, schema: Schema, options: CsvOptions, path: str) -> list[list[Any]]:
    """The file's records with their values in schema order (a record of another width is kept as is)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text: save the CSV as UTF-8") from None
    lines = text.splitlines()[options.skip_rows:]
    records = [r for r in csv.reader(lines, delimiter=options.delimiter) if any(v.strip() for v in r)]
    if not options.header:
        return [list(r) for r in records]
    if not records:
        raise UserError(f"{path} has no header row: set csv.header to false or add one")
    header = [name.strip() for name in records[0]]
    missing = [name for name in schema.names if name not in header]
    if missing:
        raise UserError(f"{path} has no column {missing[0]!r} of the schema: rename the column or fix the schema")
    positions = [header.index(name) for name in schema.names]
    return [[r[i] for i in positions] if len(r) == len(header) else [] for r in records[1:]]


def _parquet_rows(data: bytes, schema: Schema, path: str) -> list[list[Any]]:
    """The file's rows with the schema's columns, in schema order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError):
        raise UserError(f"{path} is not a readable Parquet file") from None
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise UserError(f"{path} has no column {missing[0]!r} of the schema: rename the column or fix the schema")
    columns = [table.column(name).to_pylist() for name in schema.names]
    return [list(row) for row in zip(*columns, strict=True)]


def read_table(data: DataConfig, schema: Schema, quality: DataQuality | None = None,
               adjusted: Counter[str] | None = None) -> np.ndarray:
    """Every codable record of the file ``data.path`` as codes (N, n_columns), in file order (skips and
    adjustments counted as :meth:`Schema.encode` does)."""
    if data.source not in SOURCES:
        raise UserError(f"a table's source is csv or parquet, not {data.source}")
    raw = storage.read_bytes(data.path)
    options = data.csv or CsvOptions()
    rows = _csv_rows(raw, schema, options, data.path) if data.source == "csv" else _parquet_rows(raw, schema, data.path)
    return schema.encode(rows, options.na_values, options.strip_suffix, quality, adjusted)


def load_table(data: DataConfig, schema: Schema, seed: int, quality: DataQuality | None = None,
               adjusted: Counter[str] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The selected table: codes and labels (the label column's codes, None without one).

    The selection is as for images: rows whose label is in ``data.classes``, then rows [start, stop), then a
    random subset of ``data.limit`` rows seeded by ``seed``. With ``quality`` the counts go there (private tier).
    """
    codes = read_table(data, schema, quality, adjusted)
    index = schema.label_index
    if data.classes is not None:
        names = schema.class_names
        if index is None or names is None:
            raise UserError("private.classes needs tabular.label, the column holding each row's class")
        unknown = [c for c in data.classes if c not in names]
        if unknown:
            raise UserError(f"class {unknown[0]!r} is not a category of the label column {schema.spec.label}")
        wanted = [names.index(c) for c in data.classes]
        codes = codes[np.isin(codes[:, index], wanted)]
    if data.rows is not None:
        start, stop = data.rows
        codes = codes[start:stop]
    if data.limit is not None and data.limit < len(codes):
        keep = np.sort(np.random.default_rng(seed).choice(len(codes), size=data.limit, replace=False))
        codes = codes[keep]
    labels = None if index is None else codes[:, index].astype(np.int64)
    if quality is not None:
        quality.found(len(codes), labels, schema.class_names)
    return codes, labels
