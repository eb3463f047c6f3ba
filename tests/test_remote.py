"""The ``remote`` backend and ``pipeline.py serve``: protocol, retries, rate limit, call ledger, resume, end to end.

Every server listens on 127.0.0.1 only. ``served`` is the real command line (a subprocess);
fault tests put the real application (``privevo.serve.create_app``) behind a small ASGI
wrapper that answers 429/500/slowly/malformed for the requests a test plans. The harness
(:func:`launch`, :func:`stop`, :class:`Faults`, :func:`in_process_server`, :func:`bind`) serves
the text backend's tests too (tests/test_text_remote.py).

The servers run the shipped Fashion-MNIST model at 3 DDIM steps: a trained model's samples
move at most one grey level when another process, thread count or batch size reorders its
float sums (``assert_close_images``), while the random-weight tiny UNet amplifies those
rounding differences to tens of levels over a sampling run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from privevo import storage
from privevo.config import RemoteConfig, load_config, parse_config
from privevo.errors import UserError
from privevo.image import protocol
from privevo.run_record import Run
from privevo.testing import assert_close_images
from tests.conftest import ROOT, _free_port, _run_cli, tiny_args, wait_for_http

MODEL = str(ROOT / "models" / "fashion-mnist-ddpm")
STEPS = 3


# ------------------------------------------------------------------ servers


def start_serve(*extra: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``pipeline.py serve`` with the shipped model (:data:`STEPS` DDIM steps, float32) on a free loopback port."""
    return launch(["--model-kind", "ddpm_unet", "--model-path", MODEL, "--num-inference-steps", str(STEPS),
                   "--autocast", "off", *extra], env)


def launch(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``pipeline.py serve ARGS`` on a free loopback port, once it is ready."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "pipeline.py", "serve", "--port", str(port), *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/v2/health/ready", proc, "serve", timeout=90)
    except BaseException:
        stop(proc)
        raise
    return proc, url


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM (graceful), then SIGKILL if it hangs; returns what it printed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stdout.read() if proc.stdout else ""

def generate_initial_until_killed(run: Run, proc: subprocess.Popen) -> int:
    """generate_initial's shard 0 against ``proc``'s server, killed once the step has stored its first result: the
    step fails in one line after its retries; returns how many results it kept."""
    from privevo import steps

    store = Path(run.layout.calls_dir(0)) / "cache" / "generate_initial-000"

    def kill_after_first_result() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (store.is_dir() and any(store.iterdir())):
            time.sleep(0.005)
        proc.kill()

    killer = threading.Thread(target=kill_after_first_result)
    killer.start()
    try:
        with pytest.raises(UserError, match=r"failed after 3 attempts, the last with the server is unreachable") as error:
            steps.generate_initial(run, 0)
    finally:
        killer.join()
        stop(proc)
    assert "\n" not in str(error.value)
    return len(list(store.iterdir()))


def served_by(run: Run, url: str) -> Run:
    """The same run (config and layout) with its model behind another server of the same model."""
    assert run.config.model.remote is not None
    moved = run.config.model.remote.model_copy(update={"url": url})
    return Run(run.config.model_copy(update={"model": run.config.model.model_copy(update={"remote": moved})}),
               run.layout)



@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """The real ``serve`` command (see :func:`start_serve`); its teardown checks a graceful shutdown."""
    proc, url = start_serve()
    yield url
    # SIGTERM while a call is in flight: the call is answered, then the server exits (by the signal, as uvicorn does).
    model = remote(url, batch_size=64)
    answered: list[np.ndarray] = []
    caller = threading.Thread(target=lambda: answered.append(model.random(64, seed=1)))
    caller.start()
    time.sleep(0.5)
    output = stop(proc)
    caller.join()
    assert len(answered) == 1 and answered[0].shape == (64, 28, 28, 1)
    assert proc.returncode in (0, -signal.SIGTERM), output


#: The answers of the planned faults (besides "slow": an answer after 2.5 s) to a model call.
FAULT_ANSWERS: dict[str, tuple[int, list[tuple[bytes, bytes]], bytes]] = {
    "429": (429, [(b"retry-after", b"2")], b'{"error": "slow down"}'),
    "500": (500, [], b'{"error": "boom"}'),
    "malformed": (200, [], b'{"model_name": "ddpm_unet", "outputs": [{"name": "ima'),
    "wrong_shape": (200, [], json.dumps({"outputs": [{"name": "images", "shape": [1, 28, 28, 1],
                                                      "datatype": "UINT8", "data": [0] * 784}]}).encode()),
}


