"""The pipeline's steps, described once.

One row per step: its name, the library function it runs, its Kubeflow component,
whether it reads the private tier, and whether it runs a network. The DAG
(``privevo.dag.build_pipeline``), ``privevo rerun``, the private secret's mounts,
per-step resources and images, and every component's command line are derived
from :data:`STEPS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from privevo import steps
from privevo.config import Config
from privevo.errors import UserError
from privevo.run_record import Run


@dataclass(frozen=True)
class StepArgs:
    """What selects one execution of a step: its generation, shard and whether to redraw DP noise."""

    generation: int = 0
    shard: int = 0
    force_new_noise: bool = False
    redraw_key: str | None = None  # a forced redraw happens once per key (None: a new one)


@dataclass(frozen=True)
class StepSpec:
    """One step of the pipeline."""

    name: str
    call: Callable[[Run, StepArgs], dict[str, Any]]
    component: str  # the module holding the KFP component function of the same name
    reads_private: Callable[[Config], bool]  # gets the private tier's credentials
    runs_network: bool  # runs the foundation model or the embedding: model-step resources and image
    calls_model: bool = False  # calls the foundation model (a remote model's token and network reach only these)
    per_generation: bool = False  # takes --generation
    sharded: bool = False  # takes --shard
    redraws: bool = False  # takes --force-new-noise


def _always(config: Config) -> bool:
    return True


def _never(config: Config) -> bool:
    return False


def _warm_start(config: Config) -> bool:
    """Whether the config asks for a DP warm start (the step exists in its DAG only then)."""
    return config.privacy.warm_start_share > 0


def _initial_shard(run: Run, args: StepArgs) -> dict[str, Any]:
    return {"population": steps.generate_initial(run, args.shard),
            "embeddings": steps.embed_synthetic(run, 1, args.shard)}


def _variation_shard(run: Run, args: StepArgs) -> dict[str, Any]:
    return {"population": steps.generate_variations(run, args.generation, args.shard),
            "embeddings": steps.embed_synthetic(run, args.generation + 1, args.shard)}


def _evaluate(run: Run, args: StepArgs) -> dict[str, Any]:
    from privevo import evaluation

    return evaluation.headline_metrics(evaluation.evaluate_run(run))


#: Every step, in DAG order. warm_start exists in a run only when its config asks for it (``privacy.warm_start_share``),
#: before generation 0, whose shards then wait for it. The DAG runs initial_shard and variation_shard
#: (generate_initial or generate_variations, then embed_synthetic, in one task) for every generation but the last,
#: whose shards only generate_variations.
STEPS: tuple[StepSpec, ...] = (
    StepSpec("embed_private", lambda run, a: steps.embed_private(run), "privevo.components.embed_private",
             reads_private=_always, runs_network=True),
    StepSpec("warm_start", lambda run, a: steps.warm_start(run), "privevo.components.warm_start",
             reads_private=_warm_start, runs_network=False),
    StepSpec("generate_initial", lambda run, a: steps.generate_initial(run, a.shard), "privevo.components.generate_initial",
             reads_private=_never, runs_network=True, calls_model=True, sharded=True),
    StepSpec("embed_synthetic", lambda run, a: steps.embed_synthetic(run, a.generation, a.shard),
             "privevo.components.embed_synthetic", reads_private=_never, runs_network=True, calls_model=True,
             per_generation=True, sharded=True),
    StepSpec("dp_vote",
             lambda run, a: steps.dp_vote(run, a.generation, steps.private_reference(run), a.force_new_noise,
                                          a.redraw_key),
             "privevo.components.dp_vote", reads_private=_always, runs_network=False, per_generation=True, redraws=True),
    StepSpec("generate_variations", lambda run, a: steps.generate_variations(run, a.generation, a.shard),
             "privevo.components.generate_variations", reads_private=_never, runs_network=True, calls_model=True,
             per_generation=True, sharded=True),
    # One process per shard per generation: the shard's samples, then their embedding for the next vote, sharing
    # the loaded networks. Each half writes its own step record, and each can be rerun on its own.
    StepSpec("initial_shard", _initial_shard, "privevo.components.initial_shard", reads_private=_never, runs_network=True,
             calls_model=True, sharded=True),
    StepSpec("variation_shard", _variation_shard, "privevo.components.variation_shard", reads_private=_never,
             runs_network=True, calls_model=True, per_generation=True, sharded=True),
    StepSpec("evaluate", _evaluate, "privevo.components.evaluate",
             reads_private=lambda config: config.evaluation.against_private, runs_network=True),
)

STEP_NAMES: tuple[str, ...] = tuple(spec.name for spec in STEPS)
MODEL_STEPS: frozenset[str] = frozenset(spec.name for spec in STEPS if spec.calls_model)


def step(name: str) -> StepSpec:
    """The row of the step called ``name``."""
    for spec in STEPS:
        if spec.name == name:
            return spec
    raise UserError(f"unknown step {name!r}: use one of {', '.join(STEP_NAMES)}")
