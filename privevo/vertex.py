"""Vertex AI Pipelines: ``compile``, ``submit`` and ``schedule`` with ``--target vertex`` (docs/vertex.md).

Vertex runs the portable pipeline spec alone: one YAML document without the kfp-kubernetes platform spec (no
secrets, volumes, node selectors, tolerations or step deadlines), GPUs named by Vertex's accelerator types, and every
step running as the job's one Google service account, which reads the buckets itself (no key file in the spec).
Imports kfp, and google-cloud-aiplatform (the ``vertex`` extra) for submit and schedule, when a command runs.
"""

import argparse
import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from privevo.cli import load_checked_config, new_run_id
from privevo.errors import UserError, extra_error

TARGETS = ("kfp", "vertex")  # --target of compile, submit and schedule: Kubeflow Pipelines, Vertex AI Pipelines

# kubernetes.*.gpu_type as GKE names it (the node label cloud.google.com/gke-accelerator) -> Vertex's accelerator type
VERTEX_ACCELERATORS: dict[str, str] = {
    "nvidia-tesla-t4": "NVIDIA_TESLA_T4",
    "nvidia-tesla-p4": "NVIDIA_TESLA_P4",
    "nvidia-tesla-p100": "NVIDIA_TESLA_P100",
    "nvidia-tesla-v100": "NVIDIA_TESLA_V100",
    "nvidia-l4": "NVIDIA_L4",
    "nvidia-tesla-a100": "NVIDIA_TESLA_A100",
    "nvidia-a100-80gb": "NVIDIA_A100_80GB",
    "nvidia-h100-80gb": "NVIDIA_H100_80GB",
    "nvidia-h100-mega-80gb": "NVIDIA_H100_MEGA_80GB",
    "nvidia-h200-141gb": "NVIDIA_H200_141GB",
}

# the flags of submit and schedule that name a Kubeflow Pipelines installation or an uploaded pipeline
_KFP_ONLY_FLAGS = (("host", "--host"), ("namespace", "--namespace"), ("token_env", "--token-env"),
                   ("pipeline_id", "--pipeline-id"), ("pipeline", "--pipeline"), ("version_id", "--version-id"))
_JOB_ID = re.compile(r"[a-z][-a-z0-9]{0,127}")  # a Vertex pipeline job's id


def accelerator_type(gpu_type: str | None, key: str = "kubernetes.model_step.gpu_type") -> str:
    """Vertex's name of the GPU that ``gpu_type`` (GKE's name, e.g. nvidia-l4) names."""
    if gpu_type not in VERTEX_ACCELERATORS:
        raise UserError(f"{key} {gpu_type!r} has no Vertex AI accelerator: give one of "
                        f"{', '.join(VERTEX_ACCELERATORS)} (Vertex runs it as the type the table in docs/vertex.md says)")
    return VERTEX_ACCELERATORS[gpu_type]


def check_config(config, parameters: Mapping[str, Any], allow_local: bool) -> None:
    """Refuse what a Vertex job cannot do: a local root or path (its steps share no volume), a Kubernetes volume or
    Secret the steps need, a pipeline root outside Cloud Storage, a GPU without a Vertex name. The private bucket's
    Secret, node selectors, tolerations, pull secrets and step deadlines are left out: the job's service account reads
    the buckets and pulls the images, and Vertex picks the machines. ``parameters``: run parameters that replace config
    values (run_root, private_data_uri)."""
    from privevo.cluster import check_cluster_paths

    if allow_local:
        raise UserError("--allow-local: the steps of a Vertex AI job share no volume: use gs:// paths")
    check_cluster_paths(config, parameters, allow_local=False)
    k8s = config.kubernetes
    if k8s.model_pvc:
        raise UserError("kubernetes.model_pvc: Vertex AI mounts no Kubernetes volume: put the model in gs:// (model.path)")
    if k8s.model_token_secret:
        raise UserError("kubernetes.model_token_secret: Vertex AI mounts no Kubernetes Secret: "
                        "serve the model where the job's service account is let in")
    if not (k8s.pipeline_root or "").startswith("gs://"):
        raise UserError(f"kubernetes.pipeline_root {k8s.pipeline_root!r}: Vertex AI keeps the pipeline's artifacts in "
                        "Cloud Storage: set it to a gs:// folder")
    for key, resources in (("cpu_step", k8s.cpu_step), ("model_step", k8s.model_step)):
        if resources.gpu_limit:
            accelerator_type(resources.gpu_type, f"kubernetes.{key}.gpu_type")


