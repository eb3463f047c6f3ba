"""The Kubeflow pipeline: compile every config, run tiny end to end, rerun a step, bad input."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, tiny_args
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from privevo import storage

CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))


def compile_config(run_cli, tmp_path, config: str, *overrides: str) -> list[dict]:
    """The config compiled by the command line; local roots and paths allowed (as on a cluster with a shared volume)."""
    output = tmp_path / f"{config}.pipeline.yaml"
    sets = [a for o in overrides for a in ("--set", o)]
    result = run_cli("compile", "--config", f"configs/{config}", "--allow-local", "--output", str(output), *sets)
    assert result.returncode == 0, result.stderr
    return list(yaml.safe_load_all(output.read_text()))


def executors_by_step(spec: dict) -> dict[str, list[str]]:
    """Executor names grouped by step kind (exec-dp-vote, exec-dp-vote-2, ... -> dp_vote)."""
    groups: dict[str, list[str]] = {}
    for name in spec["deploymentSpec"]["executors"]:
        kind = name.removeprefix("exec-").rstrip("-0123456789").replace("-", "_")
        groups.setdefault(kind, []).append(name)
    return groups


def all_tasks(spec: dict) -> list[dict]:
    tasks = list(spec["root"]["dag"]["tasks"].values())
    for component in spec["components"].values():
        tasks += list(component.get("dag", {}).get("tasks", {}).values())
    return tasks


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_compiles_to_a_strict_pipeline_spec(run_cli, tmp_path, config):
    from kfp.kubernetes import kubernetes_executor_config_pb2

    from privevo.config import load_config

    cfg = load_config(ROOT / "configs" / config)
    docs = compile_config(run_cli, tmp_path, config, "kubernetes.private_secret=private-gcs")
    spec = docs[0]
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for executor in platform.values():
        json_format.ParseDict(executor, kubernetes_executor_config_pb2.KubernetesExecutorConfig())

    from privevo.model_store import is_remote

    groups = executors_by_step(spec)
    T = cfg.population.generations
    remote_model = bool(cfg.model.weights_path and is_remote(cfg.model.weights_path))
    assert set(groups) == {"resolve_config", "embed_private", "initial_shard", "dp_vote", "generate_variations",
                           "evaluate"} | ({"variation_shard"} if T > 1 else set()) | ({"importer"} if remote_model else set()) \
        | ({"warm_start"} if cfg.privacy.warm_start_share else set())
    votes = [t for t in all_tasks(spec) if t["taskInfo"]["name"].startswith("dp-vote")]
    assert len(votes) == T
    # One process per shard per generation: each shard's samples are embedded for the next vote in the same
    # task, every generation but the last.
    fused = sorted(t["taskInfo"]["name"] for t in all_tasks(spec) if t["taskInfo"]["name"].startswith("variation-shard"))
    assert fused == [f"variation-shard-gen-{g:03d}" for g in range(1, T)]
    assert not [t for t in all_tasks(spec) if t["taskInfo"]["name"].startswith("embed-synthetic")]

    # The config is a template: the run parameters default to the config's values, and the config itself
    # goes to resolve_config only, which hands the resolved run to every other step.
    from privevo.parameters import PARAMETER_NAMES, parameter_defaults

    declared = spec["root"]["inputDefinitions"]["parameters"]
    assert set(declared) == {"run_id", "resume", "force_new_noise", *PARAMETER_NAMES}
    for name, default in parameter_defaults(cfg).items():
        assert declared[name]["defaultValue"] == default, name
    assert spec["pipelineInfo"]["name"] == f"private-evolution-{cfg.name}"
    constants = [t for t in all_tasks(spec)
                 if "config_json" in t.get("inputs", {}).get("parameters", {})]
    assert [t["taskInfo"]["name"] for t in constants] == ["resolve-config"]
    assert spec.get("defaultPipelineRoot") == cfg.kubernetes.pipeline_root
    loops = [t for t in all_tasks(spec) if "parameterIterator" in t]
    assert len(loops) == T + 1  # generation 0 and every generation's variations
    for loop in loops:
        assert json.loads(loop["parameterIterator"]["items"]["raw"]) == list(range(cfg.population.num_shards))

    # The private-data credentials are mounted on the private steps only.
    private = {e for kind in ("embed_private", "warm_start", "dp_vote") for e in groups.get(kind, [])}
    if cfg.evaluation.against_private:
        private |= set(groups["evaluate"])
    assert {name for name, executor in platform.items() if "secretAsVolume" in executor} == private
    for name in private:
        assert platform[name]["secretAsVolume"][0]["secretName"] == "private-gcs"

    # A gs:// model is a KFP Model artifact (an importer): every step that calls the model consumes it, so the
    # lineage starts at the model. A PVC of weights is mounted on those steps only.
    from privevo.step_table import MODEL_STEPS

    consumers = {t["componentRef"]["name"] for t in all_tasks(spec) if "model" in t.get("inputs", {}).get("artifacts", {})}
    model_components = {f"comp-{name.removeprefix('exec-')}" for kind in MODEL_STEPS for name in groups.get(kind, [])}
    assert consumers == (model_components if remote_model else set()), config
    for kind, names in groups.items():
        for name in names:
            mounts = platform.get(name, {}).get("pvcMount", [])
            expected = [cfg.kubernetes.model_pvc.mount_path] if cfg.kubernetes.model_pvc and kind in MODEL_STEPS else []
            assert [m["mountPath"] for m in mounts] == expected, (config, name)

    # GPU requests on the model steps where the config asks for them; requests as well as limits on every step
    # (the scheduler places a pod by its requests), resolve_config's small and fixed.
    from privevo.dag import LIGHT_STEP

    for kind, names in groups.items():
        for name in names if kind != "importer" else []:
            resources = spec["deploymentSpec"]["executors"][name]["container"].get("resources", {})
            wants_gpu = cfg.kubernetes.model_step.gpu_limit > 0 and kind not in ("dp_vote", "warm_start", "resolve_config")
            # every step has a deadline on a cluster: a stuck call fails its step instead of holding a node
            resources_of = {"resolve_config": LIGHT_STEP, "dp_vote": cfg.kubernetes.cpu_step,
                            "warm_start": cfg.kubernetes.cpu_step}.get(kind, cfg.kubernetes.model_step)
            assert platform[name]["activeDeadlineSeconds"] == str(resources_of.timeout_s), (config, name)
            assert ("accelerator" in resources) == wants_gpu, (config, name)
            assert resources["resourceCpuLimit"] == resources_of.cpu, (config, name)
            assert resources["resourceCpuRequest"] == (resources_of.cpu_request or resources_of.cpu), (config, name)
            assert resources["resourceMemoryRequest"] == (resources_of.memory_request or resources_of.memory), name
    assert spec["deploymentSpec"]["executors"]["exec-resolve-config"]["container"]["resources"][
        "resourceCpuRequest"] == "250m"
    # the run's own deadline, which also counts a pod's wait for a node
    assert docs[1]["platforms"]["kubernetes"]["pipelineConfig"] == {
        "activeDeadlineSeconds": cfg.kubernetes.pipeline_timeout_s}


@pytest.mark.parametrize("against_private", [False, True])
def test_exactly_the_private_steps_carry_the_tier_label(tmp_path, against_private):
    """The pods of the steps that read the private tier, and no other, carry the label the cluster's admission
    policy (manifests/components/private-step-account) selects to move them to the private service account."""
    from kfp import compiler

    from privevo.config import load_config
    from privevo.dag import build_pipeline

    config = load_config(ROOT / "configs" / "tiny.yaml", [f"evaluation.against_private={str(against_private).lower()}"])
    package = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(build_pipeline(config), package_path=str(package))
    spec, platform = yaml.safe_load_all(package.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    policy = yaml.safe_load((ROOT / "manifests" / "components" / "private-step-account" / "policy.yaml").read_text())
    (rule,) = policy["spec"]["rules"]
    (match,) = rule["match"]["any"]
    tier = {"labels": match["resources"]["selector"]["matchLabels"]}
    metadata = {name: executor["podMetadata"] for name, executor in executors.items() if "podMetadata" in executor}
    assert all(value == tier for value in metadata.values()), metadata
    labelled = set(metadata)
    groups = executors_by_step(spec)
    private = {"embed_private", "dp_vote"} | ({"evaluate"} if against_private else set())
    assert labelled == {name for kind in private for name in groups[kind]}
    assert len(labelled) == 1 + config.population.generations + against_private


def test_tiny_run_writes_the_run_layout(tiny_run):
    run_dir = tiny_run.run_dir
    assert "epsilon spent:" in tiny_run.stdout and "run path:" in tiny_run.stdout
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "complete" and run["config"]["name"] == "tiny"
    ledger = json.loads((run_dir / "ledger.json").read_text())
    assert [e["generation"] for e in ledger["events"]] == [1, 2]
    for generation in range(3):
        gen = run_dir / f"gen-{generation:03d}"
        population = np.load(gen / "population.npz")
        assert population["images"].shape == (24, 28, 28, 1) and population["images"].dtype == np.uint8
        assert int(population["generation"]) == generation
        manifest = storage.read_manifest(str(gen / "manifest"))
        assert "population.npz" in manifest
        for name, entry in manifest.items():
            assert (gen / name).stat().st_size == entry["size"]
        if generation:
            release = np.load(gen / "noisy_histogram.npz")["noisy_histogram"]
            assert release.shape == (24,)
            assert {"noisy_histogram.npz", "selection.npz", "steps/dp_vote.json"} <= set(manifest)
            assert ledger["events"][generation - 1]["release_uri"] == f"gen-{generation:03d}/noisy_histogram.npz"
            parents = np.load(gen / "population.npz")["parent_ids"]
            assert parents.min() >= 0 and parents.max() < 24
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [g["generation"] for g in metrics["generations"]] == [0, 1, 2]
    assert (run_dir / "report" / "index.html").is_file()
    # The private tier is elsewhere, and nothing private is in the released folder.
    assert (Path(tiny_run.private_root) / tiny_run.run_id / "private_embeddings.npz").is_file()
    assert not list(run_dir.rglob("private_embeddings.npz"))


@pytest.mark.model_outputs
def test_rerun_a_variation_step_reproduces_it(tmp_path, run_cli):
    """The rerun (another process, maybe another thread count) draws the same children: same parents, same samples.

    The run is made in this process (on one torch thread), so the AVX2 pass does not pay for a kfp.local run; the
    rerun is the command line's, in a process of its own.
    The tiny UNet at configs/tiny.yaml's 3 DDIM steps: measured identical across 1 and 2 threads, batch sizes
    and AVX-512 and AVX2 kernels, so the suite's rounding tolerance holds with room to spare.
    """
    import privevo
    from privevo.testing import assert_close_images

    run = privevo.run(ROOT / "configs" / "tiny.yaml", run_root=tmp_path / "runs", private_root=tmp_path / "private",
                      run_id="rerun")
    shard = Path(run.path) / "gen-002" / "shards" / "shard-001.npz"
    before = np.load(shard)
    shard.unlink()
    result = run_cli("rerun", run.run_id, "--run-root", str(tmp_path / "runs"), "--step", "generate_variations",
                     "--generation", "2", "--shard", "1")
    assert result.returncode == 0, result.stderr
    after = np.load(shard)
    np.testing.assert_array_equal(after["parent_ids"], before["parent_ids"])
    assert_close_images(after["images"], before["images"])


def test_step_command_line_runs_outside_kfp(tmp_path):
    """``python -m privevo.components.STEP`` runs a step on a run without KFP: its outputs land in the run layout."""
    import subprocess
    import sys

    roots = ["--set", f"run_root={tmp_path}/runs", "--set", f"private_root={tmp_path}/private"]

    def step(name: str, *args: str) -> dict:
        result = subprocess.run([sys.executable, "-m", f"privevo.components.{name}", "--config", "configs/tiny.yaml",
                                 "--run-id", "by-hand", *roots, *args], cwd=ROOT, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    assert step("embed_private")["uri"] == f"{tmp_path}/private/by-hand/private_embeddings.npz"
    step("generate_initial", "--shard", "1")
    shard = np.load(tmp_path / "runs" / "by-hand" / "gen-000" / "shards" / "shard-001.npz")
    assert shard["images"].shape == (12, 28, 28, 1) and shard["images"].dtype == np.uint8
    assert not (tmp_path / "runs" / "by-hand" / "gen-000" / "shards" / "shard-000.npz").exists()


def test_run_on_gcs_lands_under_the_prefix(gcs_server, tmp_path, run_cli):
    bucket = gcs_server.make_bucket("privevo-released")
    private = gcs_server.make_bucket("privevo-private")
    result = run_cli(*tiny_args(f"{bucket}/runs", f"{private}/runs", "--run-id", "gcs-run",
                                "--set", "population.generations=1", "--set", "population.degrees=0.5",
                                pipeline_root=tmp_path / "kfp"),
                     timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    names = [b.name for b in gcs_server.client.list_blobs("privevo-released")]
    assert "runs/gcs-run/run.json" in names and "runs/gcs-run/gen-001/noisy_histogram.npz" in names
    assert "runs/gcs-run/report/index.html" in names
    private_names = sorted(b.name for b in gcs_server.client.list_blobs("privevo-private"))
    datasets = [name for name in private_names if name.startswith("runs/datasets/")]
    assert len(datasets) == 1 and datasets[0].endswith("/ledger.json")  # the data set's ledger, beside the runs
    assert [name for name in private_names if name not in datasets] == [
        "runs/gcs-run/data_quality.json", "runs/gcs-run/private_embeddings.npz", "runs/gcs-run/private_embeddings.sha256",
        "runs/gcs-run/private_timings.json",
    ]
    assert not (ROOT / "gs:").exists() and not Path("gs:").exists()


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--set", "bogus=1"], "unknown key 'bogus'"),
        (["--set", "private.path=/nonexistent/private"], "/nonexistent/private"),
        (["--set", "privacy.epsilon=null", "--set", "privacy.noise_multiplier=0.5",
          "--set", "privacy.epsilon_budget=1"], "over the budget"),
        (["--set", "model.path=/nonexistent/model"], "/nonexistent/model"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing_half(tmp_path, run_cli, extra, needle):
    result = run_cli(*tiny_args(tmp_path / "runs", tmp_path / "private", "--run-id", "bad", *extra))
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and needle in last and "Traceback" not in result.stderr
    # Nothing half-written: no release, no ledger, no population file.
    assert not list(tmp_path.rglob("noisy_histogram*.npz")) and not list(tmp_path.rglob("ledger.json"))
    assert not list(tmp_path.rglob("population.npz"))


def test_missing_bucket_is_one_line_exit_2(gcs_server, tmp_path, run_cli):
    result = run_cli(*tiny_args("gs://no-such-bucket/runs", tmp_path / "private", "--run-id", "x",
                                pipeline_root=tmp_path / "kfp"))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no-such-bucket" in last and "Traceback" not in result.stderr


def test_non_private_run_metrics_fit_kfp_metadata(tmp_path):
    """sigma = 0 gives epsilon = inf, which KFP's protobuf metadata cannot hold: it goes in as text."""
    from google.protobuf import struct_pb2
    from kfp import dsl

    from privevo.components.common import log_metrics, write_reference

    metrics = dsl.Metrics(name="privacy", uri=str(tmp_path / "m"), metadata={})
    log_metrics(metrics, {"epsilon": float("inf"), "generation": 1})
    selection = dsl.Dataset(name="selection", uri=str(tmp_path / "s"), metadata={})
    selection.path = str(tmp_path / "s.json")
    write_reference(selection, {"epsilon": float("inf"), "uri": "runs/x/selection.npz"})
    for artifact in (metrics, selection):
        struct = struct_pb2.Struct()
        struct.update(artifact.metadata)
        json_format.MessageToJson(struct)  # what kfp does with executor output: raises on inf
    assert metrics.metadata == {"epsilon_infinite": 1.0, "generation": 1}
    assert selection.metadata["epsilon"] == "inf"
    assert json.loads((tmp_path / "s.json").read_text())["epsilon"] == float("inf")


