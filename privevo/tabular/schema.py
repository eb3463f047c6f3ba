"""The public schema of a table: its columns, their domains and the label column.

The schema is public knowledge (a data dictionary, a standard), declared in the config
(``tabular.columns``) or in a YAML file it names (``tabular.schema_file``); it is never read
from the private table. It makes the codes public: a table in memory is a float64 array
(N, n_columns) holding, per column, a category's index (categorical) or the value itself
(integer, float). Values outside the declared domain are clipped to the bounds or mapped to
the column's declared ``other`` category (the record is skipped when there is none), and
counted only in the private tier's data-quality report (:class:`~privevo.data_quality.DataQuality`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from privevo import storage
from privevo.errors import UserError

if TYPE_CHECKING:
    from privevo.data_quality import DataQuality


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Strict):
    """One column's public domain."""

    name: str = Field(min_length=1)
    type: Literal["categorical", "integer", "float"]
    categories: list[str] | None = Field(default=None, description="categorical: every category, in code order")
    other: str | None = Field(default=None, description="categorical: the category an undeclared value maps to")
    min: float | None = Field(default=None, description="integer/float: lower bound (values below are clipped)")
    max: float | None = Field(default=None, description="integer/float: upper bound (values above are clipped)")
    atoms: list[float] = Field(default=[], description="integer/float: declared point masses (e.g. 0 for a gain)")
    scale: Literal["linear", "log"] = Field(
        default="linear", description="integer/float: the vote's scale, log1p(x - min) for a long tail (a gain)")

    @model_validator(mode="after")
    def _domain(self) -> ColumnSpec:
        if self.type == "categorical":
            if not self.categories:
                raise ValueError(f"column {self.name}: a categorical column needs its categories")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError(f"column {self.name}: categories repeat")
            if self.other is not None and self.other not in self.categories:
                raise ValueError(f"column {self.name}: other {self.other!r} is not one of its categories")
            if self.min is not None or self.max is not None or self.atoms or self.scale != "linear":
                raise ValueError(f"column {self.name}: min, max, atoms and scale are for integer and float columns")
            return self
        if self.categories is not None or self.other is not None:
            raise ValueError(f"column {self.name}: categories and other are for categorical columns")
        if self.min is None or self.max is None or not self.min < self.max:
            raise ValueError(f"column {self.name}: a numeric column needs bounds min < max")
        if not all(math.isfinite(v) for v in (self.min, self.max, *self.atoms)):
            raise ValueError(f"column {self.name}: bounds and atoms must be finite")
        if self.type == "integer" and not all(float(v).is_integer() for v in (self.min, self.max, *self.atoms)):
            raise ValueError(f"column {self.name}: an integer column's bounds and atoms are integers")
        if any(not self.min <= a <= self.max for a in self.atoms):
            raise ValueError(f"column {self.name}: atoms must lie within [min, max]")
        return self


class SchemaSpec(_Strict):
    """A schema as declared: the columns in file order and the label column, if any."""

    columns: list[ColumnSpec] = Field(min_length=1)
    label: str | None = Field(default=None, description="a categorical column: the class of each row")

    @model_validator(mode="after")
    def _label(self) -> SchemaSpec:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError("column names repeat")
        if self.label is not None:
            if self.label not in names:
                raise ValueError(f"label {self.label!r} is not a column")
            if self.columns[names.index(self.label)].type != "categorical":
                raise ValueError(f"label {self.label!r} must be a categorical column")
        return self


class CsvOptions(_Strict):
    """How a CSV file is read (``private.source: csv``)."""

    header: bool = Field(default=True, description="the first row names the columns; else they are in schema order")
    skip_rows: int = Field(default=0, ge=0, description="lines to skip before the header or the first row")
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    na_values: list[str] = Field(default=[""], description="values that mean missing (after stripping blanks)")
    strip_suffix: str | None = Field(default=None, description="removed from the end of every value (e.g. '.')")


