"""Private Evolution as a Kubeflow pipeline, and its command line.

Commands: ``run`` (locally with kfp.local), ``compile``, ``upload``, ``submit``, ``schedule``,
``rerun`` (one step), ``audit``, ``report``, ``budget`` (privacy accounting), ``serve``.
User errors print one line ``error: ...`` and exit with code 2.
"""


import argparse
import builtins
import contextlib
import io
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

from privevo import runtime
from privevo.errors import UserError
from privevo.step_table import STEP_NAMES, STEPS, StepArgs, StepSpec, step


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad arguments in one line (exit 2), without the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------- DAG

KFP_LOCAL_PARALLEL_SHARDS = 2  # kfp.local's cap on concurrent ParallelFor iterations (kfp 2.17)


def build_pipeline(config):
    """The KFP pipeline for ``config``: T generations and the shards unrolled at compile time (the DAG's shape),
    the values of :data:`privevo.parameters.RUN_PARAMETERS` as run parameters with the config's as defaults."""
    import importlib
    import json

    from kfp import dsl, kubernetes

    from privevo.config import config_to_dict
    from privevo.model_store import is_remote
    from privevo.parameters import RUN_PARAMETERS, parameter_defaults

    k8s = config.kubernetes

    def component(name: str, runs_network: bool):
        """The step's KFP component, in the GPU image only when it runs a network on GPUs."""
        image = k8s.gpu_image if runs_network and k8s.model_step.gpu_limit else k8s.image
        function = getattr(importlib.import_module(f"components.{name}"), name)
        return dsl.component(function, base_image=image, install_kfp_package=False)

    steps = {spec.name: component(spec.name, spec.runs_network) for spec in STEPS}
    resolve_config = component("resolve_config", runs_network=False)
    shards = list(range(config.population.num_shards))
    defaults = parameter_defaults(config)

    def configure(task, name: str, spec: StepSpec | None = None):
        """Display name, resources, deadline, retries, caching, scheduling and secrets of one task."""
        runs_network = spec is not None and spec.runs_network
        resources = k8s.model_step if runs_network else k8s.cpu_step
        task.set_display_name(name)
        # resolve_config and the steps that read the private tier are never cached: a cache hit would skip
        # the run-folder check, the vote's charge or the private embeddings' presence, and could reuse a DP
        # release of another run, or skip a forced redraw, without the ledger knowing.
        task.set_caching_options(k8s.caching and spec is not None and not spec.reads_private(config))
        task.set_cpu_limit(resources.cpu).set_memory_limit(resources.memory)
        if resources.timeout_s:
            kubernetes.set_timeout(task, resources.timeout_s)
        if k8s.retries:
            task.set_retry(k8s.retries)
        if resources.gpu_limit:
            task.set_accelerator_type(resources.gpu_type or "nvidia.com/gpu")
            task.set_accelerator_limit(resources.gpu_limit)
        if runs_network:  # node selectors and tolerations steer the model steps to GPU nodes
            for key, value in k8s.node_selector.items():
                kubernetes.add_node_selector(task, label_key=key, label_value=value)
            for toleration in k8s.tolerations:
                kubernetes.add_toleration(task, **toleration)
        if spec is not None and spec.calls_model and k8s.model_pvc:  # large weights on a volume
            kubernetes.mount_pvc(task, pvc_name=k8s.model_pvc.claim_name, mount_path=k8s.model_pvc.mount_path)
        if spec is not None and spec.calls_model and k8s.model_token_secret:  # the remote model's token
            kubernetes.use_secret_as_volume(task, secret_name=k8s.model_token_secret,
                                            mount_path=os.path.dirname(config.model.remote.token_file))
        if spec is not None and spec.reads_private(config) and k8s.private_secret:
            kubernetes.use_secret_as_volume(task, secret_name=k8s.private_secret, mount_path=PRIVATE_SECRET_MOUNT)
            task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS", f"{PRIVATE_SECRET_MOUNT}/key.json")
        return task

    def private_evolution(
        run_id: str = "", resume: bool = False, force_new_noise: bool = False,
        epsilon: float = defaults["epsilon"], delta: float = defaults["delta"],
        noise_multiplier: float = defaults["noise_multiplier"], population_size: int = defaults["population_size"],
        private_data_uri: str = defaults["private_data_uri"], run_root: str = defaults["run_root"],
        private_root: str = defaults["private_root"], seed: int = defaults["seed"], degrees: list = defaults["degrees"],
    ):
        resolve = configure(resolve_config(
            config_json=json.dumps(config_to_dict(config), sort_keys=True), run_id=run_id, resume=resume,
            force_new_noise=force_new_noise, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, epsilon=epsilon, delta=delta,
            noise_multiplier=noise_multiplier, population_size=population_size, private_data_uri=private_data_uri,
            run_root=run_root, private_root=private_root, seed=seed, degrees=degrees,
        ), "resolve-config")
        run_inputs = {"resolved": resolve.outputs["resolved"]}
        generations = config.population.generations

        model_inputs = {}
        if config.model.path and is_remote(config.model.path):  # the model as a KFP artifact: lineage starts there
            model = dsl.importer(artifact_uri=config.model.path, artifact_class=dsl.Model, reimport=False,
                                 metadata={"sha256": config.model.sha256, "kind": config.model.kind})
            model.set_display_name("public-model")
            model_inputs = {"model": model.output}

        def add(kind: str, name: str, **inputs):
            spec = step(kind)
            return configure(steps[kind](**run_inputs, **(model_inputs if spec.calls_model else {}), **inputs), name, spec)

        private = add("embed_private", "embed-private")
        with dsl.ParallelFor(items=shards, name="gen-000-shards") as shard:
            # each shard's samples and their embedding for the next vote in one task (one process, networks
            # loaded once); the last generation's shards only make their samples
            initial = add("initial_shard", "initial-shard", shard=shard)
        population, embedded = initial, initial
        for generation in range(1, generations + 1):
            vote = add("dp_vote", f"dp-vote-gen-{generation:03d}", generation=generation,
                       private_embeddings=private.outputs["private_embeddings"],
                       synthetic_embeddings=dsl.Collected(embedded.outputs["embeddings"]))
            kind = "variation_shard" if generation < generations else "generate_variations"
            with dsl.ParallelFor(items=shards, name=f"gen-{generation:03d}-shards") as shard:
                population = embedded = add(kind, f"{kind.replace('_', '-')}-gen-{generation:03d}",
                                            generation=generation, shard=shard, selection=vote.outputs["selection"])
        add("evaluate", "evaluate", population_shards=dsl.Collected(population.outputs["population"]))

    private_evolution.__doc__ = "\n".join([
        "Private Evolution: DP synthetic images. T and the shard count are fixed at compile time.",
        "",
        "Args:",
        "    run_id: the run folder's name; empty (the default) means the KFP run's own id, so every run,",
        "        a clone from the UI or a scheduled one included, gets a folder of its own.",
        "    resume: continue the run folder run_id (an existing folder is refused otherwise).",
        "    force_new_noise: redraw the votes' DP noise (charged again in the ledger).",
        *(f"    {parameter.name}: {parameter.description}." for parameter in RUN_PARAMETERS),
    ])
    return dsl.pipeline(name=f"private-evolution-{config.name}", description="DP synthetic images by Private Evolution",
                        pipeline_root=k8s.pipeline_root)(private_evolution)


