"""What every component shares: opening the run, artifact references, the step command line."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import sys
from typing import Any

from privevo.config import config_to_dict, load_config, parse_config
from privevo.errors import UserError
from privevo.run import Run

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_setup() -> None:
    """Turn on the step's log lines (progress included): a pod's log is all a cluster user sees."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def write_resolved(artifact: Any, run: Run) -> None:
    """resolve_config's output: the run's id and resolved config, which every other step opens the run from."""
    artifact.metadata["run_id"] = run.run_id
    artifact.metadata["run_path"] = run.layout.run_dir
    with open(artifact.path, "w") as handle:
        json.dump({"run_id": run.run_id, "config": config_to_dict(run.config)}, handle, sort_keys=True)


def open_run(resolved: Any) -> Run:
    """The run a step belongs to, as resolve_config started it (refuses a config that differs from run.json)."""
    log_setup()
    with open(resolved.path) as handle:
        record = json.load(handle)
    return Run.create(parse_config(record["config"], source="pipeline config"), record["run_id"])


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
