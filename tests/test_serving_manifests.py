"""Offline checks of the model-serving manifests (manifests/serving): rendered, validated, in agreement with serve.

As in test_deploy.py: ``kubectl kustomize`` renders, ``kubernetes-validate --strict`` checks the
plain Deployment and Service; the KServe InferenceService (a CRD without a schema there) is
checked field by field. Both must run the command line that ``pipeline.py serve`` accepts and
probe the protocol's health routes.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.test_deploy import KUBERNETES_VERSION, NAMESPACE, PUBLIC_SA, _tool, kubectl_tool

REPO = Path(__file__).resolve().parents[1]
SERVING = REPO / "manifests" / "serving"


def render(folder: Path) -> list[dict]:
    proc = subprocess.run([kubectl_tool(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def check_serve_args(args: list[str]) -> None:
    """The container's command is a valid ``pipeline.py serve`` line on 0.0.0.0:8080 with a GPU."""
    from privevo import cli

    assert args[:3] == ["python", "pipeline.py", "serve"]
    parsed = cli.build_parser().parse_args(args[2:])
    assert parsed.func is cli.cmd_serve
    assert (parsed.host, parsed.port, parsed.device) == ("0.0.0.0", 8080, "cuda")
    assert parsed.model_kind and parsed.model_path


def test_deployment_and_service_validate(tmp_path: Path) -> None:
    docs = render(SERVING)
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == [
        ("Deployment", "privevo-model"), ("Service", "privevo-model")]
    assert all(d["metadata"]["namespace"] == NAMESPACE for d in docs)
    validator = _tool("kubernetes-validate", "kubernetes-validate")
    assert validator, "kubernetes-validate is not installed (dev dependency)"
    path = tmp_path / "serving.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    proc = subprocess.run([validator, "--strict", "-k", KUBERNETES_VERSION, str(path)],
                          capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and output.count(" passed for resource ") == 2, output
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == PUBLIC_SA  # public weights only: never the private account
    container = pod["containers"][0]
    check_serve_args(container["args"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_inference_service_is_well_formed() -> None:
    docs = render(SERVING / "kserve")
    assert [(d["apiVersion"], d["kind"]) for d in docs] == [("serving.kserve.io/v1beta1", "InferenceService")]
    service = docs[0]
    assert service["metadata"]["namespace"] == NAMESPACE
    # Standard: a Deployment and a Service, no Knative (RawDeployment is its deprecated alias)
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    predictor = service["spec"]["predictor"]
    assert predictor["serviceAccountName"] == PUBLIC_SA
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"  # the name KServe routes to
    check_serve_args(container["args"])
    assert container["ports"][0]["containerPort"] == 8080
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_kserve_address_is_the_predictor_service() -> None:
    """The URL the manifests tell steps to call is KServe's predictor Service, <name>-predictor."""
    (service,) = render(SERVING / "kserve")
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    expected = f"http://{name}-predictor.{namespace}.svc.cluster.local"
    comments = (SERVING / "kserve" / "kustomization.yaml").read_text()
    assert expected in comments
    # the plain Service of manifests/serving is {name}:8080; KServe has no Service {name} on port 80
    stale = re.compile(rf"http://{name}\.{namespace}\.svc\.cluster\.local(?!:8080)")
    for path in (*SERVING.rglob("*.yaml"), REPO / "docs" / "cluster.md", *(REPO / "configs").glob("*.yaml")):
        assert not stale.search(path.read_text()), f"{path}: KServe serves the predictor at {expected}"