PRIVATE_SECRET_MOUNT = "/var/secrets/private-data"


def _load(args: argparse.Namespace):
    from privevo.config import load_config
    from privevo.privacy import check_planned_budget

    overrides = list(args.overrides)
    if getattr(args, "run_root", None):
        overrides.append(f"run_root={args.run_root}")
    config = load_config(args.config, overrides)
    check_planned_budget(config)
    return config


def _new_run_id(name: str) -> str:
    import datetime

    return f"{name}-{datetime.datetime.now(datetime.UTC).strftime('%Y%m%d-%H%M%S')}"


# --------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> None:
    """Run the whole pipeline locally with kfp.local (tasks run as subprocesses, or in containers with --runner docker)."""
    from kfp import local

    from privevo.layout import RunLayout
    from privevo.run import Run

    if "://" in args.pipeline_root:
        raise UserError("--pipeline-root must be a local folder for kfp.local; put the data plane in gs:// with --run-root")
    if args.resume:
        if args.config:
            raise UserError("--resume takes the config stored in the run: drop --config")
        run_root = args.run_root or "runs"
        run = Run.open(run_root, args.resume)
        config, run_id = run.config, args.resume
        if args.runner == "docker":
            _local_docker().check_ready(config, args.pipeline_root)
        print(f"resuming run {run_id} from its stored config")
    else:
        if not args.config:
            raise UserError("give --config CFG (or --resume RUN_ID)")
        config = _load(args)
        if args.runner == "docker":
            _local_docker().check_ready(config, args.pipeline_root)
        run_id = args.run_id or _new_run_id(config.name)
        Run.check_new(config, run_id, resume=False)  # fail before kfp.local starts; resolve_config checks it again
        run = Run(config, RunLayout(config.run_root, run_id, config.private_root))
    print(f"run {run_id}: {config.population.generations} generations of {config.population.size} samples "
          f"-> {run.layout.run_dir}")
    # kfp.local runs up to KFP_LOCAL_PARALLEL_SHARDS ParallelFor iterations at once on this machine:
    # the shard steps split its CPUs between them instead of oversubscribing them.
    concurrent_shards = min(config.population.num_shards, KFP_LOCAL_PARALLEL_SHARDS)
    os.environ[runtime.CONCURRENT_SHARDS_ENV] = str(concurrent_shards)
    runner, session = local.SubprocessRunner(use_venv=False), contextlib.nullcontext()
    if args.runner == "docker":  # every step in the image, with the mounts of its step only (local_docker.py)
        session = _local_docker().DockerSession(config, run, args.pipeline_root, concurrent_shards)
        runner = session.runner
    local.init(runner=runner, pipeline_root=args.pipeline_root, raise_on_error=True)
    started = time.time()
    pipeline_func = build_pipeline(config)
    log_path = os.path.join(args.pipeline_root, f"{run_id}.log")
    os.makedirs(args.pipeline_root, exist_ok=True)
    original_print = builtins.print  # kfp.local's ParallelFor threads can leave print indented
    with open(log_path, "a") as log, _TaskProgress(log, sys.stdout) as progress, session:
        try:
            with contextlib.redirect_stdout(progress), contextlib.redirect_stderr(progress):
                pipeline_func(run_id=run_id, resume=bool(args.resume))
        except RuntimeError:
            raise UserError(f"{progress.failure()} (full log: {log_path}); fix it, then continue with "
                            f"`python pipeline.py run --resume {run_id}`") from None
        finally:
            builtins.print = original_print
    _print_summary(run, time.time() - started)


