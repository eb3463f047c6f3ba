"""The ``openai_compatible`` text backend and ``pipeline.py serve`` of a text model: the OpenAI API, the shared
retries, rate limits, call ledger and stored answers, resume, and the tiny text run through a server.

The harness is tests/test_remote.py's (:func:`launch`, :class:`Faults`, :func:`in_process_server`,
:func:`bind`), with the OpenAI API's call path and malformed answers. The model is configs/tiny-text.yaml's
(a random-weight Llama, one torch thread). A server in this process completing one request at a time
gives exactly the texts of the in-process backend at batch size 1 (same process, threads and batch
shape); a server in another process is compared with a tolerance of one text.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from privevo import storage
from privevo.config import RemoteConfig, load_config
from privevo.errors import UserError
from privevo.text.backends import Request
from tests.conftest import ROOT, _free_port
from tests.test_remote import (
    FAULT_ANSWERS,
    InProcessServer,
    bind,
    generate_initial_until_killed,
    in_process_server,
    launch,
    served_by,
)

CONFIG = ROOT / "configs" / "tiny-text.yaml"
#: The OpenAI API's faults: the shared ones, with its own malformed and wrong answers.
TEXT_FAULTS = {**FAULT_ANSWERS, "malformed": (200, [], b'{"id": "x", "choices": [{"message": {"cont'),
               "wrong_shape": (200, [], b'{"id": "x", "choices": []}')}
REQUESTS = [Request(f"Write one sentence about {topic}.", 6, seed)
            for seed, topic in enumerate(["a cat", "a laptop", "kittens", "a compiler", "a server", "a tabby"])]


@pytest.fixture(scope="module")
def holder():
    """The tiny text config's model, as ``pipeline.py serve --config configs/tiny-text.yaml`` serves it."""
    from privevo.serve import ModelHolder, configured_model

    holder = ModelHolder("hf_causal_lm", configured_model(load_config(CONFIG)).load)
    holder.load()
    return holder


@pytest.fixture(scope="module")
def fault_server(holder) -> Iterator[InProcessServer]:
    with in_process_server(holder, modality="text", call_suffix="/completions", answers=TEXT_FAULTS) as server:
        yield server


@pytest.fixture
def faulty(fault_server: InProcessServer) -> Iterator[InProcessServer]:
    """The fault server with an empty plan."""
    fault_server.faults.plan.clear()
    yield fault_server
    fault_server.faults.plan.clear()


def client(url: str, sleeps: list[float] | None = None, **settings):
    """An OpenAICompatible client with fast backoff, one request at a time unless told; ``sleeps`` records waits."""
    from privevo.text.openai_compatible import OpenAICompatible

    options = {"url": url, "backoff_s": 0.01, "max_backoff_s": 0.05, "max_retries": 2, "max_concurrency": 1, **settings}
    return OpenAICompatible(RemoteConfig(**options), sleep=sleeps.append if sleeps is not None else time.sleep)


def one_by_one(holder, requests: list[Request], system: str | None = None) -> list[str]:
    """The in-process backend's texts, one request per batch (as a server sees requests sent one at a time)."""
    with holder.lock:
        return [holder.model.complete([request], system)[0] for request in requests]


# ------------------------------------------------------------------ the API


@pytest.mark.model_outputs
def test_served_texts_are_the_in_process_texts(fault_server: InProcessServer, holder, tmp_path: Path) -> None:
    model = client(fault_server.url, price_per_input_token=0.001, price_per_output_token=0.002)
    assert model.model_name == "hf_causal_lm"  # the one model /v1/models lists
    layout = bind(model, tmp_path)
    texts = model.complete(REQUESTS)
    assert texts == one_by_one(holder, REQUESTS)
    assert len(set(texts)) == len(texts)  # each seed its own text: the comparison above can fail
    assert model.complete(REQUESTS[:2], "Answer briefly.") == one_by_one(holder, REQUESTS[:2], "Answer briefly.")
    ledger = storage.read_json(layout.calls(0, "generate_initial", 0))
    assert (ledger["texts"], ledger["reused_texts"], ledger["requests"], ledger["failures"]) == (8, 0, 8, 0)
    assert ledger["tokens_in"] > 8 * 6 and 8 <= ledger["tokens_out"] <= 8 * 6
    assert ledger["estimated_cost"] == pytest.approx(0.001 * ledger["tokens_in"] + 0.002 * ledger["tokens_out"])
    summary = model.ledger.summary()
    assert summary["api_tokens_in"] == ledger["tokens_in"] and summary["api_estimated_cost"] == ledger["estimated_cost"]

    assert model.complete(REQUESTS) == texts  # the same requests again: stored answers, nothing paid
    ledger = storage.read_json(layout.calls(0, "generate_initial", 0))
    assert (ledger["texts"], ledger["reused_texts"], ledger["requests"]) == (8, 6, 8)

    plain = client(fault_server.url, api="completions")  # no chat template: fewer prompt tokens, other texts
    assert plain.complete(REQUESTS[:3]) != texts[:3]
    bind(plain, tmp_path / "plain")  # a step's counters start again
    plain.complete(REQUESTS[:1])
    chat_tokens = storage.read_json(layout.calls(0, "generate_initial", 0))["calls"][0]["tokens_in"] / 6
    assert plain.ledger.summary()["api_tokens_in"] < chat_tokens


