"""Texts on disk: the population's JSON Lines file in the run layout, and the export's JSON Lines and CSV.

A population file is JSON Lines: a first line ``{"format": "privevo-text", "version": 1,
"generation": g}``, then one line per sample ``{"text": ..., "label": ..., "parent_id": ...}``
(keys sorted, UTF-8, no ASCII escaping): the same arrays give the same bytes, and the file
holds texts of any length (a fixed-width array would cut them). In memory the samples are a
numpy object array of Python ``str``: the shared steps fill populations by assignment, which
would silently truncate a fixed-width ``str`` array.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

import numpy as np

from privevo.errors import UserError
from privevo.population import Population

FORMAT, FORMAT_VERSION = "privevo-text", 1


def as_texts(values: Sequence[str] | np.ndarray) -> np.ndarray:
    """Texts as a 1-D numpy object array of ``str`` (the text modality's sample form)."""
    out = np.empty(len(values), dtype=object)
    out[:] = [str(v) for v in values]
    return out


def _line(record: dict[str, object]) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def encode_population(population: Population) -> bytes:
    """A population of texts as JSON Lines (a header line, then one line per sample)."""
    if population.samples.ndim != 1:
        raise ValueError(f"a text population holds a 1-D array of texts, got shape {population.samples.shape}")
    lines = [_line({"format": FORMAT, "version": FORMAT_VERSION, "generation": int(population.generation)})]
    lines += [_line({"text": str(text), "label": int(label), "parent_id": int(parent)})
              for text, label, parent in zip(population.samples, population.labels, population.parent_ids, strict=True)]
    return ("\n".join(lines) + "\n").encode()


def decode_population(data: bytes, source: str) -> Population:
    """The population in a file :func:`encode_population` wrote; anything else is a one-line UserError."""
    try:
        lines = data.decode("utf-8").splitlines()
        header = json.loads(lines[0])
        if header.get("format") != FORMAT:
            raise ValueError("not a text population")
        if header["version"] != FORMAT_VERSION:
            raise UserError(f"{source} has text population format {header['version']}, this version reads "
                            f"{FORMAT_VERSION}")
        records = [json.loads(line) for line in lines[1:] if line]
        return Population(samples=as_texts([r["text"] for r in records]),
                          labels=np.array([r["label"] for r in records], dtype=np.int64),
                          parent_ids=np.array([r["parent_id"] for r in records], dtype=np.int64),
                          generation=int(header["generation"]))
    except (UnicodeDecodeError, IndexError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise UserError(f"{source} is not a readable text population file ({type(error).__name__})") from None


def _label_name(label: int, class_names: list[str] | None) -> str | None:
    return class_names[label] if class_names is not None and 0 <= label < len(class_names) else None


def jsonl_bytes(texts: np.ndarray, labels: np.ndarray, class_names: list[str] | None) -> bytes:
    """The export's JSON Lines: ``{"text": ..., "label": class name}`` per line (no label key when unconditional)."""
    lines = []
    for text, label in zip(texts, labels, strict=True):
        name = _label_name(int(label), class_names)
        lines.append(_line({"text": str(text), **({"label": name} if name is not None else {})}))
    return ("\n".join(lines) + "\n").encode() if lines else b""


def csv_bytes(texts: np.ndarray, labels: np.ndarray, class_names: list[str] | None) -> bytes:
    """The export's CSV: a header ``text,label``, then one quoted row per text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["text", "label"])
    for text, label in zip(texts, labels, strict=True):
        writer.writerow([str(text), _label_name(int(label), class_names) or ""])
    return buffer.getvalue().encode()
