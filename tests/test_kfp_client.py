"""`pipeline.py upload`, `submit` and `schedule` against a Kubeflow Pipelines REST API stand-in on loopback.

The stand-in implements the v2beta1 calls kfp.Client makes for these commands (healthz, experiments, pipelines,
pipeline versions by upload, runs, recurring runs), records every request and answers as the API server does, so
the tests check what a real server would receive: the pipeline version and its package, the run parameters, the
run identity, the service account, the pipeline root, the namespace and the token; and that a backend older than
the pipeline needs is refused before anything is asked of it.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import io
import itertools
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from privevo import cli

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
TINY_ON_A_CLUSTER = ["--config", TINY, "--allow-local"]  # tiny's roots and paths are local: as on one shared volume
PIPELINE_NAME = "private-evolution-tiny"
NAMESPACE = "team-a"
SERVICE_ACCOUNT = "privevo-public"
PIPELINE_ROOT = "gs://privevo-released/kfp"  # uploaded with the pipeline; runs must send it
TOKEN = "test-token-3f9c"  # a stand-in bearer token
RUN_ID_PLACEHOLDER = "{{$.pipeline_job_uuid}}"  # kfp.dsl.PIPELINE_JOB_ID_PLACEHOLDER


@dataclass
class Request:
    """One request the stand-in received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # the JSON body, or {form field: bytes} of a multipart upload


@dataclass
class KfpApi:
    """The stand-in's state: what was created, and every request in order."""

    url: str
    tag_name: str | None = "2.14.0"  # the backend version healthz reports; None: a KFP 1.x without v2beta1
    requests: list[Request] = field(default_factory=list)
    experiments: dict[str, dict] = field(default_factory=dict)
    pipelines: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, dict] = field(default_factory=dict)  # with "package": the uploaded bytes
    ids: Iterator[int] = field(default_factory=itertools.count)

    def new_id(self, kind: str) -> str:
        return f"{kind}-{next(self.ids):04d}"

    def sent(self, method: str, path: str, since: int = 0) -> list[Request]:
        """The requests made to ``method path`` (path with the ids in it), from the ``since``-th request on."""
        return [r for r in self.requests[since:] if (r.method, r.path) == (method, path)]


def _display_name_filter(query: dict[str, str]) -> str | None:
    """The name a list call filters on (``display_name`` EQUALS), as kfp.Client writes the filter."""
    if "filter" not in query:
        return None
    (predicate,) = json.loads(query["filter"])["predicates"]
    assert predicate["key"] == "display_name" and predicate["operation"] in ("EQUALS", 1)  # name or enum number
    return predicate["stringValue"]


def _parse_multipart(content_type: str, data: bytes) -> dict[str, bytes]:
    """The form fields of a multipart/form-data body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + data)
    return {str(part.get_param("name", header="content-disposition")): bytes(part.get_payload(decode=True))
            for part in message.iter_parts()}


def _named(store: dict[str, dict], kind: str, query: dict) -> dict:
    """A list answer: the stored objects with the filter's display name, in the query's namespace."""
    name = _display_name_filter(query)
    found = [o for o in store.values() if o["display_name"] == name and o.get("namespace") == query.get("namespace")]
    return {kind: found, "total_size": len(found)}


def _create(api: KfpApi, store: dict[str, dict], kind: str, body: dict) -> dict:
    """A create answer: the body stored under a new ``<kind>_id``."""
    created = {**body, f"{kind}_id": api.new_id(kind)}
    store[created[f"{kind}_id"]] = created
    return created


def _answer(api: KfpApi, request: Request) -> tuple[int, dict]:
    """The API server's answer to one request (status, JSON)."""
    parts = request.path.strip("/").split("/")[2:]  # after apis/v2beta1
    query, body = request.query, request.body
    match request.method, parts:
        case "GET", ["healthz"] if api.tag_name is None:
            return 404, {"message": "Not Found"}
        case "GET", ["healthz"]:
            # as the API server writes it by hand: kfp_server_api's model of this answer has no tag_name
            return 200, {"commit_sha": "0123abc", "tag_name": api.tag_name, "multi_user": False,
                         "pipeline_store": "database"}
        case "GET", ["experiments"]:
            return 200, _named(api.experiments, "experiments", query)
        case "POST", ["experiments"]:
            return 200, _create(api, api.experiments, "experiment", body)
        case "GET", ["pipelines"]:
            return 200, _named(api.pipelines, "pipelines", query)
        case "POST", ["pipelines"]:
            return 200, _create(api, api.pipelines, "pipeline", body)
        case "POST", ["pipelines", "upload_version"]:
            if query["pipelineid"] not in api.pipelines:
                return 404, {"message": f"pipeline {query['pipelineid']} not found"}
            documents = list(yaml.safe_load_all(body["uploadfile"]))
            # the server keeps the spec as one document, or the pipeline and platform specs side by side
            spec = documents[0] if len(documents) == 1 else {"pipeline_spec": documents[0], "platform_spec": documents[1]}
            version: dict[str, Any] = {"pipeline_id": query["pipelineid"], "pipeline_version_id": api.new_id("version"),
                       "display_name": query["name"], "pipeline_spec": spec}
            api.versions[version["pipeline_version_id"]] = {**version, "package": body["uploadfile"]}
            return 200, version
        case "GET", ["pipelines", pipeline_id, "versions"]:
            if pipeline_id not in api.pipelines:
                return 404, {"message": f"pipeline {pipeline_id} not found"}
            found = [{k: v for k, v in version.items() if k != "package"}
                     for version in api.versions.values() if version["pipeline_id"] == pipeline_id]
            if query.get("sort_by") == "created_at desc":
                found.reverse()
            return 200, {"pipeline_versions": found[:int(query.get("page_size", 10))], "total_size": len(found)}
        case "GET", ["pipelines", pipeline_id, "versions", version_id]:
            stored = api.versions.get(version_id)
            if stored is None or stored["pipeline_id"] != pipeline_id:
                return 404, {"message": f"pipeline version {version_id} not found"}
            return 200, {k: v for k, v in stored.items() if k != "package"}
        case "POST", ["runs"]:
            return 200, {**body, "run_id": api.new_id("run"), "state": "PENDING"}
        case "POST", ["recurringruns"]:
            return 200, {**body, "recurring_run_id": api.new_id("recurring"), "status": "ENABLED"}
    return 404, {"message": f"the stand-in does not implement {request.method} {request.path}"}


