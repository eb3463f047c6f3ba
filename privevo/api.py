"""The Python API: run the whole pipeline in this process, and read a finished run.

``privevo.run("tiny", run_root=..., private_root=...)`` calls the steps of the pipeline in the
DAG's order (:func:`plan_steps`) without Kubeflow, and returns a :class:`RunResult`;
``privevo.open_run(path)`` reads a run that any runner wrote (local or gs://). Bad input raises
:class:`privevo.errors.UserError` with a one-line message.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privevo import storage
from privevo.config import Config, config_to_dict, parse_config, with_overrides
from privevo.errors import UserError
from privevo.population import Population
from privevo.run_record import Run
from privevo.step_table import StepArgs, StepSpec, step

Overrides = Sequence[str] | Mapping[str, Any] | None


@dataclass(frozen=True)
class PlannedStep:
    """One execution of a step in an in-process run: which step, with which arguments, and how it is named."""

    spec: StepSpec
    args: StepArgs
    label: str  # e.g. "embed_synthetic g1 s0"
    generation: int  # the generation it works on; -1 for evaluate

    def __call__(self, run: Run) -> dict[str, Any]:
        """Execute the step on ``run``."""
        return self.spec.call(run, self.args)


def plan_steps(config: Config) -> list[PlannedStep]:
    """Every step of a run of ``config`` in DAG order: the private embedding, the DP warm start when the config asks
    for one, generation 0, then per generation the
    lookahead embeddings, the DP vote and the variations of each shard, and the evaluation (the same work as the
    pipeline's tasks, one step at a time)."""
    shards = range(config.population.num_shards)
    plan = [PlannedStep(step("embed_private"), StepArgs(), "embed_private", 0)]
    if step("warm_start").reads_private(config):
        plan.append(PlannedStep(step("warm_start"), StepArgs(), "warm_start", 0))
    plan += [PlannedStep(step("generate_initial"), StepArgs(shard=s), f"generate_initial s{s}", 0) for s in shards]
    for g in range(1, config.population.generations + 1):
        plan += [PlannedStep(step("embed_synthetic"), StepArgs(g, s), f"embed_synthetic g{g} s{s}", g) for s in shards]
        plan.append(PlannedStep(step("dp_vote"), StepArgs(g), f"dp_vote g{g}", g))
        plan += [PlannedStep(step("generate_variations"), StepArgs(g, s), f"generate_variations g{g} s{s}", g)
                 for s in shards]
    plan.append(PlannedStep(step("evaluate"), StepArgs(), "evaluate", -1))
    return plan


def start_run(config: Config, run_id: str) -> Run:
    """Begin a new in-process run: check the planned budget, refuse an existing run folder, calibrate the noise once."""
    from privevo import privacy

    privacy.check_planned_budget(config)
    run = Run.start(config, run_id, resume=False)
    privacy.noise_multiplier_for(config, run.layout)  # kept in the run: the votes do not calibrate again
    return run


def execute(run: Run, around: Callable[[PlannedStep, Callable[[], Any]], Any] | None = None) -> None:
    """Run every step of :func:`plan_steps` on ``run`` in this process; ``around(planned, call)`` wraps each (timing)."""
    for planned in plan_steps(run.config):
        call = functools.partial(planned, run)
        if around is None:
            call()
        else:
            around(planned, call)


def load(config: str | os.PathLike[str] | Config, overrides: Overrides = None, run_root: str | os.PathLike[str] | None = None,
         private_root: str | os.PathLike[str] | None = None) -> Config:
    """The config a run uses: a file, a shipped config name (``tiny``) or a Config, with overrides and roots applied,
    and its models resolved for this machine (:mod:`privevo.shipped`)."""
    from privevo import shipped

    assignments = _assignments(overrides)
    for key, value in (("run_root", run_root), ("private_root", private_root)):
        if value is not None:
            assignments.append(_assignment(key, os.fspath(value)))
    if isinstance(config, Config):
        data = with_overrides(config_to_dict(config), assignments, "the given Config")
        return shipped.with_local_models(parse_config(data, source="config"))
    if not isinstance(config, (str, os.PathLike)):
        raise UserError(f"config must be a file path, a shipped config name or a Config, got {type(config).__name__}")
    return shipped.load(config, assignments, local=True)


def _assignment(key: str, value: Any) -> str:
    """One ``key=value`` override whose value reads back as ``value`` (written as YAML, which the overrides parse)."""
    import yaml

    return f"{key}={yaml.safe_dump(value, default_flow_style=True)}"


def _assignments(overrides: Overrides) -> list[str]:
    """Overrides as ``key=value`` strings: a list of them as given, or a mapping of dotted keys to values."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [_assignment(str(key), value) for key, value in overrides.items()]
    if isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides):
        raise UserError("overrides must be a list of 'key=value' strings or a dict of dotted keys to values")
    return list(overrides)


def run(config: str | os.PathLike[str] | Config, overrides: Overrides = None, run_root: str | os.PathLike[str] | None = None,
        private_root: str | os.PathLike[str] | None = None, run_id: str | None = None) -> RunResult:
    """Run the whole pipeline in this process, without Kubeflow, and return its result.

    ``config``: a YAML file, a shipped config name (``"tiny"``) or a :class:`~privevo.config.Config`;
    ``overrides``: ``["population.size=48"]`` as ``--set`` takes them, or ``{"population.size": 48}``;
    ``run_root``/``private_root``: where the released run and the private tier go (default: the config's);
    ``run_id``: the run folder's name (default: NAME-UTCTIME). An existing run folder is refused.
    """
    from privevo.cli import new_run_id

    loaded = load(config, overrides, run_root, private_root)
    started = start_run(loaded, run_id or new_run_id(loaded.name))
    execute(started)
    return RunResult(started)


def open_run(path: str | os.PathLike[str]) -> RunResult:
    """A run that exists, named by its folder (the run path a run printed; local or gs://)."""
    text = os.fspath(path).rstrip("/")
    if not text:
        raise UserError("open_run needs a run folder, e.g. runs/tiny-20260101-000000")
    if not storage.is_gcs(text):
        text = str(Path(text).absolute())
    return RunResult(Run.locate(text, run_root="."))


@dataclass(frozen=True)
class RunResult:
    """A run's released results: its folder, the epsilon it spent, its metrics and its synthetic populations."""

    run: Run

    @property
    def path(self) -> str:
        """The run folder (local path or gs:// URI)."""
        return self.run.layout.run_dir

    @property
    def run_id(self) -> str:
        """The run folder's name."""
        return self.run.run_id

    @property
    def epsilon(self) -> float:
        """Epsilon spent, the accountant's upper bound at the config's delta, from the run's ledger."""
        return self.run.ledger().epsilon()

    @property
    def delta(self) -> float:
        """The delta the epsilon is stated at."""
        return self.run.config.privacy.delta

    @property
    def metrics(self) -> dict[str, Any]:
        """The run's metrics.json (written by its evaluation)."""
        uri = self.run.layout.metrics_json
        if not storage.exists(uri):
            raise UserError(f"run {self.run_id} has no metrics.json yet: run its evaluate step first")
        data: dict[str, Any] = storage.read_json(uri)
        return data

    @property
    def last_generation(self) -> int:
        """The highest complete generation (-1: none yet)."""
        from privevo.steps import last_complete_generation

        return last_complete_generation(self.run)

    def generation(self, generation: int = -1) -> int:
        """``generation`` checked to exist, with -1 meaning the last complete one."""
        last = self.last_generation
        if last < 0:
            raise UserError(f"run {self.run_id} has no complete generation yet")
        if isinstance(generation, bool) or not isinstance(generation, int) or not -1 <= generation <= last:
            raise UserError(f"run {self.run_id} has generations 0 to {last}: generation {generation} does not exist "
                            "(-1 is the last)")
        return last if generation == -1 else generation

    def population(self, generation: int = -1) -> Population:
        """The synthetic samples of a generation (-1: the last): ``.samples`` (images: uint8 NHWC, also ``.images``),
        ``.labels`` (-1 unlabelled)."""
        from privevo.steps import load_population

        return load_population(self.run, self.generation(generation))

    def export(self, to: str | os.PathLike[str], generation: int = -1, format: str = "imagefolder") -> Path:
        """Write a generation's synthetic images and the run's privacy statement to the new folder ``to``
        (see :func:`privevo.export.export_run`); returns the folder."""
        from privevo.export import export_run

        return export_run(self.run, to, generation, format)

    def __repr__(self) -> str:
        return f"RunResult(path={self.path!r})"
