"""A run: one experiment config bound to a run id and its storage layout."""

from __future__ import annotations

import contextlib
import datetime as _dt
import platform
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np

from privevo import storage
from privevo.config import Config, config_to_dict, get_key, parse_config, with_overrides
from privevo.errors import UserError
from privevo.layout import RunLayout, overlaps, same_or_inside
from privevo.modalities import Modality, get_modality
from privevo.privacy import Ledger, check_dataset_plan, non_private_reasons


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (for records)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Run:
    """A config bound to a run id and its storage layout."""

    config: Config
    layout: RunLayout

    @classmethod
    def create(cls, config: Config, run_id: str, started_by: str | None = None) -> Run:
        """Bind ``config`` to ``run_id``; writes run.json once, and refuses a different config.

        ``started_by`` (the KFP run that starts it) is recorded: :meth:`start` lets that run in again.
        """
        run = cls(config, layout_for(config, run_id))
        record = {"run_id": run_id, "config": config_to_dict(config), "versions": _versions(), "created_at": utc_now(),
                  "started_by": started_by, "private": not non_private_reasons(config.privacy)}
        try:
            storage.write_json(run.layout.run_json, record, exclusive=True)
        except storage.AlreadyExists:
            stored = storage.read_json(run.layout.run_json)["config"]
            if _identity(stored) != _identity(config_to_dict(config)):
                raise UserError(
                    f"run {run_id} already exists under {config.run_root} with a different config: "
                    "choose a new --run-id or rerun with the stored config"
                ) from None
        return run

    @classmethod
    def start(cls, config: Config, run_id: str, resume: bool, started_by: str | None = None) -> Run:
        """Begin a new run, or continue one with ``resume``: a new run never silently reuses another run's outputs.

        A run folder that exists is refused unless ``resume`` is set or it was started by ``started_by``
        (the same KFP run, retried).
        """
        cls.check_new(config, run_id, resume, started_by)
        return cls.create(config, run_id, started_by)

    @staticmethod
    def check_new(config: Config, run_id: str, resume: bool, started_by: str | None = None,
                  pipeline_root: str | None = None) -> None:
        """Refuse, in one line, to start run_id where a run folder exists, unless resumed or retried (see :meth:`start`),
        or where the private tier or the private data could reach a released place (:func:`check_separation`), or whose
        planned votes would exceed the private data set's remaining budget (``privacy.check_dataset_plan``)."""
        check_separation(config, pipeline_root)
        layout = layout_for(config, run_id)
        if not resume and storage.exists(layout.run_json):
            owner = storage.read_json(layout.run_json).get("started_by")
            if started_by is None or owner != started_by:
                raise UserError(f"run {run_id} already exists under {config.run_root}: continue it with "
                                f"`python pipeline.py run --resume {run_id} --run-root {config.run_root}` "
                                "(resume=True in a pipeline run) or choose a new run id")
        check_dataset_plan(config, run_id)  # the data set's remaining budget (best effort; the vote's charge decides)

    @classmethod
    def open(cls, run_root: str, run_id: str) -> Run:
        """An existing run under ``run_root`` (wherever it lives now), with its stored config."""
        probe = RunLayout(run_root, run_id, private_root="")  # the private root is in run.json
        if not storage.exists(probe.run_json):
            raise UserError(f"no run {run_id} under {run_root} (missing {probe.run_json})")
        config = parse_config(storage.read_json(probe.run_json)["config"], source=probe.run_json, stored=True)
        config = config.model_copy(update={"run_root": run_root})
        return cls(config, layout_for(config, run_id, run_root))

    def amend(self, overrides: list[str]) -> Run:
        """This run with ``--set`` overrides of what a resume may change (:data:`RESUMABLE_KEYS`), stored in run.json
        with the change itself, so its record stays true; anything else is refused in one line naming the key."""
        if not overrides:
            return self
        stored = config_to_dict(self.config)
        config = parse_config(with_overrides(stored, overrides, self.layout.run_json), source="--set")
        changed = _changed_keys(stored, config_to_dict(config))
        for key in changed:
            if not any(key == allowed or key.startswith(f"{allowed}.") for allowed in RESUMABLE_KEYS):
                raise UserError(f"--set {key} cannot change on resume: it decides the run's privacy or the outputs it "
                                "already made (a resume may change data and model paths, resources, evaluation and "
                                "kubernetes settings); start a new run with --run-id for it")
        if "private.path" in changed and storage.exists(self.layout.private_embeddings):
            raise UserError("--set private.path cannot change on resume: the private set is already embedded from the "
                            "stored path; start a new run with --run-id for another private set")
        if not changed:
            return self
        values = {key: [get_key(stored, key), get_key(config_to_dict(config), key)] for key in changed}

        def record_change(record: dict[str, Any]) -> dict[str, Any]:
            kept_root = record["config"]["run_root"]  # where the run was made; it may be opened elsewhere
            record["config"] = {**config_to_dict(config), "run_root": kept_root}
            record["amendments"] = [*record.get("amendments", []), {"at": utc_now(), "changed": values}]
            return record

        storage.update_json(self.layout.run_json, record_change)
        return Run(config, self.layout)

    def remove_if_unreleased(self) -> bool:
        """Remove the run's folders (released and private tier) when nothing was released from it; whether it did.

        A run with a ledger event or a DP release keeps everything (its record must stay whole), and so does one whose
        private tier holds an error log, which the failure's message names.
        """
        layout = self.layout
        if storage.exists(layout.ledger_json) or storage.exists(layout.private_log) or any(
                RunLayout.is_release(layout.relative(uri)) for uri in storage.list_files(layout.run_dir)):
            return False
        for folder in (layout.private_dir, layout.run_dir):
            if storage.is_gcs(folder):
                for uri in storage.list_files(folder):
                    storage.delete(uri)
            else:
                shutil.rmtree(folder, ignore_errors=True)  # what could not be removed is told below
        return not (storage.list_files(layout.run_dir) or storage.list_files(layout.private_dir))

    @classmethod
    def locate(cls, run: str, run_root: str) -> Run:
        """A run named by its id under ``run_root``, or by the run path ``pipeline.py run`` printed (local or gs://)."""
        if "/" not in run.rstrip("/"):
            return cls.open(run_root, run)
        root, _, run_id = run.rstrip("/").rpartition("/")
        return cls.open(root or "/", run_id)

    @property
    def run_id(self) -> str:
        return self.layout.run_id

    def seed(self, *keys: int | str) -> int:
        """Seed for non-DP randomness from the config seed and (generation, step, shard, ...)."""
        words = [self.config.seed] + [k if isinstance(k, int) else _stable_hash(k) for k in keys]
        return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint32)[0])

    @property
    def modality(self) -> Modality:
        """The run's data type (``config.modality``)."""
        return get_modality(self.config)

    def ledger(self) -> Ledger:
        """The run's privacy ledger (empty before the first vote)."""
        return Ledger.load(self.layout.ledger_json, self.config.privacy.delta)

    def class_ids(self) -> list[int]:
        """Indices (into class_names) of the classes this run synthesises."""
        names = self.config.class_names or []
        wanted = self.config.private.classes or names
        unknown = [c for c in wanted if c not in names]
        if unknown:
            raise UserError(f"private.classes {unknown} are not in class_names {names}")
        return [names.index(c) for c in wanted]


