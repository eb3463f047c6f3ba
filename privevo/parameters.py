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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from privevo.config import Config, config_to_dict, get_key, parse_config, with_overrides

#: ``epsilon`` at or below this means "not set" (KFP parameters cannot be None): sigma is then ``noise_multiplier``.
EPSILON_UNSET = 0.0
#: ``noise_multiplier`` below zero means "not set": sigma is then calibrated from ``epsilon``.
NOISE_MULTIPLIER_UNSET = -1.0


@dataclass(frozen=True)
class RunParameter:
    """One pipeline parameter: the config key it sets, its KFP type, and how "not set" is written (KFP parameters
    cannot be None)."""

    name: str
    key: str  # dotted config key
    type: type  # the pipeline parameter's type (and resolve_config's argument's)
    description: str
    unset: Any = None  # the default written for a config value of None
    is_unset: Callable[[Any], bool] | None = None  # a value that means None
    default_of: Callable[[Config], Any] | None = None  # the default, where it is not the key's value

    def default(self, config: Config, data: dict[str, Any]) -> Any:
        """This parameter's default: the config's value (``data`` is the config as a dict), or :attr:`unset`."""
        value = self.default_of(config) if self.default_of else get_key(data, self.key)
        return self.unset if value is None else value

    def config_value(self, value: Any) -> Any:
        """What a run's ``value`` sets the config key to (None for a value that means "not set")."""
        return None if value is not None and self.is_unset is not None and self.is_unset(value) else value


RUN_PARAMETERS: tuple[RunParameter, ...] = (
    RunParameter("epsilon", "privacy.epsilon", float,
                 "target epsilon, which calibrates the noise; 0 = use noise_multiplier",
                 unset=EPSILON_UNSET, is_unset=lambda value: value <= EPSILON_UNSET),
    RunParameter("delta", "privacy.delta", float, "target delta, at most the compiled privacy.max_delta"),
    RunParameter("noise_multiplier", "privacy.noise_multiplier", float,
                 "explicit noise multiplier (0 = non-private, refused unless the compiled config has "
                 "privacy.allow_non_private); -1 = calibrate from epsilon",
                 unset=NOISE_MULTIPLIER_UNSET, is_unset=lambda value: value < 0),
    RunParameter("population_size", "population.size", int, "synthetic samples per generation"),
    RunParameter("private_data_uri", "private.path", str, "where the private images are (a folder, npz or gs:// prefix)"),
    RunParameter("run_root", "run_root", str, "where runs are written (local folder or gs:// prefix)"),
    RunParameter("seed", "seed", int, "seed of the non-DP randomness (DP noise never uses it)"),
    RunParameter("degrees", "population.degrees", list, "variation degree per generation (a list of T values)",
                 default_of=lambda config: config.population.degree_schedule()),
)

PARAMETER_NAMES: tuple[str, ...] = tuple(parameter.name for parameter in RUN_PARAMETERS)


def parameter_defaults(config: Config) -> dict[str, Any]:
    """Each run parameter's default: the config's value, with the sentinels above for unset values."""
    data = config_to_dict(config)
    return {parameter.name: parameter.default(config, data) for parameter in RUN_PARAMETERS}


def apply_parameters(config: Config, values: dict[str, Any]) -> Config:
    """``config`` with the run parameters in ``values`` set; bad values fail in one line, as in a config file."""
    unknown = sorted(set(values) - set(PARAMETER_NAMES))
    if unknown:
        raise ValueError(f"unknown run parameters {unknown}")  # a programming error: the pipeline declares them all
    defaults = parameter_defaults(config)
    changed = [(parameter.key, parameter.config_value(values[parameter.name])) for parameter in RUN_PARAMETERS
               # an unchanged value leaves the config as written (a scalar degree stays a scalar)
               if parameter.name in values and values[parameter.name] != defaults[parameter.name]]
    return parse_config(with_overrides(config_to_dict(config), changed, "the compiled config"),
                        source="run parameters")
