"""Throughput of the shipped demo model's foundation-model APIs, in samples per second.

Prints a table (median, min and max over repeated runs) and one JSON line, for ``random``
and for ``variation`` at several degrees, batch sizes, thread counts and precisions
(``model.autocast``: off = float32, bfloat16 = mixed precision), with the speed-up over
float32 beside each row. One thread is what each local shard step gets (kfp.local runs two
shards at once on two cores). The model is loaded as the pipeline loads it: ``configs/demo.yaml``
with its ``model`` section set from the arguments, through ``privevo.models.load_model``.
Figures only: nothing is asserted.

Usage:
    .venv/bin/python bench/bench_models.py [--n 64] [--repeats 3] [--batch-sizes 16 64] [--threads 1 2]
        [--autocast off bfloat16]
"""

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from privevo.config import Config, parse_config  # noqa: E402
from privevo.models import load_model  # noqa: E402


def main() -> None:
    """Time each API call ``--repeats`` times per batch size and report samples per second."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO_ROOT / "models" / "fashion-mnist-ddpm"))
    parser.add_argument("--n", type=int, default=64, help="samples per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--degrees", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--autocast", nargs="+", default=["off", "bfloat16"], help="model.autocast settings to compare")
    args = parser.parse_args()

    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        results += measure(args, threads)
    baseline = {(r["api"], r["degree"], r["batch_size"], r["threads"]): r["median"] for r in results
                if r["dtype"] == "float32"}
    for r in results:
        base = baseline.get((r["api"], r["degree"], r["batch_size"], r["threads"]))
        r["x_float32"] = round(r["median"] / base, 2) if base else None

    device = results[0]["device"]
    print(f"samples/s, {args.model}, DDIM {args.steps} steps, n={args.n}, {args.repeats} runs, {device}")
    print(f"{'api':<10} {'degree':>6} {'batch':>5} {'threads':>7} {'dtype':>9} {'median':>8} {'min':>8} {'max':>8}"
          f" {'x float32':>9}")
    for r in results:
        degree = "-" if r["degree"] is None else f"{r['degree']:.2f}"
        ratio = "-" if r["x_float32"] is None else f"{r['x_float32']:.2f}"
        print(f"{r['api']:<10} {degree:>6} {r['batch_size']:>5} {r['threads']:>7} {r['dtype']:>9} {r['median']:>8.2f}"
              f" {r['min']:>8.2f} {r['max']:>8.2f} {ratio:>9}")
    print(json.dumps({
        "bench": "models",
        "model": args.model,
        "ddim_steps": args.steps,
        "n": args.n,
        "repeats": args.repeats,
        "device": device,
        "threads": args.threads,
        "results": results,
    }))


def demo_config(args, batch_size: int, autocast: str) -> Config:
    """configs/demo.yaml with the model under test: the settings the pipeline would load it with."""
    data = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text())
    data["model"].update(path=args.model, num_inference_steps=args.steps, batch_size=batch_size, device=args.device,
                         autocast=autocast)
    return parse_config(data, source="configs/demo.yaml")


def measure(args, threads: int) -> list[dict]:
    """Samples per second of every API, batch size and precision at the current thread count."""
    results = []
    for autocast in args.autocast:
        for batch_size in args.batch_sizes:
            model = load_model(demo_config(args, batch_size, autocast))
            images = model.random(args.n, seed=0)  # also the warm-up
            calls = [("random", None, functools.partial(model.random, args.n))]
            calls += [("variation", d, functools.partial(model.variation, images, d)) for d in args.degrees]
            for api, degree, call in calls:
                rates = []
                for repeat in range(args.repeats):
                    start = time.perf_counter()
                    call(seed=repeat + 1)
                    rates.append(args.n / (time.perf_counter() - start))
                results.append({
                    "api": api,
                    "degree": degree,
                    "batch_size": batch_size,
                    "threads": threads,
                    "device": str(model.device),
                    "autocast": autocast,
                    "dtype": str(model.autocast_dtype or torch.float32).replace("torch.", ""),
                    "median": round(statistics.median(rates), 2),
                    "min": round(min(rates), 2),
                    "max": round(max(rates), 2),
                })
    return results


if __name__ == "__main__":
    main()
