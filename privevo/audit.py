"""The audit: what each generation released, what it cost, and whether the record holds.

For every generation it lists the steps and their parameters, every file with its
sha256 and size, the DP release, sigma and cumulative epsilon; then it checks that
every hash matches its manifest, that every release (each vote's, and the DP warm
start's noisy marginals) is paid for by exactly one ledger event (and every event by an existing, unchanged release), that epsilon
recomputed from the ledger matches what the run reported, and that nothing in the
released tier carries private-tier data (private embeddings, private images, clean
counts). A run without a DP guarantee (noise multiplier 0, which only the operator can
allow) fails the audit unless the auditor accepts it with ``allow_non_private``. The first
failure is named.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from privevo import privacy, storage
from privevo.errors import UserError
from privevo.layout import PRIVATE_EMBEDDINGS_FILE, RunLayout, generation_name
from privevo.modalities import row_hashes
from privevo.run_record import Run
from privevo.steps import last_complete_generation, load_private_set

#: Reported epsilons are rounded by nobody; recomputation must match to this tolerance.
EPSILON_TOLERANCE = 1e-6


@dataclass
class AuditReport:
    """Per-generation listing plus the checks that were made, in order."""

    run_id: str
    generations: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    epsilon: float = 0.0
    delta: float = 0.0
    privacy: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] | None = None  # the private data set's spend (privacy.dataset_summary), when readable

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        return ok

    def skip(self, name: str, reason: str) -> None:
        self.checks.append({"check": name, "ok": None, "detail": f"skipped: {reason}"})

    @property
    def first_failure(self) -> dict[str, Any] | None:
        return next((c for c in self.checks if c["ok"] is False), None)

    @property
    def ok(self) -> bool:
        return self.first_failure is None

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "ok": self.ok, "epsilon": self.epsilon, "delta": self.delta,
                "privacy": self.privacy, "dataset": self.dataset, "first_failure": self.first_failure,
                "generations": self.generations, "checks": self.checks}


def audit_run(run: Run, allow_non_private: bool = False) -> AuditReport:
    """Audit a run (released tier, plus the private tier where readable for the leak checks); a run without a DP
    guarantee fails unless ``allow_non_private``."""
    report = AuditReport(run.run_id, delta=run.config.privacy.delta)
    ledger = run.ledger()
    reasons = privacy.non_private_reasons(run.config.privacy, ledger.events)
    if reasons and allow_non_private:
        report.skip("run is private", f"{privacy.NOT_PRIVATE}: {'; '.join(reasons)} (accepted by --allow-non-private)")
    else:
        report.check("run is private", not reasons, f"the run is {privacy.NOT_PRIVATE}: {'; '.join(reasons)} "
                                                    "(audit it with --allow-non-private to check the rest)")
    last = last_complete_generation(run)
    released = storage.list_files(run.layout.run_dir)
    # Every released file is read once, here: its digest serves the manifest and release checks below, and the leak
    # checks run on the same bytes (their outcome is reported after the ledger's checks, as always).
    leaks = _Deferred()
    files = _read_released(run, ledger, released, leaks, allow_non_private)
    for generation in range(max(last, 0) + 1):
        report.generations.append(_generation_listing(run, generation, ledger, report, files))

    # Every release has exactly one ledger event; every event an unchanged release.
    releases = [u for u in released if RunLayout.is_release(run.layout.relative(u))]
    for uri in releases:
        name = run.layout.relative(uri)
        sha = files.digests[uri]["sha256"]
        paying = [e for e in ledger.events if e.release_uri == name]
        if not report.check("release charged once", len(paying) == 1,
                            f"{name}: {len(paying)} ledger events pay for this release (expected exactly 1)"):
            break
        if paying[0].status == "pending":  # written, then a crash before its event was completed: paid all the same
            report.skip("release unchanged", f"{name}: its event is still pending (completed by the next vote step)")
            continue
        report.check("release unchanged", paying[0].release_sha256 == sha,
                     f"{name}: sha256 differs from the one its ledger event paid for")
    for event in ledger.events:
        if run.layout.absolute(event.release_uri) in files.digests:
            continue
        if event.status == "pending":  # charged, never written (a crash before the write): counted, nothing released
            report.skip("event has its release", f"ledger.json: the pending event for {event.release_uri} was charged "
                                                 "but never released (counted in epsilon)")
        else:
            report.check("event has its release", False,
                         f"ledger.json: event for generation {event.generation} names missing {event.release_uri}")
    votes = {g["generation"] for g in report.generations if g["generation"] > 0}
    charged = {e.generation for e in ledger.events}
    report.check("every vote charged", votes <= charged,
                 f"ledger.json: generations {sorted(votes - charged)} voted without a ledger event")

    # Epsilon recomputed from the ledger (per mechanism, upper bound) matches what the run reported.
    report.epsilon = ledger.epsilon()
    report.privacy = privacy.privacy_report(ledger.events, ledger.delta, run.config.privacy)
    _check_reported_epsilon(run, ledger, report)
    leaks.replay(report)
    _check_dataset_ledger(run, ledger, report)
    return report


class _Deferred:
    """Checks made now and reported later, in the order they were made (the same calls as :class:`AuditReport`)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool, str]] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.calls.append(("check", name, ok, detail))
        return ok

    def skip(self, name: str, reason: str) -> None:
        self.calls.append(("skip", name, True, reason))

    def replay(self, report: AuditReport) -> None:
        for kind, name, ok, detail in self.calls:
            if kind == "skip":
                report.skip(name, detail)
            else:
                report.check(name, ok, detail)


