"""Tables on disk: the population's Parquet file in the run layout, and the export's CSV and Parquet.

A population file holds the codes as float64 columns ``code_000 ...`` with ``label`` and
``parent_id``, and its format version and generation in the file's metadata: the codec needs
no config, and the run's released config (``run.json``) holds the schema that names the codes.
The export decodes the codes to values (category names, integers, floats) under the schema's
column names; its Parquet stores categoricals as dictionaries over every declared category and
the schema itself in the file's metadata.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np

from privevo.errors import UserError
from privevo.population import Population
from privevo.tabular.schema import Schema

FORMAT_VERSION = 1
_VERSION_KEY, _GENERATION_KEY, _SCHEMA_KEY = b"privevo.format_version", b"privevo.generation", b"privevo.schema"


def _parquet_bytes(table: object) -> bytes:
    """A pyarrow table as Parquet bytes (deterministic for the same table)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def encode_population(population: Population) -> bytes:
    """A population of code rows as a Parquet file."""
    import pyarrow as pa

    samples = population.samples
    if samples.dtype != np.float64 or samples.ndim != 2:
        raise ValueError(f"a table population holds float64 (N, columns) codes, got {samples.dtype} {samples.shape}")
    arrays = {f"code_{j:03d}": pa.array(samples[:, j], pa.float64()) for j in range(samples.shape[1])}
    arrays["label"] = pa.array(population.labels.astype(np.int64), pa.int64())
    arrays["parent_id"] = pa.array(population.parent_ids.astype(np.int64), pa.int64())
    table = pa.table(arrays).replace_schema_metadata(
        {_VERSION_KEY: str(FORMAT_VERSION).encode(), _GENERATION_KEY: str(population.generation).encode()})
    return _parquet_bytes(table)


def decode_population(data: bytes, source: str) -> Population:
    """The population in a file :func:`encode_population` wrote; anything else is a one-line UserError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
        metadata = table.schema.metadata or {}
        version = int(metadata[_VERSION_KEY])
        if version != FORMAT_VERSION:
            raise UserError(f"{source} has population format {version}, this version reads {FORMAT_VERSION}")
        names = sorted(n for n in table.column_names if n.startswith("code_"))
        samples = np.stack([table.column(n).to_numpy() for n in names], axis=1) if names else np.zeros(
            (table.num_rows, 0))
        return Population(samples=samples.astype(np.float64), labels=table.column("label").to_numpy().astype(np.int64),
                          parent_ids=table.column("parent_id").to_numpy().astype(np.int64),
                          generation=int(metadata[_GENERATION_KEY]))
    except (pa.ArrowInvalid, OSError, KeyError, ValueError) as error:
        raise UserError(f"{source} is not a readable table population file ({type(error).__name__})") from None


def csv_bytes(schema: Schema, codes: np.ndarray) -> bytes:
    """A CSV (a header of the schema's column names, then one line per row) of codes decoded to values."""
    table = schema.decode(codes)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(schema.names)
    writer.writerows(zip(*(table[name] for name in schema.names), strict=True))
    return buffer.getvalue().encode()


def parquet_bytes(schema: Schema, codes: np.ndarray) -> bytes:
    """A Parquet file of codes decoded to values: categoricals as dictionaries over every declared category, the
    schema in the file's metadata."""
    import pyarrow as pa

    schema_check = schema.decode(codes)  # validates the codes
    arrays = {}
    for j, column in enumerate(schema.columns):
        if column.type == "categorical":
            arrays[column.name] = pa.DictionaryArray.from_arrays(pa.array(codes[:, j].astype(np.int32)),
                                                                 pa.array(column.categories, pa.string()))
        elif column.type == "integer":
            arrays[column.name] = pa.array(schema_check[column.name], pa.int64())
        else:
            arrays[column.name] = pa.array(codes[:, j], pa.float64())
    table = pa.table(arrays).replace_schema_metadata({_SCHEMA_KEY: json.dumps(schema.spec.model_dump(mode="json"))})
    return _parquet_bytes(table)
