"""bench/count_pods.py: the pods and workflow size a compiled pipeline makes on KFP 2.14+, and the knobs that shrink them
(population.num_shards, kubernetes.max_parallel_shards, kubernetes.model_pvc)."""

import json
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

from privevo.step_table import STEPS

GENERATIONS = 2
# container tasks outside the shard loops: resolve_config, embed_private, one dp_vote per generation, evaluate
UNSHARDED_TASKS = 3 + GENERATIONS
# of those, the ones with the model-step resources (a GPU in camelyon17.yaml): embed_private and evaluate
UNSHARDED_GPU_TASKS = sum(spec.runs_network and not spec.sharded and not spec.per_generation for spec in STEPS)


def compile_camelyon(run_cli, tmp_path, shards: int, *overrides: str) -> tuple[str, list[dict]]:
    """camelyon17.yaml (a gs:// model: an importer feeds the model steps) with GENERATIONS generations."""
    output = tmp_path / f"camelyon17-{shards}-{len(list(tmp_path.iterdir()))}.yaml"
    sets = [f"population.generations={GENERATIONS}", f"population.num_shards={shards}", *overrides]
    result = run_cli("compile", "--config", "configs/camelyon17.yaml", "--output", str(output),
                     *(a for s in sets for a in ("--set", s)))
    assert result.returncode == 0, result.stderr
    return str(output), list(yaml.safe_load_all(output.read_text()))


def count_pods(path: str) -> dict:
    result = subprocess.run([sys.executable, "bench/count_pods.py", path, "--json"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_pods_follow_the_kfp_backends_layout(run_cli, tmp_path):
    """A root DAG driver, the importer's one pod, a driver and an executor per container task, and per ParallelFor an
    iterator driver plus per iteration a DAG driver and the body's driver and executor."""
    shards = 3
    figures = count_pods(compile_camelyon(run_cli, tmp_path, shards)[0])
    loops = GENERATIONS + 1
    assert figures["pods"] == 1 + 1 + 2 * UNSHARDED_TASKS + loops * (1 + 3 * shards)
    assert figures["pods_by_role"]["executor"] == UNSHARDED_TASKS + loops * shards
    assert figures["gpu_pods"] == loops * shards + UNSHARDED_GPU_TASKS
    assert figures["model_copies"] == loops * shards  # the launcher copies the gs:// model into every shard pod
    assert [loop["iterations"] for loop in figures["parallel_for"]] == [shards] * loops


def test_fewer_shards_make_fewer_pods_and_a_smaller_status(run_cli, tmp_path):
    few, many = (count_pods(compile_camelyon(run_cli, tmp_path, shards)[0]) for shards in (2, 6))
    assert few["pods"] < many["pods"]
    assert few["status_nodes_bytes"] < many["status_nodes_bytes"]
    assert few["status_nodes_compressed_bytes"] < few["status_nodes_bytes"]
    # a driver's pod-spec-patch is held by the driver, the executor's DAG node, its Retry node and the pod
    assert many["status_nodes_bytes"] > 4 * many["largest_pod_spec_patch"]["bytes"]


def test_max_parallel_shards_caps_every_shard_loop(run_cli, tmp_path):
    path, docs = compile_camelyon(run_cli, tmp_path, 4, "kubernetes.max_parallel_shards=2")
    loops = [task for component in [docs[0]["root"], *docs[0]["components"].values()]
             for task in component.get("dag", {}).get("tasks", {}).values() if "parameterIterator" in task]
    assert len(loops) == GENERATIONS + 1
    assert all(task["iteratorPolicy"]["parallelismLimit"] == 2 for task in loops)
    figures = count_pods(path)
    assert {loop["parallelism"] for loop in figures["parallel_for"]} == {2}
    unlimited = count_pods(compile_camelyon(run_cli, tmp_path, 4, "kubernetes.max_parallel_shards=null")[0])
    assert {loop["parallelism"] for loop in unlimited["parallel_for"]} == {None}
    assert figures["pods"] == unlimited["pods"]  # parallelism spreads the pods over time; it makes no fewer


def test_a_model_on_a_volume_is_copied_into_no_pod(run_cli, tmp_path):
    path, docs = compile_camelyon(run_cli, tmp_path, 2, "kubernetes.model_pvc={claim_name: models, mount_path: /models}",
                                  "model.path=/models/imagenet64-cond-ddpm")
    assert count_pods(path)["model_copies"] == 0
    mounts = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    shard_executors = [name for name in mounts if "shard" in name or "generate-variations" in name]
    assert shard_executors and all(mounts[name]["pvcMount"][0]["mountPath"] == "/models" for name in shard_executors)


@pytest.mark.parametrize("content", ["not: [a pipeline", "components: {}\n"])
def test_a_file_that_is_no_compiled_pipeline_is_one_line_exit_2(tmp_path, content):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = subprocess.run([sys.executable, "bench/count_pods.py", str(path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