@contextlib.contextmanager
def _serve() -> Iterator[KfpApi]:
    """The stand-in on 127.0.0.1 (a free port), in a thread."""
    state: dict[str, KfpApi] = {}

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            api = state["api"]
            url = urlsplit(self.path)
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            content_type = self.headers.get("Content-Type", "")
            if content_type.startswith("multipart/form-data"):
                body: Any = _parse_multipart(content_type, data)
            else:
                body = json.loads(data) if data else None
            request = Request(self.command, url.path, {k: v[0] for k, v in parse_qs(url.query).items()},
                              {k.lower(): v for k, v in self.headers.items()}, body)
            api.requests.append(request)
            status, answer = _answer(api, request)
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _handle

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["api"] = KfpApi(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["api"]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def kfp_api(tmp_path_factory) -> Iterator[KfpApi]:
    """The stand-in, with kfp.Client's local context file out of the way (no namespace read from ~/.config)."""
    import kfp

    with _serve() as api, pytest.MonkeyPatch.context() as mp:
        mp.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path_factory.mktemp("kfp") / "context.json"))
        mp.delenv("KFP_HOST", raising=False)
        yield api


def _main(argv: list[str]) -> tuple[int, str, str]:
    """pipeline.py's exit code, stdout and stderr for ``argv``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def uploaded(kfp_api: KfpApi) -> dict[str, str]:
    """configs/tiny.yaml (with PIPELINE_ROOT) uploaded once as version v1 into NAMESPACE; the ids upload printed."""
    code, out, err = _main(["upload", "--host", kfp_api.url, "--namespace", NAMESPACE, *TINY_ON_A_CLUSTER,
                            "--set", f"kubernetes.pipeline_root={PIPELINE_ROOT}", "--version", "v1"])
    assert code == 0, err
    assert "the config sets no kubernetes.public_service_account" in out, out
    pipeline_id = re.search(rf"^pipeline {PIPELINE_NAME}: pipeline id (\S+)$", out, re.M)
    version_id = re.search(r"^version v1: version id (\S+)$", out, re.M)
    assert pipeline_id and version_id, out
    return {"pipeline_id": pipeline_id.group(1), "version_id": version_id.group(1)}


def _pipeline_spec(document: dict) -> dict:
    """The pipeline spec of a package or run request: a bare spec, or the pipeline and platform specs side by side."""
    return document.get("pipeline_spec", document)


def _resolve_config_task(spec: dict) -> dict:
    """The DAG's resolve-config task (the first step, which takes the run identity)."""
    (task,) = [t for t in spec["root"]["dag"]["tasks"].values() if t["taskInfo"]["name"] == "resolve-config"]
    return task