def test_private_steps_are_never_cached_even_when_caching_is_on(run_cli, tmp_path):
    spec = compile_config(run_cli, tmp_path, "tiny.yaml", "kubernetes.caching=true")[0]
    cached = {}
    for task in all_tasks(spec):
        name = task["taskInfo"]["name"]
        if "componentRef" in task and not name.startswith(("gen-", "for-loop")):
            cached[name] = task.get("cachingOptions", {}).get("enableCache", False)
    private = {n for n in cached if n.startswith(("dp-vote", "embed-private"))}
    assert private and not any(cached[n] for n in private)
    assert not cached["resolve-config"]  # a cache hit would skip the run-folder check
    # the other steps still honour kubernetes.caching
    assert all(cached[n] for n in cached if n not in private | {"resolve-config"})


def test_the_remote_model_token_reaches_only_the_steps_that_call_the_model(run_cli, tmp_path):
    from privevo.step_table import MODEL_STEPS

    docs = compile_config(run_cli, tmp_path, "demo-remote.yaml", "kubernetes.model_token_secret=model-token",
                          "model.remote.token_file=/var/secrets/model-token/token")
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    with_token = {}
    for kind, names in executors_by_step(docs[0]).items():
        for name in names:
            volumes = platform.get(name, {}).get("secretAsVolume", [])
            with_token[name] = [v["mountPath"] for v in volumes if v["secretName"] == "model-token"]
            assert bool(with_token[name]) == (kind in MODEL_STEPS), name
    assert {path for paths in with_token.values() for path in paths} == {"/var/secrets/model-token"}


