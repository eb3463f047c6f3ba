"""What loading a private set found, for the private tier only: the same report for every data type."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class DataQuality:
    """What loading a private set found: kept for the private tier only (it describes the private set).

    Handed to a modality's loader (:meth:`privevo.modalities.Modality.load_private`), it turns
    problems of single records (a corrupt or unreadable record, a label outside class_names, a
    configured class with no records, an empty selection) into skips counted here instead of
    errors, so that whether a run fails never depends on one private record. Problems of the
    whole set's form (a missing path, an array of the wrong dtype or shape) stay errors: they
    are configuration.
    """

    records_read: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    missing_classes: list[str] = field(default_factory=list)
    classes: dict[str, int] = field(default_factory=dict)
    records_kept: int = 0
    adjusted: dict[str, int] = field(default_factory=dict)  # values changed to fit a table's schema, by what

    def skip(self, record: str, reason: str) -> None:
        """Count one record left out, and why."""
        self.skipped.append({"record": record, "reason": reason})

    def found(self, count: int, labels: np.ndarray | None, class_names: list[str] | None) -> None:
        """Note what the loaded set holds: its size and the records per class."""
        self.records_kept = count
        if labels is not None and class_names is not None:
            names, counts = np.unique(labels, return_counts=True)
            self.classes = {class_names[int(i)]: int(c) for i, c in zip(names, counts, strict=True)}

    def to_dict(self) -> dict[str, object]:
        """The report as JSON-ready data."""
        return {"records_read": self.records_read, "records_kept": self.records_kept,
                "records_skipped": len(self.skipped), "skipped": self.skipped,
                "classes": self.classes, "missing_classes": self.missing_classes, "adjusted": self.adjusted}
