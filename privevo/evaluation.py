"""The evaluate step: metrics for every generation, privacy spent, metrics.json and the report.

By default every metric compares the synthetic populations with a *held-out* real
set (``evaluation.reference``) that is not the private data, so the numbers can be
released. With ``evaluation.against_private: true`` the same metrics against the
private set itself go to the private tier only (``non_dp_metrics.json``, marked
``non_dp: true``): for the data owner's eyes, never for release, never in a KFP output.
"""

from __future__ import annotations

import logging
from typing import Any

from privevo import metrics, privacy, storage
from privevo.errors import UserError
from privevo.report import format_value
from privevo.run_record import Run
from privevo.steps import last_complete_generation, load_population, load_private_set, private_failures

logger = logging.getLogger(__name__)

#: The feature extractor of the Frechet distance; named in every key (never called FID).
FD_EXTRACTOR = "effnet_lite0"
FD_KEY = f"fd_{FD_EXTRACTOR}"
PRECISION_RECALL_K = 3


def reference_set(run: Run) -> Any:
    """The held-out real images the released metrics (and the report's real samples) compare against; None when
    the config names none."""
    from privevo.data import load_image_set

    config, data = run.config, run.config.evaluation.reference
    if data is None:
        return None
    return load_image_set(
        data.source, data.path, config.image_size, config.channels, split=data.split, classes=data.classes,
        limit=data.limit, seed=run.seed("reference-subset"), class_names=config.class_names, rows=data.rows,
    )


def _classifier(run: Run):
    path = run.config.evaluation.classifier_path
    if not path:
        return None
    from privevo.classifier import load_classifier

    return load_classifier(path)


def evaluate_run(run: Run) -> dict[str, Any]:
    """Score generations 0..last complete one against the held-out set; write metrics.json and the report.

    With ``evaluation.against_private`` the same metrics against the private set itself are
    written to the private tier only (``non_dp_metrics.json``): never to metrics.json, the
    report, a KFP output or a log.
    """
    from privevo.embeddings.effnet_lite0 import EfficientNetLite0Embedding

    config = run.config
    last = last_complete_generation(run)
    if last < 0:
        raise UserError(f"run {run.run_id} has no complete generation to evaluate")
    extractor = EfficientNetLite0Embedding.from_config(config)
    classifier = _classifier(run)
    ledger = run.ledger()
    rows, final = _score(run, reference_set(run), extractor, classifier, last, ledger, log_rows=True)
    result = {
        "run_id": run.run_id,
        "non_dp": False,
        "reference": "held-out real set",
        "fd_extractor": FD_EXTRACTOR,
        "delta": config.privacy.delta,
        "noise_multiplier": _sigma(run),
        "votes": len(ledger.events),
        "generations_complete": last,
        "generations": rows,
        "final": final,
        "downstream_protocol": metrics.DOWNSTREAM_PROTOCOL if final["downstream_accuracy"] is not None else None,
        "privacy": privacy.privacy_report(ledger.events, config.privacy.delta, config.privacy),
    }
    storage.write_json(run.layout.metrics_json, result)
    if config.evaluation.against_private:
        private_set = load_private_set(run, "evaluate")  # skips bad records; fails only on config errors
        # Whether scoring works may depend on the private set, so a failure goes to the private tier only and the step
        # ends the same way, with the same log line, either way.
        with private_failures(run, "evaluate", "the non-DP evaluation against the private set failed", fail=False):
            private_rows, private_final = _score(run, private_set, extractor, classifier, last, ledger, log_rows=False)
            for row in [*private_rows, private_final]:
                row["non_dp"] = True
            storage.write_json(run.layout.non_dp_metrics, {**result, "non_dp": True, "generations": private_rows,
                                                           "final": private_final,
                                                           "reference": "private set (non-DP, for the data owner only)"})
        logger.info("non-DP metrics against the private set (not released): %s in the private tier, or the reason "
                    "they are missing in %s", run.layout.non_dp_metrics, run.layout.private_log)
    from privevo import report

    report.write_report(run, result)
    _mark_complete(run, last)
    return result


