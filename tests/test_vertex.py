"""Vertex AI Pipelines: `compile`, `submit` and `schedule` with `--target vertex`, offline.

The compiled YAML is read by the loader the Vertex SDK uses and parsed strictly into kfp's PipelineSpec; the
`PipelineJob` and schedule requests are caught where google-cloud-aiplatform would send them (its
PipelineServiceClient and ScheduleServiceClient), so the tests check what Vertex AI would receive.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from privevo import cli, vertex
from privevo.errors import UserError

REPO = Path(__file__).resolve().parents[1]
GKE = str(REPO / "configs" / "cluster-gke.yaml")
# the model steps on one L4 GPU, and the private steps given a key file from a Secret (the opt-in that Vertex leaves out)
GPU_AND_KEY = ["--set", "kubernetes.model_step.gpu_type=nvidia-l4", "--set", "kubernetes.model_step.gpu_limit=1",
               "--set", "kubernetes.private_secret=privevo-private-gcs"]
ACCOUNT = "privevo-vertex@my-project.iam.gserviceaccount.com"
PIPELINE_ROOT = "gs://YOUR-RELEASED-BUCKET/kfp"  # cluster-gke's kubernetes.pipeline_root
HAS_AIPLATFORM = importlib.util.find_spec("google.cloud.aiplatform") is not None
needs_aiplatform = pytest.mark.skipif(not HAS_AIPLATFORM, reason="google-cloud-aiplatform (the vertex extra) is not "
                                                                  "installed: pip install 'privevo[vertex]'")


def _containers(spec: dict) -> dict[str, dict]:
    """The container of each executor (the model's importer has none)."""
    return {name: e["container"] for name, e in spec["deploymentSpec"]["executors"].items() if "container" in e}


@pytest.fixture(scope="module")
def vertex_yaml(tmp_path_factory) -> Path:
    """cluster-gke compiled for Vertex with :data:`GPU_AND_KEY`."""
    path = tmp_path_factory.mktemp("vertex") / "cluster-gke.yaml"
    assert cli.main(["compile", "--target", "vertex", "--config", GKE, *GPU_AND_KEY, "--output", str(path)]) == 0
    return path


def test_vertex_yaml_is_one_portable_document(vertex_yaml: Path, tmp_path: Path) -> None:
    """One YAML document that kfp's pipeline spec parses strictly, GPUs by Vertex's names, no credential env; the
    Kubeflow target of the same config has the platform spec and the key file's env that Vertex cannot take."""
    from google.protobuf import json_format
    from kfp import compiler
    from kfp.pipeline_spec import pipeline_spec_pb2

    from privevo.config import load_config
    from privevo.dag import build_pipeline

    text = vertex_yaml.read_text()
    spec = yaml.safe_load(text)  # refuses a stream of two documents
    assert len(list(yaml.safe_load_all(text))) == 1
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())  # strict: an unknown field fails
    assert spec["defaultPipelineRoot"] == PIPELINE_ROOT
    resources = {name: container.get("resources", {}) for name, container in _containers(spec).items()}
    accelerators = {name: r["accelerator"]["resourceType"] for name, r in resources.items() if "accelerator" in r}
    assert accelerators and set(accelerators.values()) == {"NVIDIA_L4"}
    assert "exec-dp-vote" not in accelerators and any(name.startswith("exec-initial-shard") for name in accelerators)
    env = {e["name"] for container in _containers(spec).values() for e in container.get("env", [])}
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in env
    assert "/var/secrets" not in text and "platforms" not in text

    kfp_yaml = tmp_path / "kfp.yaml"
    config = load_config(GKE, [arg for arg in GPU_AND_KEY if arg != "--set"])
    compiler.Compiler().compile(build_pipeline(config), package_path=str(kfp_yaml))
    kfp_text = kfp_yaml.read_text()
    assert len(list(yaml.safe_load_all(kfp_text))) == 2 and "GOOGLE_APPLICATION_CREDENTIALS" in kfp_text
    if HAS_AIPLATFORM:
        from google.cloud.aiplatform.utils import yaml_utils

        with pytest.raises(yaml.YAMLError):
            yaml_utils.load_yaml(str(kfp_yaml))