def test_upload_registers_the_pipeline_once_and_a_version_each_time(kfp_api: KfpApi, uploaded: dict[str, str]):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    created = kfp_api.sent("POST", "/apis/v2beta1/pipelines")
    assert [(r.body["display_name"], r.body["namespace"]) for r in created] == [(PIPELINE_NAME, NAMESPACE)]
    version = kfp_api.versions[uploaded["version_id"]]
    assert (version["pipeline_id"], version["display_name"]) == (uploaded["pipeline_id"], "v1")
    spec, platform = yaml.safe_load_all(version["package"])
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec(), ignore_unknown_fields=False)
    assert spec["pipelineInfo"]["name"] == PIPELINE_NAME
    assert {"run_id", "resume", "epsilon", "degrees"} <= set(spec["root"]["inputDefinitions"]["parameters"])

    code, out, err = _main(["upload", "--host", kfp_api.url, "--namespace", NAMESPACE, *TINY_ON_A_CLUSTER,
                            "--set", f"kubernetes.pipeline_root={PIPELINE_ROOT}",
                            "--set", f"kubernetes.public_service_account={SERVICE_ACCOUNT}"])
    assert code == 0, err
    assert f"runs started from the KFP UI: pick service account {SERVICE_ACCOUNT} in the run form" in out, out
    assert len(kfp_api.sent("POST", "/apis/v2beta1/pipelines")) == 1, "the pipeline is registered once, by its name"
    second = re.search(rf"^version ({PIPELINE_NAME}-\d{{8}}-\d{{6}}): version id (\S+)$", out, re.M)
    assert second, out
    assert kfp_api.versions[second.group(2)]["pipeline_id"] == uploaded["pipeline_id"]
    assert kfp_api.versions[second.group(2)]["display_name"] == second.group(1)


def test_submit_of_an_uploaded_pipeline_sends_only_the_overrides(kfp_api: KfpApi, uploaded: dict[str, str],
                                                                 monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PRIVEVO_TEST_KFP_TOKEN", TOKEN)
    before = len(kfp_api.requests)
    code, out, err = _main([
        "submit", "--host", kfp_api.url, "--namespace", NAMESPACE, "--token-env", "PRIVEVO_TEST_KFP_TOKEN",
        "--pipeline", PIPELINE_NAME, "--version-id", uploaded["version_id"], "--service-account", SERVICE_ACCOUNT,
        "--param", "epsilon=2", "--param", "degrees=[0.6,0.5]", "--param", "private_data_uri=gs://data/private",
        "--param", "delta=1e-6"])
    assert code == 0, err
    (run,) = kfp_api.sent("POST", "/apis/v2beta1/runs", before)
    assert run.body["pipeline_version_reference"] == {"pipeline_id": uploaded["pipeline_id"],
                                                      "pipeline_version_id": uploaded["version_id"]}
    assert "pipeline_spec" not in run.body, "an uploaded version is referenced, not sent again"
    assert run.body["runtime_config"]["parameters"] == {
        "epsilon": 2.0, "degrees": [0.6, 0.5], "private_data_uri": "gs://data/private", "delta": 1e-6}
    assert run.body["service_account"] == SERVICE_ACCOUNT
    assert run.body["runtime_config"]["pipeline_root"] == PIPELINE_ROOT, "the uploaded version's compiled root"
    (experiment,) = [e for e in kfp_api.experiments.values() if e["display_name"] == "private-evolution"
                     and e["namespace"] == NAMESPACE]
    assert run.body["experiment_id"] == experiment["experiment_id"]
    assert {r.query.get("namespace") for r in kfp_api.requests[before:] if r.path.endswith(("/experiments", "/pipelines"))
            and r.method == "GET"} == {NAMESPACE}
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in kfp_api.requests[before:])
    assert TOKEN not in out + err
    kfp_run_id = re.search(r"^submitted run (\S+): kfp run id (\S+), run folder runs/(\S+)$", out, re.M)
    assert kfp_run_id, out
    assert kfp_run_id.group(1) == kfp_run_id.group(2) == kfp_run_id.group(3), "no run_id: the folder is the KFP run id"


