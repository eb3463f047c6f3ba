"""Pods and Argo workflow size of one run of a compiled pipeline on KFP 2.14+ (the Argo Workflows engine).

    python bench/count_pods.py PIPELINE.yaml [--json]

PIPELINE.yaml is what ``python pipeline.py compile`` writes. Nothing is run: the figures follow from the
compiled spec and from what the KFP backend makes of it, read in kubeflow/pipelines at tags 2.14.0 and
2.17.0 and on main (2026-08), which agree on all of this:

- ``backend/src/v2/compiler/argocompiler/dag.go``: the run starts with a root DAG driver pod. A container
  task becomes a container driver pod (``system-container-driver``) and an executor pod
  (``system-container-impl``: KFP's launcher as init container, the step as main container) under a DAG
  node (``system-container-executor``) and, with a retry policy, a Retry node. A ParallelFor task of N
  items becomes a DAG node, an iterator DAG driver pod (``iteration-driver``), a TaskGroup node (Argo's
  ``withSequence``) and per iteration a DAG node, a DAG driver pod (``iteration-item-driver``), a DAG node
  and the body's tasks. A sub-DAG task is a DAG driver pod and a DAG node. ``importer.go``: an importer
  task is one pod. Each retry of a failed step adds an executor pod (not counted: a run without failures).
- ``container.go`` and ``backend/src/v2/driver/driver.go`` (``initPodSpecPatch``): the driver writes the
  executor pod's spec as its ``pod-spec-patch`` output: the launcher's command line, which carries the
  executor input (every input value and artifact URI, every output URI) and the component spec as JSON,
  the step's command with the executor input once more, resources, env, and what the kubernetes config adds.
- ``component/launcher_v2.go`` (``downloadArtifacts``): the launcher downloads every input artifact into the
  pod, so a gs:// model (the importer's artifact) is copied once per model pod: "model copies" below.

Size: Argo keeps one entry per node in the Workflow's ``status.nodes`` with its resolved inputs and
outputs: a container driver holds its component, task, container and kubernetes-config JSON as inputs and
the pod-spec-patch as output, which the executor's DAG node, Retry node and pod hold again as input. This
script writes each entry as Argo would (names, ids, times and the parameters built from the spec, with
artifact URIs of a typical length), so the status size is an estimate within some percent, not a
measurement; the workflow spec (templates and the specs KFP stores as workflow arguments) is estimated
from the compiled spec the same way. Argo (``workflow/controller/operator.go``, ``checkAndCompress``):
once the Workflow object's JSON reaches 1 MiB, ``status.nodes`` is gzipped and base64-encoded into
``status.compressedNodes``; if the object is still 1 MiB or more the run fails ("workflow is longer than
maximum allowed size") unless node status offloading (``persistence.nodeStatusOffLoad``, a database) is on.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MAX_WORKFLOW_SIZE = 1024 * 1024  # Argo's maxWorkflowSize
WORKFLOW_NAME = "private-evolution-abcde"  # generateName plus 5 characters, as the KFP API server names a run
RUN_ID = "0f4c8a2e-5b1d-4c3e-9a7f-2d6b8e1c4a90"
LAUNCHER = "/kfp-launcher/launch"
SYSTEM_TEMPLATES_BYTES = 12_000  # the driver, executor and importer templates' fixed fields (args, env, volumes)
DAG_TASK_OVERHEAD_BYTES = 350  # one Argo DAG task entry besides the task JSON it carries (name, template, args)
DRIVER_PARAMETERS = ("component", "task", "container", "task-name", "parent-dag-id", "iteration-index",
                     "kubernetes-config")


def _json(value: Any) -> str:
    """Compact JSON, as Go's encoding/json and protojson write it."""
    return json.dumps(value, separators=(",", ":"))


@dataclass
class Count:
    """What one run makes: pods by role, Argo nodes (their status entries), model copies."""

    pods: dict[str, int] = field(default_factory=dict)
    gpu_pods: int = 0
    model_copies: int = 0
    loops: list[tuple[str, int, int | None]] = field(default_factory=list)  # (name, iterations, parallelism)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    largest_patch: tuple[int, str] = (0, "")

    def pod(self, role: str) -> None:
        """Count one pod of this role."""
        self.pods[role] = self.pods.get(role, 0) + 1


@dataclass(frozen=True)
class Scope:
    """What a DAG's tasks read: its input parameters' values and its input artifacts (count, from the importer)."""

    values: dict[str, Any]
    artifacts: dict[str, tuple[int, bool]]
    path: str