# ------------------------------------------------------------------------ what a cluster needs


@pytest.mark.parametrize("command", ["compile", "upload", "submit", "schedule"])
def test_local_roots_are_refused_for_a_cluster_without_allow_local(run_cli, tmp_path, command):
    """A pod resolves a local path in its own file system: every command that sends a pipeline to a cluster refuses
    one, before connecting, in one line naming the key and its value, and writes nothing."""
    output = tmp_path / "demo.yaml"
    extra = {"compile": ["--output", str(output)], "schedule": ["--cron", "0 0 3 * * *"]}.get(command, [])
    result = run_cli(command, "--config", "configs/demo.yaml", "--host", "http://127.0.0.1:9", *extra) \
        if command != "compile" else run_cli(command, "--config", "configs/demo.yaml", *extra)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: run_root runs is local"), result.stderr
    assert "--allow-local" in lines[0] and not output.exists()


@pytest.mark.parametrize(("overrides", "key"), [
    (["run_root=gs://b/runs", "private_root=/data/private"], "private_root /data/private"),
    (["run_root=gs://b/runs", "private_root=gs://p/runs"], "private.path /usr/share/datasets/fashion-mnist"),
    (["run_root=gs://b/runs", "private_root=gs://p/runs", "private.path=gs://p/data"], "model.path models/fashion"),
    (["run_root=gs://b/runs", "private_root=gs://p/runs", "private.path=gs://p/data", "model.path=/models/m",
      "kubernetes.model_pvc={claim_name: models, mount_path: /models}"], "evaluation.reference.path /usr/share"),
    (["run_root=gs://b/runs", "private_root=gs://p/runs", "private.path=gs://p/data", "model.path=/models/m",
      "kubernetes.model_pvc={claim_name: models, mount_path: /models}",
      "kubernetes.image_paths=[/usr/share/datasets/fashion-mnist]"], "evaluation.classifier_path models/fashion"),
    (["run_root=gs://b/runs", "private_root=gs://p/runs", "private.path=gs://p/data", "model.path=/models/m",
      "kubernetes.model_pvc={claim_name: models, mount_path: /models}",
      "kubernetes.image_paths=[/usr/share/datasets/fashion-mnist, models/fashion-mnist-classifier]"], None),
])
def test_each_local_path_is_named_unless_in_the_images_or_the_model_volume(overrides, key):
    from privevo.cluster import check_cluster_paths
    from privevo.config import load_config
    from privevo.errors import UserError

    config = load_config(ROOT / "configs" / "demo.yaml", overrides)
    check_cluster_paths(config, {}, allow_local=True)
    if key is None:
        check_cluster_paths(config, {}, allow_local=False)
        with pytest.raises(UserError, match=r"^run_root /tmp/runs is local"):  # a run parameter replaces the root
            check_cluster_paths(config, {"run_root": "/tmp/runs"}, allow_local=False)
        return
    with pytest.raises(UserError, match=f"^{re.escape(key)}"):
        check_cluster_paths(config, {}, allow_local=False)