@dataclass
class _ReleasedFiles:
    """What one read of every released file left: each file's sha256 and size (as manifests record them), and the
    JSON files' bytes (manifest parts, step records: small), so nothing is read twice."""

    digests: dict[str, dict[str, Any]] = field(default_factory=dict)
    json_files: dict[str, bytes] = field(default_factory=dict)

    def records_under(self, folder: str) -> list[Any]:
        """The JSON files under ``folder``, parsed, in name order."""
        prefix = folder.rstrip("/") + "/"
        records = []
        for uri, data in sorted(self.json_files.items()):
            if uri.startswith(prefix):
                try:
                    records.append(json.loads(data))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    raise UserError(f"{uri} is not valid JSON: fix it or delete it and rerun the step that writes it") from None
        return records


def _generation_listing(run: Run, generation: int, ledger, report: AuditReport, released: _ReleasedFiles) -> dict[str, Any]:
    gen_dir, manifest_dir = run.layout.gen_dir(generation), run.layout.manifest_dir(generation)
    files: dict[str, dict[str, Any]] = {}
    for part in released.records_under(manifest_dir):  # the manifest is the union of its parts
        files.update(part.get("files", {}) if isinstance(part, dict) else {})
    prefix = f"{generation_name(generation)}/"
    if report.check("manifest present", bool(files), f"{run.layout.relative(manifest_dir)}/ is missing"):
        changed = [name for name in sorted(files) if released.digests.get(storage.join(gen_dir, name)) != files[name]]
        report.check("hashes match", not changed,
                     f"{prefix}{changed[0]}: sha256 or size differs from its manifest" if changed else "")
    steps = released.records_under(run.layout.steps_dir(generation))
    events = [e for e in ledger.events if e.generation == generation]
    return {
        "generation": generation,
        "steps": [{"step": s["step"], "params": s["params"], "seconds": s.get("seconds")} for s in steps],
        "files": files,
        "releases": [{"uri": e.release_uri, "sha256": e.release_sha256, "noise_multiplier": e.noise_multiplier,
                      "mechanism": e.mechanism, "status": e.status, "reason": e.reason} for e in events],
        "epsilon": ledger.epsilon(upto_generation=generation),
    }


def _check_reported_epsilon(run: Run, ledger, report: AuditReport) -> None:
    reported = []
    if storage.exists(run.layout.metrics_json):
        metrics = storage.read_json(run.layout.metrics_json)
        reported += [(f"metrics.json generation {row['generation']}", row["generation"], row["epsilon"])
                     for row in metrics["generations"]]
    for listing in report.generations:
        for step in listing["steps"]:
            if step["step"] in ("dp_vote", "warm_start"):
                reported.append((run.layout.relative(run.layout.step_record(listing["generation"], step["step"])),
                                 listing["generation"],
                                 step["params"]["epsilon_after"]))
    for where, generation, value in reported:
        expected = ledger.epsilon(upto_generation=generation)
        ok = math.isclose(value, expected, rel_tol=EPSILON_TOLERANCE, abs_tol=EPSILON_TOLERANCE) or (
            math.isinf(value) and math.isinf(expected))
        if not report.check("epsilon matches ledger", ok,
                            f"{where}: reports epsilon={value} but the ledger gives {expected}"):
            return