def _local_docker():
    """The Docker runner wiring (imports kfp.local's Docker support and the docker SDK only when asked for)."""
    import local_docker

    return local_docker


def _print_summary(run, seconds: float) -> None:
    from privevo import storage
    from privevo.report import format_value

    metrics = storage.read_json(run.layout.metrics_json) if storage.exists(run.layout.metrics_json) else None
    print(f"run path: {run.layout.run_dir}")
    print(f"report: {run.layout.report_index}")
    print(f"wall time: {seconds:.1f} s")
    epsilon = run.ledger().epsilon()
    print(f"epsilon spent: {epsilon:.4f} at delta={run.config.privacy.delta:g} over {len(run.ledger().events)} votes")
    if metrics:
        for row in (metrics["generations"][0], metrics["final"]):
            label = "generation 0" if row is metrics["generations"][0] else f"final (generation {row['generation']})"
            shown = {k: v for k, v in row.items() if k not in ("generation", "non_dp", "per_class_accuracy")}
            print(f"{label}: " + " ".join(f"{k}={format_value(v)}" for k, v in shown.items()))


class _TaskProgress(io.TextIOBase):
    """Sends kfp.local's verbose output to a log file and prints one line per finished task."""

    _ANSI = re.compile(r"\x1b\[[0-9;]*m")
    _FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
    _STARTED = re.compile(r"Executing task '([^']+)'")
    _ERROR = re.compile(r"(?:UserError|Error|Exception): (.+)$")

    def __init__(self, log, terminal) -> None:
        self.log, self.terminal = log, terminal
        self.buffer, self.started, self.done, self.last_error = "", {}, 0, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            self._scan(self._ANSI.sub("", line))
        return len(text)

    def _scan(self, line: str) -> None:
        if match := self._STARTED.search(line):
            self.started[match.group(1)] = time.time()
        elif match := self._FINISHED.search(line):
            name, status = match.groups()
            if status == "SUCCESS":
                self.done += 1
                seconds = time.time() - self.started.get(name, time.time())
                print(f"[{self.done:3d}] {name:<36} done in {seconds:6.1f} s", file=self.terminal, flush=True)
        elif (match := self._ERROR.search(line.strip())) and not (
                "raise_on_error" in line or "Inner task failed" in line):
            self.last_error = match.group(1).strip()
            self.last_task = next(reversed(self.started), "?")

    def failure(self) -> str:
        """One line naming the failed task and its last error."""
        return f"step {getattr(self, 'last_task', '?')} failed: {self.last_error or 'see the log'}"

    def __enter__(self) -> "_TaskProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()