@dataclass
class Faults:
    """An ASGI wrapper that answers the planned faults, one per model call (a path ending in ``call_suffix``), then
    passes requests on."""

    app: object
    plan: list[str] = field(default_factory=list)
    infer_requests: int = 0
    call_suffix: str = "/infer"
    answers: dict[str, tuple[int, list[tuple[bytes, bytes]], bytes]] = field(default_factory=lambda: FAULT_ANSWERS)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].endswith(self.call_suffix):
            self.infer_requests += 1
            fault = self.plan.pop(0) if self.plan else None
            if fault == "slow":
                await asyncio.sleep(2.5)
            elif fault is not None:
                status, headers, body = self.answers[fault]
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", b"application/json"), *headers]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)  # type: ignore[operator]


@dataclass
class InProcessServer:
    url: str
    faults: Faults


@contextlib.contextmanager
def in_process_server(holder, token: str | None = None, modality: str = "image", **faults_options) -> Iterator[InProcessServer]:
    """The real application (``create_app``) in a uvicorn thread on a free loopback port, behind :class:`Faults`."""
    import uvicorn

    from privevo.serve import create_app

    faults = Faults(create_app(holder, token, load_in_background=False, modality=modality), **faults_options)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(faults, host="127.0.0.1", port=port, log_level="error"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/v2/health/ready", None, "the in-process server", timeout=30)
        yield InProcessServer(url, faults)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def holder():
    """The model as :func:`start_serve` serves it, loaded once."""
    from privevo.serve import ModelHolder

    holder = ModelHolder("ddpm_unet", lambda: local_model(64))
    holder.load()
    return holder


@pytest.fixture(scope="module")
def fault_server(holder) -> Iterator[InProcessServer]:
    with in_process_server(holder) as server:
        yield server


@pytest.fixture
def faulty(fault_server: InProcessServer) -> Iterator[InProcessServer]:
    """The fault server with an empty plan."""
    fault_server.faults.plan.clear()
    yield fault_server
    fault_server.faults.plan.clear()


def remote(url: str, batch_size: int = 8, sleeps: list[float] | None = None, **settings):
    """A RemoteModel with fast backoff; ``sleeps`` records the waits instead of sleeping them."""
    from privevo.image.models.remote import RemoteModel

    options = {"url": url, "backoff_s": 0.01, "max_backoff_s": 0.05, "max_retries": 2, **settings}
    sleep = sleeps.append if sleeps is not None else time.sleep
    return RemoteModel(RemoteConfig(**options), batch_size=batch_size, sleep=sleep)


def local_model(batch_size: int):
    """The served model in this process, at the servers' steps and the given batch size."""
    from privevo.image.models.ddpm_unet import DDPMUNetModel

    return DDPMUNetModel.from_pretrained(MODEL, batch_size=batch_size, num_inference_steps=STEPS, autocast="off")


@pytest.fixture(scope="module")
def in_process():
    return local_model(8)


def assert_far_images(actual: np.ndarray, other: np.ndarray) -> None:
    """Other samples (another seed, index or label) differ by far more than CPU rounding: the check above can fail."""
    assert float(np.abs(actual.astype(np.int16) - other.astype(np.int16)).mean()) > 10.0


def bind(model, tmp_path: Path, step: str = "generate_initial"):
    """Record the model's calls as a step does: a call ledger and result store under a run layout in tmp_path."""
    from privevo.layout import RunLayout
    from privevo.remote_calls import RecordedModel

    layout = RunLayout(str(tmp_path / "runs"), "r1", str(tmp_path / "private"))
    RecordedModel(model, layout, 0, step, 0)
    return layout


# ------------------------------------------------------------------ protocol


@pytest.mark.parametrize("binary", [True, False])
def test_protocol_round_trip(binary: bool) -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 1), dtype=np.uint8)
    inputs = {"images": images, "degree": np.array([0.25]), "seed": np.array([7]), "first_index": np.array([3]),
              "labels": np.array([1, 2, 3])}
    body, headers = protocol.encode_request("variation", inputs, binary=binary)
    call, decoded, wants_binary, _ = protocol.decode_request(body, headers.get(protocol.HEADER_LENGTH))
    assert call == "variation" and wants_binary is binary
    for name, value in inputs.items():
        np.testing.assert_array_equal(decoded[name], value)
    body, headers = protocol.encode_response("m", images, binary)
    np.testing.assert_array_equal(protocol.decode_response(body, headers.get(protocol.HEADER_LENGTH)), images)
    if binary:  # the binary extension carries the pixels as raw bytes, not as JSON numbers
        assert len(body) < int(headers[protocol.HEADER_LENGTH]) + images.nbytes + 1


