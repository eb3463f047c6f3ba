"""``upload``, ``submit`` and ``schedule``: the command line's side of a Kubeflow Pipelines API (kfp.Client).

Imports kfp (the ``kfp`` extra) when a command runs.
"""

import argparse
import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

from privevo.cli import KFP_HOST_ENV, load_checked_config, new_run_id
from privevo.cluster import check_cluster_paths
from privevo.dag import build_pipeline
from privevo.errors import UserError


@contextlib.contextmanager
def _client(args: argparse.Namespace) -> Iterator[Any]:
    """A kfp.Client for --host (or $KFP_HOST), --namespace and the token in --token-env (never printed), once the
    backend is known to be new enough (unless --skip-version-check); a failed API call ends in one line naming the
    endpoint instead of a traceback."""
    import warnings

    import kfp
    import kfp_server_api
    import urllib3

    host = args.host or os.environ.get(KFP_HOST_ENV)
    if not host:
        raise UserError(f"give --host URL or set {KFP_HOST_ENV} (the KFP API endpoint, e.g. http://localhost:8080)")
    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise UserError(f"--token-env {args.token_env}: that environment variable is empty or not set")
    warnings.filterwarnings("ignore", message="This client only works with", category=FutureWarning)
    # urllib3 warns of each retry (kfp_server_api resets the level of "urllib3" itself): the failure is one line below
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    try:
        client = kfp.Client(host=host, namespace=args.namespace or "kubeflow", existing_token=token)  # kfp's own default
        if not args.skip_version_check:
            _check_backend(client, host)
        yield client
    except kfp_server_api.ApiException as error:
        raise UserError(f"the KFP API at {host} answered {error.status} {error.reason}: {_api_message(error.body)}") from None
    except urllib3.exceptions.HTTPError as error:
        raise UserError(f"cannot reach the KFP API at {host} ({type(error).__name__}): check --host") from None


def _check_backend(client: Any, host: str) -> None:
    """Refuse a KFP backend older than the pipeline needs (:data:`privevo.steps.MIN_KFP_BACKEND`), by the version its
    healthz reports (``tag_name``, e.g. 2.14.0): on an older one the run fails at its first vote, or runs into
    another run's folder."""
    import kfp_server_api

    from privevo.steps import MIN_KFP_BACKEND, MIN_KFP_BACKEND_TEXT

    needs = f"this pipeline needs {MIN_KFP_BACKEND_TEXT} or newer (its generations fan in with dsl.Collected)"
    try:  # the raw answer: kfp_server_api's model of it drops tag_name
        answer = client._healthz_api.healthz_service_get_healthz(_preload_content=False)
    except kfp_server_api.ApiException as error:
        if error.status != 404:
            raise
        raise UserError(f"the KFP backend at {host} has no /apis/v2beta1/healthz, so it is older than KFP 2: {needs}; "
                        "upgrade it") from None
    try:
        tag = str(json.loads(answer.data).get("tag_name") or "")
    except (ValueError, AttributeError):
        tag = ""
    version = re.match(r"v?(\d+)\.(\d+)(?:\.\d+)?(?:[-+.][0-9A-Za-z.+-]*)?$", tag)
    if version is None:
        raise UserError(f"the KFP backend at {host} does not tell its version (healthz tag_name {tag!r}): {needs}; "
                        "if it is, give --skip-version-check")
    if (int(version[1]), int(version[2])) < MIN_KFP_BACKEND:
        raise UserError(f"the KFP backend at {host} is {tag}; {needs}: upgrade KFP, or give --skip-version-check to "
                        "try anyway")


