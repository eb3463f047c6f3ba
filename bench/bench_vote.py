"""The DP vote's nearest-neighbour search: time and peak memory vs N_priv x N_syn at d = 1280.

Methods (every size runs in its own subprocess, so each peak RSS is clean):
- ``faiss_exact``: the library's vote, ``privevo.voting.nearest_neighbour_histogram`` (k = 1),
  i.e. faiss ``IndexFlatL2`` exact search plus the histogram; what the pipeline runs.
- ``numpy_chunked``: numpy brute force, ``-2 X Y^T + |Y|^2`` per chunk of private rows
  (each chunk's distance block <= 64 MiB) then argmin; only up to 20k x 20k (4e8 pairs):
  beyond that it is the same GEMM as faiss, only slower, and would blow the time budget.
- ``faiss_ivf``: approximate ``IndexIVFFlat`` (nlist = sqrt(N_syn), nprobe = 8, k-means on
  at most 64 points per list); time includes training. Its ``recall`` is the fraction of 1,000
  private rows whose IVF neighbour is the exact one. Random Gaussian data has no cluster
  structure, the worst case for IVF, so recall here is a lower bound. IVF changes *which*
  sample gets a vote, not how many votes there are: sensitivity stays 1. Measured only up to
  10k x 10k: its list scan is not a GEMM, and on these CPUs it is already 4x slower than
  exact search at 10k x 10k (extrapolating, hours at 100k x 100k).

Data: standard normal float32 rows (the search cost does not depend on the values).
The default grid takes about 3 minutes on 2 quiet cores (several times longer when the
machine is shared); exact faiss at 100k x 100k (2.6e13 flop) is measured once, ``--full``
adds 50k x 50k, and ``--quick`` stops at 10k x 10k (the 100k x 100k figure is then
*extrapolated* from the fitted exponent and marked so).
The scaling exponent is a log-log least-squares fit of time vs N_priv * N_syn.

Prints a table and one JSON line (median, min, max of the repeats). Figures only.

Usage:
    .venv/bin/python bench/bench_vote.py [--full] [--quick] [--dim 1280]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench._common import fit_power_law, format_table, loadavg, peak_rss_mb, run_worker, summary, vmrss_mb  # noqa: E402

NUMPY_MAX_PAIRS = 20_000 * 20_000
CHUNK_BYTES = 64 * 2**20

# (n_priv, n_syn, methods): the demo's own vote first, then squares, then rectangles.
DEFAULT_GRID = [
    (1_800, 300, ("faiss_exact", "numpy_chunked")),
    (1_000, 1_000, ("faiss_exact", "numpy_chunked", "faiss_ivf")),
    (2_000, 2_000, ("faiss_exact", "numpy_chunked", "faiss_ivf")),
    (5_000, 5_000, ("faiss_exact", "numpy_chunked", "faiss_ivf")),
    (10_000, 10_000, ("faiss_exact", "numpy_chunked", "faiss_ivf")),
    (20_000, 20_000, ("faiss_exact", "numpy_chunked")),
    (100_000, 1_000, ("faiss_exact",)),
    (1_000, 100_000, ("faiss_exact",)),
    (100_000, 100_000, ("faiss_exact",)),  # 2.6e13 flop: measured once (1.5-2 min on 2 quiet cores)
]
FULL_EXTRA = [(50_000, 50_000, ("faiss_exact",))]
QUICK_GRID = [
    (1_800, 300, ("faiss_exact", "numpy_chunked")),
    (1_000, 1_000, ("faiss_exact", "numpy_chunked", "faiss_ivf")),
    (2_000, 2_000, ("faiss_exact", "numpy_chunked", "faiss_ivf")),
    (5_000, 5_000, ("faiss_exact", "numpy_chunked", "faiss_ivf")),
    (10_000, 10_000, ("faiss_exact", "faiss_ivf")),
]


def repeats_for(pairs: int) -> int:
    """Fewer repeats at big sizes: the whole grid must fit in about 5 minutes."""
    return 5 if pairs <= 4e6 else 3 if pairs <= 2.5e7 else 2 if pairs <= 1e8 else 1


# ------------------------------------------------------------------- the methods


def numpy_chunked_histogram(private, synthetic):
    """Brute-force nearest neighbour (k = 1) in numpy, chunked over private rows."""
    import numpy as np

    norms = np.einsum("ij,ij->i", synthetic, synthetic)
    chunk = max(1, CHUNK_BYTES // (4 * len(synthetic)))
    histogram = np.zeros(len(synthetic))
    for start in range(0, len(private), chunk):
        block = private[start : start + chunk] @ synthetic.T
        block *= -2.0
        block += norms
        histogram += np.bincount(block.argmin(axis=1), minlength=len(synthetic))
    return histogram


def faiss_ivf_indices(private, synthetic, nprobe: int = 8):
    import faiss

    d = synthetic.shape[1]
    nlist = max(1, min(round(math.sqrt(len(synthetic))), len(synthetic) // 39 or 1))
    quantizer = faiss.IndexFlatL2(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist)
    index.cp.max_points_per_centroid = 64
    index.train(synthetic)
    index.add(synthetic)
    index.nprobe = min(nprobe, nlist)
    _, indices = index.search(private, 1)
    return indices[:, 0], nlist


def worker(method: str, n_priv: int, n_syn: int, dim: int, repeats: int, warmup: bool) -> dict:
    """One size, one method, in this (fresh) process: times and peak RSS."""
    import numpy as np

    from privevo.voting import knn_indices, nearest_neighbour_histogram

    base_rss = vmrss_mb()
    rng = np.random.default_rng(n_priv * 7 + n_syn)
    private = rng.standard_normal((n_priv, dim), dtype=np.float32)
    synthetic = rng.standard_normal((n_syn, dim), dtype=np.float32)
    data_rss = vmrss_mb()
    extra: dict = {}

    if method == "faiss_exact":
        def call():
            return nearest_neighbour_histogram(private, synthetic, 1)
    elif method == "numpy_chunked":
        def call():
            return numpy_chunked_histogram(private, synthetic)
    elif method == "faiss_ivf":
        def call():
            return faiss_ivf_indices(private, synthetic)
    else:
        raise SystemExit(f"unknown method {method}")

    if warmup:
        call()
    times = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    peak = peak_rss_mb()
    if method == "faiss_ivf":
        indices, nlist = result
        sample = np.random.default_rng(0).choice(n_priv, min(1000, n_priv), replace=False)
        exact = knn_indices(private[sample], synthetic, 1)[:, 0]
        extra = {"nlist": nlist, "nprobe": min(8, nlist), "recall": round(float(np.mean(indices[sample] == exact)), 3)}
    return {"method": method, "n_priv": n_priv, "n_syn": n_syn, "dim": dim, "times": times,
            "peak_rss_mb": round(peak, 1), "baseline_rss_mb": round(base_rss, 1),
            "data_rss_mb": round(data_rss, 1), "data_mb": round((n_priv + n_syn) * dim * 4 / 2**20, 1),
            "vote_extra_mb": round(peak - data_rss, 1), **extra}


# ---------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--full", action="store_true", help="also exact faiss at 50k x 50k (about 30 s more)")
    parser.add_argument("--quick", action="store_true", help="small grid (up to 10k x 10k), for a smoke test")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "N_PRIV", "N_SYN"), help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        method, n_priv, n_syn = args.worker[0], int(args.worker[1]), int(args.worker[2])
        print(json.dumps(worker(method, n_priv, n_syn, args.dim, args.repeats or 1, args.warmup)))
        return

    grid = QUICK_GRID if args.quick else DEFAULT_GRID + (FULL_EXTRA if args.full else [])
    started = time.perf_counter()
    rows = []
    for n_priv, n_syn, methods in grid:
        pairs = n_priv * n_syn
        for method in methods:
            if method == "numpy_chunked" and pairs > NUMPY_MAX_PAIRS:
                continue
            repeats = repeats_for(pairs)
            worker_args = [__file__, "--worker", method, str(n_priv), str(n_syn), "--dim", str(args.dim),
                           "--repeats", str(repeats)] + (["--warmup"] if pairs <= 2.5e7 else [])
            result = run_worker(worker_args)
            times = result.pop("times")
            row = {**result, "pairs": pairs, "seconds": summary(times, 4), "measured": True}
            rows.append(row)
            print(f"  {method:<14} {n_priv:>7} x {n_syn:<7} median {row['seconds']['median']:9.4f} s "
                  f"peak {row['peak_rss_mb']:7.1f} MiB  (load {' '.join(loadavg() or [])})", flush=True)

    fits = {}
    for method in ("faiss_exact", "numpy_chunked", "faiss_ivf"):
        points = [(r["pairs"], r["seconds"]["median"]) for r in rows if r["method"] == method]
        big = [(p, t) for p, t in points if p >= 1e7]
        fits[method] = {
            "all": fit_power_law([p for p, _ in points], [t for _, t in points]),
            "pairs>=1e7": fit_power_law([p for p, _ in big], [t for _, t in big]) if len(big) >= 2 else None,
        }
    exact_fit = fits["faiss_exact"]["pairs>=1e7"] or fits["faiss_exact"]["all"]
    if exact_fit and not any(r["method"] == "faiss_exact" and r["pairs"] == 10**10 for r in rows):
        predicted = exact_fit["prefactor"] * (1e10) ** exact_fit["exponent"]
        rows.append({"method": "faiss_exact", "n_priv": 100_000, "n_syn": 100_000, "dim": args.dim, "pairs": 10**10,
                     "seconds": {"median": round(predicted, 1), "min": None, "max": None, "runs": 0},
                     "measured": False, "note": "extrapolated from the fit (the default grid measures it)",
                     "data_mb": round(200_000 * args.dim * 4 / 2**20, 1)})

    table_rows = [{"method": r["method"], "n_priv": r["n_priv"], "n_syn": r["n_syn"], "pairs": float(r["pairs"]),
                   "median_s": r["seconds"]["median"], "min_s": r["seconds"]["min"], "max_s": r["seconds"]["max"],
                   "runs": r["seconds"]["runs"], "peak_MiB": r.get("peak_rss_mb"), "data_MiB": r.get("data_mb"),
                   "extra_MiB": r.get("vote_extra_mb"), "recall": r.get("recall"),
                   "note": "" if r["measured"] else "EXTRAPOLATED"} for r in rows]
    columns = [("method", "method"), ("n_priv", "N_priv"), ("n_syn", "N_syn"), ("median_s", "median s"),
               ("min_s", "min s"), ("max_s", "max s"), ("runs", "runs"), ("peak_MiB", "peak RSS MiB"),
               ("data_MiB", "data MiB"), ("extra_MiB", "peak-data MiB"), ("recall", "recall"), ("note", "")]
    print(f"\nvote k=1, d={args.dim}, random float32; each size in its own process; peak = ru_maxrss of that process")
    print(format_table(table_rows, columns))
    print("\nscaling exponent of time vs N_priv*N_syn (log-log least squares; 1.0 = linear in pairs):")
    for method, fit in fits.items():
        for subset, f in fit.items():
            if f:
                print(f"  {method:<14} {subset:<11} exponent {f['exponent']:.3f}  r2 {f['r2']:.3f}")
    print(f"numpy brute force measured up to {NUMPY_MAX_PAIRS:.0e} pairs (20k x 20k) only.")
    print(f"total {time.perf_counter() - started:.0f} s")
    print(json.dumps({"bench": "vote", "dim": args.dim, "grid": "quick" if args.quick else "full" if args.full else "default",
                      "rows": rows, "fits": fits, "numpy_max_pairs": NUMPY_MAX_PAIRS,
                      "seconds_total": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
