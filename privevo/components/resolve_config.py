"""resolve_config: the first step of every run; applies the run parameters and starts the run."""

from kfp.dsl import Artifact, Output


def resolve_config(
    config_json: str, run_id: str, resume: bool, force_new_noise: bool, kfp_run_id: str, epsilon: float, delta: float,
    noise_multiplier: float, population_size: int, private_data_uri: str, run_root: str, seed: int,
    degrees: list, resolved: Output[Artifact],
):
    """Validates the config with this run's parameters, refuses a private root or reference data that could reach a
    released place, calibrates the noise, checks the budget and writes run.json; ``resolved`` (the run id and resolved
    config) goes to every other step. Reads no data: the private root is compiled in, never a run parameter."""
    # kfp ships this function's source, so its signature spells the run parameters out (a test holds it to
    # privevo.parameters.RUN_PARAMETERS); the body takes them by name from the table.
    arguments = dict(locals())
    import json

    from privevo import steps
    from privevo.cluster import user_error_ends_task
    from privevo.components.common import log_setup, write_resolved
    from privevo.config import parse_config
    from privevo.parameters import PARAMETER_NAMES

    log_setup()
    parameters = {name: arguments[name] for name in PARAMETER_NAMES}
    with user_error_ends_task("resolve_config", run_root, kfp_run_id):
        run = steps.resolve_run(parse_config(json.loads(config_json), source="pipeline config"), parameters, run_id,
                                bool(resume), kfp_run_id)
        write_resolved(resolved, run, bool(force_new_noise), kfp_run_id)
