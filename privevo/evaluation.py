"""The evaluate step: metrics for every generation, privacy spent, metrics.json and the report.

The metrics are the run modality's (:meth:`privevo.modalities.Modality.scorer`). By
default every metric compares the synthetic populations with a *held-out* real
set (``evaluation.reference``) that is not the private data, so the numbers can be
released. With ``evaluation.against_private: true`` the same metrics against the
private set itself go to the private tier only (``non_dp_metrics.json``, marked
``non_dp: true``): for the data owner's eyes, never for release, never in a KFP output.
"""

from __future__ import annotations

import logging
from typing import Any

from privevo import privacy, storage
from privevo.errors import UserError
from privevo.report import format_value, result_modality
from privevo.run_record import Run
from privevo.steps import last_complete_generation, load_private_set, private_failures

logger = logging.getLogger(__name__)


def evaluate_run(run: Run) -> dict[str, Any]:
    """Score generations 0..last complete one against the held-out set; write metrics.json and the report.

    With ``evaluation.against_private`` the same metrics against the private set itself are
    written to the private tier only (``non_dp_metrics.json``): never to metrics.json, the
    report, a KFP output or a log.
    """
    config = run.config
    last = last_complete_generation(run)
    if last < 0:
        raise UserError(f"run {run.run_id} has no complete generation to evaluate")
    score = run.modality.scorer(run)
    ledger = run.ledger()
    rows, final = score(run.modality.load_reference(run), last, True)
    result = {
        "run_id": run.run_id,
        "modality": config.modality,
        "non_dp": False,
        "reference": "held-out real set",
        **run.modality.metrics_fields(final),
        "delta": config.privacy.delta,
        "noise_multiplier": _sigma(run),
        "votes": len(ledger.events),
        "generations_complete": last,
        "generations": rows,
        "final": final,
        "privacy": privacy.privacy_report(ledger.events, config.privacy.delta, config.privacy),
    }
    storage.write_json(run.layout.metrics_json, result)
    if config.evaluation.against_private:
        private_set = load_private_set(run, "evaluate")  # skips bad records; fails only on config errors
        # Whether scoring works may depend on the private set, so a failure goes to the private tier only and the step
        # ends the same way, with the same log line, either way.
        with private_failures(run, "evaluate", "the non-DP evaluation against the private set failed", fail=False):
            private_rows, private_final = score(private_set, last, False)
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


def _sigma(run: Run) -> float:
    return privacy.noise_multiplier_for(run.config, run.layout)


def _mark_complete(run: Run, last: int) -> None:
    status = "complete" if last == run.config.population.generations else "partial"

    def update(record: dict) -> dict:
        return {**record, "status": status, "generations_complete": last}

    storage.update_json(run.layout.run_json, update)


def format_row(row: dict[str, Any]) -> str:
    """A metrics row as one log line."""
    return " ".join(f"{k}={format_value(v, k)}" for k, v in row.items())


def headline_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Scalars for the KFP UI: final metrics plus the per-generation series."""
    scalars: dict[str, float] = {}
    for key, value in result["final"].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            scalars[f"final_{key}"] = float(value)
    keys = [*result_modality(result).headline_keys, "epsilon"]
    for row in result["generations"]:
        for key in keys:
            if row.get(key) is not None:
                scalars[f"gen{row['generation']:03d}_{key}"] = float(row[key])
    return scalars


def summary_markdown(result: dict[str, Any]) -> str:
    """A Markdown table of the per-generation metrics (a KFP Markdown visualization)."""
    modality = result_modality(result)
    keys = ["generation", *modality.summary_keys, "epsilon"]
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
        lines.append("| " + " | ".join(format_value(row.get(k), k) for k in keys) + " |")
    lines.append("")
    final = [f"{name} {format_value(value, name)}" for name, value in modality.headline(result) if value is not None]
    if final:
        lines += [f"Final: {', '.join(final)}.", ""]
    lines.append(f"Epsilon {format_value(result['privacy']['epsilon'], 'epsilon')} (upper bound) "
                 f"at delta {result['delta']:g}; "
                 f"neighbouring datasets: {result['privacy']['neighbouring_relation']}.")
    return "\n".join(lines) + "\n"


def report_html(run: Run, inline_images: bool = False) -> str:
    """The run's HTML report (regenerated from stored files)."""
    from privevo import report

    return report.render_html(run, storage.read_json(run.layout.metrics_json), inline_images=inline_images)
