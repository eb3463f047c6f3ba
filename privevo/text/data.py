"""Load a text set (local or gs://): a folder of ``.txt`` files, CSV, JSON Lines, or the ``fortunes`` collection.

Sources (``private.source`` / ``evaluation.reference.source``):

- ``folder``: one text per ``.txt`` file; files in a subfolder belong to the class the subfolder
  names, files directly in the folder have no class.
- ``csv``: a header row naming ``text.text_column`` and, for labelled sets, ``text.label_column``.
- ``jsonl``: one JSON object per line with the same keys.
- ``fortunes``: Debian's ``fortunes`` collection (``/usr/share/games/fortunes``): one file per
  category, entries separated by lines holding ``%``; each category read is a class.

Every text is cleaned the same way (whitespace runs become one space, ends stripped). Then public
rules select records, in this order: a label among ``class_names`` (the class's index is the
label; without ``class_names`` the set is unlabelled), ``classes``, the word-count bounds
``text.min_words`` / ``text.max_words``, the split, ``rows`` and a seeded subset of ``limit``.

The split is a public rule applied to each record alone: ``test`` keeps the texts whose
SHA-256 (of the cleaned text) is 0 modulo ``text.split_modulus``, ``train`` the others, so the
two splits of one source can never hold the same text, and equal texts fall on the same side.
Records that cannot be read, have no text, carry an unknown label or fall outside the bounds
are skipped and counted in the private tier's data-quality report; errors are about the
source's form (a missing column) and never quote a record.
"""

from __future__ import annotations

import csv
import hashlib
import json
from typing import TYPE_CHECKING

import numpy as np

from privevo import storage
from privevo.errors import UserError
from privevo.text.text_io import as_texts

if TYPE_CHECKING:
    from privevo.config import DataConfig, TextConfig
    from privevo.data_quality import DataQuality

SOURCES = ("folder", "csv", "jsonl", "fortunes")

#: (text, class name or None) as read; text None for a record that could not be read.
Record = tuple[str | None, str | None]


def clean(text: str) -> str:
    """One space for each whitespace run, no leading or trailing space."""
    return " ".join(text.split())


def words(text: str) -> int:
    """The number of whitespace-separated words."""
    return len(text.split())


def split_bucket(text: str, modulus: int) -> int:
    """The public split rule's bucket of a cleaned text: its SHA-256 modulo ``modulus`` (0 is the test split)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % modulus


def _decode(data: bytes) -> str | None:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def _folder_records(root: str) -> list[Record]:
    """Every ``.txt`` file under ``root``: its text and its subfolder's name (None directly in ``root``)."""
    root = root.rstrip("/")
    uris = [u for u in storage.list_files(root) if u.endswith(".txt")]
    records: list[Record] = []
    for uri, data in zip(uris, storage.read_many(uris), strict=True):
        parts = uri[len(root) + 1:].split("/")
        records.append((_decode(data), parts[0] if len(parts) > 1 else None))
    return records


def _label_of(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def _csv_records(data: DataConfig, section: TextConfig) -> list[Record]:
    """The CSV's records: the text column and, when the header has it, the label column."""
    text = _decode(storage.read_bytes(data.path))
    if text is None:
        raise UserError(f"{data.path} is not UTF-8 text: save the CSV as UTF-8")
    delimiter = data.csv.delimiter if data.csv is not None else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    if section.text_column not in (reader.fieldnames or []):
        raise UserError(f"{data.path} has no column {section.text_column!r}: set text.text_column to the column "
                        "holding the texts")
    return [(row.get(section.text_column), _label_of(row.get(section.label_column or ""))) for row in reader]


def _jsonl_records(data: DataConfig, section: TextConfig) -> list[Record]:
    """The JSON Lines file's records (a line that is not a JSON object with a string text is unreadable)."""
    text = _decode(storage.read_bytes(data.path))
    if text is None:
        raise UserError(f"{data.path} is not UTF-8 text: save the JSON Lines file as UTF-8")
    records: list[Record] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            records.append((None, None))
            continue
        value = record.get(section.text_column) if isinstance(record, dict) else None
        label = _label_of(record.get(section.label_column)) if isinstance(record, dict) and section.label_column else None
        records.append((value if isinstance(value, str) else None, label))
    return records


def _fortunes_records(data: DataConfig, categories: list[str]) -> list[Record]:
    """The entries of each category file ``<path>/<category>``, split on lines holding ``%``."""
    records: list[Record] = []
    for category in categories:
        uri = storage.join(data.path, category)
        if not storage.exists(uri):
            raise UserError(f"{data.path} has no fortunes category {category!r}: install Debian's fortunes package "
                            "(make install) or fix the class names")
        text = _decode(storage.read_bytes(uri)) or ""
        entry: list[str] = []
        for line in [*text.splitlines(), "%"]:
            if line.strip() == "%":
                if any(part.strip() for part in entry):
                    records.append(("\n".join(entry), category))
                entry = []
            else:
                entry.append(line)
    return records


def read_records(data: DataConfig, section: TextConfig, class_names: list[str] | None) -> list[Record]:
    """Every record of the source, in its order."""
    if data.source not in SOURCES:
        raise UserError(f"a text set's source is one of {', '.join(SOURCES)}, not {data.source}")
    if data.source == "folder":
        return _folder_records(data.path)
    if data.source == "csv":
        return _csv_records(data, section)
    if data.source == "jsonl":
        return _jsonl_records(data, section)
    categories = data.classes or class_names
    if not categories:
        raise UserError("source fortunes needs class_names (or classes): the categories to read, e.g. computers")
    return _fortunes_records(data, categories)


def load_texts(data: DataConfig, section: TextConfig, class_names: list[str] | None, seed: int,
               quality: DataQuality | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The selected texts (an object array of str) and their labels (int64 indices into ``class_names``; None for an
    unlabelled set or without ``class_names``). With ``quality`` the counts go there (private tier)."""
    records = read_records(data, section, class_names)
    if quality is not None:
        quality.records_read += len(records)
    labelled = class_names is not None and any(label is not None for _, label in records)
    wanted = set(data.classes) if data.classes is not None else None
    texts: list[str] = []
    labels: list[int] = []
    for i, (raw, label) in enumerate(records):
        reason = None
        text = clean(raw) if raw is not None else ""
        if raw is None:
            reason = "not readable as a text"
        elif not text:
            reason = "no text"
        elif labelled and (label is None or label not in (class_names or [])):
            reason = "its label is not in class_names"
        elif (section.min_words is not None and words(text) < section.min_words) or (
                section.max_words is not None and words(text) > section.max_words):
            reason = "its word count is outside text.min_words..text.max_words"
        if reason is not None:
            if quality is not None:
                quality.skip(f"record {i}", reason)
            continue
        if wanted is not None and labelled and label not in wanted:
            continue
        if data.split is not None and (split_bucket(text, section.split_modulus) == 0) != (data.split == "test"):
            continue
        texts.append(text)
        labels.append((class_names or []).index(label) if labelled and label is not None else -1)
    out, out_labels = as_texts(texts), np.array(labels, dtype=np.int64)
    if data.rows is not None:
        start, stop = data.rows
        out, out_labels = out[start:stop], out_labels[start:stop]
    if data.limit is not None and data.limit < len(out):
        keep = np.sort(np.random.default_rng(seed).choice(len(out), size=data.limit, replace=False))
        out, out_labels = out[keep], out_labels[keep]
    result_labels = out_labels if labelled else None
    if quality is not None:
        quality.found(len(out), result_labels, class_names)
    return out, result_labels