def test_submit_with_config_compiles_here_with_the_configs_service_account(kfp_api: KfpApi,
                                                                           monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KFP_HOST", kfp_api.url)
    before = len(kfp_api.requests)
    code, _, err = _main(["submit", *TINY_ON_A_CLUSTER, "--set", f"kubernetes.public_service_account={SERVICE_ACCOUNT}",
                          "--set", "kubernetes.pipeline_root=gs://elsewhere/kfp", "--param", "population_size=48"])
    assert code == 0, err
    (run,) = kfp_api.sent("POST", "/apis/v2beta1/runs", before)
    assert run.body["service_account"] == SERVICE_ACCOUNT
    assert run.body["runtime_config"]["pipeline_root"] == "gs://elsewhere/kfp"
    assert run.body.get("pipeline_version_reference") is None
    assert run.body["runtime_config"]["parameters"] == {"population_size": 48}
    assert run.body["display_name"].startswith(f"{PIPELINE_NAME}-")
    spec = _pipeline_spec(run.body["pipeline_spec"])
    assert spec["pipelineInfo"]["name"] == PIPELINE_NAME
    # run identity: run_id defaults to empty, and the first step gets the KFP run's own id to fall back on
    assert spec["root"]["inputDefinitions"]["parameters"]["run_id"]["defaultValue"] == ""
    inputs = _resolve_config_task(spec)["inputs"]["parameters"]
    assert inputs["run_id"] == {"componentInputParameter": "run_id"}
    assert RUN_ID_PLACEHOLDER in json.dumps(inputs)


def test_schedule_leaves_run_id_empty_so_every_run_has_its_own_folder(kfp_api: KfpApi, uploaded: dict[str, str]):
    latest = list(kfp_api.versions)[-1]
    code, out, err = _main(["schedule", "--host", kfp_api.url, "--namespace", NAMESPACE,
                            "--pipeline-id", uploaded["pipeline_id"], "--cron", "0 0 3 * * *",
                            "--service-account", SERVICE_ACCOUNT, "--param", "seed=7"])
    assert code == 0, err
    (job,) = kfp_api.sent("POST", "/apis/v2beta1/recurringruns")
    assert job.body["runtime_config"]["parameters"] == {"seed": 7}, "run_id is left to each run's own KFP id"
    assert job.body["runtime_config"]["pipeline_root"] == PIPELINE_ROOT, "the latest version's compiled root"
    assert job.body["pipeline_version_reference"] == {"pipeline_id": uploaded["pipeline_id"],
                                                      "pipeline_version_id": latest}
    assert job.body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert job.body["display_name"] == f"{PIPELINE_NAME}-recurring"
    assert job.body["service_account"] == SERVICE_ACCOUNT
    assert job.body["no_catchup"] is True
    assert f"scheduled {PIPELINE_NAME}-recurring" in out


@pytest.mark.parametrize(("command", "param", "message"), [
    ("submit", "epsilonn=2", "unknown run parameter 'epsilonn': the pipeline's are degrees, delta, epsilon, "),
    ("submit", "epsilon=abc", "epsilon takes a number"),
    ("submit", "degrees=[0.6,", "degrees takes a list"),
    ("submit", "population_size=1.5", "population_size takes an integer"),
    ("submit", "resume=maybe", "resume takes true or false"),
    ("submit", "epsilon", "write key=value"),
    ("schedule", "run_id=nightly", "a schedule starts a new run folder each time"),
])
def test_a_bad_param_is_refused_in_one_line(kfp_api: KfpApi, uploaded: dict[str, str], command: str, param: str,
                                            message: str):
    before = len(kfp_api.requests)
    extra = ["--cron", "0 0 3 * * *"] if command == "schedule" else []
    code, _, err = _main([command, "--host", kfp_api.url, "--namespace", NAMESPACE,
                            "--pipeline-id", uploaded["pipeline_id"], "--param", "epsilon=1", "--param", param, *extra])
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not [r for r in kfp_api.requests[before:] if r.method == "POST"], "nothing is created"


@pytest.mark.parametrize(("argv", "message"), [
    (["--pipeline", PIPELINE_NAME], "give --host URL or set KFP_HOST"),
    (["--host", "{url}", "--token-env", "PRIVEVO_TEST_UNSET_TOKEN", "--pipeline", PIPELINE_NAME],
     "--token-env PRIVEVO_TEST_UNSET_TOKEN: that environment variable is empty or not set"),
    (["--host", "{url}", "--pipeline", "no-such-pipeline"], "no pipeline named 'no-such-pipeline': upload it first"),
    (["--host", "{url}", "--pipeline-id", "pipeline-9999"], "the KFP API at http://127.0.0.1:"),
    (["--host", "{url}"], "give one of --config CFG"),
    (["--host", "{url}", "--pipeline", PIPELINE_NAME, "--set", "seed=1"], "with an uploaded pipeline use --param"),
])
def test_submit_usage_errors_are_one_line(kfp_api: KfpApi, monkeypatch: pytest.MonkeyPatch, argv: list[str],
                                          message: str):
    monkeypatch.delenv("PRIVEVO_TEST_UNSET_TOKEN", raising=False)
    code, _, err = _main(["submit", *(arg.replace("{url}", kfp_api.url) for arg in argv)])
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_an_unreachable_endpoint_is_one_line(kfp_api: KfpApi):
    with _serve() as api:
        url = api.url  # a port that was just free, and is closed again below
    code, _, err = _main(["submit", "--host", url, "--pipeline", PIPELINE_NAME])
    assert code == 2
    assert err == f"error: cannot reach the KFP API at {url} (MaxRetryError): check --host\n"


def test_a_misspelt_param_of_a_config_compiled_here_is_refused_before_connecting(kfp_api: KfpApi):
    before = len(kfp_api.requests)
    code, _, err = _main(["submit", "--host", kfp_api.url, "--config", TINY, "--param", "epsilom=2"])
    assert code == 2
    assert err.startswith("error: unknown run parameter 'epsilom'") and err.count("\n") == 1, err
    assert len(kfp_api.requests) == before, "the server is not contacted"
    with _serve() as api:
        url = api.url  # closed again below: the typo is still what is reported
    code, _, err = _main(["schedule", "--host", url, "--config", TINY, "--cron", "0 0 3 * * *", "--param", "epsilom=2"])
    assert code == 2 and err.startswith("error: unknown run parameter 'epsilom'"), err


@pytest.mark.parametrize("command", ["upload", "submit", "schedule"])
@pytest.mark.parametrize(("tag", "message"), [
    ("2.5.0", "the KFP backend at {url} is 2.5.0; this pipeline needs 2.14 or newer (its generations fan in with "
              "dsl.Collected): upgrade KFP, or give --skip-version-check to try anyway"),
    ("2.13.1", "is 2.13.1; this pipeline needs 2.14 or newer"),
    ("unknown", "the KFP backend at {url} does not tell its version (healthz tag_name 'unknown'): this pipeline needs "
                "2.14 or newer"),
    (None, "the KFP backend at {url} has no /apis/v2beta1/healthz, so it is older than KFP 2: this pipeline needs "
           "2.14 or newer"),
])
def test_a_backend_older_than_the_pipeline_needs_is_refused_first(kfp_api: KfpApi, uploaded: dict[str, str],
                                                                  monkeypatch: pytest.MonkeyPatch, command: str,
                                                                  tag: str | None, message: str):
    monkeypatch.setattr(kfp_api, "tag_name", tag)
    source = TINY_ON_A_CLUSTER if command == "upload" else ["--pipeline-id", uploaded["pipeline_id"]]
    extra = ["--cron", "0 0 3 * * *"] if command == "schedule" else []
    before = len(kfp_api.requests)
    code, out, err = _main([command, "--host", kfp_api.url, "--namespace", NAMESPACE, *source, *extra])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message.format(url=kfp_api.url) in err, err
    assert [(r.method, r.path) for r in kfp_api.requests[before:]] == [("GET", "/apis/v2beta1/healthz")], \
        "the version is asked first, and nothing else"


@pytest.mark.parametrize("tag", ["2.14.0", "2.17.0-rc.1", "v2.15.2", "3.0.0"])
def test_a_backend_of_2_14_or_newer_is_accepted(kfp_api: KfpApi, uploaded: dict[str, str],
                                                 monkeypatch: pytest.MonkeyPatch, tag: str):
    monkeypatch.setattr(kfp_api, "tag_name", tag)
    before = len(kfp_api.requests)
    code, _, err = _main(["submit", "--host", kfp_api.url, "--namespace", NAMESPACE,
                          "--pipeline-id", uploaded["pipeline_id"]])
    assert code == 0, err
    assert kfp_api.requests[before].path == "/apis/v2beta1/healthz"
    assert len(kfp_api.sent("POST", "/apis/v2beta1/runs", before)) == 1


def test_skip_version_check_goes_on_with_a_backend_that_tells_no_version(kfp_api: KfpApi, uploaded: dict[str, str],
                                                                          monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(kfp_api, "tag_name", "unknown")
    before = len(kfp_api.requests)
    code, _, err = _main(["submit", "--host", kfp_api.url, "--namespace", NAMESPACE, "--skip-version-check",
                          "--pipeline-id", uploaded["pipeline_id"]])
    assert code == 0, err
    assert not kfp_api.sent("GET", "/apis/v2beta1/healthz", before)
    assert len(kfp_api.sent("POST", "/apis/v2beta1/runs", before)) == 1
