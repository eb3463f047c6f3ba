"""Tokens per second of the two text backends: ``hf_causal_lm`` in process vs ``openai_compatible`` through
``pipeline.py serve`` on loopback, and the call ledger's cost line.

Loads ``models/smollm2-135m-instruct`` (``make install`` builds it; else ``models/tiny-llama``, a random-weight
model whose figures say little), completes ``--n`` public prompts of Aug-PE's random API shape
("Write one sentence about ...") with ``--max-new-tokens`` each, first in this process (batches of
``--batch-size``, ``--threads`` torch threads), then through ``pipeline.py serve`` started with the same
model, batch size and threads on a free 127.0.0.1 port, called by the ``openai_compatible`` backend with
``--batch-size`` requests in flight (the server batches requests that arrive together). Completion
tokens are counted by the model's tokenizer on both sides (the server's ``usage``). The server and this
process share the machine's cores; the server is idle while the in-process backend runs. Prints a table,
the ledger's cost line at ``--price-in``/``--price-out`` per token, and one JSON line. Figures only: nothing
is asserted.

Usage:
    .venv/bin/python bench/bench_text_backends.py [--n 32] [--batch-size 8] [--threads 2] [--max-new-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench._common import format_table, machine_info  # noqa: E402
from privevo import calls, storage  # noqa: E402
from privevo.config import RemoteConfig  # noqa: E402
from privevo.layout import RunLayout  # noqa: E402
from privevo.serve import pretrained_model  # noqa: E402
from privevo.text.backends import Request  # noqa: E402
from privevo.text.openai_compatible import OpenAICompatible  # noqa: E402

TOPICS = ["computers", "people", "politics", "science", "work", "a cat", "the weather", "a library"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("serve did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_model = REPO_ROOT / "models" / "smollm2-135m-instruct"
    parser.add_argument("--model", default=str(default_model if default_model.is_dir() else REPO_ROOT / "models" / "tiny-llama"))
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--price-in", type=float, default=1.5e-7, help="per prompt token, for the cost line")
    parser.add_argument("--price-out", type=float, default=6e-7, help="per completion token, for the cost line")
    args = parser.parse_args()

    requests = [Request(f"Write one sentence about {TOPICS[i % len(TOPICS)]} in about 25 words.", args.max_new_tokens, i)
                for i in range(args.n)]
    model = pretrained_model("hf_causal_lm", args.model, {"batch_size": args.batch_size, "threads": args.threads}).load()
    model.complete(requests[:1])  # warm-up
    started = time.perf_counter()
    texts = model.complete(requests)
    local_s = time.perf_counter() - started
    local_tokens = sum(min(len(model.tokenizer(t, add_special_tokens=False)["input_ids"]), args.max_new_tokens)
                       for t in texts)
    del model

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "pipeline.py", "serve", "--model-kind", "hf_causal_lm", "--model-path",
                             args.model, "--port", str(port), "--batch-size", str(args.batch_size), "--threads",
                             str(args.threads)], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, proc)
        client = OpenAICompatible(RemoteConfig(url=url, max_concurrency=args.batch_size, price_per_input_token=args.price_in,
                                               price_per_output_token=args.price_out))
        client.complete(requests[:1])  # warm-up
        with tempfile.TemporaryDirectory() as folder:
            layout = RunLayout(str(Path(folder) / "runs"), "bench", str(Path(folder) / "private"))
            client.ledger.bind(layout, 0, "generate_initial", 0)
            started = time.perf_counter()
            client.complete(requests)
            served_s = time.perf_counter() - started
            ledger = storage.read_json(layout.calls(0, "generate_initial", 0))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)

    rows = [
        {"backend": "hf_causal_lm (in process)", "texts": args.n, "tokens_out": local_tokens, "seconds": round(local_s, 2),
         "tokens_per_s": round(local_tokens / local_s, 1)},
        {"backend": "openai_compatible (serve)", "texts": args.n, "tokens_out": ledger["tokens_out"],
         "seconds": round(served_s, 2), "tokens_per_s": round(ledger["tokens_out"] / served_s, 1)},
    ]
    print(f"model {Path(args.model).name}, {args.n} prompts, batch size {args.batch_size}, {args.threads} threads, "
          f"{args.max_new_tokens} new tokens at most")
    print(format_table(rows, [("backend", "backend"), ("texts", "texts"), ("tokens_out", "tokens out"),
                              ("seconds", "s"), ("tokens_per_s", "tokens/s")]))
    print("call ledger:", calls.cost_line([ledger]))
    print(json.dumps({"model": Path(args.model).name, "n": args.n, "batch_size": args.batch_size, "threads": args.threads,
                      "max_new_tokens": args.max_new_tokens, "rows": rows, "ledger": {k: v for k, v in ledger.items()
                                                                                      if k != "calls"},
                      "machine": machine_info()}))


if __name__ == "__main__":
    main()
