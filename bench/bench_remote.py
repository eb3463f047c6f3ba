"""The protocol's overhead: images/s of the demo model in-process vs through ``pipeline.py serve`` on loopback.

Loads ``models/fashion-mnist-ddpm`` as the pipeline does (``load_model``), times ``random`` and
``variation`` (degree 0.5; and degree 0, ``variation0``, which returns its input: the
protocol's cost alone) in this process, then starts ``pipeline.py serve`` with the same
model, batch size and precision on a free 127.0.0.1 port and times the same calls through
the ``remote`` backend at each ``--concurrency`` (requests in flight), with the binary tensor
extension and, at concurrency 1, with plain JSON data lists. The server and this process share
the machine's cores (the server works while the client waits). Prints a table with the ratio
remote/in-process and one JSON line. Figures only: nothing is asserted.

Usage:
    .venv/bin/python bench/bench_remote.py [--n 100] [--batch-size 25] [--concurrency 1 2] [--autocast off]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from privevo.config import RemoteConfig, parse_config  # noqa: E402
from privevo.image import protocol  # noqa: E402
from privevo.image.models import load_model  # noqa: E402
from privevo.image.models.remote import RemoteModel  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO_ROOT / "models" / "fashion-mnist-ddpm"))
    parser.add_argument("--n", type=int, default=100, help="images per timed call")
    parser.add_argument("--batch-size", type=int, default=25, help="images per forward pass and per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--autocast", default="auto", choices=("auto", "off", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    data = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text())
    data["model"].update(path=args.model, batch_size=args.batch_size, autocast=args.autocast, device="cpu")
    model = load_model(parse_config(data))
    precision = "bfloat16 autocast" if model.autocast_dtype is not None else "float32"
    parents = model.random(args.n, seed=1)
    many = np.concatenate([parents] * 10)  # degree 0 returns its input: the protocol alone, no network forward pass
    calls = {
        "random": lambda m: m.random(args.n, seed=2),
        "variation": lambda m: m.variation(parents, 0.5, seed=3),
        "variation0": lambda m: m.variation(many, 0.0, seed=3),
    }
    rows: list[dict] = []
    for call, fn in calls.items():
        fn(model)  # warm up
        count = len(many) if call == "variation0" else args.n
        rows.append({"call": call, "where": "in-process", "concurrency": None, "encoding": None,
                     "images_per_s": count / timed(lambda fn=fn: fn(model), args.repeats)})

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "pipeline.py", "serve", "--model-kind", "ddpm_unet", "--model-path", args.model, "--port", str(port),
         "--batch-size", str(args.batch_size), "--autocast", args.autocast, "--device", "cpu"],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not become ready") from None
                time.sleep(0.2)
        settings = [(c, True) for c in args.concurrency] + [(1, False)]
        for concurrency, binary in settings:
            client = RemoteModel(RemoteConfig(url=url, max_concurrency=concurrency, binary=binary), args.batch_size)
            for call, fn in calls.items():
                fn(client)
                count = len(many) if call == "variation0" else args.n
                rows.append({"call": call, "where": "server", "concurrency": concurrency,
                             "encoding": "binary" if binary else "json",
                             "images_per_s": count / timed(lambda fn=fn, client=client: fn(client), args.repeats)})
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)

    images = parents[: args.batch_size]
    sizes = {}
    for binary in (True, False):
        body, _ = protocol.encode_response("ddpm_unet", images, binary)
        sizes["binary" if binary else "json"] = len(body)
    baseline = {r["call"]: r["images_per_s"] for r in rows if r["where"] == "in-process"}
    for row in rows:
        row["ratio"] = row["images_per_s"] / baseline[row["call"]]
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}; "
          f"precision {precision}; n={args.n}, batch {args.batch_size}, best of {args.repeats}")
    print(f"{'call':<10} {'where':<11} {'concurrency':>11} {'encoding':>8} {'images/s':>9} {'vs in-process':>13}")
    for r in rows:
        print(f"{r['call']:<10} {r['where']:<11} {r['concurrency'] or '-':>11} {r['encoding'] or '-':>8} "
              f"{r['images_per_s']:>9.2f} {r['ratio']:>12.3f}x")
    print(f"response body for {args.batch_size} images of {images.shape[1:]}: binary {sizes['binary']} bytes, "
          f"JSON {sizes['json']} bytes ({sizes['json'] / sizes['binary']:.1f}x)")
    print(json.dumps({"precision": precision, "n": args.n, "batch_size": args.batch_size, "rows": rows,
                      "response_bytes": sizes, "pixels": int(np.prod(images.shape))}))


if __name__ == "__main__":
    main()
