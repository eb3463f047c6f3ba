"""Config schema: validation and --set overrides with one-line errors."""

import pytest
import yaml

from privevo.config import load_config
from privevo.errors import UserError
from privevo.privacy import check_planned_budget, noise_multiplier_for

BASE = {
    "name": "t",
    "image_size": 28,
    "channels": 1,
    "private": {"source": "npz", "path": "x.npz"},
    "model": {"path": "m"},
    "population": {"size": 10, "generations": 2, "degrees": 0.5},
    "privacy": {"epsilon": 4.0, "dataset_budget": 100.0},
}


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE))
    return path


def test_loads_and_applies_overrides(config_file):
    config = load_config(config_file, ["population.generations=3", "population.degrees=[0.6,0.5,0.4]", "privacy.k=2"])
    assert config.population.generations == 3
    assert config.population.degree_schedule() == [0.6, 0.5, 0.4]
    assert config.privacy.k == 2
    assert load_config(config_file).population.degree_schedule() == [0.5, 0.5]
    # YAML reads an unquoted off as false: --set model.autocast=off means float32, as written
    assert load_config(config_file, ["model.autocast=off"]).model.autocast == "off"
    with pytest.raises(UserError, match=r"model\.autocast"):
        load_config(config_file, ["model.autocast=on"])


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["bogus=1"], "unknown key 'bogus'"),
        (["privacy.bogus=1"], "unknown key 'privacy.bogus'"),
        (["privacy.epsilom=1"], "unknown key 'privacy.epsilom' (did you mean 'privacy.epsilon'?)"),
        (["kubernetes.model_step.memroy=1Gi"],
         "unknown key 'kubernetes.model_step.memroy' (did you mean 'kubernetes.model_step.memory'?)"),
        (["population.degrees=[0.6"], "--set population.degrees: '[0.6' is not valid YAML"),
        (["population.degrees=[0.5]"], "degrees has 1 entries"),
        (["privacy.noise_multiplier=3"], "exactly one"),
        (["privacy.delta=2"], "privacy.delta"),
        (["channels=2"], "channels"),
        (["population.degrees=1.5"], "[0, 1]"),
        (["novalue"], "dotted.key=value"),
    ],
)
def test_bad_configs_are_one_line_errors(config_file, overrides, needle):
    with pytest.raises(UserError) as info:
        load_config(config_file, overrides)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_a_misspelt_section_is_named_not_reported_missing(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({("populaton" if k == "population" else k): v for k, v in BASE.items()}))
    with pytest.raises(UserError) as info:
        load_config(typo)
    assert str(info.value) == f"{typo}: unknown key 'populaton' (did you mean 'population'?)"


def test_noise_is_calibrated_from_target_epsilon(config_file):
    sigma = noise_multiplier_for(load_config(config_file))
    assert 1.0 < sigma < 3.0  # epsilon 4 over 2 votes
    assert noise_multiplier_for(load_config(config_file, ["privacy.epsilon=null", "privacy.noise_multiplier=7"])) == 7


def test_budget_that_cannot_be_met_is_refused(config_file):
    config = load_config(config_file, ["privacy.epsilon=null", "privacy.noise_multiplier=1", "privacy.epsilon_budget=1"])
    with pytest.raises(UserError, match="over the budget"):
        check_planned_budget(config)
    check_planned_budget(load_config(config_file, ["privacy.epsilon_budget=4.5"]))


def test_overriding_one_resource_key_keeps_the_model_steps_other_defaults(config_file):
    config = load_config(config_file, ["kubernetes.model_step.gpu_limit=1"])
    assert config.kubernetes.model_step.gpu_limit == 1
    assert config.kubernetes.model_step.memory == "16Gi"  # not reset to the CPU step's 8Gi
    assert config.kubernetes.cpu_step.memory == "8Gi"