# ------------------------------------------------------------ compile and submit


def cmd_compile(args: argparse.Namespace) -> None:
    """Write the KFP IR YAML for a config."""
    from kfp import compiler

    config = _load(args)
    compiler.Compiler().compile(build_pipeline(config), package_path=args.output)
    print(f"compiled {config.name}: {config.population.generations} generations, "
          f"{config.population.num_shards} shard(s) -> {args.output}")


KFP_HOST_ENV = "KFP_HOST"  # the default for --host


@contextlib.contextmanager
def _client(args: argparse.Namespace) -> Iterator[Any]:
    """A kfp.Client for --host (or $KFP_HOST), --namespace and the token in --token-env (never printed); a failed
    API call ends in one line naming the endpoint instead of a traceback."""
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
    try:
        yield kfp.Client(host=host, namespace=args.namespace or "kubeflow", existing_token=token)  # kfp's own default
    except kfp_server_api.ApiException as error:
        raise UserError(f"the KFP API at {host} answered {error.status} {error.reason}: {_api_message(error.body)}") from None
    except urllib3.exceptions.HTTPError as error:
        raise UserError(f"cannot reach the KFP API at {host} ({type(error).__name__}): check --host") from None


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


@contextlib.contextmanager
def _template(args: argparse.Namespace, client) -> Iterator[tuple[dict, dict[str, Any]]]:
    """The pipeline a run starts from, as its spec and the run request's arguments that name it: --config compiled
    here, or an uploaded version (--pipeline-id or --pipeline NAME, --version-id or the latest)."""
    sources = [flag for flag, value in (("--config", args.config), ("--pipeline-id", args.pipeline_id),
                                        ("--pipeline", args.pipeline)) if value]
    if len(sources) != 1:
        raise UserError("give one of --config CFG (compile it here), --pipeline-id ID or --pipeline NAME (uploaded)")
    if args.config:
        if args.version_id:
            raise UserError("--version-id names an uploaded version: give it with --pipeline-id or --pipeline, not --config")
        config = _load(args)
        with _compiled(config) as (package, spec):
            yield spec, {"pipeline_package_path": package,
                         "service_account": args.service_account or config.kubernetes.public_service_account}
        return
    if args.overrides:
        raise UserError("--set changes a config compiled here: with an uploaded pipeline use --param key=value")
    pipeline_id = args.pipeline_id or _find_pipeline(client, args.pipeline, args.namespace)
    if pipeline_id is None:
        raise UserError(f"no pipeline named {args.pipeline!r}: upload it first (python pipeline.py upload --config CFG)")
    version_id = args.version_id
    if not version_id:
        versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc").pipeline_versions
        if not versions:
            raise UserError(f"pipeline {pipeline_id} has no version: upload one (python pipeline.py upload --config CFG)")
        version_id = versions[0].pipeline_version_id
    spec = _pipeline_spec(client.get_pipeline_version(pipeline_id, version_id).pipeline_spec, version_id)
    yield spec, {"pipeline_id": pipeline_id, "version_id": version_id, "service_account": args.service_account}


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


