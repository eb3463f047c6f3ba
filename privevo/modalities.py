"""Data types ("modalities"): what Private Evolution works on, one package each.

Private Evolution's two model calls, the nearest-neighbour vote, the noise, the selection and
the accounting are the same for any data type; only the samples, the model behind the two
calls, the embedding for the vote, the metrics, the report's views and the export's formats
change. The DAG, the step table, the privacy module, the ledger, the run layout, ``audit``,
``rerun`` and ``resume`` are shared and reach the data type only through :class:`Modality`.

A config's ``modality`` names one of :data:`MODALITIES` (default ``image``). Adding a data
type is one package ``privevo/<name>/`` with a :class:`Modality` subclass and its line here;
the registry is plain strings so that validating a config imports no data-type code.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from privevo import registry

if TYPE_CHECKING:
    from pathlib import Path

    from privevo.config import Config, DataConfig
    from privevo.data_quality import DataQuality
    from privevo.population import Population
    from privevo.run_record import Run

#: config.modality -> "module:class" of its Modality, imported only when a run needs it.
MODALITIES: dict[str, str] = {
    "image": "privevo.image:ImageModality",
    "tabular": "privevo.tabular:TabularModality",
    "text": "privevo.text:TextModality",
}

#: Per-generation metric rows and the final row, as a scorer returns them (see :meth:`Modality.scorer`).
Scores = tuple[list[dict[str, Any]], dict[str, Any]]


@dataclass
class SampleSet:
    """Real samples (private or reference) in the modality's sample form, with labels (int64 class indices) or None."""

    samples: np.ndarray
    labels: np.ndarray | None


class WarmStart(Protocol):
    """A data type's DP warm start (``privacy.warm_start_share``): 1-way marginals of the private set in public bins.

    One record falls in exactly one bin of each marginal, so adding or removing it moves each of the C marginals'
    counts by 1 in one bin: L2 sensitivity sqrt(C) (:func:`privevo.privacy.release_warm_start` charges and noises)."""

    #: The number of bins of each marginal, from the config alone (public).
    bins: list[int]

    def counts(self, samples: np.ndarray) -> np.ndarray:
        """The marginals' clean counts, concatenated (int64, sum(bins)): PRIVATE, for the privacy module only."""

    def apply(self, model: Any, noisy: np.ndarray) -> Any:
        """The model with the released noisy counts as its prior (post-processing of the release)."""