class Walker:
    """Expands a compiled pipeline spec into the Argo nodes of one run, as the KFP backend's compiler lays them out."""

    def __init__(self, spec: dict[str, Any], platform: dict[str, Any]) -> None:
        self.spec = spec
        self.components: dict[str, Any] = spec["components"]
        self.executors: dict[str, Any] = spec["deploymentSpec"]["executors"]
        self.platform: dict[str, Any] = platform
        self.root_uri = f"{spec.get('defaultPipelineRoot', 'minio://mlpipeline/v2/artifacts').rstrip('/')}/" \
                        f"{spec['pipelineInfo']['name']}/{RUN_ID}"
        self.count = Count()
        self._serial = 0
        self._executions = 48000

    def execution(self) -> str:
        """A new ML Metadata id (executions and artifacts are numbered as they are made)."""
        self._executions += 1
        return str(self._executions)

    def node(self, parent: str | None, name: str, kind: str, template: str, inputs: dict[str, str] | None = None,
             outputs: dict[str, str] | None = None, gpu: bool = False) -> str:
        """Add one status.nodes entry (the fields Argo writes for a finished node) and return its id."""
        self._serial += 1
        parent_path = self.count.nodes[parent]["name"] if parent else WORKFLOW_NAME
        digest = int(hashlib.sha256(str(self._serial).encode()).hexdigest()[:12], 16)
        node_id = f"{WORKFLOW_NAME}-{digest % 10**10}"
        entry: dict[str, Any] = {
            "id": node_id, "name": f"{parent_path}.{name}" if parent else WORKFLOW_NAME, "displayName": name,
            "type": kind, "templateName": template, "templateScope": "local/", "phase": "Succeeded",
            "boundaryID": parent or "", "startedAt": _time(digest), "finishedAt": _time(digest // 7),
            "progress": "1/1", "resourcesDuration": {"cpu": digest % 9973, "memory": digest % 99991,
                                                     **({"nvidia.com/gpu": digest % 9967} if gpu else {})},
        }
        if kind == "Pod":
            entry["hostNodeName"] = f"gke-privevo-pool-3f9c2b1a-{digest % 36**4:04x}"
            entry["outputs"] = {"exitCode": "0"}
        if inputs:
            entry["inputs"] = {"parameters": [{"name": k, "value": v} for k, v in inputs.items()]}
        if outputs:
            entry.setdefault("outputs", {})["parameters"] = [{"name": k, "value": v} for k, v in outputs.items()]
        self.count.nodes[node_id] = entry
        if parent:
            self.count.nodes[parent].setdefault("children", []).append(node_id)
            self.count.nodes[parent]["outboundNodes"] = [node_id]
        return node_id

    def run(self) -> Count:
        """The whole run: entrypoint, root DAG driver, root DAG."""
        entry = self.node(None, WORKFLOW_NAME, "DAG", "entrypoint")
        root = self.spec["root"]
        defaults = {name: p.get("defaultValue", "") for name, p in root.get("inputDefinitions", {})
                    .get("parameters", {}).items()}
        self.node(entry, "root-driver", "Pod", "system-dag-driver", inputs={
            "component": _json(root), "runtime-config": _json({"parameterValues": defaults}),
            "driver-type": "ROOT_DAG", "parent-dag-id": "0", "iteration-index": "-1"},
            outputs={"execution-id": self.execution(), "iteration-count": "0", "condition": "true"})
        self.count.pod("root DAG driver")
        dag = self.node(entry, "root", "DAG", "root")
        self.dag(dag, root["dag"], Scope(defaults, {}, "root"))
        return self.count

    def dag(self, parent: str, dag: dict[str, Any], scope: Scope) -> None:
        tasks: dict[str, Any] = dag["tasks"]
        for name in sorted(tasks):
            self.task(parent, name, tasks[name], tasks, scope)

    def _artifacts(self, task: dict[str, Any], siblings: dict[str, Any], scope: Scope) -> dict[str, tuple[int, bool]]:
        """Each input artifact of a task: how many artifacts it lists and whether it is the importer's model."""
        found = {}
        for name, source in task.get("inputs", {}).get("artifacts", {}).items():
            if "componentInputArtifact" in source:
                found[name] = scope.artifacts.get(source["componentInputArtifact"], (1, False))
            elif "taskOutputArtifact" in source:
                producer = siblings[source["taskOutputArtifact"]["producerTask"]]
                executor = self.executors.get(self.components[producer["componentRef"]["name"]].get("executorLabel", ""))
                found[name] = (len(_items(producer)) if "parameterIterator" in producer else 1,
                               bool(executor and "importer" in executor))
        return found

    def _values(self, task: dict[str, Any], scope: Scope) -> dict[str, Any]:
        values = {}
        for name, source in task.get("inputs", {}).get("parameters", {}).items():
            if "runtimeValue" in source:
                values[name] = source["runtimeValue"].get("constant", "")
            elif "componentInputParameter" in source:
                values[name] = scope.values.get(source["componentInputParameter"], "")
            else:
                values[name] = "x" * 16  # another task's output parameter
        return values

    def task(self, parent: str, name: str, task: dict[str, Any], siblings: dict[str, Any], scope: Scope) -> None:
        component = self.components[task["componentRef"]["name"]]
        values, artifacts = self._values(task, scope), self._artifacts(task, siblings, scope)
        task_json, component_json = _json(task), _json(component)
        if "parameterIterator" in task:
            items = _items(task)
            parallelism = task.get("iteratorPolicy", {}).get("parallelismLimit")
            self.count.loops.append((task["taskInfo"]["name"], len(items), parallelism))
            loop = self.node(parent, name, "DAG", f"{task['componentRef']['name']}-{name}-iterator")
            self.node(loop, "iteration-driver", "Pod", "system-dag-driver", inputs={
                "component": component_json, "task": task_json, "task-name": name, "parent-dag-id": self.execution()},
                outputs={"execution-id": self.execution(), "iteration-count": str(len(items)), "condition": "true"})
            self.count.pod("ParallelFor iterator DAG driver")
            group = self.node(loop, "iteration-iterations", "TaskGroup", "")
            item_input = task["parameterIterator"]["itemInput"]
            for index, item in enumerate(items):
                iteration = self.node(group, f"iteration-iterations({index}:{index})", "DAG",
                                      f"{task['componentRef']['name']}-iteration")
                self.node(iteration, "iteration-item-driver", "Pod", "system-dag-driver", inputs={
                    "component": component_json, "task": task_json, "task-name": name, "parent-dag-id": self.execution(),
                    "iteration-index": str(index)}, outputs={"execution-id": self.execution(), "condition": "true"})
                self.count.pod("ParallelFor iteration DAG driver")
                body = self.node(iteration, "iteration-item", "DAG", task["componentRef"]["name"])
                self.dag(body, component["dag"], Scope({**values, item_input: item}, artifacts, scope.path))
        elif "dag" in component:
            self.node(parent, f"{name}-driver", "Pod", "system-dag-driver", inputs={
                "component": component_json, "task": task_json, "task-name": name, "parent-dag-id": self.execution()},
                outputs={"execution-id": self.execution(), "condition": "true"})
            self.count.pod("sub-DAG driver")
            body = self.node(parent, name, "DAG", task["componentRef"]["name"])
            self.dag(body, component["dag"], Scope(values, artifacts, scope.path))
        elif "importer" in self.executors[component["executorLabel"]]:
            self.node(parent, name, "Pod", "system-importer", inputs={
                "component": component_json, "task": task_json,
                "importer": _json(self.executors[component["executorLabel"]]["importer"]), "parent-dag-id": self.execution()})
            self.count.pod("importer")
        else:
            self.container_task(parent, name, task, component, values, artifacts)

    def container_task(self, parent: str, name: str, task: dict[str, Any], component: dict[str, Any],
                       values: dict[str, Any], artifacts: dict[str, tuple[int, bool]]) -> None:
        label = component["executorLabel"]
        container = self.executors[label]["container"]
        kubernetes = self.platform.get(label, {})
        gpu = bool(container.get("resources", {}).get("accelerator"))
        patch = self.pod_spec_patch(task, component, container, kubernetes, values, artifacts)
        self.node(parent, f"{name}-driver", "Pod", "system-container-driver", inputs={
            "component": _json(component), "task": _json(task), "container": _json(container), "task-name": name,
            "parent-dag-id": self.execution(), "iteration-index": "-1", "kubernetes-config": _json(kubernetes)},
            outputs={"pod-spec-patch": patch, "cached-decision": "false", "condition": "true"})
        self.count.pod("container driver")
        retry = task.get("retryPolicy")
        retry_inputs = {"retry-max-count": str(retry.get("maxRetryCount", 0)), "retry-backoff-duration": "60",
                        "retry-backoff-factor": "2", "retry-backoff-max-duration": "86400"} if retry else {}
        inputs = {"pod-spec-patch": patch, "cached-decision": "false", **retry_inputs}
        executor = self.node(parent, name, "DAG", "system-container-executor", inputs=inputs)
        if retry:
            executor = self.node(executor, "executor", "Retry", "retry-system-container-impl", inputs=inputs)
        self.node(executor, "executor(0)" if retry else "executor", "Pod", "system-container-impl",
                  inputs={"pod-spec-patch": patch, **retry_inputs}, gpu=gpu)
        self.count.pod("executor")
        self.count.gpu_pods += gpu
        self.count.model_copies += any(is_model for _, is_model in artifacts.values())
        self.count.largest_patch = max(self.count.largest_patch, (len(patch), task["taskInfo"]["name"]))

    def pod_spec_patch(self, task: dict[str, Any], component: dict[str, Any], container: dict[str, Any],
                       kubernetes: dict[str, Any], values: dict[str, Any],
                       artifacts: dict[str, tuple[int, bool]]) -> str:
        """The driver's pod-spec-patch for one container task (driver.go initPodSpecPatch), as JSON."""
        task_name = task["taskInfo"]["name"]
        definitions = component.get("outputDefinitions", {})

        def artifact(key: str, schema: str) -> dict[str, Any]:
            return {"name": self.execution(), "type": {"schemaTitle": schema, "schemaVersion": "0.0.1"},
                    "uri": f"{self.root_uri}/{task_name}/{self.execution()}/{key}", "metadata": {}}

        input_types = component.get("inputDefinitions", {}).get("artifacts", {})
        executor_input = {
            "inputs": {
                "parameterValues": values,
                "artifacts": {name: {"artifacts": [artifact(name, input_types[name]["artifactType"]["schemaTitle"])
                                                   for _ in range(n)]} for name, (n, _) in artifacts.items()},
            },
            "outputs": {
                "parameters": {name: {"outputFile": f"/tmp/kfp/outputs/{name}"}
                               for name in definitions.get("parameters", {})},
                "artifacts": {name: {"artifacts": [artifact(name, d["artifactType"]["schemaTitle"])]}
                              for name, d in definitions.get("artifacts", {}).items()},
                "outputFile": "/tmp/kfp_outputs/output_metadata.json",
            },
        }
        executor_json = _json(executor_input)
        user = [executor_json if arg == "{{$}}" else arg for arg in container.get("command", []) + container.get("args", [])]
        resources = container.get("resources", {})
        main = {
            "name": "main", "image": container["image"],
            "command": [LAUNCHER, "--executor_type", "container", "--pipeline_name", self.spec["pipelineInfo"]["name"],
                        "--run_id", RUN_ID, "--execution_id", self.execution(), "--executor_input", executor_json,
                        "--component_spec", _json(component), "--pod_name", "$(KFP_POD_NAME)", "--pod_uid",
                        "$(KFP_POD_UID)", "--ml_pipeline_server_address", "ml-pipeline.kubeflow",
                        "--ml_pipeline_server_port", "8887", "--mlmd_server_address", "metadata-grpc-service.kubeflow",
                        "--mlmd_server_port", "8080", "--publish_logs", "true", "--ml_pipeline_tls_enabled=false",
                        "--metadata_tls_enabled=false", "--ca_cert_path", "", "--cache_disabled=false",
                        "--log_level", "1", "--"],
            "args": user,
            "env": container.get("env", []),
            "resources": {"limits": {k: v for k, v in resources.items() if k.startswith("resource") and "Limit" in k},
                          "requests": {k: v for k, v in resources.items() if k.startswith("resource") and "Request" in k}},
        }
        # the kubernetes config's own JSON stands for the volumes, mounts, selectors and deadline it adds
        return _json({"containers": [main], **kubernetes})


def _time(seconds: int) -> str:
    """A timestamp within a day of the run, as Argo writes one."""
    return f"2026-08-21T{seconds % 24:02d}:{seconds // 24 % 60:02d}:{seconds // 1440 % 60:02d}Z"


def _items(task: dict[str, Any]) -> list[Any]:
    """A ParallelFor's items; only a compile-time list can be counted."""
    raw = task["parameterIterator"]["items"].get("raw")
    if raw is None:
        raise SystemExit(f"error: ParallelFor {task['taskInfo']['name']} iterates over a run-time value: "
                         "its iterations cannot be counted from the compiled YAML")
    items: list[Any] = json.loads(raw)
    return items


def spec_bytes(spec: dict[str, Any], platform: dict[str, Any]) -> int:
    """An estimate of the Workflow spec's JSON size: the component and container specs KFP stores once per distinct
    container as workflow arguments, the kubernetes configs, each DAG task's entry with its task JSON, fixed templates."""
    executors = spec["deploymentSpec"]["executors"]
    arguments = {}
    for component in spec["components"].values():
        executor = executors.get(component.get("executorLabel", ""), {})
        if "container" in executor:
            arguments[_json(executor["container"])] = len(_json(component))
    size = sum(len(c) + n for c, n in arguments.items()) + sum(len(_json(k)) for k in platform.values())
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    for dag in dags:
        for task in dag["tasks"].values():
            copies = 2 if "parameterIterator" in task else 1  # the iterator's two DAG drivers both carry the task
            size += copies * (len(_json(task)) + DAG_TASK_OVERHEAD_BYTES)
    return size + SYSTEM_TEMPLATES_BYTES


def analyse(path: Path) -> dict[str, Any]:
    """Pods, GPU pods, model copies and the workflow size estimate of one compiled pipeline YAML."""
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    spec = documents[0]
    platform: dict[str, Any] = next(
        (d["platforms"]["kubernetes"]["deploymentSpec"]["executors"] for d in documents[1:] if "platforms" in d), {})
    count = Walker(spec, platform).run()
    nodes_json = _json(count.nodes)
    compressed = len(base64.b64encode(gzip.compress(nodes_json.encode(), compresslevel=6)))
    spec_size = spec_bytes(spec, platform)
    raw_total, compressed_total = spec_size + len(nodes_json), spec_size + compressed
    if raw_total < MAX_WORKFLOW_SIZE:
        verdict = "fits under Argo's 1 MiB without compression"
    elif compressed_total < MAX_WORKFLOW_SIZE:
        verdict = "over 1 MiB: Argo stores status.nodes gzipped (status.compressedNodes), which fits"
    else:
        verdict = "over 1 MiB even gzipped: the run fails unless Argo's node status offloading is on"
    return {
        "pipeline": spec["pipelineInfo"]["name"],
        "pods": sum(count.pods.values()), "pods_by_role": count.pods, "gpu_pods": count.gpu_pods,
        "model_copies": count.model_copies,
        "parallel_for": [{"name": n, "iterations": i, "parallelism": p} for n, i, p in count.loops],
        "argo_nodes": len(count.nodes), "status_nodes_bytes": len(nodes_json),
        "status_nodes_compressed_bytes": compressed, "workflow_spec_bytes": spec_size,
        "largest_pod_spec_patch": {"task": count.largest_patch[1], "bytes": count.largest_patch[0]},
        "workflow_bytes": raw_total, "workflow_compressed_bytes": compressed_total, "verdict": verdict,
    }


def _kib(n: int) -> str:
    return f"{n / 1024:,.0f} KiB"


def report(result: dict[str, Any]) -> str:
    """The analysis as a few lines of text."""
    loops = result["parallel_for"]
    shapes = sorted({(loop["iterations"], loop["parallelism"]) for loop in loops}, key=str)
    roles = ", ".join(f"{n} {role}" for role, n in result["pods_by_role"].items())
    return "\n".join([
        f"pipeline {result['pipeline']}: {len(loops)} ParallelFor ("
        + "; ".join(f"{i} iterations, parallelism {p or 'unlimited'}" for i, p in shapes) + ")",
        f"pods per run (no retries): {result['pods']} = {roles}",
        f"GPU pods: {result['gpu_pods']}; model copies (a gs:// model downloaded by the launcher into a pod): "
        f"{result['model_copies']}",
        f"Argo nodes: {result['argo_nodes']}; status.nodes ~{_kib(result['status_nodes_bytes'])} as JSON, "
        f"~{_kib(result['status_nodes_compressed_bytes'])} gzipped and base64-encoded; workflow spec "
        f"~{_kib(result['workflow_spec_bytes'])}",
        f"largest pod-spec-patch: {result['largest_pod_spec_patch']['task']}, "
        f"{_kib(result['largest_pod_spec_patch']['bytes'])} (held by 4 nodes with a retry policy)",
        f"workflow object ~{_kib(result['workflow_bytes'])}, ~{_kib(result['workflow_compressed_bytes'])} with "
        f"status.nodes compressed: {result['verdict']}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", type=Path, help="a compiled pipeline YAML (python pipeline.py compile)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    try:
        result = analyse(args.pipeline)
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        reason = (str(err).splitlines() or [""])[0]
        print(f"error: {args.pipeline} is not a readable compiled pipeline YAML ({type(err).__name__}: {reason})",
              file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
