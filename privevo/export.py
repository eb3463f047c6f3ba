"""Export a run's synthetic set in one of its modality's formats (images: PNG files in the Hugging Face
``imagefolder`` layout, or one ``.npz``; tables: ``synthetic.csv`` or ``synthetic.parquet``; texts: JSON Lines or
CSV), with the run's privacy statement beside them.

The exported samples are a generation's population as the run released it (DP by post-processing);
the statement (``privacy.json``) holds only the run's config and its ledger: whether it is private, epsilon, delta, the
mechanism, the votes. The folder is written next to its destination and renamed into place, so a
failed export leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from privevo.errors import UserError
from privevo.run_record import Run, utc_now

PRIVACY_FILE = "privacy.json"


def _check_destination(to: Path) -> None:
    """Refuse a destination that holds anything: an export never mixes with or replaces other files."""
    if to.is_dir() and any(to.iterdir()):
        raise UserError(f"--to {to} is a folder that is not empty: choose a new or empty folder")
    if to.exists() and not to.is_dir():
        raise UserError(f"--to {to} is a file: choose a new or empty folder")
    if not to.parent.is_dir():
        raise UserError(f"the folder {to.parent} that should hold --to {to.name} does not exist: create it first")


def privacy_statement(run: Run, generation: int, export_format: str, count: int) -> dict[str, Any]:
    """What the exported set is and the guarantee it carries, from the run's config and ledger only."""
    from privevo import privacy

    config, ledger = run.config, run.ledger()
    mechanisms = sorted({event.mechanism for event in ledger.events}) or [config.privacy.mechanism]
    report = privacy.privacy_report(ledger.events, ledger.delta, config.privacy)
    epsilon = report["epsilon"]
    if report["private"]:
        guarantee = (f"({privacy.format_epsilon(epsilon)}, {ledger.delta:g})-DP (epsilon rounded up) for the whole "
                     "run's releases (every vote of the run); this generation alone depends on the votes up to it, so "
                     "it also meets epsilon_through_this_generation")
    else:
        guarantee = (f"{privacy.NOT_PRIVATE}: {'; '.join(report['non_private_reasons'])}. These samples carry no "
                     "differential-privacy guarantee (the operator allowed it with privacy.allow_non_private)")
    return {
        "run_id": run.run_id,
        "exported_at": utc_now(),
        "released": (f"{run.modality.describe_release(run, count)} of generation {generation} of "
                     f"{config.population.generations}, made by the public model {config.model.kind} and selected by "
                     "DP votes over the private set; no private record, embedding or vote count is included"),
        "format": export_format,
        "generation": generation,
        "generations": config.population.generations,
        "private": report["private"],
        "non_private_reasons": report["non_private_reasons"],
        "epsilon": epsilon,
        "epsilon_through_this_generation": ledger.epsilon(upto_generation=generation),
        "delta": ledger.delta,
        "guarantee": guarantee,
        "rho_zcdp": report["rho_zcdp"],
        "mu_gdp": report["mu_gdp"],
        "mechanism": ", ".join(mechanisms),
        "votes": len(ledger.events),
        "noise_multipliers": [event.noise_multiplier for event in ledger.events],
        "sampling_rate": config.privacy.sampling_rate,
        "k": config.privacy.k,
        "neighbouring_relation": privacy.NEIGHBOURING_RELATION,
        "accountant": report["accountant"],
    }


def export_run(run: Run, to: str | os.PathLike[str], generation: int = -1, export_format: str | None = None) -> Path:
    """Write generation ``generation`` (-1: the last) of ``run`` into the new or empty local folder ``to`` in
    ``export_format`` (None: the modality's first format); returns it."""
    from privevo.api import RunResult

    formats = run.modality.export_formats
    export_format = export_format or formats[0]
    if export_format not in formats:
        raise UserError(f"unknown export format {export_format!r} for this {run.modality.name} run: use "
                        f"{' or '.join(formats)}")
    target = Path(to)
    if "://" in os.fspath(to):
        raise UserError(f"--to {to} must be a local folder")
    target = target.absolute()
    _check_destination(target)
    result = RunResult(run)
    chosen = result.generation(generation)
    population = result.population(chosen)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        run.modality.export(run, population, export_format, staging)
        statement = privacy_statement(run, chosen, export_format, len(population))
        (staging / PRIVACY_FILE).write_text(json.dumps(statement, indent=2, sort_keys=True) + "\n")
        staging.chmod(0o755)  # mkdtemp makes it private to this user; the export is a folder like any other
        _check_destination(target)  # nothing appeared there meanwhile
        os.replace(staging, target)  # an empty folder is replaced in one step; a missing one is created
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