def _score(run: Run, reference: Any, extractor: Any, classifier: Any, last: int, ledger: privacy.Ledger,
           log_rows: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-generation rows and the final row of metrics against ``reference`` (None: every metric null)."""
    from privevo.metrics import class_histogram, frechet_distance, precision_recall, total_variation

    config = run.config
    batch = config.embedding.batch_size
    reference_features = extractor.embed(reference.images, batch, progress=log_rows) if reference is not None else None
    num_classes = len(config.class_names or [])
    target_mix = None
    if reference is not None and reference.labels is not None and num_classes:
        target_mix = class_histogram(reference.labels, num_classes)
    rows = []
    for generation in range(last + 1):
        population = load_population(run, generation)
        row: dict[str, Any] = {"generation": generation, FD_KEY: None, "precision": None, "recall": None,
                               "class_tv": None, "epsilon": ledger.epsilon(upto_generation=generation), "non_dp": False}
        if reference_features is not None:
            features = extractor.embed(population.images, batch)
            row[FD_KEY] = frechet_distance(reference_features, features)
            row["precision"], row["recall"] = precision_recall(reference_features, features, k=PRECISION_RECALL_K)
        if classifier is not None and target_mix is not None:
            from privevo.classifier import predict_proba

            predicted = predict_proba(classifier, population.images).argmax(axis=1)
            row["class_tv"] = total_variation(class_histogram(predicted, num_classes), target_mix)
        rows.append(row)
        if log_rows:
            logger.info("evaluated generation %d: %s", generation, _format_row(row))
    final = dict(rows[-1])
    final["downstream_accuracy"] = None
    final["per_class_accuracy"] = None
    if config.population.conditional and reference is not None and reference.labels is not None:
        population = load_population(run, last)
        downstream = metrics.downstream_accuracy(
            population.images, population.labels, reference.images, reference.labels, num_classes, seed=config.seed
        )
        final["downstream_accuracy"] = downstream["accuracy"]
        final["per_class_accuracy"] = downstream["per_class_accuracy"]
    return rows, final


def _sigma(run: Run) -> float:
    return privacy.noise_multiplier_for(run.config, run.layout)


def _mark_complete(run: Run, last: int) -> None:
    status = "complete" if last == run.config.population.generations else "partial"

    def update(record: dict) -> dict:
        return {**record, "status": status, "generations_complete": last}

    storage.update_json(run.layout.run_json, update)


def _format_row(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={format_value(v, k)}" for k, v in row.items())


def headline_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Scalars for the KFP UI: final metrics plus the per-generation series."""
    scalars: dict[str, float] = {}
    for key, value in result["final"].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            scalars[f"final_{key}"] = float(value)
    for row in result["generations"]:
        for key in (FD_KEY, "class_tv", "epsilon"):
            if row[key] is not None:
                scalars[f"gen{row['generation']:03d}_{key}"] = float(row[key])
    return scalars


def summary_markdown(result: dict[str, Any]) -> str:
    """A Markdown table of the per-generation metrics (a KFP Markdown visualization)."""
    keys = ["generation", FD_KEY, "precision", "recall", "class_tv", "epsilon"]
    reasons = result["privacy"].get("non_private_reasons")
    lines = [
        f"# Private Evolution run {result['run_id']}",
        "",
        *([f"**{privacy.NOT_PRIVATE}**: {'; '.join(reasons)}.", ""] if reasons else []),
        f"Reference: {result['reference']}. Delta {result['delta']:g}, noise multiplier "
        f"{format_value(result['noise_multiplier'], 'noise_multiplier')}, votes {result['votes']}.",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    for row in result["generations"]:
        lines.append("| " + " | ".join(format_value(row[k], k) for k in keys) + " |")
    lines.append("")
    lines.append(f"Downstream accuracy (final): {format_value(result['final']['downstream_accuracy'])}")
    lines.append("")
    lines.append(f"Epsilon {format_value(result['privacy']['epsilon'], 'epsilon')} (upper bound) "
                 f"at delta {result['delta']:g}; "
                 f"neighbouring datasets: {result['privacy']['neighbouring_relation']}.")
    return "\n".join(lines) + "\n"


def report_html(run: Run, inline_images: bool = False) -> str:
    """The run's HTML report (regenerated from stored files)."""
    from privevo import report

    return report.render_html(run, storage.read_json(run.layout.metrics_json), inline_images=inline_images)
