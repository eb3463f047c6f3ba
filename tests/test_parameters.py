"""Run parameters of the compiled pipeline, and resolve_config's run identity rules."""

import uuid

import pytest
from conftest import ROOT
from google.api_core import exceptions as gexc
from google.cloud.storage import Blob

from privevo import steps, storage
from privevo.config import load_config
from privevo.errors import UserError
from privevo.parameters import PARAMETER_NAMES, apply_parameters, parameter_defaults


@pytest.fixture
def config(tmp_path):
    return load_config(ROOT / "configs" / "tiny.yaml",
                       [f"run_root={tmp_path / 'runs'}", f"private_root={tmp_path / 'private'}"])


def test_defaults_leave_the_config_as_written(config):
    defaults = parameter_defaults(config)
    assert set(defaults) == set(PARAMETER_NAMES)
    assert apply_parameters(config, defaults) == config


def test_parameters_set_their_config_keys(config):
    changed = apply_parameters(config, {"epsilon": 2.0, "delta": 1e-6, "population_size": 16, "seed": 7,
                                        "degrees": [0.5, 0.3], "private_data_uri": "/data/other",
                                        "run_root": "gs://bucket/runs"})
    assert changed.privacy.epsilon == 2.0 and changed.privacy.delta == 1e-6
    assert changed.population.size == 16 and changed.population.degree_schedule() == [0.5, 0.3]
    assert changed.seed == 7 and changed.private.path == "/data/other"
    assert (changed.run_root, changed.private_root) == ("gs://bucket/runs", config.private_root)


def test_noise_multiplier_replaces_the_epsilon_target(config):
    changed = apply_parameters(config, {"epsilon": 0.0, "noise_multiplier": 3.0})
    assert changed.privacy.epsilon is None and changed.privacy.noise_multiplier == 3.0


@pytest.mark.parametrize(("values", "message"), [
    ({"noise_multiplier": 3.0}, "set exactly one of privacy.epsilon and privacy.noise_multiplier"),
    ({"population_size": 0}, "population.size"),
    ({"degrees": [0.5]}, "population.degrees has 1 entries but generations is 2"),
    ({"delta": 2.0}, "privacy.delta"),
])
def test_bad_parameters_fail_in_one_line(config, values, message):
    with pytest.raises(UserError) as error:
        apply_parameters(config, values)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith("run parameters: ")


def test_resolve_refuses_an_impossible_target_before_anything_is_written(config):
    with pytest.raises(UserError, match="epsilon"):
        steps.resolve_run(config.model_copy(update={"privacy": config.privacy.model_copy(
            update={"epsilon_budget": 1.0})}), {}, "r1", False, "kfp-1")
    assert not storage.exists(f"{config.run_root}/r1/run.json")


def test_a_run_folder_belongs_to_one_kfp_run_unless_resumed(config):
    run = steps.resolve_run(config, {"population_size": 16}, "", False, "kfp-1")
    assert run.run_id == "kfp-1" and run.config.population.size == 16  # empty run_id: the KFP run's own id
    assert steps.resolve_run(config, {"population_size": 16}, "", False, "kfp-1").run_id == "kfp-1"  # a retried step
    with pytest.raises(UserError, match=r"run kfp-1 already exists .*resume"):  # a clone with the same run id
        steps.resolve_run(config, {"population_size": 16}, "kfp-1", False, "kfp-2")
    assert steps.resolve_run(config, {"population_size": 16}, "kfp-1", True, "kfp-2").run_id == "kfp-1"
    with pytest.raises(UserError, match="different config"):  # a resume keeps the run's config
        steps.resolve_run(config, {"population_size": 20}, "kfp-1", True, "kfp-3")


@pytest.mark.parametrize("run_id", ["", "r1"])
def test_resolve_refuses_a_kfp_run_id_the_backend_left_unsubstituted(config, run_id):
    placeholder = "{{$.pipeline_job_uuid}}"  # what a KFP backend before 2.5 hands the first step
    with pytest.raises(UserError) as error:
        steps.resolve_run(config, {}, run_id, False, placeholder)
    message = str(error.value)
    assert "\n" not in message and placeholder in message and "needs KFP backend 2.14 or newer" in message, message
    assert not storage.list_files(config.run_root), "no run is started"


@pytest.mark.parametrize(("account", "named"), [
    ("privevo-public@project.iam.gserviceaccount.com", "privevo-public@project.iam.gserviceaccount.com"),
    (None, "that runs this step"),  # credentials that name no service account
])
def test_a_refused_write_under_a_gs_run_root_names_the_bucket_and_the_account(config, gcs_server, monkeypatch,
                                                                               account, named):
    bucket = gcs_server.make_bucket(f"released-{uuid.uuid4().hex[:8]}")

    def forbidden(*args: object, **kwargs: object) -> None:
        raise gexc.Forbidden("caller does not have storage.objects.create access")

    monkeypatch.setattr(Blob, "upload_from_string", forbidden)
    if account:  # as a key's credentials, or Workload Identity's once the metadata server has answered
        monkeypatch.setattr(storage._client()._credentials, "service_account_email", account, raising=False)
    with pytest.raises(UserError) as error:
        steps.resolve_run(config, {"run_root": f"{bucket}/runs"}, "", False, "kfp-1")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"no permission to write {bucket}/runs/"), message
    assert f"grant the service account {named} roles/storage.objectViewer" in message
    assert f"on {bucket}; a run started from the KFP UI runs as the service account picked in its run form" in message


def test_resolve_config_takes_every_run_parameter_with_its_type():
    import inspect

    from privevo.components.resolve_config import resolve_config
    from privevo.parameters import RUN_PARAMETERS

    arguments = inspect.signature(resolve_config).parameters
    declared = {name: arguments[name].annotation for name in arguments
                if name not in {"config_json", "run_id", "resume", "force_new_noise", "kfp_run_id", "resolved"}}
    assert declared == {parameter.name: parameter.type for parameter in RUN_PARAMETERS}