def _check_dataset_ledger(run: Run, ledger: privacy.Ledger, report: AuditReport) -> None:
    """The released ledger.json is a copy of the run's part of the private data-set ledger: every event is charged
    there, and no charge of a release is missing from it (deleting released events resets nothing). Keeps the data
    set's spend, per run and in total, for the report; skipped where the private tier cannot be read."""
    try:
        uri = privacy.dataset_ledger_uri(run.config)
        if not storage.exists(uri) and not storage.list_files(run.layout.private_dir):
            raise FileNotFoundError("no private tier here")
        dataset = privacy.load_dataset_ledger(run.config)
    except Exception as error:  # noqa: BLE001 - an auditor without private access still gets the rest
        report.skip("ledger.json copies the data-set ledger",
                    f"private tier not readable ({type(error).__name__}): the data set's spend is not shown")
        return
    report.dataset = privacy.dataset_summary(dataset)
    ours = [c for c in dataset.charges if c.run_id == run.run_id]
    missing = [e for e in ledger.events if not any(c.matches(run.run_id, e) for c in ours)]
    if not report.check("ledger.json copies the data-set ledger", not missing,
                        f"ledger.json: the event for {missing[0].release_uri} is not in the private data set's "
                        "ledger (never charged to the data set)" if missing else ""):
        return
    named = {e.release_uri for e in ledger.events}
    dropped = [c for c in ours if not any(c.matches(run.run_id, e) for e in ledger.events)]
    deleted = [c for c in dropped if c.event.release_uri not in named
               and storage.exists(run.layout.absolute(c.event.release_uri))]
    if not report.check("data-set charges in ledger.json", not deleted,
                        f"ledger.json lacks the event that pays for {deleted[0].event.release_uri}, which the private "
                        "data set's ledger holds (deleted from the released copy: the data set's spend still counts it)"
                        if deleted else ""):
        return
    if dropped:
        report.skip("data-set charges in ledger.json",
                    f"{len(dropped)} charge(s) of this run on the data set are not in ledger.json and pay for no "
                    "release of it (a vote stopped between the two charges, or events and releases deleted): "
                    "counted in the data set's spend")


def _read_released(run: Run, ledger: privacy.Ledger, released: list[str], report: _Deferred,
                   allow_non_private: bool) -> _ReleasedFiles:
    """Read every released file once: its digest and JSON record for the other checks, and the leak checks on its
    bytes (:func:`_check_no_private_data`; after their first failure the files are only hashed)."""
    found = _ReleasedFiles()
    check, checking = _check_no_private_data(run, ledger, report, allow_non_private, released), True
    for uri in released:
        data = storage.read_bytes(uri)
        found.digests[uri] = {"sha256": storage.sha256_bytes(data), "size": len(data)}
        if uri.endswith(".json"):
            found.json_files[uri] = data
        checking = checking and check(uri, data)
    return found


_PRIVATE_FILE_HASHES = ("sha256", "md5")  # the hex digests of a private-tier file a released file must not hold
_ROW_BLOCK = 16_384  # private embedding rows fingerprinted at a time


def _private_embedding_rows(stored: dict[str, np.ndarray]) -> set[str]:
    """The fingerprints of the private embeddings' real rows (not the padding), a block of rows at a time: the
    embeddings are memory-mapped and may not fit in memory whole."""
    embeddings = stored["embeddings"]
    real = stored["real"] if "real" in stored else np.ones(len(embeddings), bool)  # embedded before padding
    rows: set[str] = set()
    for start in range(0, len(embeddings), _ROW_BLOCK):
        block = embeddings[start : start + _ROW_BLOCK][real[start : start + _ROW_BLOCK]]
        if len(block):
            rows |= row_hashes(block.astype(np.float32))
    return rows


