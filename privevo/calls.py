"""The API call ledgers of a run (``model.kind: remote``), read back for the report.

The backends behind an API (:mod:`privevo.remote_calls`: image ``remote``, text
``openai_compatible``) write one ledger per model step and shard, ``gen-NNN/calls/<step>-SSS.json``
(:meth:`privevo.layout.RunLayout.calls`); this module only reads them. No torch, no network.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from privevo import storage

if TYPE_CHECKING:
    from privevo.run_record import Run

#: The counters a ledger may hold, in the report's column order (a run's table shows those its ledgers have).
COLUMNS = ("requests", "images", "reused_images", "texts", "reused_texts", "tokens_in", "tokens_out", "retries",
           "failures", "seconds", "estimated_cost")
#: Each price a ledger may name, and what it is paid for.
PRICES = {"price_per_image": "per image paid for (reused images are free)",
          "price_per_input_token": "per prompt token", "price_per_output_token": "per completion token"}


def call_ledgers(run: Run) -> list[dict[str, Any]]:
    """Every call ledger of the run, in generation then file order (empty for in-process models)."""
    ledgers = []
    for generation in range(run.config.population.generations + 1):
        folder = run.layout.calls_dir(generation)
        for uri in storage.list_files(folder):
            if uri.endswith(".json") and "/" not in storage.relative_to(uri, folder):
                ledgers.append(storage.read_json(uri))
    return ledgers


def columns(ledgers: list[dict[str, Any]]) -> tuple[str, ...]:
    """The counters (and estimated cost) the ledgers hold, in :data:`COLUMNS` order."""
    return tuple(key for key in COLUMNS if any(key in ledger for ledger in ledgers))


def totals(ledgers: list[dict[str, Any]]) -> dict[str, float]:
    """The sums of every ledger's counters and estimated cost."""
    return {key: round(sum(ledger.get(key, 0) for ledger in ledgers), 6) for key in columns(ledgers)}


def cost_line(ledgers: list[dict[str, Any]]) -> str:
    """One line of the calls' totals and estimated cost, e.g. for a benchmark or the command line."""
    total = totals(ledgers)
    counts = ", ".join(f"{key} {total[key]:g}" for key in columns(ledgers) if key != "estimated_cost")
    prices = ", ".join(f"{ledgers[0][key]:g} {what}" for key, what in PRICES.items() if ledgers and key in ledgers[0])
    return f"{counts}; estimated cost {total.get('estimated_cost', 0):g}" + (f" at {prices}" if prices else "")


def calls_html(run: Run) -> str:
    """The report's section on API calls; empty when the run called no API."""
    ledgers = call_ledgers(run)
    if not ledgers:
        return ""

    shown = columns(ledgers)

    def row(first: list[str], values: dict[str, Any]) -> str:
        cells = [*first, *(f"{values.get(key, 0):g}" for key in shown)]
        return "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells) + "</tr>"

    body = "".join(row([str(ledger["generation"]), ledger["step"]], ledger) for ledger in ledgers)
    body += row(["all", "total"], totals(ledgers))
    header = "".join(f"<th>{html.escape(name)}</th>" for name in ("generation", "step", *shown))
    first = ledgers[0]
    prices = ", ".join(f"{first[key]:g} {what}" for key, what in PRICES.items() if key in first) or "no price"
    return f"""<h2>Foundation model API calls</h2>
<p>Model {html.escape(str(first.get('model_name')))} at {html.escape(str(first.get('url')))};
estimated cost at {html.escape(prices)}.</p>
<table><tr>{header}</tr>{body}</table>
"""
