"""Peak memory of one dp_vote with lookahead vs the population size N_syn.

For each N_syn (default 100, 200, 400, 800) a setup process builds generation 0 (the demo's
private set and embedding, ``population.size = N_syn``, lookahead 2), then every measured
dp_vote runs in a **fresh process** whose peak RSS (``ru_maxrss``) is the figure; the RSS after
importing ``privevo.steps`` is reported too (the fixed floor). Repeats use separate copies of
the same generation 0 (a DP release is write-once, so a vote cannot be re-run in place).

DDIM steps are lowered to ``--steps`` (default 10) to keep the run short: memory does not
depend on the number of steps (one step's activations are live at a time), only time does.
Streaming the lookahead keeps only one batch of variations at a time, so the slope should be
about the per-sample state that must be kept (images, 1280-d float32 embeddings, a few KiB),
not lookahead x images. Prints the curve and the fitted slope (MiB per 100 samples) and
saves ``bench/memory_curve.png``. Figures only.

Usage:
    .venv/bin/python bench/bench_memory.py [--sizes 100 200 400 800] [--repeats 2] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench._common import (  # noqa: E402
    BENCH_DIR, fit_line, format_table, loadavg, peak_rss_mb, run_worker, summary, vmrss_mb,
)


def overrides_for(args, workdir: str, n_syn: int) -> list[str]:
    return [
        f"run_root={workdir}/runs", f"private_root={workdir}/private", f"population.size={n_syn}",
        "population.generations=1", f"population.degrees=[{args.degree}]", f"population.lookahead={args.lookahead}",
        f"model.num_inference_steps={args.steps}", "evaluation.classifier_path=null", *args.overrides,
    ]


def setup(args, workdir: str, n_syn: int, repeats: int) -> None:
    """Generation 0 for ``repeats`` runs of size ``n_syn`` (computed once, then copied)."""
    from privevo import steps
    from privevo.config import load_config

    config = load_config(args.config, overrides_for(args, workdir, n_syn))
    first = steps.Run.create(config, f"mem-{n_syn}-0")
    shared = Path(workdir) / "private-embeddings.npz"
    target = Path(first.layout.private_dir) / steps.PRIVATE_EMBEDDINGS_FILE
    if shared.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared, target)
    else:
        steps.embed_private(first)
        shutil.copy(target, shared)
    for shard in range(config.population.num_shards):
        steps.generate_initial(first, shard)
    for r in range(1, repeats):
        run = steps.Run.create(config, f"mem-{n_syn}-{r}")
        Path(run.layout.private_dir).mkdir(parents=True, exist_ok=True)
        shutil.copy(target, Path(run.layout.private_dir) / steps.PRIVATE_EMBEDDINGS_FILE)
        shutil.copytree(first.layout.gen_dir(0), run.layout.gen_dir(0), dirs_exist_ok=True)


def measure(args, workdir: str, n_syn: int, repeat: int) -> dict:
    """One dp_vote in this fresh process: its time and peak RSS."""
    floor_before = vmrss_mb()
    from privevo import steps
    from privevo.config import load_config

    floor = vmrss_mb()
    config = load_config(args.config, overrides_for(args, workdir, n_syn))
    run = steps.Run.create(config, f"mem-{n_syn}-{repeat}")
    start = time.perf_counter()
    steps.dp_vote(run, 1, steps.private_reference(run))
    return {"n_syn": n_syn, "repeat": repeat, "seconds": round(time.perf_counter() - start, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1), "rss_after_imports_mb": round(floor, 1),
            "rss_python_mb": round(floor_before, 1)}


def floor(args, workdir: str) -> dict:
    """RSS of a fresh process once it has imported everything and loaded both models (no vote)."""
    stages = {"python": vmrss_mb()}
    from privevo import steps
    from privevo.config import load_config

    stages["privevo.steps"] = vmrss_mb()
    config = load_config(args.config, overrides_for(args, workdir, args.sizes[0]))
    embedding = steps.load_embedding(config)
    stages["+ embedding model"] = vmrss_mb()
    model = steps.load_model(config)
    stages["+ diffusion model (torch, diffusers)"] = vmrss_mb()
    del embedding, model
    return {k: round(v, 1) for k, v in stages.items()}


def plot(rows: list[dict], fit: dict | None, path: Path, title: str, floor_mb: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["n_syn"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.errorbar(xs, [r["median"] for r in rows],
                yerr=[[r["median"] - r["min"] for r in rows], [r["max"] - r["median"] for r in rows]],
                marker="o", capsize=3, label="dp_vote peak RSS (median, min-max)")
    ax.plot(xs, [r["rss_after_imports_mb"] for r in rows], "s--", color="grey", label="RSS after importing privevo.steps")
    if floor_mb:
        ax.axhline(floor_mb, ls="-.", color="C2", label=f"both models loaded, no vote ({floor_mb:.0f} MiB)")
    if fit:
        line = [fit["slope"] * x + fit["intercept"] for x in xs]
        ax.plot(xs, line, ":", color="C3", label=f"fit: {fit['slope'] * 100:.2f} MiB per 100 samples")
    ax.set_xlabel("N_syn (population size)")
    ax.set_ylabel("peak resident memory (MiB)")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400, 800])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps (memory does not depend on it)")
    parser.add_argument("--lookahead", type=int, default=2)
    parser.add_argument("--degree", type=float, default=0.6)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--plot", default=str(BENCH_DIR / "memory_curve.png"))
    parser.add_argument("--worker", nargs=4, metavar=("ROLE", "WORKDIR", "N_SYN", "R"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        role, workdir, n_syn, r = args.worker[0], args.worker[1], int(args.worker[2]), int(args.worker[3])
        if role == "setup":
            setup(args, workdir, n_syn, r)
            print(json.dumps({"setup": n_syn}))
        elif role == "floor":
            print(json.dumps(floor(args, workdir)))
        else:
            print(json.dumps(measure(args, workdir, n_syn, r)))
        return

    started = time.perf_counter()
    workdir = tempfile.mkdtemp(prefix="bench-memory-")
    passthrough = ["--config", args.config, "--steps", str(args.steps), "--lookahead", str(args.lookahead),
                   "--degree", str(args.degree)] + [x for o in args.overrides for x in ("--set", o)]
    measurements = []
    try:
        floor_stages = run_worker([__file__, "--worker", "floor", workdir, "0", "0", *passthrough])
        floor_mb = list(floor_stages.values())[-1]
        print(f"  floor: {floor_stages}", flush=True)
        for n_syn in args.sizes:
            run_worker([__file__, "--worker", "setup", workdir, str(n_syn), str(args.repeats), *passthrough])
            for r in range(args.repeats):
                result = run_worker([__file__, "--worker", "measure", workdir, str(n_syn), str(r), *passthrough])
                measurements.append(result)
                print(f"  N_syn {n_syn:>5} repeat {r}: peak {result['peak_rss_mb']:7.1f} MiB, {result['seconds']:6.1f} s "
                      f"(load {' '.join(loadavg() or [])})", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    for n_syn in args.sizes:
        ours = [m for m in measurements if m["n_syn"] == n_syn]
        peak = summary([m["peak_rss_mb"] for m in ours], 1)
        rows.append({"n_syn": n_syn, **{k: peak[k] for k in ("median", "min", "max", "runs")},
                     "rss_after_imports_mb": summary([m["rss_after_imports_mb"] for m in ours], 1)["median"],
                     "vote_s": summary([m["seconds"] for m in ours], 2)["median"],
                     "lookahead_images_mib": round(n_syn * args.lookahead * 28 * 28 * 4 / 2**20, 2)})
    fit = fit_line([r["n_syn"] for r in rows], [r["median"] for r in rows])
    title = f"dp_vote, lookahead {args.lookahead}, demo embedding, each vote in a fresh process"
    plot(rows, fit, Path(args.plot), title, floor_mb)
    print(f"\npeak RSS of one dp_vote (lookahead {args.lookahead}, DDIM {args.steps} steps) per process, MiB:")
    print(format_table(rows, [("n_syn", "N_syn"), ("median", "peak median"), ("min", "min"), ("max", "max"),
                              ("runs", "runs"), ("rss_after_imports_mb", "after imports"), ("vote_s", "vote s"),
                              ("lookahead_images_mib", "all lookahead imgs as f32 MiB")]))
    print("RSS of a process that has loaded everything dp_vote needs, before any vote (MiB): "
          + ", ".join(f"{k} {v}" for k, v in floor_stages.items()))
    if fit:
        print(f"fitted slope: {fit['slope'] * 1024:.2f} KiB per synthetic sample "
              f"({fit['slope'] * 100:.2f} MiB per 100), intercept {fit['intercept']:.1f} MiB, r2 {fit['r2']}")
    print(f"plot: {args.plot}")
    print(json.dumps({"bench": "memory", "sizes": args.sizes, "repeats": args.repeats, "ddim_steps": args.steps,
                      "lookahead": args.lookahead, "rows": rows, "measurements": measurements, "fit": fit,
                      "floor_stages_mb": floor_stages,
                      "slope_kib_per_sample": None if not fit else round(fit["slope"] * 1024, 2),
                      "plot": str(args.plot), "seconds_total": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