def _check_no_private_data(run: Run, ledger: privacy.Ledger, report: _Deferred, allow_non_private: bool,
                           released: list[str]) -> Callable[[str, bytes], bool]:
    """The check of one released file's bytes: it holds no private embedding row, private image, hash of a
    private-tier file, or clean counts (a vote released without noise holds its clean counts: only
    ``allow_non_private`` accepts it); False after a failed check."""
    tier = run.layout.private_dir.rstrip("/") + "/"
    report.check("nothing released in the private tier",
                 not any(u.startswith(tier) for u in released)
                 and not any(u.endswith(PRIVATE_EMBEDDINGS_FILE) for u in released),
                 "a released file lies in the private tier or is named like the private embeddings")
    modality = run.modality
    private_rows: set[str] = set()
    private_hashes: set[bytes] = set()
    try:
        embedded = False
        for uri in storage.list_files(run.layout.private_dir):
            if uri == run.layout.private_embeddings:  # hashed as it is mapped: gigabytes at Camelyon17's scale
                with storage.mapped_npz(uri, _PRIVATE_FILE_HASHES) as (stored, hashes):
                    private_rows |= _private_embedding_rows(stored)
                embedded = True
            else:
                hashes = storage.file_digests(uri, _PRIVATE_FILE_HASHES)
            private_hashes |= {digest.encode() for digest in hashes.values()}
        if not embedded:
            raise FileNotFoundError("no private embeddings")
        private_rows |= modality.leak_fingerprints(run.config, load_private_set(run, "audit").samples)
    except Exception as error:  # noqa: BLE001 - an auditor without private access still gets the rest
        report.skip("no private data in released files", f"private tier not readable ({type(error).__name__})")
        private_rows, private_hashes = set(), set()
    # integer counts plus integer noise are whole numbers by design; counts without noise pass only when allowed
    whole_by_design = {e.release_uri for e in ledger.events
                       if (e.mechanism == "discrete_gaussian" and e.noise_multiplier > 0)
                       or (allow_non_private and e.noise_multiplier == 0)}
    shape = run.config.population
    vote_bins = {shape.candidates(g) for g in range(shape.generations)}  # each vote's histogram length
    if privacy.warm_start_plan(run.config) is not None:  # and the warm start's marginals, concatenated
        vote_bins.add(sum(privacy.warm_start_hook(run.config).bins))

    def check(uri: str, data: bytes) -> bool:
        name = run.layout.relative(uri)
        leaked = next((h for h in private_hashes if h in data.lower()), None)
        if not report.check("no private-tier hash released", leaked is None,
                            f"{name} holds the hash of a private-tier file (a fingerprint of the private set)"):
            return False
        if uri.endswith(modality.population_suffix) and modality.population_suffix != ".npz":  # read as arrays below
            population = modality.decode_population(data, name)
            if private_rows and not report.check("no private data in released files",
                                                 not (modality.leak_fingerprints(run.config, population.samples) & private_rows),
                                                 f"{name} contains a private record"):
                return False
        if not uri.endswith(".npz"):
            return True
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            report.check("released arrays readable", False,
                         f"{name} cannot be read ({type(error).__name__}): it was changed or truncated")
            return False
        for key, array in arrays.items():
            if array.ndim == 0:
                continue
            candidates = row_hashes(array.astype(np.float32) if array.dtype.kind == "f" else array)
            if private_rows and not report.check("no private data in released files", not (candidates & private_rows),
                                                 f"{name}[{key}] contains a private image or private embedding"):
                return False
            if name in whole_by_design:
                continue
            looks_clean = (array.ndim == 1 and len(array) in vote_bins and array.dtype.kind == "f"
                           and np.all(array >= 0) and np.all(array == np.round(array)))
            if not report.check("no clean counts released", not looks_clean,
                                f"{name}[{key}] holds whole non-negative counts: a clean histogram, not a noisy one"):
                return False
        return True

    return check


def format_report(report: AuditReport) -> str:
    """Human-readable audit: per generation, then the verdict."""
    lines = [f"audit of run {report.run_id}"]
    for g in report.generations:
        lines.append(f"generation {g['generation']}: epsilon after = {privacy.format_epsilon(g['epsilon'])}")
        for step in g["steps"]:
            params = " ".join(f"{k}={v}" for k, v in sorted(step["params"].items()))
            lines.append(f"  step {step['step']}: {params}")
        for release in g["releases"]:
            lines.append(f"  DP release {release['uri']} sha256={release['sha256'][:16] or '(pending)'}… "
                         f"sigma={privacy.format_sigma(release['noise_multiplier'])} {release['mechanism']} "
                         f"({release['reason']})")
        for name, entry in sorted(g["files"].items()):
            lines.append(f"  file {name} sha256={entry['sha256'][:16]}… size={entry['size']}")
    lines.append(f"epsilon (recomputed from the ledger, upper bound) = {privacy.format_epsilon(report.epsilon)} "
                 f"at delta = {report.delta:g}")
    if report.privacy:
        lines.extend(privacy.format_privacy_report(report.privacy))
    if report.dataset is not None:
        lines.extend(privacy.format_dataset_summary(report.dataset))
    for check in report.checks:
        if check["ok"] is None:
            lines.append(f"note: {check['check']}: {check['detail']}")
    failure = report.first_failure
    lines.append("audit: OK" if failure is None else f"audit: FAILED: {failure['detail']}")
    return "\n".join(lines)