def compile_pipeline(config, path: str) -> dict:
    """Write the config's pipeline for Vertex (checked by :func:`check_config`) to ``path``, whole or not at all,
    and return its spec."""
    import yaml
    from kfp import compiler

    from privevo.dag import build_pipeline

    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=folder, delete=False) as file:
        staged = file.name
    try:
        compiler.Compiler().compile(build_pipeline(config, target="vertex"), package_path=staged)
        with open(staged) as file:
            documents = list(yaml.safe_load_all(file))
        if len(documents) != 1:  # a Kubernetes-only part that build_pipeline did not leave out for Vertex
            raise RuntimeError(f"the Vertex pipeline has {len(documents)} YAML documents, Vertex AI loads only one")
        os.replace(staged, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(staged)
    return documents[0]


def vertex_cron(cron: str) -> str:
    """A five-field Vertex schedule for a six-field KFP ``--cron`` (seconds first) that fires at second 0."""
    fields = cron.split()
    if len(fields) != 6:
        raise UserError(f"--cron {cron!r}: give six fields, seconds first, e.g. '0 0 3 * * *'")
    if fields[0] != "0":
        raise UserError(f"--cron {cron!r}: Vertex AI schedules fire on whole minutes: the seconds field must be 0")
    return " ".join(fields[1:])


class _Job(NamedTuple):
    """What a Vertex job is made of, checked before anything is sent."""

    aiplatform: Any  # the google.cloud.aiplatform module
    config: Any
    package: str  # the compiled pipeline
    spec: dict
    params: dict[str, Any]  # the run parameters --param sets
    service_account: str

    def pipeline_job(self, display_name: str, job_id: str | None, args: argparse.Namespace):
        """The aiplatform.PipelineJob of the package: the config's pipeline root and these run parameters."""
        return self.aiplatform.PipelineJob(
            display_name=display_name, template_path=self.package, job_id=job_id,
            pipeline_root=self.config.kubernetes.pipeline_root, parameter_values=self.params,
            project=args.project, location=args.location)


def submit(args: argparse.Namespace) -> None:
    """Start one run of --config on Vertex AI Pipelines as the job's service account; the run folder is --run-id
    or NAME-UTCTIME, and the Vertex job is named after it."""
    with _job(args) as job:
        if args.run_id and "run_id" in job.params:
            raise UserError("give the run id once: --run-id or --param run_id=...")
        run_id = job.params.setdefault("run_id", args.run_id or new_run_id(job.config.name))
        pipeline_job = job.pipeline_job(run_id, _job_id(run_id), args)
        pipeline_job.submit(service_account=job.service_account)
    run_root = job.params.get("run_root", job.config.run_root)
    print(f"submitted run {run_id}: vertex job {pipeline_job.resource_name}, run folder {run_root}/{run_id}")


def schedule(args: argparse.Namespace) -> None:
    """Create a Vertex AI schedule of --config (--cron's six fields, at second 0); run_id stays empty, so every
    scheduled run writes a folder of its own, named by its job's id. One run at a time, no catch-up."""
    from privevo.kfp_client import _check_dataset_budget

    cron = vertex_cron(args.cron)
    with _job(args) as job:
        _check_dataset_budget(job.spec)
        if job.params.get("run_id") or job.params.get("resume"):
            raise UserError("a schedule starts a new run folder each time (the job's own id): drop --param run_id/resume")
        name = args.name or f"{job.spec['pipelineInfo']['name']}-recurring"
        created = job.pipeline_job(name, None, args).create_schedule(
            cron=cron, display_name=name, service_account=job.service_account, max_concurrent_run_count=1)
    print(f"scheduled {name} with cron {cron!r} (Vertex AI): schedule {created.resource_name}")


@contextlib.contextmanager
def _job(args: argparse.Namespace) -> Iterator[_Job]:
    """The Vertex job of --config, compiled into a temporary folder and checked with its run parameters and service
    account before connecting; a failed API call ends in one line."""
    from privevo.cluster import check_cluster_paths
    from privevo.kfp_client import _check_with_parameters, _run_parameters

    given = [flag for attribute, flag in _KFP_ONLY_FLAGS if getattr(args, attribute, None)]
    if given:
        raise UserError(f"{given[0]} is for --target kfp: Vertex AI runs --config compiled here")
    if not args.config:
        raise UserError("--target vertex runs --config CFG compiled here")
    if not args.project:
        raise UserError("--target vertex needs --project PROJECT (the Google Cloud project that runs the job)")
    try:
        from google.api_core import exceptions
        from google.auth import exceptions as auth_exceptions
        from google.cloud import aiplatform
    except ModuleNotFoundError:
        raise extra_error("vertex") from None
    config = load_checked_config(args)
    account = args.service_account or config.kubernetes.public_service_account or ""
    if "@" not in account:
        raise UserError("a Vertex AI job runs as one Google service account: give --service-account "
                        "NAME@PROJECT.iam.gserviceaccount.com" + (f" ({account!r} is not one)" if account else ""))
    check_config(config, {}, args.allow_local)
    with tempfile.TemporaryDirectory() as folder:
        package = os.path.join(folder, "pipeline.yaml")
        spec = compile_pipeline(config, package)
        params = _run_parameters(spec, args.params)
        check_cluster_paths(config, params, allow_local=False)
        _check_with_parameters(config, params)
        try:
            yield _Job(aiplatform, config, package, spec, params, account)
        except auth_exceptions.DefaultCredentialsError:
            raise UserError("no Google credentials: run `gcloud auth application-default login` "
                            "(or set GOOGLE_APPLICATION_CREDENTIALS)") from None
        except exceptions.GoogleAPIError as error:
            raise UserError(f"Vertex AI ({args.project}, {args.location}) answered: "
                            f"{str(error).splitlines()[0][:300]}") from None


def _job_id(run_id: str) -> str:
    """The Vertex job id of a run folder name: lower case, dashes for the other characters."""
    job_id = re.sub(r"[^-a-z0-9]+", "-", run_id.lower()).strip("-")
    if not _JOB_ID.fullmatch(job_id):
        raise UserError(f"run id {run_id!r}: a Vertex job id starts with a letter and has at most 128 letters, "
                        "digits and dashes")
    return job_id
