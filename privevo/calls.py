"""The API call ledgers of a run (``model.kind: remote``), read back for the report.

The remote backend (:mod:`privevo.image.models.remote`) writes one ledger per model step and shard,
``gen-NNN/calls/<step>-SSS.json`` (:meth:`privevo.layout.RunLayout.calls`); this module only
reads them. No torch, no network.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from privevo import storage

if TYPE_CHECKING:
    from privevo.run_record import Run

COLUMNS = ("requests", "images", "reused_images", "retries", "failures", "seconds", "estimated_cost")


def call_ledgers(run: Run) -> list[dict[str, Any]]:
    """Every call ledger of the run, in generation then file order (empty for in-process models)."""
    ledgers = []
    for generation in range(run.config.population.generations + 1):
        folder = run.layout.calls_dir(generation)
        for uri in storage.list_files(folder):
            if uri.endswith(".json") and "/" not in storage.relative_to(uri, folder):
                ledgers.append(storage.read_json(uri))
    return ledgers


def totals(ledgers: list[dict[str, Any]]) -> dict[str, float]:
    """The sums of every ledger's counters and estimated cost."""
    return {key: round(sum(ledger.get(key, 0) for ledger in ledgers), 6) for key in COLUMNS}


def calls_html(run: Run) -> str:
    """The report's section on API calls; empty when the run called no API."""
    ledgers = call_ledgers(run)
    if not ledgers:
        return ""

    def row(first: list[str], values: dict[str, Any]) -> str:
        cells = [*first, *(f"{values.get(key, 0):g}" for key in COLUMNS)]
        return "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells) + "</tr>"

    body = "".join(row([str(ledger["generation"]), ledger["step"]], ledger) for ledger in ledgers)
    body += row(["all", "total"], totals(ledgers))
    header = "".join(f"<th>{html.escape(name)}</th>" for name in ("generation", "step", *COLUMNS))
    first = ledgers[0]
    return f"""<h2>Foundation model API calls</h2>
<p>Model {html.escape(str(first.get('model_name')))} at {html.escape(str(first.get('url')))};
estimated cost at {first.get('price_per_image', 0):g} per image paid for (reused images are free).</p>
<table><tr>{header}</tr>{body}</table>
"""
