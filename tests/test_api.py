"""The Python API: privevo.run in one process, open_run, RunResult, and how configs and models are found."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import privevo
from privevo import api, shipped
from privevo.config import load_config
from privevo.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> api.RunResult:
    """configs/tiny.yaml run through privevo.run, once for this module."""
    base = tmp_path_factory.mktemp("api")
    return privevo.run(str(TINY), run_root=base / "runs", private_root=base / "private", run_id="api")


def test_run_returns_the_run_folder_epsilon_metrics_and_populations(finished):
    run_dir = Path(finished.path)
    assert run_dir.name == "api" and (run_dir / "run.json").is_file() and (run_dir / "report" / "index.html").is_file()
    assert finished.epsilon == finished.run.ledger().epsilon()
    assert 0 < finished.epsilon <= 4.0  # tiny.yaml's target, spent over its 2 votes
    assert len(finished.run.ledger().events) == 2
    assert finished.metrics["generations_complete"] == 2 and finished.metrics["final"]["generation"] == 2
    last = finished.population()
    assert last.generation == 2 and last.samples.shape == (24, 28, 28, 1) and last.samples.dtype == np.uint8
    assert np.all(last.labels == -1)  # tiny is unconditional
    assert finished.population(0).generation == 0
    assert not np.array_equal(finished.population(0).samples, last.samples)


def test_open_run_reads_the_same_run(finished):
    opened = privevo.open_run(finished.path)
    assert opened.path == finished.path and opened.run_id == "api"
    assert opened.epsilon == finished.epsilon and opened.metrics == finished.metrics
    for generation in (0, 1, -1):
        assert np.array_equal(opened.population(generation).samples, finished.population(generation).samples)
    assert privevo.open_run(finished.path + "/").path == finished.path


def test_the_plan_is_every_step_in_dag_order():
    config = load_config(TINY)  # 2 generations, 2 shards
    labels = [planned.label for planned in api.plan_steps(config)]
    assert labels == [
        "embed_private", "generate_initial s0", "generate_initial s1",
        "embed_synthetic g1 s0", "embed_synthetic g1 s1", "dp_vote g1", "generate_variations g1 s0",
        "generate_variations g1 s1",
        "embed_synthetic g2 s0", "embed_synthetic g2 s1", "dp_vote g2", "generate_variations g2 s0",
        "generate_variations g2 s1", "evaluate",
    ]


def test_overrides_as_strings_or_a_dict_and_a_config_object(tmp_path):
    as_list = api.load("tiny", ["population.size=12", "privacy.delta=1.0e-6", 'model.autocast="off"'], run_root=tmp_path)
    as_dict = api.load("tiny", {"population.size": 12, "privacy.delta": 1e-6, "model.autocast": "off"},
                       run_root=tmp_path)
    assert as_list == as_dict
    assert as_dict.population.size == 12 and as_dict.privacy.delta == 1e-6 and as_dict.run_root == str(tmp_path)
    from_object = api.load(load_config(TINY), {"population.size": 12}, private_root=tmp_path / "p")
    assert from_object.population.size == 12 and from_object.private_root == str(tmp_path / "p")


def test_a_shipped_config_name_and_shipped_models_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped_tiny = shipped.config_file("tiny")
    assert shipped_tiny.read_text() == TINY.read_text()
    assert shipped.config_file("tiny.yaml") == shipped.config_file("configs/tiny.yaml") == shipped_tiny
    config = api.load("tiny")
    model = Path(config.model.path)
    assert model.is_absolute() and (model / "unet").is_dir() and model.name == "tiny-unet"
    (tmp_path / "models" / "tiny-unet").mkdir(parents=True)  # a folder of that name here wins over the shipped one
    assert api.load("tiny").model.path == "models/tiny-unet"
    assert shipped.local_model_path("google/ddpm-cifar10-32") == "google/ddpm-cifar10-32"  # a hub name stays as is
    assert shipped.local_model_path("gs://bucket/model") == "gs://bucket/model"


def test_compiled_configs_keep_model_paths_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a pod resolves models/... inside its image, not on this machine
    assert shipped.load("demo").model.path == "models/fashion-mnist-ddpm"


def test_privevo_names_are_the_api():
    import privevo.run_record  # the Run record module loads without shadowing privevo.run

    assert privevo.run is api.run
    assert privevo.open_run is api.open_run and privevo.RunResult is api.RunResult


@pytest.mark.parametrize(("call", "fragments"), [
    (lambda tmp: privevo.run("no-such-config", run_root=tmp), ("config file no-such-config does not exist", "tiny")),
    (lambda tmp: privevo.run(TINY, overrides="population.size=3", run_root=tmp), ("overrides must be a list",)),
    (lambda tmp: privevo.run(TINY, overrides=["population.nope=3"], run_root=tmp), ("population.nope", "unknown key")),
    (lambda tmp: privevo.run(42, run_root=tmp), ("config must be a file path",)),  # type: ignore[arg-type]
    (lambda tmp: privevo.open_run(tmp / "missing-run"), ("no run missing-run",)),
    (lambda tmp: privevo.open_run(""), ("open_run needs a run folder",)),
])
def test_bad_input_is_a_one_line_user_error(tmp_path, call, fragments):
    with pytest.raises(UserError) as excinfo:
        call(tmp_path)
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_an_existing_run_or_generation_is_refused(finished):
    root = os.path.dirname(finished.path)
    with pytest.raises(UserError, match="already exists"):
        privevo.run(TINY, run_root=root, private_root=finished.run.config.private_root, run_id="api")
    for generation in (3, -2):
        with pytest.raises(UserError, match=f"generations 0 to 2: generation {generation} does not exist"):
            finished.population(generation)
