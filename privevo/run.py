"""A run: one experiment config bound to a run id and its storage layout."""

from __future__ import annotations

import contextlib
import datetime as _dt
import platform
from dataclasses import dataclass

import numpy as np

from privevo import storage
from privevo.config import Config, config_to_dict, parse_config
from privevo.errors import UserError
from privevo.layout import RunLayout
from privevo.privacy import Ledger


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
        run = cls(config, RunLayout(config.run_root, run_id, config.private_root))
        record = {"run_id": run_id, "config": config_to_dict(config), "versions": _versions(), "created_at": utc_now(),
                  "started_by": started_by}
        try:
            storage.write_json(run.layout.run_json, record, exclusive=True)
        except storage.AlreadyExists:
            stored = storage.read_json(run.layout.run_json)["config"]
            if stored != config_to_dict(config):
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
    def check_new(config: Config, run_id: str, resume: bool, started_by: str | None = None) -> None:
        """Refuse, in one line, to start run_id where a run folder exists, unless resumed or retried (see :meth:`start`)."""
        layout = RunLayout(config.run_root, run_id, config.private_root)
        if not resume and storage.exists(layout.run_json):
            owner = storage.read_json(layout.run_json).get("started_by")
            if started_by is None or owner != started_by:
                raise UserError(f"run {run_id} already exists under {config.run_root}: continue it with "
                                f"`python pipeline.py run --resume {run_id} --run-root {config.run_root}` "
                                "(resume=True in a pipeline run) or choose a new run id")

    @classmethod
    def open(cls, run_root: str, run_id: str) -> Run:
        """An existing run under ``run_root`` (wherever it lives now), with its stored config."""
        probe = RunLayout(run_root, run_id, private_root="")  # the private root is in run.json
        if not storage.exists(probe.run_json):
            raise UserError(f"no run {run_id} under {run_root} (missing {probe.run_json})")
        config = parse_config(storage.read_json(probe.run_json)["config"], source=probe.run_json)
        config = config.model_copy(update={"run_root": run_root})
        return cls(config, RunLayout(run_root, run_id, config.private_root))

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
