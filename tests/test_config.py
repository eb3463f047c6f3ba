"""Config schema: validation and --set overrides with one-line errors."""

import pytest
import yaml

from privevo.config import load_config
from privevo.errors import UserError
from privevo.privacy import check_planned_budget, noise_multiplier_for
from tests.conftest import ROOT

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


# ------------------------------------------------------------------ the model section: one class per backend kind


def _model_file(tmp_path, **model):
    """A config file of BASE with this model section."""
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({**BASE, "model": model}, sort_keys=False))
    return path


def test_every_registered_kind_has_its_own_section():
    from privevo.config import MODEL_KINDS, MODEL_SECTIONS, model_options

    assert set(MODEL_SECTIONS) == {kind for kinds in MODEL_KINDS.values() for kind in kinds}
    assert {"guidance_scale", "prompts"} <= model_options("stable_diffusion")
    assert "guidance_scale" not in model_options("ddpm_unet") and "scheduler" in model_options("ddpm_unet")
    assert model_options("null") == {"kind", "batch_size", "allow_null"}
    assert "path" not in model_options("remote") and "remote" in model_options("openai_compatible")


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_loads_into_its_kinds_section(name):
    from privevo.config import MODEL_SECTIONS, config_to_dict, parse_config

    config = load_config(ROOT / "configs" / name)
    assert type(config.model) is MODEL_SECTIONS[config.model.kind]
    assert parse_config(config_to_dict(config)) == config  # run.json reads back as the same config


@pytest.mark.parametrize("where", ["file", "override"])
def test_an_option_of_another_kind_is_refused_in_one_line(tmp_path, config_file, where):
    if where == "file":
        path, overrides = _model_file(tmp_path, kind="ddpm_unet", path="m", guidance_scale=5.0), []
    else:
        path, overrides = config_file, ["model.guidance_scale=5"]
    with pytest.raises(UserError) as info:
        load_config(path, overrides)
    assert str(info.value) == f"{path}: model.guidance_scale is not an option of kind ddpm_unet"
    with pytest.raises(UserError) as info:  # a key of no kind stays an unknown key, hinted from the kind's own keys
        load_config(config_file, ["model.num_inference_step=5"])
    assert str(info.value) == (f"{config_file}: unknown key 'model.num_inference_step' "
                               "(did you mean 'model.num_inference_steps'?)")


def test_switching_kind_by_override_drops_the_files_options_of_the_old_kind(tmp_path, caplog):
    path = _model_file(tmp_path, kind="ddpm_unet", path="m", num_inference_steps=3, scheduler="unipc", batch_size=8,
                       autocast="off")
    with caplog.at_level("WARNING", logger="privevo.config"):
        config = load_config(path, ["model.kind=null", "model.allow_null=true"])
    assert config.model.model_dump() == {"kind": "null", "batch_size": 8, "allow_null": True}  # batch_size is shared
    assert [r.getMessage() for r in caplog.records] == [
        f"model.kind=null: ignoring model.path, model.num_inference_steps, model.scheduler, model.autocast from {path} "
        "(not options of kind null)"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="privevo.config"):
        remote = load_config(path, ["model.kind=remote", "model.remote.url=http://127.0.0.1:9", "model.path=null"])
    assert remote.model.api_server is not None and remote.model.weights_path is None
    assert [r.getMessage() for r in caplog.records] == [  # model.path=null unsets the key the override names
        f"model.kind=remote: ignoring model.num_inference_steps, model.scheduler, model.autocast from {path} "
        "(not options of kind remote)"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="privevo.config"):
        assert load_config(path, ["model.kind=ddpm_unet"]).model.scheduler == "unipc"  # the same kind keeps all
    assert not caplog.records


@pytest.mark.parametrize("overrides, message", [
    (["model.kind=null", "model.allow_null=true", "model.scheduler=ddim"], "model.scheduler is not an option of kind null"),
    (["model.kind=remote", "model.remote={url: 'http://127.0.0.1:9'}", "model.path=other"],
     "model.path is not an option of kind remote"),
    (["model.kind=null", "model.allow_null=true", "model.schedular=ddim"], "unknown key 'model.schedular'"),
    (["model.kind=gan"], "model.kind: unknown foundation model kind 'gan': use one of ddpm_unet, null, remote, "
                         "stable_diffusion"),
])
def test_an_overrides_option_of_another_kind_is_still_refused(tmp_path, overrides, message):
    path = _model_file(tmp_path, kind="ddpm_unet", path="m", scheduler="unipc")
    with pytest.raises(UserError) as info:
        load_config(path, overrides)
    assert str(info.value) == f"{path}: {message}"


def test_a_key_of_no_kind_in_the_file_stays_an_error_when_the_kind_changes(tmp_path):
    path = _model_file(tmp_path, kind="ddpm_unet", path="m", bogus=1)
    with pytest.raises(UserError) as info:
        load_config(path, ["model.kind=null", "model.allow_null=true"])
    assert str(info.value) == f"{path}: unknown key 'model.bogus'"


def test_run_parameters_and_the_python_api_switch_kinds_as_the_command_line_does(tmp_path):
    from privevo import api
    from privevo.parameters import apply_parameters, parameter_defaults

    config = load_config(_model_file(tmp_path, kind="ddpm_unet", path="m", num_inference_steps=3))
    switched = api.load(config, {"model.kind": "null", "model.allow_null": True})
    assert switched.model.kind == "null" and switched.model.batch_size == config.model.batch_size
    with pytest.raises(UserError, match=r"model\.num_inference_steps is not an option of kind null"):
        api.load(config, {"model.kind": "null", "model.allow_null": True, "model.num_inference_steps": 2})
    values = {**parameter_defaults(config), "population_size": 12}
    assert apply_parameters(config, values).model == config.model


def test_a_run_json_of_the_one_flat_model_section_still_opens():
    from privevo.config import config_to_dict, parse_config

    data = config_to_dict(load_config(ROOT / "configs" / "tiny.yaml"))
    flat = {**data, "model": {**data["model"], "prompts": None, "guidance_scale": 7.5, "disable_safety_checker": True,
                              "remote": None}}  # as earlier versions wrote run.json
    assert parse_config(flat, stored=True) == parse_config(data)
    with pytest.raises(UserError, match=r"model\.prompts is not an option of kind ddpm_unet"):
        parse_config(flat)


def test_the_command_line_says_the_ignored_keys_and_refuses_a_foreign_one(run_cli):
    result = run_cli("run", "--config", "configs/tiny.yaml", "--set", "model.kind=null", "--set",
                     "model.allow_null=true", "--set", "model.guidance_scale=2", timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "error: configs/tiny.yaml: model.guidance_scale is not an option of kind null", result.stderr
    assert lines[0].endswith("model.kind=null: ignoring model.path, model.num_inference_steps from configs/tiny.yaml "
                             "(not options of kind null)") and len(lines) == 2, result.stderr