_SHORT_BINARY = (b'{"parameters": {"call": "random"}, "inputs": [{"name": "x", "shape": [4], "datatype": "UINT8", '
                 b'"parameters": {"binary_data_size": 4}}]}')


@pytest.mark.parametrize("body, length, message", [
    (b"{not json", None, "not valid JSON"),
    (b'{"parameters": {"call": "paint"}}', None, "parameters.call"),
    (b'{"parameters": {"call": "random"}, "inputs": [{"name": "count", "shape": [2], "datatype": "INT64", '
     b'"data": [1]}]}', None, "shape needs 2"),
    (_SHORT_BINARY + b"\x00\x01", str(len(_SHORT_BINARY)), "binary_data_size"),
])
def test_protocol_rejects_bad_requests(body: bytes, length: str | None, message: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=message):
        protocol.decode_request(body, length)


# ------------------------------------------------------------------ config


@pytest.mark.parametrize("model, message", [
    ({"kind": "remote"}, "kind remote needs model.remote"),
    ({"kind": "ddpm_unet"}, "needs model.path"),
    ({"kind": "remote", "remote": {"url": "127.0.0.1:8080"}}, "must start with http"),
    ({"kind": "remote", "remote": {"url": "http://x", "token": "s3cret"}}, "unknown key"),
])
def test_config_errors_are_one_line(model: dict, message: str) -> None:
    data = {"name": "x", "image_size": 28, "channels": 1, "private": {"source": "npz", "path": "x.npz"},
            "model": model, "population": {"size": 2, "generations": 1, "degrees": 0.5},
            "privacy": {"noise_multiplier": 1.0}}
    with pytest.raises(UserError, match=message) as error:
        parse_config(data)
    assert "\n" not in str(error.value)


def test_demo_remote_config_is_valid() -> None:
    config = load_config(ROOT / "configs" / "demo-remote.yaml")
    assert config.model.kind == "remote" and config.model.remote is not None
    assert config.model.remote.url.startswith("http://127.0.0.1:")


# ------------------------------------------------------------------ the real server


@pytest.mark.model_outputs
def test_serve_matches_in_process_and_answers_health(served: str) -> None:
    """The server's samples are this process's up to CPU rounding; within the server a request is exact."""
    with urllib.request.urlopen(f"{served}/v2/health/live") as response:
        assert json.load(response) == {"live": True}
    model = remote(served, batch_size=5, max_concurrency=2)
    assert (model.model_name, model.image_size, model.channels, model.num_classes) == ("ddpm_unet", 28, 1, None)
    local = local_model(5)  # the client's batches
    images = model.random(12, seed=3, first_index=4)
    assert_close_images(images, local.random(12, seed=3, first_index=4))
    assert_far_images(images, local.random(12, seed=4, first_index=4))
    varied = model.variation(images, 0.5, seed=9, first_index=2)
    assert_close_images(varied, local.variation(images, 0.5, seed=9, first_index=2))
    as_json = remote(served, batch_size=5, binary=False)
    np.testing.assert_array_equal(as_json.random(5, seed=3, first_index=4), images[:5])  # the same request, served twice


def test_wrong_model_name_fails_at_once(served: str) -> None:
    with pytest.raises(UserError, match=r"HTTP 404 .*model_name") as error:
        remote(served, model_name="nope")
    assert "\n" not in str(error.value)


def test_unreachable_server_is_one_line() -> None:
    sleeps: list[float] = []
    with pytest.raises(UserError, match="failed after 2 attempts, the last with the server is unreachable") as error:
        remote(f"http://127.0.0.1:{_free_port()}", sleeps=sleeps, max_retries=1)
    assert "\n" not in str(error.value) and len(sleeps) == 1


