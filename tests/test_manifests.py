"""Offline checks of the namespace overlays: standalone KFP (namespace kubeflow) and multi-user Kubeflow (profile privevo).

``kubectl kustomize`` renders each overlay as an operator would; ``kubernetes-validate --strict``
checks every built-in kind; the Kyverno Policy (a CRD without a schema there) is checked field by
field. The names that must agree are compared: the namespace of every object and RoleBinding
subject, the Workload Identity annotations and the members the overlay and docs/cluster.md bind,
the label the policy selects and the account it sets.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.test_deploy import KUBERNETES_VERSION, PRIVATE_SA, PRIVATE_SECRET, PUBLIC_SA, _by_kind, _tool, kubectl_tool

REPO = Path(__file__).resolve().parents[1]
OVERLAYS = REPO / "manifests" / "overlays"
# overlay -> the namespace KFP runs its workflows in
NAMESPACES = {"standalone": "kubeflow", "gke": "privevo"}
WI_ANNOTATION = "iam.gke.io/gcp-service-account"
POLICY = ("kyverno.io/v1", "Policy")
PRIVATE_LABEL = {"privevo.io/tier": "private"}


def render(overlay: str) -> list[dict]:
    proc = subprocess.run([kubectl_tool(), "kustomize", str(OVERLAYS / overlay)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize manifests/overlays/{overlay} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module", params=sorted(NAMESPACES))
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def test_every_object_is_named_and_in_the_kfp_namespace(overlay):
    name, docs = overlay
    namespace = NAMESPACES[name]
    assert docs
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc
        assert doc["metadata"].get("namespace") == namespace, f"{doc['kind']}/{doc['metadata']['name']}"
    # the namespace belongs to KFP (standalone) or to the Kubeflow profile (multi-user), never to privevo
    assert not [d for d in docs if d["kind"] in ("Namespace", "ClusterRole", "ClusterRoleBinding", "Secret")]
    for binding in _by_kind(docs, "RoleBinding").values():
        assert {(s["name"], s.get("namespace")) for s in binding["subjects"]} == {
            (PUBLIC_SA, namespace), (PRIVATE_SA, namespace)}


def test_builtin_kinds_validate_strictly(overlay, tmp_path):
    name, docs = overlay
    builtin = [d for d in docs if (d["apiVersion"], d["kind"]) != POLICY]
    assert len(builtin) == len(docs) - 1
    validator = _tool("kubernetes-validate", "kubernetes-validate")
    assert validator, "kubernetes-validate is not installed (dev dependency)"
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(builtin))
    proc = subprocess.run([validator, "--strict", "-k", KUBERNETES_VERSION, str(path)],
                          capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Couldn't find schema" not in output, output
    assert output.count(" passed for resource ") == len(builtin), output


def test_workload_identity_annotations_match_the_members(overlay):
    """Each account acts as the Google account of its own name, and the members bound name this namespace."""
    name, docs = overlay
    namespace = NAMESPACES[name]
    accounts = _by_kind(docs, "ServiceAccount")
    assert set(accounts) == {PUBLIC_SA, PRIVATE_SA}
    comments = (OVERLAYS / name / "kustomization.yaml").read_text()
    guide = (REPO / "docs" / "cluster.md").read_text()
    for account, doc in accounts.items():
        google = doc["metadata"]["annotations"][WI_ANNOTATION]
        match = re.fullmatch(rf"{account}@([A-Za-z0-9-]+)\.iam\.gserviceaccount\.com", google)
        assert match, f"{account} acts as {google}"
        project = match.group(1)
        assert f"[{namespace}/{account}]" in comments, f"overlays/{name} does not name the member of {account}"
        assert f"serviceAccount:{project}.svc.id.goog[{namespace}/" in comments
    # the guide binds the members for both namespaces (NS=kubeflow or NS=privevo)
    assert re.search(r'--member="serviceAccount:YOUR-PROJECT\.svc\.id\.goog\[\$NS/privevo-\$tier\]"', guide)
    assert f"NS={NAMESPACES['standalone']}" in guide and NAMESPACES["gke"] in guide


def test_private_steps_move_to_the_private_account(overlay):
    """The policy selects the private steps' label on pod creation and sets the private account, and only that."""
    _, docs = overlay
    (policy,) = [d for d in docs if (d["apiVersion"], d["kind"]) == POLICY]
    (rule,) = policy["spec"]["rules"]
    assert policy["spec"]["background"] is False
    (match,) = rule["match"]["any"]
    resources = match["resources"]
    assert resources["kinds"] == ["Pod"] and resources["operations"] == ["CREATE"]
    assert resources["selector"] == {"matchLabels": PRIVATE_LABEL}
    assert rule["mutate"]["patchStrategicMerge"] == {
        "spec": {"serviceAccountName": PRIVATE_SA, "serviceAccount": PRIVATE_SA}}
    assert _by_kind(docs, "ServiceAccount")[PRIVATE_SA]["metadata"]["labels"]["privevo.io/tier"] == "private"


def test_profile_is_applied_apart_and_names_the_namespace():
    """The multi-user overlay's Profile creates the namespace; it is outside the kustomization (delete -k keeps it)."""
    kustomization = yaml.safe_load((OVERLAYS / "gke" / "kustomization.yaml").read_text())
    assert "profile.yaml" not in kustomization["resources"]
    profile = yaml.safe_load((OVERLAYS / "gke" / "profile.yaml").read_text())
    assert (profile["apiVersion"], profile["kind"]) == ("kubeflow.org/v1", "Profile")
    assert profile["metadata"]["name"] == kustomization["namespace"] == NAMESPACES["gke"]
    assert profile["spec"]["owner"]["kind"] == "User"


def test_key_in_a_secret_is_opt_in_and_warned():
    """Only the generic overlay carries the private key, and the component says what it exposes."""
    for name in NAMESPACES:
        text = (OVERLAYS / name / "kustomization.yaml").read_text()
        assert "private-key" not in yaml.safe_load(text).get("components", [])
    generic = yaml.safe_load((OVERLAYS / "generic" / "kustomization.yaml").read_text())
    assert "../../components/private-key" in generic["components"]
    warning = (REPO / "manifests" / "components" / "private-key" / "kustomization.yaml").read_text()
    assert "ANYONE WHO CAN START A RUN IN THIS NAMESPACE CAN MOUNT IT" in warning
    assert PRIVATE_SECRET in warning