@dataclass(frozen=True)
class Schema:
    """The runtime form of a :class:`SchemaSpec`: code arrays and per-column lookups."""

    spec: SchemaSpec

    @property
    def columns(self) -> list[ColumnSpec]:
        return self.spec.columns

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.spec.columns]

    @property
    def label_index(self) -> int | None:
        """The label column's position, None when the table has none."""
        return None if self.spec.label is None else self.names.index(self.spec.label)

    @property
    def class_names(self) -> list[str] | None:
        """The label column's categories (class index = code), None without a label column."""
        index = self.label_index
        return None if index is None else list(self.columns[index].categories or [])

    @property
    def categorical(self) -> np.ndarray:
        """Bool mask of the categorical columns."""
        return np.array([c.type == "categorical" for c in self.columns])

    @property
    def low(self) -> np.ndarray:
        """Per column: 0 for categoricals, else the lower bound."""
        return np.array([0.0 if c.min is None else c.min for c in self.columns])

    @property
    def high(self) -> np.ndarray:
        """Per column: the last code for categoricals, else the upper bound."""
        return np.array([len(c.categories or []) - 1.0 if c.max is None else c.max for c in self.columns])

    def encode(self, rows: Sequence[Sequence[Any]], na_values: Sequence[str] = ("",), strip_suffix: str | None = None,
               quality: DataQuality | None = None, adjusted: Counter[str] | None = None) -> np.ndarray:
        """Code raw rows (one value per schema column, in schema order): clip, map to ``other`` or skip, and count.

        Missing values (None, NaN, or a string in ``na_values`` after stripping blanks) map to ``other`` when the
        column declares one, else skip the record. Skipped records go to ``quality`` (by row number and reason),
        values clipped or mapped to ``other`` to ``adjusted`` (by column): private-tier reports only, never logged.
        """
        adjusted = adjusted if adjusted is not None else Counter()
        lookups = [{name: i for i, name in enumerate(c.categories or [])} for c in self.columns]
        missing = set(na_values)
        out = np.empty((len(rows), len(self.columns)), dtype=np.float64)
        kept = 0
        for number, row in enumerate(rows, start=1):
            if quality is not None:
                quality.records_read += 1
            if len(row) != len(self.columns):
                reason = "wrong number of values"
            else:
                codes = [_code(c, v, lookups[j], missing, strip_suffix) for j, (c, v) in
                         enumerate(zip(self.columns, row, strict=True))]
                reason = next((r for _, r in codes if r is not None and not r.startswith(_ADJUSTED)), "")
            if reason:
                if quality is not None:
                    quality.skip(f"row {number}", reason)
                continue
            adjusted.update(r[len(_ADJUSTED):] for _, r in codes if r is not None)
            out[kept] = [code for code, _ in codes]
            kept += 1
        return out[:kept]

    def decode(self, codes: np.ndarray) -> dict[str, list[Any]]:
        """Column name -> its values (category names, ints, floats) for codes (N, n_columns)."""
        check_codes(self, codes)
        table: dict[str, list[Any]] = {}
        for j, column in enumerate(self.columns):
            values = codes[:, j]
            if column.type == "categorical":
                names = column.categories or []
                table[column.name] = [names[int(v)] for v in values]
            elif column.type == "integer":
                table[column.name] = [int(v) for v in values]
            else:
                table[column.name] = [float(v) for v in values]
        return table


_ADJUSTED = "adjusted: "


def _code(column: ColumnSpec, value: Any, lookup: dict[str, int], missing: set[str],
          strip_suffix: str | None) -> tuple[float, str | None]:
    """One value's code and what happened to it: None (as is), ``_ADJUSTED`` + what (clipped, mapped to other) or
    why its record is skipped."""
    text = None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip()
    if text is not None and strip_suffix and text.endswith(strip_suffix):
        text = text[: -len(strip_suffix)].strip()
    if column.type == "categorical":
        if text is not None and text not in missing and text in lookup:
            return float(lookup[text]), None
        if column.other is None:
            return 0.0, f"{column.name}: missing or undeclared value"
        return float(lookup[column.other]), f"{_ADJUSTED}{column.name}: mapped to other"
    if text is None or text in missing:
        return 0.0, f"{column.name}: missing value"
    try:
        number = float(text)
    except ValueError:
        return 0.0, f"{column.name}: not a number"
    if not math.isfinite(number):
        return 0.0, f"{column.name}: not a finite number"
    assert column.min is not None and column.max is not None
    if column.type == "integer":
        number = float(round(number))
    if not column.min <= number <= column.max:
        return min(max(number, column.min), column.max), f"{_ADJUSTED}{column.name}: clipped to its bounds"
    return number, None


def check_codes(schema: Schema, codes: np.ndarray) -> None:
    """Reject an array that is not (N, n_columns) float64 codes inside the schema's domain (a one-line UserError)."""
    if codes.dtype != np.float64 or codes.ndim != 2 or codes.shape[1] != len(schema.columns):
        raise UserError(f"tables are float64 (N, {len(schema.columns)}) code arrays, got {codes.dtype} {codes.shape}")
    if len(codes) and (np.any(codes < schema.low) or np.any(codes > schema.high) or not np.all(np.isfinite(codes))):
        raise UserError("a table holds codes outside its schema's domain")
    categorical = schema.categorical | np.array([c.type == "integer" for c in schema.columns])
    if len(codes) and np.any(codes[:, categorical] != np.round(codes[:, categorical])):
        raise UserError("a table holds a fractional code in a categorical or integer column")


def load_schema_spec(columns: list[ColumnSpec] | None, label: str | None, schema_file: str | None) -> SchemaSpec:
    """The schema a config declares: inline ``columns`` (and ``label``) or the YAML ``schema_file`` (local or gs://)."""
    if (columns is None) == (schema_file is None):
        raise UserError("tabular: declare the schema in exactly one of tabular.columns and tabular.schema_file")
    if columns is not None:
        try:
            return SchemaSpec(columns=columns, label=label)
        except ValidationError as error:
            raise UserError(f"tabular: {error.errors()[0]['msg']}") from None
    assert schema_file is not None
    try:
        data = yaml.safe_load(storage.read_bytes(schema_file))
    except yaml.YAMLError as error:
        raise UserError(f"{schema_file} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{schema_file} must hold a mapping with columns (and optionally label)")
    if label is not None:
        data = {**data, "label": label}
    try:
        return SchemaSpec.model_validate(data)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(p) for p in problem["loc"]) or "(top level)"
        raise UserError(f"{schema_file}: {where}: {problem['msg']}") from None