def test_a_run_parameter_of_an_uploaded_pipeline_is_checked_too():
    from privevo.cluster import check_cluster_paths
    from privevo.errors import UserError

    check_cluster_paths(None, {"run_root": "gs://b/runs", "private_data_uri": "gs://p/data", "epsilon": 2.0}, False)
    with pytest.raises(UserError, match=r"^private\.path \./private is local"):
        check_cluster_paths(None, {"private_data_uri": "./private"}, False)
    with pytest.raises(UserError, match=r"^run_root runs is local"):  # a root is never in an image
        check_cluster_paths(None, {"run_root": "runs"}, False)


@pytest.mark.parametrize("config", ["camelyon17.yaml", "cifar10.yaml", "stable-diffusion.yaml"])
def test_gpu_configs_fit_the_documented_node_pool(config):
    """docs/cluster.md's GPU pool is g2-standard-8 (8 vCPU, 32 GB, one NVIDIA L4): a model step's requests must fit
    what such a node can give a pod after the kubelet's and the daemons' share, or its pods stay Pending."""
    from privevo.config import load_config

    k8s = load_config(ROOT / "configs" / config).kubernetes
    step = k8s.model_step
    cpu = float(step.cpu_request or step.cpu)
    memory = (step.memory_request or step.memory).removesuffix("Gi")
    assert cpu <= 7 and float(memory) <= 26 and step.gpu_limit == 1, (step, config)
    assert k8s.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-l4"}


