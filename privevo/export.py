"""Export a run's synthetic set: PNG files in the Hugging Face ``imagefolder`` layout, or one ``.npz``, with the
run's privacy statement beside them.

The exported images are a generation's population as the run released it (DP by post-processing);
the statement (``privacy.json``) holds only the run's config and its ledger: whether it is private, epsilon, delta, the
mechanism, the votes. The folder is written next to its destination and renamed into place, so a
failed export leaves nothing half-written.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from privevo.errors import UserError
from privevo.population import Population
from privevo.run_record import Run, utc_now

FORMATS = ("imagefolder", "npz")
METADATA_FILE = "metadata.csv"
NPZ_FILE = "synthetic.npz"
PRIVACY_FILE = "privacy.json"


def _check_destination(to: Path) -> None:
    """Refuse a destination that holds anything: an export never mixes with or replaces other files."""
    if to.is_dir() and any(to.iterdir()):
        raise UserError(f"--to {to} is a folder that is not empty: choose a new or empty folder")
    if to.exists() and not to.is_dir():
        raise UserError(f"--to {to} is a file: choose a new or empty folder")
    if not to.parent.is_dir():
        raise UserError(f"the folder {to.parent} that should hold --to {to.name} does not exist: create it first")


def label_names(population: Population, class_names: list[str] | None) -> list[str] | None:
    """Each sample's class name (its label number when the config names no classes); None for an unlabelled set."""
    if not population.conditional:
        return None
    return [class_names[i] if class_names and 0 <= i < len(class_names) else str(i) for i in population.labels.tolist()]


def _write_imagefolder(folder: Path, population: Population, names: list[str] | None) -> None:
    """One PNG per sample and metadata.csv (file_name, and label when labelled)."""
    from PIL import Image

    width = max(5, len(str(len(population) - 1)))
    files = [f"{i:0{width}d}.png" for i in range(len(population))]
    for name, image in zip(files, population.images, strict=True):
        Image.fromarray(image[:, :, 0] if image.shape[-1] == 1 else image).save(folder / name)
    with open(folder / METADATA_FILE, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "label"] if names else ["file_name"])
        for i, name in enumerate(files):
            writer.writerow([name, names[i]] if names else [name])


def _write_npz(folder: Path, population: Population, class_names: list[str] | None) -> None:
    """images (uint8 NHWC), labels (int64, -1 unlabelled), generation and class_names in one .npz."""
    np.savez_compressed(folder / NPZ_FILE, images=population.images, labels=population.labels.astype(np.int64),
                        generation=np.int64(population.generation), class_names=np.array(class_names or [], dtype=str))


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
        guarantee = (f"{privacy.NOT_PRIVATE}: {'; '.join(report['non_private_reasons'])}. These images carry no "
                     "differential-privacy guarantee (the operator allowed it with privacy.allow_non_private)")
    return {
        "run_id": run.run_id,
        "exported_at": utc_now(),
        "released": (f"{count} synthetic {config.image_size}x{config.image_size} images of generation {generation} of "
                     f"{config.population.generations}, made by the public model {config.model.kind} and selected by "
                     "DP votes over the private set; no private image, embedding or vote count is included"),
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


def export_run(run: Run, to: str | os.PathLike[str], generation: int = -1, export_format: str = "imagefolder") -> Path:
    """Write generation ``generation`` (-1: the last) of ``run`` into the new or empty local folder ``to``; returns it."""
    from privevo.api import RunResult

    if export_format not in FORMATS:
        raise UserError(f"unknown export format {export_format!r}: use {' or '.join(FORMATS)}")
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
        if export_format == "imagefolder":
            _write_imagefolder(staging, population, label_names(population, run.config.class_names))
        else:
            _write_npz(staging, population, run.config.class_names)
        statement = privacy_statement(run, chosen, export_format, len(population))
        (staging / PRIVACY_FILE).write_text(json.dumps(statement, indent=2, sort_keys=True) + "\n")
        staging.chmod(0o755)  # mkdtemp makes it private to this user; the export is a folder like any other
        _check_destination(target)  # nothing appeared there meanwhile
        os.replace(staging, target)  # an empty folder is replaced in one step; a missing one is created
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
