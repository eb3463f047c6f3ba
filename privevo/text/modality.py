"""The text modality: what the shared steps, evaluation, report, export and audit call for ``modality: text``."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from privevo import registry, storage
from privevo.errors import UserError
from privevo.modalities import Modality, SampleSet, Scores
from privevo.population import Population
from privevo.text import TEXT_MODELS, text_io
from privevo.text.data import clean

if TYPE_CHECKING:
    from pathlib import Path

    from privevo.config import Config, DataConfig, TextConfig
    from privevo.data_quality import DataQuality
    from privevo.run_record import Run

logger = logging.getLogger(__name__)

LENGTH_CURVE_PNG = "text_length_curve.png"
EXPORT_FILES = {"jsonl": "synthetic.jsonl", "csv": "synthetic.csv"}
SAMPLES_PER_CLASS = 5


def text_section(config: Config) -> TextConfig:
    """``config.text``, or its defaults when the config has none."""
    from privevo.config import TextConfig

    return config.text if config.text is not None else TextConfig()


def model_classes(config: Config) -> list[str] | None:
    """The class names the model's prompts are conditioned on (None for an unconditional run)."""
    return config.class_names if config.population.conditional else None


class TextModality(Modality):
    """Texts: a 1-D numpy object array of ``str`` (:mod:`privevo.text.text_io`)."""

    name = "text"
    population_suffix = ".jsonl"
    export_formats = ("jsonl", "csv")
    #: With the default ``text.embedding_name`` (minilm); another space's FD is fd_<name> in metrics.json.
    summary_keys = ("fd_minilm", "precision", "recall", "words_mean")
    headline_keys = ("fd_minilm", "recall", "words_mean")

    def encode_population(self, population: Population) -> bytes:
        """JSON Lines (:func:`privevo.text.text_io.encode_population`)."""
        return text_io.encode_population(population)

    def decode_population(self, data: bytes, source: str) -> Population:
        """:func:`privevo.text.text_io.decode_population`."""
        return text_io.decode_population(data, source)

    def load_private(self, run: Run, quality: DataQuality) -> SampleSet:
        """The private texts; records that cannot be used are skipped and counted in ``quality`` (private tier)."""
        from privevo.text.data import load_texts

        config = run.config
        texts, labels = load_texts(config.private, text_section(config), config.class_names,
                                   run.seed("private-subset"), quality)
        return SampleSet(texts, labels)

    def load_reference(self, run: Run) -> SampleSet | None:
        """The held-out texts of ``evaluation.reference``."""
        from privevo.text.data import load_texts

        config = run.config
        data = config.evaluation.reference
        if data is None:
            return None
        texts, labels = load_texts(data, text_section(config), config.class_names, run.seed("reference-subset"))
        return SampleSet(texts, labels)

    def blank_rows(self, samples: np.ndarray, n: int) -> np.ndarray:
        """``n`` empty texts."""
        return text_io.as_texts([""] * n)

    def may_share_records(self, a: DataConfig, b: DataConfig) -> bool:
        """Two selections of one source share records unless they are its two splits (the public split rule puts
        each text on one side); different sources are different records."""
        from privevo.layout import normalised

        if normalised(a.path) != normalised(b.path):
            return False
        return not (a.split is not None and b.split is not None and a.split != b.split)

    def load_model(self, config: Config) -> Any:
        """Aug-PE's prompts (:class:`privevo.text.augpe.AugPE`) on the backend ``model.kind`` names."""
        from privevo.text.augpe import AugPE

        if config.population.lookahead and config.population.reuse_lookahead:
            raise UserError("modality text keeps no lookahead variations: set population.reuse_lookahead to false "
                            "(or population.lookahead to 0)")
        backend = registry.registered_class(TEXT_MODELS, config.model.kind, "text model kind").from_config(config)
        return AugPE(backend, text_section(config), model_classes(config))

    def model_fields(self, config: Config) -> tuple[str, ...]:
        """What the backend declares it reads, and what Aug-PE's prompts and the lookahead check read."""
        backend = registry.registered_class(TEXT_MODELS, config.model.kind, "text model kind")
        return (*backend.config_fields, "text", "class_names", "population.conditional", "population.lookahead",
                "population.reuse_lookahead")

    def embedding_fields(self, config: Config) -> tuple[str, ...]:
        """The ``text`` section's embedding settings and ``embedding.device``."""
        return ("text", "embedding")

    def load_embedding(self, config: Config) -> Any:
        """The sentence embedding at ``text.embedding_path`` (:mod:`privevo.text.embedding`)."""
        from privevo.text.embedding import SentenceEmbedding

        section = text_section(config)
        return SentenceEmbedding.from_pretrained(section.embedding_path, section.embedding_max_length,
                                                 config.embedding.device)

    def scorer(self, run: Run) -> Callable[[SampleSet | None, int, bool], Scores]:
        """FD, precision/recall and length per generation; the final row adds downstream accuracy."""

        def score(real: SampleSet | None, last: int, log_rows: bool) -> Scores:
            return _score(run, real, last, log_rows)

        return score

    def metrics_fields(self, final: dict[str, Any]) -> dict[str, Any]:
        """The embedding space the FD is measured in, and how the text metrics are measured."""
        from privevo.text import metrics

        return {"fd_extractor": final["fd_extractor"],
                "text_metrics": metrics.__doc__.split("\n\n", 1)[1].strip() if metrics.__doc__ else ""}

    def write_report_views(self, run: Run, result: dict[str, Any]) -> None:
        """The mean-length curve."""
        from privevo.text.metrics import length_curve_png

        storage.write_bytes(run.layout.report_file(LENGTH_CURVE_PNG), length_curve_png(result["generations"]))

    def results_html(self, run: Run, result: dict[str, Any], figure: Callable[..., str]) -> dict[str, str]:
        """Final texts beside reference texts, every generation's texts, the length curve and downstream accuracy."""
        from privevo.report import reference_may_be_private
        from privevo.steps import load_population
        from privevo.text.metrics import downstream_html, samples_html

        names = run.config.class_names
        last = result["generations"][-1]["generation"]
        population = load_population(run, last)
        final = f"<h3>Generation {last} (final)</h3>\n" + samples_html(population.samples, population.labels, names,
                                                                       SAMPLES_PER_CLASS)
        reference = None if reference_may_be_private(run.config) else self.load_reference(run)
        if reference is not None:
            labels = reference.labels if reference.labels is not None else np.full(len(reference.samples), -1)
            final += "\n<h3>Reference texts</h3>\n" + samples_html(reference.samples, labels, names, SAMPLES_PER_CLASS)
        gallery = "".join(f"<h3>Generation {g}</h3>\n" + samples_html(p.samples, p.labels, names, 2)
                          for g in range(last + 1) for p in [load_population(run, g)])
        extra = figure(LENGTH_CURVE_PNG, "mean words per text over generations, beside the reference")
        accuracy = downstream_html((result.get("final") or {}).get("downstream"))
        if accuracy:
            extra += "\n<h3>Downstream accuracy</h3>\n" + accuracy
        return {"final": final, "extra": extra, "gallery": gallery}

    def export(self, run: Run, population: Population, export_format: str, folder: Path) -> None:
        """synthetic.jsonl or synthetic.csv: each text with its class name."""
        write = text_io.jsonl_bytes if export_format == "jsonl" else text_io.csv_bytes
        (folder / EXPORT_FILES[export_format]).write_bytes(write(population.samples, population.labels,
                                                                 run.config.class_names))

    def describe_release(self, run: Run, count: int) -> str:
        """e.g. "250 synthetic texts"."""
        return f"{count} synthetic texts"

    def leak_fingerprints(self, config: Config, samples: np.ndarray) -> set[str]:
        """The SHA-256 of each text after whitespace cleaning (a released copy of a private text, spacing aside)."""
        return {hashlib.sha256(clean(str(t)).encode()).hexdigest() for t in samples}