def layout_for(config: Config, run_id: str, run_root: str | None = None) -> RunLayout:
    """The layout of run ``run_id`` of ``config`` (under ``run_root``, default the config's), with its modality's
    population suffix."""
    return RunLayout(run_root or config.run_root, run_id, config.private_root, get_modality(config).population_suffix)


def check_separation(config: Config, pipeline_root: str | None = None) -> None:
    """Refuse, in one line, a private root outside ``privacy.private_root_prefixes`` (when set) or overlapping the
    pipeline root (``kubernetes.pipeline_root`` and ``pipeline_root``, kfp.local's) or the evaluation reference data,
    and a reference that may share records with the private data: each would put the private tier or private images
    where public steps read or write (:class:`RunLayout` refuses a private root overlapping the run root). Local
    paths and gs:// URIs; messages name only config paths."""
    private_root, reference = config.private_root, config.evaluation.reference
    prefixes = config.privacy.private_root_prefixes
    if prefixes and not any(same_or_inside(private_root, prefix) for prefix in prefixes):
        raise UserError(f"private_root {private_root} is not inside privacy.private_root_prefixes "
                        f"({', '.join(prefixes)}): use a private root under one of them")
    released = [("kubernetes.pipeline_root", config.kubernetes.pipeline_root),
                ("the pipeline root", pipeline_root),
                ("evaluation.reference.path", reference.path if reference is not None else None)]
    for name, root in released:
        if root and overlaps(private_root, root):
            raise UserError(f"private_root {private_root} overlaps {name} {root}: keep the private tier in a separate "
                            "folder or bucket")
    if reference is not None and get_modality(config).may_share_records(reference, config.private):
        raise UserError(f"evaluation.reference ({reference.source} {reference.path}) may share images with private.path "
                        f"{config.private.path}: point it at held-out data, or take disjoint classes or rows of the "
                        "same source")


#: What ``run --resume --set`` may change: where data and models are read from, how steps are resourced, evaluation
#: and cluster settings. Every other key decides the privacy guarantee or outputs the run already made.
RESUMABLE_KEYS: tuple[str, ...] = (
    "private.path", "model.path", "model.sha256", "model.device", "model.batch_size", "model.remote.url",
    "model.remote.timeout_s", "model.remote.max_concurrency", "model.remote.requests_per_minute",
    "model.remote.max_retries", "model.remote.backoff_s", "model.remote.max_backoff_s", "model.remote.token_env",
    "model.remote.token_file", "model.remote.price_per_image", "model.remote.tokens_per_minute",
    "model.remote.price_per_input_token", "model.remote.price_per_output_token", "embedding.device", "embedding.batch_size",
    "evaluation", "kubernetes",
)


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config without where the run lives now (a run may be opened from another folder than it was made in)."""
    return {key: value for key, value in config.items() if key != "run_root"}


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two config dicts (a list is one value)."""
    changed = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            changed += _changed_keys(before, after, f"{prefix}{key}.")
        elif before != after:
            changed.append(f"{prefix}{key}")
    return changed


def _stable_hash(text: str) -> int:
    return int.from_bytes(text.encode()[:8].ljust(8, b"\0"), "little") ^ len(text)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import privevo

    found = {"privevo": privevo.__version__, "python": platform.python_version()}
    for package in ("torch", "diffusers", "faiss-cpu", "numpy", "prv-accountant", "opendp", "dp-accounting"):
        with contextlib.suppress(PackageNotFoundError):  # a missing optional package is just not recorded
            found[package] = version(package)
    return found