@needs_aiplatform
def test_the_vertex_sdk_loads_the_yaml(vertex_yaml: Path) -> None:
    """The Vertex SDK's own loader and runtime-config builder take the compiled file."""
    from google.cloud.aiplatform.utils import pipeline_utils, yaml_utils

    spec = yaml_utils.load_yaml(str(vertex_yaml))
    builder = pipeline_utils.PipelineRuntimeConfigBuilder.from_job_spec_json({"pipelineSpec": spec, "runtimeConfig": {}})
    builder.update_pipeline_root(spec["defaultPipelineRoot"])
    builder.update_runtime_parameters({"epsilon": 2.0, "run_id": "r1"})
    runtime_config = builder.build()
    assert runtime_config["gcsOutputDirectory"] == PIPELINE_ROOT
    assert runtime_config["parameterValues"]["epsilon"] == 2.0 and runtime_config["parameterValues"]["run_id"] == "r1"


@pytest.mark.parametrize(("overrides", "message"), [
    (["--set", "kubernetes.model_step.gpu_type=nvidia.com/gpu", "--set", "kubernetes.model_step.gpu_limit=1"],
     "kubernetes.model_step.gpu_type 'nvidia.com/gpu' has no Vertex AI accelerator"),
    (["--set", "kubernetes.pipeline_root=/tmp/kfp"], "kubernetes.pipeline_root '/tmp/kfp'"),
    (["--allow-local"], "--allow-local: the steps of a Vertex AI job share no volume"),
])
def test_compile_refuses_what_vertex_cannot_run(tmp_path: Path, capsys, overrides: list[str], message: str) -> None:
    output = tmp_path / "out.yaml"
    assert cli.main(["compile", "--target", "vertex", "--config", GKE, *overrides, "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_accelerator_names() -> None:
    assert vertex.accelerator_type("nvidia-tesla-a100") == "NVIDIA_TESLA_A100"
    assert vertex.accelerator_type("nvidia-tesla-t4") == "NVIDIA_TESLA_T4"
    with pytest.raises(UserError, match="'nvidia-rtx-4090' has no Vertex AI accelerator"):
        vertex.accelerator_type("nvidia-rtx-4090")


def test_cron_six_fields_to_five() -> None:
    assert vertex.vertex_cron("0 0 3 * * *") == "0 3 * * *"
    assert vertex.vertex_cron("0 */15 * * * 1-5") == "*/15 * * * 1-5"
    with pytest.raises(UserError, match="the seconds field must be 0"):
        vertex.vertex_cron("30 0 3 * * *")
    with pytest.raises(UserError, match="give six fields"):
        vertex.vertex_cron("0 3 * * *")


@pytest.fixture
def vertex_api(monkeypatch) -> dict[str, Any]:
    """Stand-ins for the calls aiplatform makes to Vertex AI and Cloud Storage; records the requests."""
    pytest.importorskip("google.cloud.aiplatform", reason="google-cloud-aiplatform (the vertex extra) is not installed")
    import google.auth
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.aiplatform.utils import gcs_utils
    from google.cloud.aiplatform_v1.services.pipeline_service.client import PipelineServiceClient
    from google.cloud.aiplatform_v1.services.schedule_service.client import ScheduleServiceClient

    sent: dict[str, Any] = {}

    def create_pipeline_job(self, parent, pipeline_job, pipeline_job_id, timeout=None):
        sent.update(parent=parent, pipeline_job=pipeline_job, pipeline_job_id=pipeline_job_id)
        pipeline_job.name = f"{parent}/pipelineJobs/{pipeline_job_id}"
        return pipeline_job

    def create_schedule(self, parent, schedule, timeout=None):
        sent.update(parent=parent, schedule=schedule)
        schedule.name = f"{parent}/schedules/1234"
        return schedule

    monkeypatch.setattr(google.auth, "default", lambda *args, **kwargs: (AnonymousCredentials(), "my-project"))
    monkeypatch.setattr(gcs_utils, "create_gcs_bucket_for_pipeline_artifacts_if_it_does_not_exist",
                        lambda **kwargs: sent.setdefault("bucket_checked", kwargs["output_artifacts_gcs_dir"]))
    monkeypatch.setattr(PipelineServiceClient, "create_pipeline_job", create_pipeline_job)
    monkeypatch.setattr(ScheduleServiceClient, "create_schedule", create_schedule)
    return sent


def test_submit_sends_the_account_root_and_parameters(vertex_api: dict[str, Any], capsys) -> None:
    assert cli.main(["submit", "--target", "vertex", "--config", GKE, *GPU_AND_KEY, "--project", "my-project",
                     "--location", "europe-west4", "--service-account", ACCOUNT, "--run-id", "gke-run-1",
                     "--param", "epsilon=2", "--param", "degrees=[0.6,0.5,0.5,0.4,0.3]"]) == 0
    job = vertex_api["pipeline_job"]
    assert vertex_api["parent"] == "projects/my-project/locations/europe-west4"
    assert vertex_api["pipeline_job_id"] == "gke-run-1" and job.display_name == "gke-run-1"
    assert job.service_account == ACCOUNT
    assert job.runtime_config.gcs_output_directory == PIPELINE_ROOT == vertex_api["bucket_checked"]
    values = dict(job.runtime_config.parameter_values)
    assert values["run_id"] == "gke-run-1" and values["epsilon"] == 2.0
    assert list(values["degrees"]) == [0.6, 0.5, 0.5, 0.4, 0.3]
    spec = type(job).to_dict(job)["pipeline_spec"]  # the spec as Vertex receives it
    containers = _containers(spec)
    assert not any(e["name"] == "GOOGLE_APPLICATION_CREDENTIALS" for c in containers.values() for e in c.get("env", []))
    assert "NVIDIA_L4" in {c.get("resources", {}).get("accelerator", {}).get("resourceType") for c in containers.values()}
    out = capsys.readouterr().out
    assert "submitted run gke-run-1: vertex job projects/my-project/locations/europe-west4/pipelineJobs/gke-run-1" in out


def test_schedule_sends_five_field_cron_and_no_run_id(vertex_api: dict[str, Any], capsys) -> None:
    assert cli.main(["schedule", "--target", "vertex", "--config", GKE, "--project", "my-project",
                     "--service-account", ACCOUNT, "--cron", "0 0 3 * * *"]) == 0
    schedule = vertex_api["schedule"]
    assert vertex_api["parent"] == "projects/my-project/locations/us-central1"
    assert schedule.cron == "0 3 * * *" and schedule.max_concurrent_run_count == 1
    assert schedule.display_name == "private-evolution-cluster-gke-recurring"
    job = schedule.create_pipeline_job_request.pipeline_job
    assert job.service_account == ACCOUNT and job.runtime_config.gcs_output_directory == PIPELINE_ROOT
    assert not dict(job.runtime_config.parameter_values).get("run_id")
    assert "cron '0 3 * * *'" in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "message"), [
    ([], "a Vertex AI job runs as one Google service account: give --service-account NAME@PROJECT.iam.gserviceaccount.com "
         "('privevo-public' is not one)"),
    (["--service-account", ACCOUNT, "--host", "http://localhost:8080"], "--host is for --target kfp"),
    (["--service-account", ACCOUNT, "--cron", "30 0 3 * * *"], "--cron '30 0 3 * * *': Vertex AI schedules fire on whole"),
])
def test_schedule_refuses_in_one_line(capsys, extra: list[str], message: str) -> None:
    argv = ["schedule", "--target", "vertex", "--config", GKE, "--project", "my-project", *extra]
    if "--cron" not in extra:
        argv += ["--cron", "0 0 3 * * *"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_submit_without_the_vertex_extra(monkeypatch, capsys) -> None:
    import google.cloud

    monkeypatch.delattr(google.cloud, "aiplatform", raising=False)
    monkeypatch.setitem(sys.modules, "google.cloud.aiplatform", None)  # import fails as if it were not installed
    assert cli.main(["submit", "--target", "vertex", "--config", GKE, "--project", "p", "--service-account", ACCOUNT]) == 2
    assert capsys.readouterr().err == "error: this command needs the vertex extra: pip install 'privevo[vertex]'\n"