def _compile_here(config, tmp_path, local: bool = False) -> list[dict]:
    from kfp import compiler

    from privevo.dag import build_pipeline

    package = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(build_pipeline(config, local=local), package_path=str(package))
    return list(yaml.safe_load_all(package.read_text()))


def test_images_come_from_the_registry_pinned_by_the_recorded_digest_with_the_pull_secret(tmp_path, monkeypatch):
    from privevo import cluster
    from privevo.config import load_config

    digest = "sha256:" + "ab" * 32
    digests = tmp_path / "digests.json"
    digests.write_text(json.dumps({"registry.example/privevo/privevo-cpu:0.1.0": digest}))
    monkeypatch.setattr(cluster, "DIGESTS_FILE", digests)
    config = load_config(ROOT / "configs" / "tiny.yaml", [
        "kubernetes.image_registry=registry.example/privevo/", "kubernetes.image_pull_secret=registry-login",
        "kubernetes.model_step.gpu_type=nvidia.com/gpu", "kubernetes.model_step.gpu_limit=1"])
    spec, platform = _compile_here(config, tmp_path)
    images = {name: e["container"]["image"] for name, e in spec["deploymentSpec"]["executors"].items()}
    assert images["exec-dp-vote"] == f"registry.example/privevo/privevo-cpu:0.1.0@{digest}"
    assert images["exec-resolve-config"] == images["exec-dp-vote"]
    # no digest recorded for the CUDA image: its tag, under the registry
    assert images["exec-initial-shard"] == "registry.example/privevo/privevo-cuda:0.1.0"
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == set(images)
    for name in images:
        assert [secret["secretName"] for secret in executors[name]["imagePullSecret"]] == ["registry-login"], name


