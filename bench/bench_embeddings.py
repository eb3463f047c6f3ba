"""Embedding throughput (images/s): raw pixels and EfficientNet-Lite0 at 28, 32 and 64 px input,
and a batch-size sweep at 32 px (the demo's input size).

Images: real Fashion-MNIST test images (28x28 grayscale, as the demo embeds), or random
uint8 where the dataset is missing. Each configuration is timed ``--repeats`` times after one
warm-up call; the table shows median, min and max. Peak memory of one ``embed`` call is the
process's VmHWM after resetting it just before that configuration (so it includes the model
and the imports already resident, not the earlier configurations' peaks).

Usage:
    .venv/bin/python bench/bench_embeddings.py [--n 1024] [--repeats 3] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench._common import format_table, loadavg, reset_vmhwm, summary, vmhwm_mb  # noqa: E402


def load_images(n: int):
    import numpy as np

    try:
        from privevo.image.data import load_image_set

        images = load_image_set("fashion_mnist", "/usr/share/datasets/fashion-mnist", 28, 1, split="test").images
        source = "fashion-mnist test"
    except Exception:  # noqa: BLE001 - the benchmark runs without the dataset too
        images = np.random.default_rng(0).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
        source = "random uint8"
    reps = -(-n // len(images))
    return np.concatenate([images] * reps)[:n], source


def time_embed(embedding, images, batch_size: int, repeats: int) -> tuple[list[float], float | None]:
    embedding.embed(images[: min(len(images), 2 * batch_size)], batch_size)  # warm-up
    reset_vmhwm()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        embedding.embed(images, batch_size)
        rates.append(len(images) / (time.perf_counter() - start))
    return rates, vmhwm_mb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024, help="images per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 32, 64])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--batch-size", type=int, default=256, help="batch size of the input-size rows")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()

    from privevo import runtime

    runtime.prefer_passive_waiting()  # before torch loads OpenMP: see privevo.runtime
    import torch

    from privevo.image.embeddings.effnet_lite0 import EfficientNetLite0Embedding
    from privevo.image.embeddings.pixels import PixelEmbedding

    if args.threads:
        torch.set_num_threads(args.threads)
    images, source = load_images(args.n)
    rows = []

    def record(kind: str, name: str, input_size, batch_size: int, rates, peak):
        s = summary(rates, 1)
        rows.append({"sweep": kind, "embedding": name, "input_size": input_size, "batch_size": batch_size,
                     "images_per_s": s, "median": s["median"], "min": s["min"], "max": s["max"],
                     "peak_rss_mb": None if peak is None else round(peak, 1)})
        print(f"  {kind:<10} {name:<13} {input_size!s:>4} px  batch {batch_size:>4}: {s['median']:9.1f} img/s "
              f"(load {' '.join(loadavg() or [])})", flush=True)

    pixels = PixelEmbedding(28, 1)
    rates, peak = time_embed(pixels, images, args.batch_size, args.repeats)
    record("input_size", "pixels", 28, args.batch_size, rates, peak)
    device = None
    for size in args.sizes:
        model = EfficientNetLite0Embedding(input_size=size, device=args.device)
        device = model.device
        try:
            rates, peak = time_embed(model, images, args.batch_size, args.repeats)
        except RuntimeError as err:  # EfficientNet-Lite0 cannot run on some small inputs
            reason = str(err).strip().splitlines()[0][:120]
            rows.append({"sweep": "input_size", "embedding": "effnet_lite0", "input_size": size,
                         "batch_size": args.batch_size, "images_per_s": None, "error": reason})
            print(f"  input_size effnet_lite0 {size:>4} px: fails: {reason}", flush=True)
            continue
        record("input_size", "effnet_lite0", size, args.batch_size, rates, peak)
    model = EfficientNetLite0Embedding(input_size=32, device=args.device)
    for batch_size in args.batch_sizes:
        rates, peak = time_embed(model, images, batch_size, args.repeats)
        record("batch_size", "effnet_lite0", 32, batch_size, rates, peak)

    print(f"\nimages/s, n={args.n} {source} images per call, {args.repeats} runs, device {device}, "
          f"{torch.get_num_threads()} torch threads")
    columns = [("sweep", "sweep"), ("embedding", "embedding"), ("input_size", "input px"), ("batch_size", "batch"),
               ("median", "median img/s"), ("min", "min"), ("max", "max"), ("peak_rss_mb", "peak RSS MiB"),
               ("error", "error")]
    print(format_table(rows, columns))
    print(json.dumps({"bench": "embeddings", "n": args.n, "source": source, "repeats": args.repeats,
                      "device": str(device), "threads": torch.get_num_threads(),
                      "rows": [{k: v for k, v in r.items() if k not in ("median", "min", "max")} for r in rows]}))


if __name__ == "__main__":
    main()