def _score(run: Run, real: SampleSet | None, last: int, log_rows: bool) -> Scores:
    """Per-generation rows and the final row of text metrics against ``real`` (None: every metric null)."""
    from privevo.evaluation import format_row
    from privevo.steps import load_embedding, load_population
    from privevo.text.metrics import downstream, text_metrics

    config = run.config
    space = text_section(config).embedding_name
    keys = (f"fd_{space}", "precision", "recall", "words_mean", "reference_words_mean", "words_wasserstein")
    ledger = run.ledger()
    embedding = load_embedding(config) if real is not None else None
    reference = embedding.embed(real.samples, config.embedding.batch_size, False) if embedding and real else None
    rows = []
    synthetic = None
    for generation in range(last + 1):
        row: dict[str, Any] = {"generation": generation, **dict.fromkeys(keys), "class_tv": None,
                               "epsilon": ledger.epsilon(upto_generation=generation), "non_dp": False}
        population = load_population(run, generation)
        if embedding is not None and real is not None and reference is not None:
            synthetic = embedding.embed(population.samples, config.embedding.batch_size, False)
            row.update(text_metrics(space, synthetic, reference, population.samples, real.samples))
        rows.append(row)
        if log_rows:
            logger.info("evaluated generation %d: %s", generation, format_row(row))
    final = {**rows[-1], "fd_extractor": space, "downstream": None, "downstream_accuracy": None}
    if real is not None and real.labels is not None and synthetic is not None and reference is not None:
        final["downstream"] = downstream(synthetic, population.labels, reference, real.labels, config.seed)
        final["downstream_accuracy"] = final["downstream"]["synthetic"] if final["downstream"] else None
    return rows, final