def test_retries_back_off_and_a_user_error_is_not_retried_on_a_cluster(tmp_path):
    from privevo.cluster import RETRY_GUARD_ENV
    from privevo.config import load_config

    config = load_config(ROOT / "configs" / "tiny.yaml", ["kubernetes.retries=2", "kubernetes.retry_backoff_s=30",
                                                           "kubernetes.pipeline_timeout_s=36000"])
    spec = _compile_here(config, tmp_path)[0]
    retried = [t for t in all_tasks(spec) if "retryPolicy" in t]
    assert {t["taskInfo"]["name"] for t in retried} >= {"resolve-config", "embed-private", "evaluate"}
    for task in retried:
        assert task["retryPolicy"] == {"maxRetryCount": 2, "backoffDuration": "30s",
                                       "backoffFactor": 2.0, "backoffMaxDuration": "36000s"}
    for name, executor in spec["deploymentSpec"]["executors"].items():
        env = {e["name"]: e["value"] for e in executor["container"].get("env", [])}
        assert env.get(RETRY_GUARD_ENV) == "1", name
    # kfp.local retries nothing: a failed step ends the local run at once (`run --resume` continues it)
    for quiet in (_compile_here(config, tmp_path, local=True)[0],
                  _compile_here(load_config(ROOT / "configs" / "tiny.yaml", ["kubernetes.retries=0"]), tmp_path)[0]):
        assert not [t for t in all_tasks(quiet) if "retryPolicy" in t]
        assert not any(e["container"].get("env") for e in quiet["deploymentSpec"]["executors"].values())