class Modality(abc.ABC):
    """One data type: its samples' file format, loaders, model and embedding registries, metrics, report and export.

    Samples are numpy arrays whose first axis indexes samples (images: uint8 NHWC; tables: a 2-D array of schema
    codes; text: a str array); the shared steps only slice, concatenate and hand them to the modality's model and
    embedding. Methods that read the private set return private data: never log, return or release it.
    """

    #: The config's ``modality`` value.
    name: str
    #: File suffix of a population (and its shards) in the run layout, e.g. ".npz".
    population_suffix: str
    #: ``export --format`` choices; the first is the default.
    export_formats: tuple[str, ...]

    # ------------------------------------------------------------------ run layout

    @abc.abstractmethod
    def encode_population(self, population: Population) -> bytes:
        """A population's file content (deterministic for the same arrays: a rerun writes the same bytes)."""

    @abc.abstractmethod
    def decode_population(self, data: bytes, source: str) -> Population:
        """The population in ``data``; an unreadable file or another format version is a one-line UserError naming
        ``source``."""

    # ------------------------------------------------------------------ data

    @abc.abstractmethod
    def load_private(self, run: Run, quality: DataQuality) -> SampleSet:
        """The run's private set (``config.private``), PRIVATE. Problems of single records are skipped and counted
        in ``quality``, never raised; problems of the set's form (config) are UserErrors."""

    @abc.abstractmethod
    def load_reference(self, run: Run) -> SampleSet | None:
        """The held-out real set ``config.evaluation.reference`` (None when the config names none)."""

    def blank_rows(self, samples: np.ndarray, n: int) -> np.ndarray:
        """``n`` blank samples of the same form as ``samples`` (the padding of ``privacy.max_private_rows``: embedded
        and searched like real rows, they vote nothing). Default: zeros of the same dtype and per-sample shape."""
        return np.zeros((n, *samples.shape[1:]), samples.dtype)

    @abc.abstractmethod
    def may_share_records(self, a: DataConfig, b: DataConfig) -> bool:
        """Whether two data selections can hold the same record: refuses an evaluation reference overlapping the
        private data, and decides whether the report may show real reference samples."""

    # ------------------------------------------------------------------ model and embedding

    @abc.abstractmethod
    def load_model(self, config: Config) -> Any:
        """The foundation model ``config.model`` names: ``random(n, labels, seed, first_index)`` (RANDOM_API) and
        ``variation(samples, degree, labels, seed, first_index)`` (VARIATION_API), ``num_classes`` and ``ledger``
        (a :class:`privevo.remote_calls.CallLedger` for a backend behind an API, else None: the steps record its
        calls through :class:`privevo.remote_calls.RecordedModel`)."""

    @abc.abstractmethod
    def model_fields(self, config: Config) -> tuple[str, ...]:
        """The config's fields (dotted keys) that :meth:`load_model` reads: the model's backend's ``config_fields`` and
        what the data type adds. A process keeps one loaded model while their values stay the same."""

    @abc.abstractmethod
    def embedding_fields(self, config: Config) -> tuple[str, ...]:
        """The config's fields (dotted keys) that :meth:`load_embedding` reads (kept loaded like the model)."""

    @abc.abstractmethod
    def load_embedding(self, config: Config) -> Any:
        """The vote's embedding ``config.embedding`` names: ``embed(samples, batch_size, progress) -> float32 (N, dim)``."""

    def warm_start(self, config: Config) -> WarmStart | None:
        """The data type's DP warm start for ``config`` (None: it has none, and a config asking for one is refused)."""
        return None

    # ------------------------------------------------------------------ metrics, report, export, audit

    @abc.abstractmethod
    def scorer(self, run: Run) -> Callable[[SampleSet | None, int, bool], Scores]:
        """What scores the run's generations: called as ``score(real, last, log_rows)`` it returns one row per
        generation 0..last and the final row, each metric None where ``real`` is None. Every row holds
        ``generation``, ``epsilon`` and ``non_dp`` (False) beside the metrics. It is called for the held-out reference
        and, with ``evaluation.against_private``, the private set (then ``log_rows`` is False: log nothing)."""

    @abc.abstractmethod
    def metrics_fields(self, final: dict[str, Any]) -> dict[str, Any]:
        """The modality's top-level fields of metrics.json beside the shared ones (which extractor, which protocol)."""

    #: The per-generation metric columns of the Markdown summary (between ``generation`` and ``epsilon``).
    summary_keys: tuple[str, ...]
    #: The per-generation metrics the KFP UI plots (beside ``epsilon``).
    headline_keys: tuple[str, ...]

    def curve_panels(self, result: dict[str, Any]) -> list[tuple[str, list[str]]]:
        """The report's curves over generations (the shell adds epsilon's): (title, row keys) per panel.
        Default: one panel per summary key."""
        return [(key, [key]) for key in self.summary_keys]

    def headline(self, result: dict[str, Any]) -> list[tuple[str, Any]]:
        """(name, value) of the final metrics the report's first line shows after epsilon (None: not shown).
        Default: the summary keys of the final row."""
        return [(key, result["final"].get(key)) for key in self.summary_keys]

    @abc.abstractmethod
    def write_report_views(self, run: Run, result: dict[str, Any]) -> None:
        """Write the modality's report files (sample previews, per-class counts, ...) into the run's report folder,
        from released populations and the reference set only."""

    @abc.abstractmethod
    def results_html(self, run: Run, result: dict[str, Any], figure: Callable[..., str]) -> dict[str, str]:
        """The report's modality parts as HTML: ``final`` (the final samples beside real ones), ``gallery`` (every
        generation's samples, may be empty) and, optionally, ``note`` (how to read ``final``) and ``extra`` (more
        results after the curves). ``figure(name, caption, wide=False)`` shows a file the modality wrote into the
        report folder."""

    @abc.abstractmethod
    def export(self, run: Run, population: Population, export_format: str, folder: Path) -> None:
        """Write ``population`` (released) in ``export_format`` (one of :attr:`export_formats`) into ``folder``."""

    @abc.abstractmethod
    def describe_release(self, run: Run, count: int) -> str:
        """What ``count`` exported samples are, e.g. "12 synthetic 28x28 images" (for the privacy statement)."""

    def leak_fingerprints(self, config: Config, samples: np.ndarray) -> set[str]:
        """Fingerprints of private samples (at most one per sample) that the audit looks for in released arrays and
        decoded populations of a run of ``config``. Default: :func:`row_hashes` (exact copies of a sample's bytes)."""
        return row_hashes(samples)


def row_hashes(array: np.ndarray) -> set[str]:
    """The sha256 of each row's bytes (a 0- or 1-D array is one row)."""
    rows = array.reshape(len(array), -1) if array.ndim > 1 else array.reshape(1, -1)
    return {hashlib.sha256(np.ascontiguousarray(r).tobytes()).hexdigest() for r in rows}


_INSTANCES: dict[str, Modality] = {}


def get_modality(config_or_name: Config | str) -> Modality:
    """The modality a config (or a name) names, one instance per process; an unregistered one is a one-line
    UserError naming the registered ones."""
    name = config_or_name if isinstance(config_or_name, str) else config_or_name.modality
    if name not in _INSTANCES:
        _INSTANCES[name] = registry.registered_class(MODALITIES, name, "modality")()
    return _INSTANCES[name]