def cmd_upload(args: argparse.Namespace) -> None:
    """Register the config's pipeline on Kubeflow Pipelines (by its name, private-evolution-<config name>) if it is new,
    and a new version of it; prints both ids, which submit and schedule take."""
    import kfp_server_api

    config = _load(args)
    with _client(args) as client, _compiled(config) as (package, spec):
        name = spec["pipelineInfo"]["name"]
        pipeline_id = _find_pipeline(client, name, args.namespace)
        if pipeline_id is None:
            pipeline = kfp_server_api.V2beta1Pipeline(name=name, display_name=name, namespace=args.namespace,
                                                      description=spec["pipelineInfo"].get("description"))
            pipeline_id = client.pipelines.pipeline_service_create_pipeline(pipeline).pipeline_id
        version_name = args.version or _new_run_id(name)
        version = client.upload_pipeline_version(package, version_name, pipeline_id=pipeline_id)
    print(f"pipeline {name}: pipeline id {pipeline_id}")
    print(f"version {version_name}: version id {version.pipeline_version_id}")


def cmd_submit(args: argparse.Namespace) -> None:
    """Start one run on Kubeflow Pipelines, of --config compiled here or of an uploaded pipeline version, with
    --param overrides of its run parameters; without a run_id the run folder is the KFP run's own id."""
    with _client(args) as client, _template(args, client) as (spec, request):
        params = _run_parameters(spec, args.params)
        if args.run_id:
            if "run_id" in params:
                raise UserError("give the run id once: --run-id or --param run_id=...")
            params["run_id"] = args.run_id
        experiment = client.create_experiment(args.experiment, namespace=args.namespace)
        result = client.run_pipeline(experiment.experiment_id,
                                     params.get("run_id") or _new_run_id(spec["pipelineInfo"]["name"]), params=params, **request)
    folder = params.get("run_id") or result.run_id
    run_root = params.get("run_root", _declared_parameters(spec).get("run_root", {}).get("defaultValue", "run_root"))
    print(f"submitted run {folder}: kfp run id {result.run_id}, run folder {run_root}/{folder}")


def cmd_schedule(args: argparse.Namespace) -> None:
    """Create a recurring run (cron) on Kubeflow Pipelines, of --config compiled here or of an uploaded pipeline
    version; run_id stays empty, so every scheduled run writes a folder of its own, named by its KFP run id."""
    with _client(args) as client, _template(args, client) as (spec, request):
        params = _run_parameters(spec, args.params)
        if params.get("run_id") or params.get("resume"):
            raise UserError("a schedule starts a new run folder each time (the KFP run's own id): drop --param run_id/resume")
        experiment = client.create_experiment(args.experiment, namespace=args.namespace)
        name = args.name or f"{spec['pipelineInfo']['name']}-recurring"
        # no catch-up: a paused schedule that is enabled again starts one run, not one per missed interval (each
        # run spends its own privacy budget on the same private data)
        job = client.create_recurring_run(experiment_id=experiment.experiment_id, job_name=name, cron_expression=args.cron,
                                          no_catchup=True, params=params, **request)
    print(f"scheduled {name} with cron {args.cron!r}: recurring run id {job.recurring_run_id}")


