"""The Kubeflow pipeline: compile every config, run tiny end to end, rerun a step, bad input."""

import json
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
    output = tmp_path / f"{config}.pipeline.yaml"
    sets = [a for o in overrides for a in ("--set", o)]
    result = run_cli("compile", "--config", f"configs/{config}", "--output", str(output), *sets)
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
    remote_model = bool(cfg.model.path and is_remote(cfg.model.path))
    assert set(groups) == {"resolve_config", "embed_private", "initial_shard", "dp_vote", "generate_variations",
                           "evaluate"} | ({"variation_shard"} if T > 1 else set()) | ({"importer"} if remote_model else set())
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
    private = {e for kind in ("embed_private", "dp_vote") for e in groups[kind]}
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

    # GPU requests on the model steps where the config asks for them.
    for kind, names in groups.items():
        for name in names if kind != "importer" else []:
            resources = spec["deploymentSpec"]["executors"][name]["container"].get("resources", {})
            wants_gpu = cfg.kubernetes.model_step.gpu_limit > 0 and kind not in ("dp_vote", "resolve_config")
            # every step has a deadline on a cluster: a stuck call fails its step instead of holding a node
            resources_of = cfg.kubernetes.cpu_step if kind in ("dp_vote", "resolve_config") else cfg.kubernetes.model_step
            assert platform[name]["activeDeadlineSeconds"] == str(resources_of.timeout_s), (config, name)
            assert ("accelerator" in resources) == wants_gpu, (config, name)


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
def test_rerun_a_variation_step_reproduces_it(tiny_run, tmp_path, run_cli):
    """The rerun (another process, maybe another thread count) draws the same children: same parents, same samples.

    The tiny UNet at configs/tiny.yaml's 3 DDIM steps: measured identical across 1 and 2 threads, batch sizes
    and AVX-512 and AVX2 kernels, so the suite's rounding tolerance holds with room to spare.
    """
    from privevo.testing import assert_close_images

    run = tiny_run.copy(tmp_path)
    shard = run.run_dir / "gen-002" / "shards" / "shard-001.npz"
    before = np.load(shard)
    shard.unlink()
    result = run_cli("rerun", run.run_id, "--run-root", run.run_root, "--step", "generate_variations",
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