def test_token_is_required_sent_and_never_written(holder, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "tok-" + os.urandom(8).hex()
    with in_process_server(holder, token=secret) as server:
        url = server.url
        with pytest.raises(UserError, match=r"HTTP 401 .*token_env") as error:
            remote(url)
        assert secret not in str(error.value)
        os.environ["CLIENT_TOKEN"] = secret
        try:
            model = remote(url, token_env="CLIENT_TOKEN", price_per_image=0.5)
            token_file = tmp_path / "token"
            token_file.write_text(secret + "\n")
            assert remote(url, token_file=str(token_file)).model_name == "ddpm_unet"
        finally:
            del os.environ["CLIENT_TOKEN"]
        layout = bind(model, tmp_path)
        model.random(3, seed=1)
        assert model.ledger.summary()["api_estimated_cost"] == 1.5
        written = [p.read_bytes() for p in (tmp_path / "runs").rglob("*") if p.is_file()]
        assert written and all(secret.encode() not in data for data in written)
        assert storage.read_json(layout.calls(0, "generate_initial", 0))["estimated_cost"] == 1.5
        with pytest.raises(UserError, match="MISSING_TOKEN, which is not set") as error:
            remote(url, token_env="MISSING_TOKEN")
    assert all(secret not in record.getMessage() for record in caplog.records)


@pytest.mark.model_outputs
def test_killed_server_fails_one_line_then_resume_pays_only_for_the_rest(fault_server: InProcessServer,
                                                                         tmp_path: Path) -> None:
    """generate_initial against a server killed mid-step: retries, one line, and every received image kept."""
    from privevo import steps

    proc, url = start_serve("--batch-size", "4")
    config = load_config(ROOT / "configs" / "tiny.yaml", [
        f"run_root={tmp_path}/runs", f"private_root={tmp_path}/private", "model.kind=remote", f"model.remote.url={url}",
        "model.remote.max_retries=2", "model.remote.backoff_s=0.05", "model.remote.max_concurrency=1",
        "model.batch_size=4", "population.size=24", "population.num_shards=1", "model.remote.price_per_image=0.01",
    ])
    run = Run.create(config, "killed")
    kept = generate_initial_until_killed(run, proc)
    assert 1 <= kept < 6
    ledger = storage.read_json(run.layout.calls(0, "generate_initial", 0))
    assert ledger["images"] == 4 * kept and ledger["failures"] >= 1 and ledger["retries"] >= 2

    # Another server of the same model (another port): the stored results are used, the rest is called.
    run = served_by(run, fault_server.url)
    steps.generate_initial(run, 0)
    record = storage.read_json(run.layout.step_record(0, "generate_initial", 0))["params"]
    assert record["api_reused_images"] == 4 * kept and record["api_images"] == 24 - 4 * kept
    ledger = storage.read_json(run.layout.calls(0, "generate_initial", 0))
    assert ledger["images"] == 24 and ledger["estimated_cost"] == pytest.approx(0.24)

    population = run.modality.decode_population(storage.read_bytes(run.layout.shard(0, 0)), "population")
    assert_close_images(population.samples, local_model(4).random(24, seed=run.seed(0, "random")))


# ------------------------------------------------------------------ faults


@pytest.mark.model_outputs
def test_429_honours_retry_after(faulty: InProcessServer, in_process, tmp_path: Path) -> None:
    sleeps: list[float] = []
    model = remote(faulty.url, sleeps=sleeps)
    bind(model, tmp_path)
    faulty.faults.plan[:] = ["429"]
    images = model.random(8, seed=5)
    assert_close_images(images, in_process.random(8, seed=5))
    assert sleeps and sleeps[0] >= 2.0  # the server's Retry-After, though the backoff alone is 0.01 s
    assert model.ledger.summary()["api_retries"] == 1 and model.ledger.summary()["api_images"] == 8


@pytest.mark.model_outputs
@pytest.mark.parametrize("fault, message", [
    ("500", "HTTP 500"),
    ("malformed", "a malformed answer: the body is not valid JSON"),
    ("wrong_shape", r"expected uint8 \[8, 28, 28, 1\]"),
])
def test_faults_are_retried_then_fail_one_line(faulty: InProcessServer, in_process, fault: str, message: str) -> None:
    model = remote(faulty.url, max_retries=1)
    faulty.faults.plan[:] = [fault]
    assert_close_images(model.random(8, seed=2), in_process.random(8, seed=2))  # one retry heals it
    faulty.faults.plan[:] = [fault, fault]
    with pytest.raises(UserError, match=message) as error:
        model.random(8, seed=2)
    assert "\n" not in str(error.value) and "failed after 2 attempts" in str(error.value)


@pytest.mark.model_outputs
def test_slow_answer_past_timeout_is_retried(faulty: InProcessServer, in_process) -> None:
    model = remote(faulty.url, timeout_s=1.5, max_retries=1)
    faulty.faults.plan[:] = ["slow"]
    assert_close_images(model.random(2, seed=6), in_process.random(2, seed=6))
    faulty.faults.plan[:] = ["slow", "slow"]
    with pytest.raises(UserError, match=r"no answer within model.remote.timeout_s=1.5"):
        model.random(2, seed=6)


@pytest.mark.model_outputs
def test_failed_request_loses_no_received_image(faulty: InProcessServer, in_process, tmp_path: Path) -> None:
    model = remote(faulty.url, batch_size=4, max_retries=1, max_concurrency=1)
    layout = bind(model, tmp_path, "generate_variations")
    parents = in_process.random(12, seed=1)
    faulty.faults.infer_requests = 0
    faulty.faults.plan[:] = [None, None, "500", "500"]  # type: ignore[list-item]  # the third request fails twice
    with pytest.raises(UserError, match="HTTP 500"):
        model.variation(parents, 0.6, seed=3, first_index=10)
    assert len(list(Path(layout.calls_dir(0), "cache", "generate_variations-000").iterdir())) == 2
    images = model.variation(parents, 0.6, seed=3, first_index=10)  # a retried step: only the third request is sent
    assert_close_images(images, in_process.variation(parents, 0.6, seed=3, first_index=10))
    assert faulty.faults.infer_requests == 4 + 1
    ledger = storage.read_json(layout.calls(0, "generate_variations", 0))
    assert (ledger["images"], ledger["reused_images"], ledger["failures"], ledger["retries"]) == (12, 8, 1, 1)
    assert [c["ok"] for c in ledger["calls"]] == [False, True]
    other = model.variation(parents[::-1].copy(), 0.6, seed=3, first_index=10)  # other inputs: new requests
    assert_far_images(other, images)


def test_rate_limit_spaces_requests() -> None:
    from privevo.remote_calls import RateLimiter

    limiter = RateLimiter(per_minute=1200)  # one start every 50 ms
    started = time.monotonic()
    for _ in range(5):
        limiter.wait()
    assert time.monotonic() - started >= 0.19


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
@pytest.mark.model_outputs
def test_tiny_pipeline_through_serve_matches_in_process(served: str, tmp_path: Path) -> None:
    """configs/tiny.yaml with model.kind remote through kfp.local: the in-process samples, an audit that passes.

    One generation: it has every kind of model call, and each more is only more kfp.local process start-ups."""
    non_private = ["--set", "privacy.epsilon=null", "--set", "privacy.noise_multiplier=0",  # a vote without noise,
                   "--set", "privacy.allow_non_private=true", "--set", "privacy.dataset_budget=null"]  # as allowed
    args = tiny_args(tmp_path / "runs", tmp_path / "private", "--run-id", "remote", *non_private,
                     "--set", "model.kind=remote", "--set", f"model.remote.url={served}",
                     "--set", "model.remote.price_per_image=0.001",
                     "--set", "population.generations=1", "--set", "population.degrees=[0.6]")
    result = _run_cli(*args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    audit = _run_cli("audit", "remote", "--run-root", str(tmp_path / "runs"), "--allow-non-private")
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr[-3000:]
    assert "api_images=" in audit.stdout
    assert "Foundation model API calls" in (tmp_path / "runs" / "remote" / "report" / "index.html").read_text()

    # Generation 0 is this process's model at the run's seed, up to CPU rounding. (Later generations
    # follow votes on those images' embeddings, where a one-level difference may flip a near tie.)
    remote_run = Run.open(str(tmp_path / "runs"), "remote")
    initial = remote_run.modality.decode_population(storage.read_bytes(remote_run.layout.population(0)), "population")
    assert_close_images(initial.samples, local_model(8).random(24, seed=remote_run.seed(0, "random")))
    for generation in range(1, remote_run.config.population.generations + 1):
        population = remote_run.modality.decode_population(
            storage.read_bytes(remote_run.layout.population(generation)), "population")
        assert population.samples.shape == initial.samples.shape and population.samples.dtype == np.uint8
        assert population.parent_ids.min() >= 0 and population.parent_ids.max() < 24
    # the shard's 12 children: those that reuse the vote's lookahead variations cost no call (reuse_lookahead)
    ledger = storage.read_json(remote_run.layout.calls(1, "generate_variations", 0))
    record = storage.read_json(remote_run.layout.step_record(1, "generate_variations", 0))["params"]
    assert record["fresh_variations"] + record["reused_lookahead"] == 12 and record["reused_lookahead"] > 0
    assert ledger["images"] == record["fresh_variations"] and ledger["failures"] == 0
    assert ledger["estimated_cost"] == pytest.approx(0.001 * record["fresh_variations"])


def test_a_recorded_in_process_model_records_nothing(in_process, tmp_path: Path) -> None:
    from privevo.layout import RunLayout
    from privevo.remote_calls import RecordedModel

    recorded = RecordedModel(in_process, RunLayout(str(tmp_path / "runs"), "r1", str(tmp_path / "private")), 0,
                             "generate_initial", 0)
    assert np.array_equal(recorded.random(2, seed=3), in_process.random(2, seed=3))
    assert recorded.call_summary() == {} and recorded.num_classes == in_process.num_classes
    assert not (tmp_path / "runs").exists()