def test_concurrent_requests_are_batched_and_answered(fault_server: InProcessServer, holder) -> None:
    """Four in flight: the server completes them in batches of up to model.batch_size (4); a batch's rows sample
    from their own seeds, so the texts are the one-by-one texts up to a rare rounding flip."""
    requests = [Request(f"Say something about topic {i}.", 5, 100 + i) for i in range(12)]
    texts = client(fault_server.url, max_concurrency=4).complete(requests)
    alone = one_by_one(holder, requests)
    assert sum(a == b for a, b in zip(texts, alone, strict=True)) >= len(requests) - 1


@pytest.mark.parametrize("body, message", [
    ({"messages": []}, "messages must be a non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens must be a positive integer"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "one choice per request"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature must be a number"),
])
def test_bad_requests_are_refused_in_openai_form(fault_server: InProcessServer, body: dict, message: str) -> None:
    import requests

    response = requests.post(f"{fault_server.url}/v1/chat/completions", json={"model": "hf_causal_lm", **body}, timeout=30)
    assert response.status_code == 400 and message in response.json()["error"]["message"]
    wrong = requests.post(f"{fault_server.url}/v1/chat/completions", json={**body, "model": "gpt-x"}, timeout=30)
    assert wrong.status_code == 404


def test_wrong_model_name_fails_at_once(fault_server: InProcessServer) -> None:
    with pytest.raises(UserError, match=r"HTTP 404 .*model_name") as error:
        client(fault_server.url, model_name="nope").complete(REQUESTS[:1])
    assert "\n" not in str(error.value)


def test_token_is_required_sent_and_never_written(holder, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "tok-" + os.urandom(8).hex()
    with in_process_server(holder, token=secret, modality="text", call_suffix="/completions") as server:
        with pytest.raises(UserError, match=r"HTTP 401 .*token_env") as error:
            client(server.url)
        assert secret not in str(error.value)
        token_file = tmp_path / "token"
        token_file.write_text(secret + "\n")
        model = client(server.url, token_file=str(token_file))
        layout = bind(model, tmp_path)
        model.complete(REQUESTS[:2])
        written = [p.read_bytes() for p in (tmp_path / "runs").rglob("*") if p.is_file()]
        assert written and all(secret.encode() not in data for data in written)
        assert storage.read_json(layout.calls(0, "generate_initial", 0))["texts"] == 2
    assert all(secret not in record.getMessage() for record in caplog.records)


def test_unreachable_server_is_one_line() -> None:
    sleeps: list[float] = []
    with pytest.raises(UserError, match="failed after 2 attempts, the last with the server is unreachable") as error:
        client(f"http://127.0.0.1:{_free_port()}", sleeps=sleeps, max_retries=1)
    assert "\n" not in str(error.value) and len(sleeps) == 1


def test_tokens_per_minute_spaces_requests() -> None:
    from privevo.remote_calls import RateLimiter

    limiter = RateLimiter(None, tokens_per_minute=6000)  # 100 tokens a second, a bucket of 6000
    started = time.monotonic()
    limiter.wait(6000)  # the full bucket: at once
    assert time.monotonic() - started < 0.05
    limiter.wait(20)  # empty: 0.2 s for 20 tokens
    assert time.monotonic() - started >= 0.19
    limiter.settle(6000, 5980)  # the first used 20 fewer than it reserved: they come back
    before = time.monotonic()
    limiter.wait(20)
    assert time.monotonic() - before < 0.05


# ------------------------------------------------------------------ faults (those of tests/test_remote.py)


@pytest.mark.model_outputs
def test_429_honours_retry_after(faulty: InProcessServer, holder) -> None:
    sleeps: list[float] = []
    model = client(faulty.url, sleeps=sleeps)
    faulty.faults.plan[:] = ["429"]
    assert model.complete(REQUESTS[:2]) == one_by_one(holder, REQUESTS[:2])
    assert sleeps and sleeps[0] >= 2.0  # the server's Retry-After, though the backoff alone is 0.01 s


@pytest.mark.model_outputs
@pytest.mark.parametrize("fault, message", [
    ("500", "HTTP 500"),
    ("malformed", "a malformed answer: the body is not valid JSON"),
    ("wrong_shape", r"a malformed answer: the answer has no choices\[0\]\.message\.content"),
])
def test_faults_are_retried_then_fail_one_line(faulty: InProcessServer, holder, fault: str, message: str) -> None:
    model = client(faulty.url, max_retries=1)
    faulty.faults.plan[:] = [fault]
    assert model.complete(REQUESTS[:1]) == one_by_one(holder, REQUESTS[:1])  # one retry heals it
    faulty.faults.plan[:] = [fault, fault]
    with pytest.raises(UserError, match=message) as error:
        model.complete(REQUESTS[:1])
    assert "\n" not in str(error.value) and "failed after 2 attempts" in str(error.value)


@pytest.mark.model_outputs
def test_slow_answer_past_timeout_is_retried(faulty: InProcessServer, holder) -> None:
    model = client(faulty.url, timeout_s=1.5, max_retries=1)
    faulty.faults.plan[:] = ["slow"]
    assert model.complete(REQUESTS[:1]) == one_by_one(holder, REQUESTS[:1])
    faulty.faults.plan[:] = ["slow", "slow"]
    with pytest.raises(UserError, match=r"no answer within model.remote.timeout_s=1.5"):
        model.complete(REQUESTS[:1])


@pytest.mark.model_outputs
def test_failed_request_loses_no_received_text(faulty: InProcessServer, holder, tmp_path: Path) -> None:
    model = client(faulty.url, max_retries=1)
    layout = bind(model, tmp_path, "generate_variations")
    faulty.faults.infer_requests = 0
    faulty.faults.plan[:] = [None, None, "500", "500"]  # type: ignore[list-item]  # the third request fails twice
    with pytest.raises(UserError, match="HTTP 500"):
        model.complete(REQUESTS[:4])
    assert len(list(Path(layout.calls_dir(0), "cache", "generate_variations-000").iterdir())) == 2
    assert model.complete(REQUESTS[:4]) == one_by_one(holder, REQUESTS[:4])  # a retried step: two more requests
    assert faulty.faults.infer_requests == 4 + 2
    ledger = storage.read_json(layout.calls(0, "generate_variations", 0))
    assert (ledger["texts"], ledger["reused_texts"], ledger["failures"], ledger["retries"]) == (4, 2, 1, 1)
    assert [c["ok"] for c in ledger["calls"]] == [False, True]


# ------------------------------------------------------------------ the tiny text run


def _population_texts(run, generation: int) -> list[str]:
    population = run.modality.decode_population(storage.read_bytes(run.layout.population(generation)), "population")
    return [str(text) for text in population.samples]


@pytest.mark.slow
@pytest.mark.model_outputs
def test_killed_serve_fails_one_line_then_resume_pays_only_for_the_rest(fault_server: InProcessServer,
                                                                        tmp_path: Path) -> None:
    """generate_initial of the tiny text config against ``pipeline.py serve`` killed mid-step: one line, every
    received text kept; resumed against another server, only the missing texts are paid for."""
    from privevo import steps
    from privevo.run_record import Run

    proc, url = launch(["--config", str(CONFIG)])
    overrides = [f"run_root={tmp_path}/runs", f"private_root={tmp_path}/private", "population.num_shards=1"]
    config = load_config(CONFIG, [*overrides, "model.kind=openai_compatible", f"model.remote.url={url}",
                                  "model.remote.max_retries=2", "model.remote.backoff_s=0.05",
                                  "model.remote.max_concurrency=1", "model.remote.price_per_output_token=0.01"])
    run = Run.create(config, "killed")
    kept = generate_initial_until_killed(run, proc)
    size = config.population.size
    assert 1 <= kept < size
    ledger = storage.read_json(run.layout.calls(0, "generate_initial", 0))
    assert ledger["texts"] == kept and ledger["failures"] >= 1 and ledger["retries"] >= 2

    run = served_by(run, fault_server.url)
    steps.generate_initial(run, 0)
    record = storage.read_json(run.layout.step_record(0, "generate_initial", 0))["params"]
    assert record["api_reused_texts"] == kept and record["api_texts"] == size - kept
    ledger = storage.read_json(run.layout.calls(0, "generate_initial", 0))
    assert ledger["texts"] == size and ledger["estimated_cost"] == pytest.approx(0.01 * ledger["tokens_out"])

    local = Run.create(load_config(CONFIG, [*overrides, "model.batch_size=1"]), "local")
    steps.generate_initial(local, 0)
    served, alone = (run.modality.decode_population(storage.read_bytes(r.layout.shard(0, 0)), "population").samples
                     for r in (run, local))
    assert sum(a == b for a, b in zip(served, alone, strict=True)) >= size - 1  # the killed server: another process


@pytest.mark.slow
@pytest.mark.model_outputs
def test_tiny_text_run_through_the_api_is_the_in_process_run(fault_server: InProcessServer, tmp_path: Path) -> None:
    """configs/tiny-text.yaml with model.kind openai_compatible: every generation's texts are the in-process run's
    (one request at a time, batch size 1 in process; a vote without noise, as a test may), and each model step
    keeps its call ledger."""
    import privevo

    roots = {"run_root": str(tmp_path / "runs"), "private_root": str(tmp_path / "private")}
    exact_vote = ["privacy.epsilon=null", "privacy.noise_multiplier=0", "privacy.allow_non_private=true",
                  "privacy.dataset_budget=null"]  # a vote without noise picks the same parents in both runs
    api = privevo.run(CONFIG, [*exact_vote, "model.kind=openai_compatible", f"model.remote.url={fault_server.url}",
                               "model.remote.max_concurrency=1", "model.remote.price_per_input_token=0.5"],
                      run_id="api", **roots)
    local = privevo.run(CONFIG, [*exact_vote, "model.batch_size=1"], run_id="local", **roots)
    generations = load_config(CONFIG).population.generations
    for generation in range(generations + 1):
        assert _population_texts(api.run, generation) == _population_texts(local.run, generation)
    ledgers = [storage.read_json(uri) for g in range(generations + 1)
               for uri in storage.list_files(api.run.layout.calls_dir(g)) if uri.endswith(".json") and "/cache/" not in uri]
    assert ledgers and all(ledger["failures"] == 0 and ledger["tokens_in"] > 0 for ledger in ledgers)
    assert sum(ledger["texts"] for ledger in ledgers) >= (generations + 1) * load_config(CONFIG).population.size
    assert not any(Path(local.run.layout.calls_dir(g)).exists() for g in range(generations + 1))
    assert np.isclose(sum(ledger["estimated_cost"] for ledger in ledgers), 0.5 * sum(ledger["tokens_in"] for ledger in ledgers))


# ------------------------------------------------------------------ the cluster's text server


def test_kserve_text_manifest_serves_a_bucket_model_on_the_hugging_face_runtime() -> None:
    """manifests/serving/kserve-text: the Hugging Face runtime (Standard mode, the public account) reads the model
    from a bucket; the URL its comments give the steps is the predictor Service's OpenAI prefix."""
    from tests.test_serving_manifests import NAMESPACE, PUBLIC_SA, SERVING, render

    (service,) = render(SERVING / "kserve-text")
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    predictor = service["spec"]["predictor"]
    assert predictor["serviceAccountName"] == PUBLIC_SA
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "huggingface" and model["storageUri"].startswith("gs://")
    (model_name,) = [arg.split("=", 1)[1] for arg in model["args"] if arg.startswith("--model_name=")]
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert namespace == NAMESPACE
    url = f"http://{name}-predictor.{namespace}.svc.cluster.local/openai"
    comments = (SERVING / "kserve-text" / "kustomization.yaml").read_text()
    assert url in comments and f"model_name {model_name}" in comments
    RemoteConfig(url=url, model_name=model_name)  # a valid model.remote
