"""Run parameters: the config values a user may change per run of a compiled pipeline.

A compiled pipeline is a template: its shape (generations, shards) is fixed at compile
time, and the values below are pipeline parameters whose defaults are the config's, so
they can be edited per run in the KFP UI or with ``submit --param key=value``. The first
step of every run applies them (:func:`apply_parameters`) and validates the result with
the config's own one-line errors.

What bounds the guarantee is the operator's and is compiled in, never a run parameter:
``privacy.allow_non_private`` (so a noise multiplier of 0 from the run form is refused unless
the compiled config allows it) and ``privacy.max_delta`` (the cap on the ``delta`` parameter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from privevo.config import Config, config_to_dict, parse_config, set_key

#: ``epsilon`` at or below this means "not set" (KFP parameters cannot be None): sigma is then ``noise_multiplier``.
EPSILON_UNSET = 0.0
#: ``noise_multiplier`` below zero means "not set": sigma is then calibrated from ``epsilon``.
NOISE_MULTIPLIER_UNSET = -1.0


@dataclass(frozen=True)
class RunParameter:
    """One pipeline parameter and the config key it sets."""

    name: str
    key: str  # dotted config key
    description: str


RUN_PARAMETERS: tuple[RunParameter, ...] = (
    RunParameter("epsilon", "privacy.epsilon", "target epsilon, which calibrates the noise; 0 = use noise_multiplier"),
    RunParameter("delta", "privacy.delta", "target delta, at most the compiled privacy.max_delta"),
    RunParameter("noise_multiplier", "privacy.noise_multiplier",
                 "explicit noise multiplier (0 = non-private, refused unless the compiled config has "
                 "privacy.allow_non_private); -1 = calibrate from epsilon"),
    RunParameter("population_size", "population.size", "synthetic samples per generation"),
    RunParameter("private_data_uri", "private.path", "where the private images are (a folder, npz or gs:// prefix)"),
    RunParameter("run_root", "run_root", "where runs are written (local folder or gs:// prefix)"),
    RunParameter("seed", "seed", "seed of the non-DP randomness (DP noise never uses it)"),
    RunParameter("degrees", "population.degrees", "variation degree per generation (a list of T values)"),
)

PARAMETER_NAMES: tuple[str, ...] = tuple(parameter.name for parameter in RUN_PARAMETERS)


def parameter_defaults(config: Config) -> dict[str, Any]:
    """Each run parameter's default: the config's value, with the sentinels above for unset values."""
    privacy = config.privacy
    return {
        "epsilon": privacy.epsilon if privacy.epsilon is not None else EPSILON_UNSET,
        "delta": privacy.delta,
        "noise_multiplier": privacy.noise_multiplier if privacy.noise_multiplier is not None else NOISE_MULTIPLIER_UNSET,
        "population_size": config.population.size,
        "private_data_uri": config.private.path,
        "run_root": config.run_root,
        "seed": config.seed,
        "degrees": config.population.degree_schedule(),
    }


def apply_parameters(config: Config, values: dict[str, Any]) -> Config:
    """``config`` with the run parameters in ``values`` set; bad values fail in one line, as in a config file."""
    unknown = sorted(set(values) - set(PARAMETER_NAMES))
    if unknown:
        raise ValueError(f"unknown run parameters {unknown}")  # a programming error: the pipeline declares them all
    defaults, data = parameter_defaults(config), config_to_dict(config)
    for parameter in RUN_PARAMETERS:
        if parameter.name not in values or values[parameter.name] == defaults[parameter.name]:
            continue  # an unchanged value leaves the config as written (a scalar degree stays a scalar)
        value = values[parameter.name]
        if parameter.name == "epsilon" and value is not None and value <= EPSILON_UNSET:
            value = None
        if parameter.name == "noise_multiplier" and value is not None and value < 0:
            value = None
        set_key(data, parameter.key, value)
    return parse_config(data, source="run parameters")