# ------------------------------------------------------------------ rerun/report


def cmd_rerun(args: argparse.Namespace) -> None:
    """Re-execute one step of a stored run from its stored inputs (DP releases are reused)."""
    import json

    from privevo.run import Run

    run = Run.locate(args.run, args.run_root)
    result = step(args.step).call(run, StepArgs(args.generation, args.shard, args.force_new_noise))
    print(json.dumps(result, sort_keys=True, default=str))


def cmd_audit(args: argparse.Namespace) -> int:
    """Verify a run's record: hashes, one ledger event per release, epsilon, no private data released."""
    import json

    from privevo import audit
    from privevo.run import Run

    report = audit.audit_run(Run.locate(args.run, args.run_root))
    print(json.dumps(report.to_dict(), indent=2, sort_keys=True) if args.json else audit.format_report(report))
    return 0 if report.ok else 1


def cmd_report(args: argparse.Namespace) -> None:
    """Regenerate report/ from a finished run's stored files, without rerunning anything."""
    from privevo import report, storage
    from privevo.run import Run

    run = Run.locate(args.run, args.run_root)
    if not storage.exists(run.layout.metrics_json):
        raise UserError(f"run {args.run} has no metrics.json yet: run its evaluate step first")
    index = report.write_report(run, storage.read_json(run.layout.metrics_json))
    print(f"report: {index}")


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a local model on the KServe v2 protocol (model.kind remote calls it) until SIGTERM/SIGINT."""
    from privevo import serve
    from privevo.config import load_config

    if args.config:
        config = load_config(args.config, args.overrides)
    elif args.model_kind and args.model_path:
        options = {key: value for key, value in (
            ("batch_size", args.batch_size), ("num_inference_steps", args.num_inference_steps),
            ("device", args.device), ("autocast", args.autocast), ("prompts", args.prompts), ("sha256", args.sha256))
            if value is not None}
        config = serve.serve_config(args.model_kind, args.model_path, args.image_size, args.channels, options)
    else:
        raise UserError("serve needs --model-kind and --model-path (or --config CFG to serve its model section)")
    return serve.serve(config, args.host, args.port, args.model_name, args.token_env, args.graceful_timeout)


# ------------------------------------------------------------------------ budget


def cmd_budget(args: argparse.Namespace) -> None:
    """Epsilon from a noise multiplier, or the noise multiplier for a target epsilon."""
    from privevo import privacy

    privacy.validate_schedule_args(args.generations, args.delta, args.sampling_rate)
    if args.k < 1:
        raise UserError(f"--k must be at least 1, got {args.k}")
    if (args.noise_multiplier is None) == (args.epsilon is None):
        raise UserError("give exactly one of --noise-multiplier and --epsilon")
    if args.noise_multiplier is not None:
        sigma = args.noise_multiplier
        if not (sigma >= 0 and math.isfinite(sigma)):
            raise UserError(f"--noise-multiplier must be a finite number >= 0, got {sigma}")
        epsilon = privacy.schedule_epsilon([sigma] * args.generations, args.delta, args.sampling_rate, args.mechanism,
                                           args.k)
        _print_budget(sigma, args)
        print(f"epsilon={epsilon:.4f}")
    else:
        sigma = privacy.calibrate_noise_multiplier(args.epsilon, args.delta, args.generations, args.sampling_rate,
                                                   args.mechanism, args.k)
        _print_budget(sigma, args)
        print(f"noise_multiplier={sigma:.4f}")


def _print_budget(sigma: float, args: argparse.Namespace) -> None:
    from privevo import privacy

    print(f"generations={args.generations} delta={args.delta:g} sampling_rate={args.sampling_rate:g} "
          f"mechanism={args.mechanism}")
    if args.report:
        planned = [privacy.PrivacyEvent(generation=g + 1, noise_multiplier=sigma, sampling_rate=args.sampling_rate,
                                        mechanism=args.mechanism, k=args.k, status="planned")
                   for g in range(args.generations)]
        print("\n".join(privacy.format_privacy_report(privacy.privacy_report(planned, args.delta))))
    if args.sampling_rate == 1.0 and sigma > 0:
        closed = privacy.gdp_epsilon([sigma] * args.generations, args.delta)
        print(f"closed-form mu-GDP cross-check: mu={privacy.gdp_mu([sigma] * args.generations):.4f} epsilon={closed:.4f}")


# -------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="pipeline.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    budget = commands.add_parser("budget", help="privacy accounting: epsilon <-> noise multiplier")
    budget.add_argument("--noise-multiplier", type=float, help="per-vote sigma (noise std / sensitivity)")
    budget.add_argument("--epsilon", type=float, help="target epsilon: prints the noise multiplier that spends it")
    budget.add_argument("--generations", type=int, required=True, help="T: number of votes")
    budget.add_argument("--delta", type=float, default=1e-5)
    budget.add_argument("--sampling-rate", type=float, default=1.0, help="Poisson subsampling rate of the private set")
    budget.add_argument("--mechanism", choices=("discrete_gaussian", "gaussian"), default="discrete_gaussian",
                        help="the vote's noise (privacy.mechanism)")
    budget.add_argument("--k", type=int, default=1, help="neighbours per private image (privacy.k)")
    budget.add_argument("--report", action="store_true",
                        help="print the privacy report of the schedule (events, epsilon per generation and per delta, mu)")
    budget.set_defaults(func=cmd_budget)

    def with_config(sub: argparse.ArgumentParser, required: bool = True) -> None:
        sub.add_argument("--config", required=required, help="experiment config (YAML)")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config key, e.g. --set population.generations=3 (repeatable)")

    run = commands.add_parser("run", help="run the pipeline locally (kfp.local)")
    with_config(run, required=False)
    run.add_argument("--run-root", help="released data plane: a folder or gs://bucket/prefix")
    run.add_argument("--run-id", help="run folder name (default: NAME-UTCTIME)")
    run.add_argument("--resume", metavar="RUN_ID", help="continue a crashed run from its last complete generation")
    run.add_argument("--pipeline-root", default="local_outputs", help="where kfp.local keeps its task artifacts")
    run.add_argument("--runner", choices=("subprocess", "docker"), default="subprocess",
                     help="run each step as a local subprocess, or in its container image (make images) with "
                          "only its step's folders mounted and no network")
    run.set_defaults(func=cmd_run)

    comp = commands.add_parser("compile", help="write the KFP pipeline YAML")
    with_config(comp)
    comp.add_argument("--output", required=True)
    comp.set_defaults(func=cmd_compile)

    def with_kfp(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--host", help=f"the KFP API endpoint, e.g. http://localhost:8080 (default: ${KFP_HOST_ENV})")
        sub.add_argument("--namespace", help="Kubernetes namespace of a multi-user Kubeflow (experiments, pipelines, runs)")
        sub.add_argument("--token-env", metavar="NAME",
                         help="send the bearer token held in this environment variable (never printed)")

    def with_template(sub: argparse.ArgumentParser) -> None:
        with_kfp(sub)
        with_config(sub, required=False)
        sub.add_argument("--pipeline-id", help="run an uploaded pipeline instead of compiling --config (see upload)")
        sub.add_argument("--pipeline", metavar="NAME", help="run an uploaded pipeline by name, e.g. private-evolution-demo")
        sub.add_argument("--version-id", help="the uploaded pipeline's version to run (default: its latest)")
        sub.add_argument("--param", dest="params", action="append", default=[], metavar="KEY=VALUE",
                         help="set a run parameter, e.g. --param epsilon=2 --param degrees=[0.6,0.5] (repeatable)")
        sub.add_argument("--service-account",
                         help="the run's Kubernetes service account (default: the config's kubernetes.public_service_account)")
        sub.add_argument("--experiment", default="private-evolution", help="the KFP experiment the runs belong to")

    upload = commands.add_parser("upload", help="register the pipeline and a new version of it on Kubeflow Pipelines")
    with_config(upload)
    with_kfp(upload)
    upload.add_argument("--version", help="the new version's name (default: PIPELINE-UTCTIME)")
    upload.set_defaults(func=cmd_upload)

    submit = commands.add_parser("submit", help="start a run on Kubeflow Pipelines")
    with_template(submit)
    submit.add_argument("--run-id", help="run folder name (default: the KFP run's own id)")
    submit.set_defaults(func=cmd_submit)

    schedule = commands.add_parser("schedule", help="create a recurring run on Kubeflow Pipelines")
    with_template(schedule)
    schedule.add_argument("--cron", required=True, help="cron expression, six fields, seconds first: '0 0 3 * * *'")
    schedule.add_argument("--name", help="the recurring run's name (default: PIPELINE-recurring)")
    schedule.set_defaults(func=cmd_schedule)

    rerun = commands.add_parser("rerun", help="re-execute one step of a stored run")
    rerun.add_argument("run", metavar="RUN", help="a run id under --run-root, or the run path `run` printed (local or gs://)")
    rerun.add_argument("--step", required=True, choices=STEP_NAMES)
    rerun.add_argument("--generation", type=int, default=0)
    rerun.add_argument("--shard", type=int, default=0)
    rerun.add_argument("--force-new-noise", action="store_true",
                       help="dp_vote only: draw new noise although the release exists (charged again)")
    rerun.add_argument("--run-root", default="runs")
    rerun.set_defaults(func=cmd_rerun)

    aud = commands.add_parser("audit", help="verify a run: hashes, ledger, epsilon, no private data released")
    aud.add_argument("run", metavar="RUN", help="a run id under --run-root, or the run path `run` printed (local or gs://)")
    aud.add_argument("--run-root", default="runs")
    aud.add_argument("--json", action="store_true", help="machine-readable output")
    aud.set_defaults(func=cmd_audit)

    rep = commands.add_parser("report", help="regenerate the HTML report of a run")
    rep.add_argument("run", metavar="RUN", help="a run id under --run-root, or the run path `run` printed (local or gs://)")
    rep.add_argument("--run-root", default="runs")
    rep.set_defaults(func=cmd_report)

    srv = commands.add_parser("serve", help="serve a local model on the KServe v2 protocol (for model.kind remote)")
    with_config(srv, required=False)
    srv.add_argument("--model-kind", help="a local backend: ddpm_unet or stable_diffusion")
    srv.add_argument("--model-path", help="the model folder, its gs:// prefix (with --sha256), or a hub name in the local cache")
    srv.add_argument("--sha256", help="the model folder's digest (model.sha256): required for gs://, checked before loading")
    srv.add_argument("--model-name", help="the name clients call it by (default: the kind)")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    srv.add_argument("--port", type=int, default=8080)
    srv.add_argument("--batch-size", type=int, help="samples per forward pass (model.batch_size)")
    srv.add_argument("--num-inference-steps", type=int)
    srv.add_argument("--device", help="auto, cpu or cuda")
    srv.add_argument("--autocast", choices=("auto", "off", "bfloat16", "float16"))
    srv.add_argument("--prompts", nargs="+", help="stable_diffusion: one prompt per class")
    srv.add_argument("--image-size", type=int, help="default: the model's own (ddpm_unet)")
    srv.add_argument("--channels", type=int, choices=(1, 3), help="default: the model's own (ddpm_unet)")
    srv.add_argument("--token-env", help="require the bearer token held in this environment variable")
    srv.add_argument("--graceful-timeout", type=float, default=30.0, help="seconds to finish calls in flight on SIGTERM")
    srv.set_defaults(func=cmd_serve)
    for sub in commands.choices.values():  # `pipeline.py COMMAND --help` describes the command
        sub.description = sub.description or sub.get_default("func").__doc__
    return parser





def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "run":  # kfp.local manages logging during a local run
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args) or 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
