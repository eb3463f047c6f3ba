"""Peak memory of one generation's vote inputs vs the population size N_syn.

The two steps whose memory depends on N_syn, each in a **fresh process** whose peak RSS
(``ru_maxrss``) is the figure: ``embed_synthetic`` (the lookahead: L variations of every
sample, embedded; one shard holding the whole population) and ``dp_vote`` (the k-NN vote
over N_priv x N_syn, no network). For each N_syn (default 100, 200, 400, 800) a setup process
builds generation 0 (the demo's private set and embedding, ``population.size = N_syn``,
lookahead 2, one shard); the RSS after importing ``privevo.steps`` is reported too. Repeats
use separate copies of the same generation 0 (a DP release is write-once).

DDIM steps are lowered to ``--steps`` (default 10) to keep the run short: memory does not
depend on the number of steps (one step's activations are live at a time), only time does.
Streaming the lookahead keeps only one batch of variations at a time, so the slope should be
about the per-sample state that must be kept (images, 1280-d float32 embeddings, a few KiB),
not lookahead x images. Prints the curves and the fitted slopes (KiB per sample) and
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

from bench._common import BENCH_DIR, fit_line, format_table, loadavg, peak_rss_mb, run_worker, summary, vmrss_mb  # noqa: E402


def overrides_for(args, workdir: str, n_syn: int) -> list[str]:
    return [
        f"run_root={workdir}/runs", f"private_root={workdir}/private", f"population.size={n_syn}",
        "population.generations=1", f"population.degrees=[{args.degree}]", f"population.lookahead={args.lookahead}",
        "population.num_shards=1",
        f"model.num_inference_steps={args.steps}", "evaluation.classifier_path=null", *args.overrides,
    ]


def setup(args, workdir: str, n_syn: int, repeats: int) -> None:
    """Generation 0 for ``repeats`` runs of size ``n_syn`` (computed once, then copied)."""
    from privevo import steps
    from privevo.config import load_config
    from privevo.run_record import Run

    config = load_config(args.config, overrides_for(args, workdir, n_syn))
    first = Run.create(config, f"mem-{n_syn}-0")
    shared = Path(workdir) / "private-embeddings.npz"
    target = Path(first.layout.private_embeddings)
    if shared.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared, target)
    else:
        steps.embed_private(first)
        shutil.copy(target, shared)
    for shard in range(config.population.num_shards):
        steps.generate_initial(first, shard)
    for r in range(1, repeats):
        run = Run.create(config, f"mem-{n_syn}-{r}")
        Path(run.layout.private_dir).mkdir(parents=True, exist_ok=True)
        shutil.copy(target, Path(run.layout.private_embeddings))
        shutil.copytree(first.layout.gen_dir(0), run.layout.gen_dir(0), dirs_exist_ok=True)


STEPS = ("embed_synthetic", "dp_vote")


def measure(args, workdir: str, n_syn: int, repeat: int, step: str) -> dict:
    """One ``step`` (embed_synthetic or dp_vote) of generation 1 in this fresh process: its time and peak RSS."""
    floor_before = vmrss_mb()
    from privevo import steps
    from privevo.config import load_config
    from privevo.run_record import Run

    floor = vmrss_mb()
    config = load_config(args.config, overrides_for(args, workdir, n_syn))
    run = Run.create(config, f"mem-{n_syn}-{repeat}")
    start = time.perf_counter()
    if step == "embed_synthetic":
        steps.embed_synthetic(run, 1, 0)
    else:
        steps.dp_vote(run, 1, steps.private_reference(run))
    return {"step": step, "n_syn": n_syn, "repeat": repeat, "seconds": round(time.perf_counter() - start, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1), "rss_after_imports_mb": round(floor, 1),
            "rss_python_mb": round(floor_before, 1)}


def floor(args, workdir: str) -> dict:
    """RSS of a fresh process once it has imported everything and loaded both networks (embed_synthetic's floor)."""
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


def plot(rows: list[dict], fits: dict[str, dict | None], path: Path, title: str, floor_mb: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for color, step in zip(("C0", "C1"), STEPS, strict=True):
        ours = [r for r in rows if r["step"] == step]
        xs = [r["n_syn"] for r in ours]
        ax.errorbar(xs, [r["median"] for r in ours],
                    yerr=[[r["median"] - r["min"] for r in ours], [r["max"] - r["median"] for r in ours]],
                    marker="o", capsize=3, color=color, label=f"{step} peak RSS (median, min-max)")
        if fits.get(step):
            fit = fits[step]
            ax.plot(xs, [fit["slope"] * x + fit["intercept"] for x in xs], ":", color=color,
                    label=f"fit: {fit['slope'] * 1024:.2f} KiB per sample")
    xs = sorted({r["n_syn"] for r in rows})
    after_imports = {r["n_syn"]: r["rss_after_imports_mb"] for r in rows if r["step"] == STEPS[0]}
    ax.plot(xs, [after_imports[x] for x in xs], "s--", color="grey", label="RSS after importing privevo.steps")
    if floor_mb:
        ax.axhline(floor_mb, ls="-.", color="C2", label=f"both networks loaded, nothing run ({floor_mb:.0f} MiB)")
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
            print(json.dumps(measure(args, workdir, n_syn, r, role)))
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
                for step in STEPS:  # the vote reads what embed_synthetic wrote
                    result = run_worker([__file__, "--worker", step, workdir, str(n_syn), str(r), *passthrough])
                    measurements.append(result)
                    print(f"  N_syn {n_syn:>5} repeat {r} {step:<15}: peak {result['peak_rss_mb']:7.1f} MiB, "
                          f"{result['seconds']:6.1f} s (load {' '.join(loadavg() or [])})", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    for step in STEPS:
        for n_syn in args.sizes:
            ours = [m for m in measurements if m["n_syn"] == n_syn and m["step"] == step]
            peak = summary([m["peak_rss_mb"] for m in ours], 1)
            rows.append({"step": step, "n_syn": n_syn, **{k: peak[k] for k in ("median", "min", "max", "runs")},
                         "rss_after_imports_mb": summary([m["rss_after_imports_mb"] for m in ours], 1)["median"],
                         "step_s": summary([m["seconds"] for m in ours], 2)["median"],
                         "lookahead_images_mib": round(n_syn * args.lookahead * 28 * 28 * 4 / 2**20, 2)})
    fits = {step: fit_line([r["n_syn"] for r in rows if r["step"] == step],
                           [r["median"] for r in rows if r["step"] == step]) for step in STEPS}
    title = f"lookahead {args.lookahead}, demo embedding, each step in a fresh process"
    plot(rows, fits, Path(args.plot), title, floor_mb)
    print(f"\npeak RSS per process of generation 1's embed_synthetic and dp_vote (lookahead {args.lookahead}, "
          f"DDIM {args.steps} steps), MiB:")
    print(format_table(rows, [("step", "step"), ("n_syn", "N_syn"), ("median", "peak median"), ("min", "min"),
                              ("max", "max"), ("runs", "runs"), ("rss_after_imports_mb", "after imports"),
                              ("step_s", "step s"), ("lookahead_images_mib", "all lookahead imgs as f32 MiB")]))
    print("RSS of a process that has loaded both networks, before any work (MiB): "
          + ", ".join(f"{k} {v}" for k, v in floor_stages.items()))
    for step, fit in fits.items():
        if fit:
            print(f"{step}: fitted slope {fit['slope'] * 1024:.2f} KiB per synthetic sample "
                  f"({fit['slope'] * 100:.2f} MiB per 100), intercept {fit['intercept']:.1f} MiB, r2 {fit['r2']}")
    print(f"plot: {args.plot}")
    print(json.dumps({"bench": "memory", "sizes": args.sizes, "repeats": args.repeats, "ddim_steps": args.steps,
                      "lookahead": args.lookahead, "rows": rows, "measurements": measurements, "fits": fits,
                      "floor_stages_mb": floor_stages, "plot": str(args.plot),
                      "seconds_total": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
