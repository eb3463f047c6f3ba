"""The Kubeflow pipeline (DAG) of a config: one task per step of :data:`privevo.step_table.STEPS`.

Imports kfp (the ``kfp`` extra) when a pipeline is built; nothing else in the library imports this module.
"""

import os

from privevo.config import LocalModelSection, ResourcesConfig
from privevo.step_table import STEPS, StepSpec, step

KFP_LOCAL_PARALLEL_SHARDS = 2  # kfp.local's cap on concurrent ParallelFor iterations (kfp 2.17)
RETRY_BACKOFF_FACTOR = 2.0  # each retry of a step waits twice as long as the one before
NO_DEADLINE_RETRY_WINDOW_S = 7 * 24 * 3600  # how long retries may go on in a pipeline without a deadline


def build_pipeline(config, local: bool = False, target: str = "kfp"):
    """The KFP pipeline for ``config``: T generations and the shards unrolled at compile time (the DAG's shape),
    the values of :data:`privevo.parameters.RUN_PARAMETERS` as run parameters with the config's as defaults.
    ``local``: for kfp.local on this machine, which retries nothing (a retry outlives a cluster's failures, a lost
    node or a preempted pod; here a failed step ends the run at once and ``run --resume`` continues it).
    ``target`` "vertex": for Vertex AI Pipelines, the portable spec alone (no kfp-kubernetes platform spec, Vertex's
    accelerator names; :mod:`privevo.vertex`)."""
    import importlib
    import inspect
    import json

    from kfp import dsl, kubernetes

    from privevo.cluster import RETRY_GUARD_ENV, image_reference
    from privevo.config import config_to_dict
    from privevo.model_store import is_remote
    from privevo.parameters import RUN_PARAMETERS, parameter_defaults
    from privevo.vertex import accelerator_type

    k8s = config.kubernetes
    portable_only = target == "vertex"  # Vertex reads no Kubernetes settings: a platform spec would stop it

    def component(name: str, runs_network: bool):
        """The step's KFP component, in the GPU image only when it runs a network on GPUs."""
        image = image_reference(k8s, k8s.gpu_image if runs_network and k8s.model_step.gpu_limit else k8s.image)
        function = getattr(importlib.import_module(f"privevo.components.{name}"), name)
        return dsl.component(function, base_image=image, install_kfp_package=False)

    steps = {spec.name: component(spec.name, spec.runs_network) for spec in STEPS}
    resolve_config = component("resolve_config", runs_network=False)
    shards = list(range(config.population.num_shards))
    defaults = parameter_defaults(config)

    # Argo ends a task's retries once this long has passed since its first attempt began (kfp's default is an hour,
    # which would never retry a model step that failed after an hour): the run's own deadline bounds them instead.
    retry_window_s = k8s.pipeline_timeout_s or NO_DEADLINE_RETRY_WINDOW_S

    def configure(task, name: str, spec: StepSpec | None = None):
        """Display name, resources, deadline, retries, caching, scheduling and secrets of one task."""
        runs_network = spec is not None and spec.runs_network
        resources = LIGHT_STEP if spec is None else k8s.model_step if runs_network else k8s.cpu_step
        task.set_display_name(name)
        # resolve_config and the steps that read the private tier are never cached: a cache hit would skip
        # the run-folder check, the vote's charge or the private embeddings' presence, and could reuse a DP
        # release of another run, or skip a forced redraw, without the ledger knowing.
        task.set_caching_options(k8s.caching and spec is not None and not spec.reads_private(config))
        task.set_cpu_limit(resources.cpu).set_memory_limit(resources.memory)
        task.set_cpu_request(resources.cpu_request or resources.cpu)
        task.set_memory_request(resources.memory_request or resources.memory)
        if resources.timeout_s and not portable_only:
            kubernetes.set_timeout(task, resources.timeout_s)
        if k8s.retries and not local:
            task.set_retry(k8s.retries, backoff_duration=f"{k8s.retry_backoff_s}s",
                           backoff_factor=RETRY_BACKOFF_FACTOR, backoff_max_duration=f"{retry_window_s}s")
            task.set_env_variable(RETRY_GUARD_ENV, "1")  # a user error ends the step: its retries exit at once
        if k8s.image_pull_secret and not portable_only:
            kubernetes.set_image_pull_secrets(task, [k8s.image_pull_secret])
        if resources.gpu_limit:
            task.set_accelerator_type(accelerator_type(resources.gpu_type) if portable_only
                                      else resources.gpu_type or "nvidia.com/gpu")
            task.set_accelerator_limit(resources.gpu_limit)
        if portable_only:  # the rest is Kubernetes': the job's service account reads the private bucket on Vertex
            return task
        if runs_network:  # node selectors and tolerations steer the model steps to GPU nodes
            for key, value in k8s.node_selector.items():
                kubernetes.add_node_selector(task, label_key=key, label_value=value)
            for toleration in k8s.tolerations:
                kubernetes.add_toleration(task, **toleration)
        if spec is not None and spec.calls_model and k8s.model_pvc:  # large weights on a volume
            kubernetes.mount_pvc(task, pvc_name=k8s.model_pvc.claim_name, mount_path=k8s.model_pvc.mount_path)
        if spec is not None and spec.calls_model and k8s.model_token_secret:  # the remote model's token
            kubernetes.use_secret_as_volume(task, secret_name=k8s.model_token_secret,
                                            mount_path=os.path.dirname(config.model.api_server.token_file))
        if spec is not None and spec.reads_private(config):  # the cluster's policy moves it to the private account
            kubernetes.add_pod_label(task, *PRIVATE_TIER_LABEL)
        if spec is not None and spec.reads_private(config) and k8s.private_secret:
            kubernetes.use_secret_as_volume(task, secret_name=k8s.private_secret, mount_path=PRIVATE_SECRET_MOUNT)
            task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS", f"{PRIVATE_SECRET_MOUNT}/key.json")
        return task

    # The pipeline's parameters: the run's identity, then the run parameters with the config's values as defaults.
    signature = inspect.Signature([
        inspect.Parameter("run_id", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="", annotation=str),
        inspect.Parameter("resume", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=False, annotation=bool),
        inspect.Parameter("force_new_noise", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=False, annotation=bool),
        *(inspect.Parameter(parameter.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults[parameter.name],
                            annotation=parameter.type) for parameter in RUN_PARAMETERS),
    ])

    def private_evolution(*args):
        values = signature.bind(*args).arguments  # kfp calls the pipeline with one channel per parameter, in order
        # kfp.local (2.17) replaces "python3" in every argument with its interpreter's path, which would break a path
        # such as .../lib/python3.11/site-packages/privevo/_shipped/...: one escaped letter keeps it (JSON reads it back).
        config_json = json.dumps(config_to_dict(config), sort_keys=True).replace("python3", "pyth\\u006fn3")
        resolve = configure(resolve_config(
            config_json=config_json, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **values,
        ), "resolve-config")
        run_inputs = {"resolved": resolve.outputs["resolved"]}
        generations = config.population.generations

        model_inputs = {}
        weights = config.model
        if isinstance(weights, LocalModelSection) and weights.path and is_remote(weights.path):
            # the model as a KFP artifact: lineage starts there
            model = dsl.importer(artifact_uri=weights.path, artifact_class=dsl.Model, reimport=False,
                                 metadata={"sha256": weights.sha256, "kind": weights.kind})
            model.set_display_name("public-model")
            model_inputs = {"model": model.output}

        def add(kind: str, name: str, **inputs):
            spec = step(kind)
            return configure(steps[kind](**run_inputs, **(model_inputs if spec.calls_model else {}), **inputs), name, spec)

        private = add("embed_private", "embed-private")
        warm = add("warm_start", "warm-start") if step("warm_start").reads_private(config) else None
        with dsl.ParallelFor(items=shards, name="gen-000-shards", parallelism=k8s.max_parallel_shards) as shard:
            # each shard's samples and their embedding for the next vote in one task (one process, networks
            # loaded once); the last generation's shards only make their samples
            initial = add("initial_shard", "initial-shard", shard=shard)
            if warm is not None:  # generation 0 draws from the warm start's noisy marginals
                initial.after(warm)
        population, embedded = initial, initial
        for generation in range(1, generations + 1):
            vote = add("dp_vote", f"dp-vote-gen-{generation:03d}", generation=generation,
                       private_embeddings=private.outputs["private_embeddings"],
                       synthetic_embeddings=dsl.Collected(embedded.outputs["embeddings"]))
            kind = "variation_shard" if generation < generations else "generate_variations"
            with dsl.ParallelFor(items=shards, name=f"gen-{generation:03d}-shards",
                                 parallelism=k8s.max_parallel_shards) as shard:
                population = embedded = add(kind, f"{kind.replace('_', '-')}-gen-{generation:03d}",
                                            generation=generation, shard=shard, selection=vote.outputs["selection"])
        add("evaluate", "evaluate", population_shards=dsl.Collected(population.outputs["population"]))

    private_evolution.__signature__ = signature  # type: ignore[attr-defined]
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
    # The run's deadline counts from its start, so it also ends a run whose pod waits forever for a node (a step's
    # own deadline counts from its pod's start). It is the workflow's activeDeadlineSeconds (the platform spec's
    # pipelineConfig); a KFP backend that does not read pipelineConfig leaves the run without it.
    pipeline_config = dsl.PipelineConfig(active_deadline_seconds=k8s.pipeline_timeout_s)
    return dsl.pipeline(name=f"private-evolution-{config.name}", description="DP synthetic images by Private Evolution",
                        pipeline_root=k8s.pipeline_root,
                        pipeline_config=None if portable_only else pipeline_config)(private_evolution)


PRIVATE_SECRET_MOUNT = "/var/secrets/private-data"
#: the pod label of the steps that read the private tier: an admission policy on the cluster
#: (manifests/components/private-step-account) moves exactly those pods to kubernetes.private_service_account.
PRIVATE_TIER_LABEL = ("privevo.io/tier", "private")
#: resolve_config's fixed resources: a few seconds of work (it reads no data), which should not hold a node's CPUs.
LIGHT_STEP = ResourcesConfig(cpu="1", memory="2Gi", cpu_request="250m", memory_request="1Gi", timeout_s=1800)
