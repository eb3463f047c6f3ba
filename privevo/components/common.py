"""What every component shares: opening the run, artifact references, the step command line."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import sys
from typing import Any

from privevo.config import config_to_dict, load_config, parse_config
from privevo.errors import UserError
from privevo.run_record import Run

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_setup() -> None:
    """Turn on the step's log lines (progress included): a pod's log is all a cluster user sees."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def write_resolved(artifact: Any, run: Run, force_new_noise: bool, kfp_run_id: str) -> None:
    """resolve_config's output: the run's id and resolved config, which every other step opens the run from,
    and what the votes need of the KFP run (whether to redraw their noise, and the redraw key: the KFP run id)."""
    artifact.metadata["run_id"] = run.run_id
    artifact.metadata["run_path"] = run.layout.run_dir
    record = {"run_id": run.run_id, "config": config_to_dict(run.config), "force_new_noise": force_new_noise,
              "kfp_run_id": kfp_run_id}
    with open(artifact.path, "w") as handle:
        json.dump(record, handle, sort_keys=True)


def open_run(resolved: Any, model: Any = None) -> Run:
    """The run a step belongs to, as resolve_config started it (refuses a config that differs from run.json).

    ``model`` is the KFP Model artifact of a gs:// model.path (its importer puts the model in the run's lineage).
    Where KFP has already copied it into the pod, the step loads that copy, still checked against model.sha256,
    instead of copying it again; the run's stored config keeps the gs:// path.
    """
    return _run_of(read_reference(resolved), model)


def _run_of(record: dict[str, Any], model: Any = None) -> Run:
    """The run of a ``resolved`` record (see :func:`open_run`)."""
    log_setup()
    run = Run.create(parse_config(record["config"], source="pipeline config"), record["run_id"])
    if model is not None and os.path.isdir(model.path):
        logging.getLogger(__name__).info("loading the model from its artifact's local copy %s", model.path)
        local_model = run.config.model.model_copy(update={"path": model.path})
        run = Run(run.config.model_copy(update={"model": local_model}), run.layout)
    return run


def _kfp_value(value: Any) -> Any:
    """KFP metadata cannot hold infinity or NaN (protobuf Struct): such floats go in as text ("inf")."""
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def write_reference(artifact: Any, reference: dict[str, Any]) -> None:
    """Store a data-plane reference in a KFP artifact: in its metadata and as its JSON content."""
    for key, value in reference.items():
        artifact.metadata[key] = _kfp_value(value)
    with open(artifact.path, "w") as handle:
        json.dump(reference, handle, sort_keys=True)


def log_metrics(artifact: Any, values: dict[str, float]) -> None:
    """Log scalars to a KFP Metrics artifact. KFP metrics must be finite: an infinite one (epsilon
    of a non-private run, sigma = 0) is logged as ``<key>_infinite = 1`` instead."""
    for key, value in values.items():
        if math.isfinite(value):
            artifact.log_metric(key, value)
        else:
            artifact.log_metric(f"{key}_infinite", 1.0)


def read_reference(artifact: Any) -> dict[str, Any]:
    """The reference a previous step wrote into its output artifact."""
    with open(artifact.path) as handle:
        return json.load(handle)


def step_cli(name: str, argv: list[str] | None = None) -> int:
    """Run one step outside KFP: ``--config CFG --run-id ID [--set k=v ...]`` plus the flags its table row names."""
    from privevo.step_table import StepArgs, step

    spec = step(name)
    component = getattr(importlib.import_module(spec.component), name)
    parser = argparse.ArgumentParser(prog=f"python -m {spec.component}", description=component.__doc__)
    parser.add_argument("--config", required=True, help="experiment config (YAML)")
    parser.add_argument("--run-id", required=True, help="run folder name under run_root")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set population.size=100")
    if spec.per_generation:
        parser.add_argument("--generation", type=int, required=True, help="the generation (vote) to run")
    if spec.sharded:
        parser.add_argument("--shard", type=int, default=0)
    if spec.redraws:
        parser.add_argument("--force-new-noise", action="store_true",
                            help="draw new noise even if this generation's release exists (charged again)")
    args = parser.parse_args(argv)
    log_setup()
    try:
        config = load_config(args.config, args.overrides)
        run = Run.create(config, args.run_id)
        step_args = StepArgs(getattr(args, "generation", 0), getattr(args, "shard", 0),
                             getattr(args, "force_new_noise", False))
        print(json.dumps(spec.call(run, step_args), sort_keys=True, default=str))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


# The compiled pipeline repeats a component's source once per generation: the two per-generation components
# keep one line of source each, and their bodies live here, in the image.


def dp_vote_task(resolved: Any, generation: int, private_embeddings: Any, synthetic_embeddings: Any, selection: Any,
                 privacy: Any) -> None:
    """dp_vote's body: the vote of one generation, redrawn once per KFP run when the run asks for new noise."""
    from privevo import steps

    task = read_reference(resolved)
    run = _run_of(task)
    steps.verify_references([read_reference(shard) for shard in synthetic_embeddings])
    reference = steps.dp_vote(run, int(generation), read_reference(private_embeddings), task["force_new_noise"],
                              task["kfp_run_id"])
    write_reference(selection, reference)
    log_metrics(privacy, {"epsilon": reference["epsilon"], "generation": int(generation)})


def variation_shard_task(resolved: Any, generation: int, shard: int, selection: Any, population: Any, embeddings: Any,
                         model: Any) -> None:
    """variation_shard's body: the shard's children, then their embedding for the next vote, in this process."""
    from privevo import steps

    run = open_run(resolved, model)
    steps.verify_references([read_reference(selection)])
    write_shard_outputs("variation_shard", run, int(generation), int(shard), population, embeddings)


def write_shard_outputs(name: str, run: Run, generation: int, shard: int, population: Any, embeddings: Any) -> None:
    """Run the shard step ``name`` (initial_shard or variation_shard) as its row of the step table composes it, and
    write its population's and embeddings' references to their artifacts."""
    from privevo.step_table import StepArgs, step

    references = step(name).call(run, StepArgs(generation, shard))
    write_reference(population, references["population"])
    write_reference(embeddings, references["embeddings"])