def _api_message(body: Any) -> str:
    """The ``message`` of a KFP API error body (JSON), or the start of the body."""
    import json

    try:
        return str(json.loads(body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(body or "")[:200]


@contextlib.contextmanager
def _compiled(config) -> Iterator[tuple[str, dict]]:
    """The config's pipeline compiled into a temporary package, and its pipeline spec (the package's first document)."""
    import tempfile

    import yaml
    from kfp import compiler

    with tempfile.TemporaryDirectory() as folder:
        package = os.path.join(folder, "pipeline.yaml")
        compiler.Compiler().compile(build_pipeline(config), package_path=package)
        with open(package) as file:
            yield package, next(yaml.safe_load_all(file))


def _find_pipeline(client, name: str, namespace: str | None) -> str | None:
    """The id of the uploaded pipeline called ``name`` (in ``namespace``), None if there is none."""
    import json

    predicate = {"operation": "EQUALS", "key": "display_name", "stringValue": name}
    found = client.list_pipelines(filter=json.dumps({"predicates": [predicate]}), namespace=namespace).pipelines or []
    if len(found) > 1:
        raise UserError(f"{len(found)} pipelines are named {name!r}: choose one with --pipeline-id")
    return found[0].pipeline_id if found else None


def _pipeline_spec(document: dict | None, version_id: str) -> dict:
    """The pipeline spec in a version as the KFP API returns it: bare, or next to its platform spec."""
    if document and "root" not in document:
        document = document.get("pipeline_spec")
    if not document or "root" not in document:
        raise UserError(f"the KFP API returned no pipeline spec for pipeline version {version_id}")
    return document


def _pipeline_root(spec: dict) -> str | None:
    """The compiled pipeline root (kubernetes.pipeline_root), for the run's runtime config: the backend reads it from
    there, not from the spec (only the UI does), and would otherwise put the run's artifacts at its own default."""
    return spec.get("defaultPipelineRoot")


@contextlib.contextmanager
def _template(args: argparse.Namespace) -> Iterator[tuple[Any, dict, dict[str, Any], dict[str, Any]]]:
    """A client and the pipeline a run starts from: its spec, the run parameters --param sets, and the run request's
    arguments that name it, its service account and its pipeline root: --config compiled here, or an uploaded version
    (--pipeline-id or --pipeline NAME, --version-id or the latest). A config compiled here checks the config and the
    parameters before connecting."""
    sources = [flag for flag, value in (("--config", args.config), ("--pipeline-id", args.pipeline_id),
                                        ("--pipeline", args.pipeline)) if value]
    if len(sources) != 1:
        raise UserError("give one of --config CFG (compile it here), --pipeline-id ID or --pipeline NAME (uploaded)")
    if args.config:
        if args.version_id:
            raise UserError("--version-id names an uploaded version: give it with --pipeline-id or --pipeline, not --config")
        config = load_checked_config(args)
        with _compiled(config) as (package, spec):
            params = _run_parameters(spec, args.params)
            _check_with_parameters(config, params)
            check_cluster_paths(config, params, args.allow_local)
            with _client(args) as client:
                yield client, spec, params, {
                    "pipeline_package_path": package,
                    "service_account": args.service_account or config.kubernetes.public_service_account,
                    "pipeline_root": _pipeline_root(spec)}
        return
    if args.overrides:
        raise UserError("--set changes a config compiled here: with an uploaded pipeline use --param key=value")
    with _client(args) as client:
        pipeline_id = args.pipeline_id or _find_pipeline(client, args.pipeline, args.namespace)
        if pipeline_id is None:
            raise UserError(f"no pipeline named {args.pipeline!r}: upload it first (python pipeline.py upload --config CFG)")
        version_id = args.version_id
        if not version_id:
            versions = client.list_pipeline_versions(pipeline_id, page_size=1,
                                                     sort_by="created_at desc").pipeline_versions
            if not versions:
                raise UserError(f"pipeline {pipeline_id} has no version: upload one "
                                "(python pipeline.py upload --config CFG)")
            version_id = versions[0].pipeline_version_id
        spec = _pipeline_spec(client.get_pipeline_version(pipeline_id, version_id).pipeline_spec, version_id)
        params = _run_parameters(spec, args.params)
        check_cluster_paths(None, params, args.allow_local)
        yield client, spec, params, {
            "pipeline_id": pipeline_id, "version_id": version_id, "service_account": args.service_account,
            "pipeline_root": _pipeline_root(spec)}


# a run parameter's value from --param key=value, by the type the pipeline spec declares
_PARAMETER_TYPES: dict[str, tuple[type, str]] = {
    "NUMBER_DOUBLE": (float, "a number"), "NUMBER_INTEGER": (int, "an integer"), "BOOLEAN": (bool, "true or false"),
    "LIST": (list, "a list, e.g. [0.6,0.5]"), "STRUCT": (dict, "a mapping, e.g. {a: 1}")}


def _declared_parameters(spec: dict) -> dict[str, dict]:
    """The run parameters a pipeline spec declares: name -> type, default and description."""
    return spec["root"].get("inputDefinitions", {}).get("parameters", {})


def _run_parameters(spec: dict, assignments: list[str]) -> dict[str, Any]:
    """The run parameters that --param sets (the others keep the pipeline's defaults), checked against the parameters
    the pipeline declares and read as their type: a number, true/false, a YAML list (``degrees=[0.6,0.5]``) or
    mapping, a string as written."""
    import yaml

    declared = _declared_parameters(spec)
    values: dict[str, Any] = {}
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        if not equals:
            raise UserError(f"--param {assignment!r}: write key=value")
        if key not in declared:
            raise UserError(f"unknown run parameter {key!r}: the pipeline's are {', '.join(sorted(declared))}")
        kind = declared[key]["parameterType"]
        if kind == "STRING":
            values[key] = text
            continue
        expected, words = _PARAMETER_TYPES[kind]
        try:
            value = float(text) if expected is float else yaml.safe_load(text)  # YAML 1.1 reads 1e-5 as a string
        except (ValueError, yaml.YAMLError):
            value = None
        if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
            raise UserError(f"--param {assignment}: {key} takes {words}")
        values[key] = value
    return values


def _check_with_parameters(config, params: dict[str, Any]) -> None:
    """Refuse here, before connecting, what resolve_config would refuse: the config with these run parameters (a
    noise multiplier of 0 the config does not allow, a delta over its cap, an impossible epsilon)."""
    from privevo.parameters import PARAMETER_NAMES, apply_parameters
    from privevo.privacy import check_planned_budget

    check_planned_budget(apply_parameters(config, {k: v for k, v in params.items() if k in PARAMETER_NAMES}))


def upload(args: argparse.Namespace) -> None:
    """Register the config's pipeline on Kubeflow Pipelines (by its name, private-evolution-<config name>) if it is new,
    and a new version of it; prints both ids, which submit and schedule take, and the service account to pick in the
    UI's run form (a run started there gets no other)."""
    import kfp_server_api

    config = load_checked_config(args)
    check_cluster_paths(config, {}, args.allow_local)
    with _client(args) as client, _compiled(config) as (package, spec):
        name = spec["pipelineInfo"]["name"]
        pipeline_id = _find_pipeline(client, name, args.namespace)
        if pipeline_id is None:
            pipeline = kfp_server_api.V2beta1Pipeline(name=name, display_name=name, namespace=args.namespace,
                                                      description=spec["pipelineInfo"].get("description"))
            pipeline_id = client.pipelines.pipeline_service_create_pipeline(pipeline).pipeline_id
        version_name = args.version or new_run_id(name)
        version = client.upload_pipeline_version(package, version_name, pipeline_id=pipeline_id)
    print(f"pipeline {name}: pipeline id {pipeline_id}")
    print(f"version {version_name}: version id {version.pipeline_version_id}")
    account = config.kubernetes.public_service_account
    if account:
        print(f"runs started from the KFP UI: pick service account {account} in the run form "
              "(kubernetes.public_service_account; the default account has no access to the buckets)")
    else:
        print("runs started from the KFP UI: the config sets no kubernetes.public_service_account, so type the "
              "service account that may write the run root in the run form (the default has no access to the buckets)")


def submit(args: argparse.Namespace) -> None:
    """Start one run on Kubeflow Pipelines, of --config compiled here or of an uploaded pipeline version, with
    --param overrides of its run parameters; without a run_id the run folder is the KFP run's own id."""
    with _template(args) as (client, spec, params, request):
        if args.run_id:
            if "run_id" in params:
                raise UserError("give the run id once: --run-id or --param run_id=...")
            params["run_id"] = args.run_id
        experiment = client.create_experiment(args.experiment, namespace=args.namespace)
        result = client.run_pipeline(experiment.experiment_id,
                                     params.get("run_id") or new_run_id(spec["pipelineInfo"]["name"]), params=params, **request)
    folder = params.get("run_id") or result.run_id
    run_root = params.get("run_root", _declared_parameters(spec).get("run_root", {}).get("defaultValue", "run_root"))
    print(f"submitted run {folder}: kfp run id {result.run_id}, run folder {run_root}/{folder}")


def schedule(args: argparse.Namespace) -> None:
    """Create a recurring run (cron) on Kubeflow Pipelines, of --config compiled here or of an uploaded pipeline
    version; run_id stays empty, so every scheduled run writes a folder of its own, named by its KFP run id."""
    with _template(args) as (client, spec, params, request):
        _check_dataset_budget(spec)
        if params.get("run_id") or params.get("resume"):
            raise UserError("a schedule starts a new run folder each time (the KFP run's own id): drop --param run_id/resume")
        experiment = client.create_experiment(args.experiment, namespace=args.namespace)
        name = args.name or f"{spec['pipelineInfo']['name']}-recurring"
        # no catch-up: a paused schedule that is enabled again starts one run, not one per missed interval (each
        # run spends its own privacy budget on the same private data)
        job = client.create_recurring_run(experiment_id=experiment.experiment_id, job_name=name, cron_expression=args.cron,
                                          no_catchup=True, params=params, **request)
    print(f"scheduled {name} with cron {args.cron!r}: recurring run id {job.recurring_run_id}")


def _check_dataset_budget(spec: dict) -> None:
    """Refuse to schedule a pipeline whose compiled config has no ``privacy.dataset_budget``: every scheduled run
    spends on the same private data, and only the data-set budget bounds what they spend together."""
    try:
        task = spec["root"]["dag"]["tasks"]["resolve-config"]
        budget = json.loads(task["inputs"]["parameters"]["config_json"]["runtimeValue"]["constant"])["privacy"].get(
            "dataset_budget")
    except (KeyError, TypeError, ValueError):
        budget = None
    if budget is None:
        raise UserError("a schedule runs again and again on the same private data, but this pipeline's compiled config "
                        "has no privacy.dataset_budget: set one (epsilon for the data set's whole life) and compile or "
                        "upload it again")