class _Artifact:
    def __init__(self, path) -> None:
        self.path, self.metadata = str(path), {}


def test_a_user_error_ends_the_task_and_its_retry_exits_at_once(tmp_path, monkeypatch, capsys):
    """A step that fails with a user error leaves only "user error" in the run root (never its message, which may
    come from a private step); a retry of that task in the same KFP run exits 2 without doing any work, while
    another KFP run (a resume) and another task run as usual."""
    from privevo import steps
    from privevo.cluster import RETRY_GUARD_ENV, USER_ERRORS_DIR
    from privevo.components.common import write_resolved
    from privevo.components.embed_private import embed_private
    from privevo.config import load_config
    from privevo.errors import UserError

    config = load_config(ROOT / "configs" / "tiny.yaml", [f"run_root={tmp_path}/runs",
                                                          f"private_root={tmp_path}/private"])
    calls = []

    def failing(run):
        calls.append(run.run_id)
        raise UserError("the private set has SECRET-DETAIL")

    monkeypatch.setattr(steps, "embed_private", failing)

    def attempt(kfp_run_id: str) -> None:
        resolved = _Artifact(tmp_path / f"resolved-{kfp_run_id}.json")
        run = steps.resolve_run(config, {}, "guarded", kfp_run_id != "kfp-1", kfp_run_id)
        write_resolved(resolved, run, False, kfp_run_id)
        embed_private(resolved, _Artifact(tmp_path / "embeddings.json"))

    with pytest.raises(UserError):  # no guard outside a pipeline compiled with retries: the error passes through
        attempt("kfp-1")
    assert calls == ["guarded"] and not (tmp_path / "runs" / USER_ERRORS_DIR).exists()

    monkeypatch.setenv(RETRY_GUARD_ENV, "1")
    capsys.readouterr()
    with pytest.raises(SystemExit) as ended:
        attempt("kfp-1")
    assert ended.value.code == 2 and len(calls) == 2
    assert capsys.readouterr().err == "error: the private set has SECRET-DETAIL\n"
    marker = tmp_path / "runs" / USER_ERRORS_DIR / "kfp-1" / "embed_private"
    assert marker.read_text() == "user error\n"
    assert [p.name for p in (tmp_path / "runs" / USER_ERRORS_DIR).rglob("*") if p.is_file()] == ["embed_private"]

    with pytest.raises(SystemExit) as retried:  # the retry: no work
        attempt("kfp-1")
    assert retried.value.code == 2 and len(calls) == 2
    assert "ended with a user error" in capsys.readouterr().err

    with pytest.raises(SystemExit):  # a resume is another KFP run: it tries again
        attempt("kfp-2")
    assert len(calls) == 3
