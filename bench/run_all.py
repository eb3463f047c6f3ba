"""Run every benchmark, write ``bench/results.json`` and ``bench/RESULTS.md``.

Each benchmark runs as its own subprocess (its stdout is echoed; the JSON object on its
last line is kept; ``bench/bench_models.py``'s keys are read defensively). Figures only:
nothing is asserted.

Usage:
    .venv/bin/python bench/run_all.py [--quick] [--only vote,embeddings,models,memory,demo]
        [--profile default|headline|quick|gpu] [--device cuda] [--demo-repeats N] [--json bench/results.json]
        [--markdown bench/RESULTS.md] [--set key=value ...]

Profiles: ``default`` runs everything; ``headline`` runs only what issue 18's figures need
(the models benchmark's float32 GEMM and UNet GFLOP/s, and the demo: kfp.local and in one
process on the same work, then in one process for seeds 0-2 with and without
``population.reuse_lookahead``); ``quick`` shrinks every benchmark (smoke test, minutes);
``gpu`` is what ``bench/gpu.sh`` runs. ``--set`` overrides go to the demo and memory
benchmarks (e.g. ``--set model.device=cuda``).

The headline (printed at the end and written at the top of RESULTS.md) holds only ratios
of figures taken in this run: kfp.local / in-process wall (target <= 1.05), UNet / GEMM
GFLOP/s in float32 (target >= 0.5), UNet image-steps per demo run with and without lookahead
reuse, the demo's FD and class TV over the seeds for both, the CPU model and flags, and the
precision each figure used.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench._common import (  # noqa: E402
    BENCH_DIR,
    CPU_FLAGS,
    OFFICIAL_CONTEXT,
    PYTHON,
    REUSE_FIGURES,
    STEP_COLUMNS,
    TARGET_OVERHEAD_RATIO,
    TARGET_UNET_GEMM_RATIO,
    last_json_line,
    machine_info,
    markdown_table,
    verdict_word,
    write_json,
)

BENCHES = ("vote", "embeddings", "models", "memory", "demo")
PROFILES = ("default", "headline", "quick", "gpu")
#: The demo's seeds x reuse comparison (issue 18): 3 seeds, reuse off and on, in one process.
DEMO_SEEDS = ["--seeds", "3", "--compare-reuse"]
#: kfp.local / in-process pairs in the headline profile (their order alternates; the ratio is of the medians).
HEADLINE_PAIRS = 3
#: A "## " section of RESULTS.md holding this line is written by hand (figures no benchmark here takes, e.g.
#: bench/count_pods.py's): a rewrite keeps it, after the sections it writes.
HAND_WRITTEN_MARK = "<!-- written by hand: bench/run_all.py keeps this section -->"


def demo_repeats(args: argparse.Namespace) -> int:
    """Pairs of the kfp.local and in-process demo: the headline's ratio is a median over HEADLINE_PAIRS pairs,
    since one pair on a shared machine varies by more than the 5% it is judged against."""
    if args.demo_repeats is not None:
        return args.demo_repeats
    return HEADLINE_PAIRS if args.profile == "headline" else 1


def commands(args: argparse.Namespace) -> dict[str, list[str]]:
    """Each benchmark's command line under the chosen profile."""
    sets = [x for o in args.overrides for x in ("--set", o)]
    quick = args.profile == "quick"
    device = ["--device", args.device] if args.device else []
    if args.profile == "gpu":  # sized to finish in about 6 minutes on one GPU (bench/gpu.sh)
        return {
            "vote": ["bench/bench_vote.py", "--quick"],  # faiss-cpu: the vote stays on the CPU
            "embeddings": ["bench/bench_embeddings.py", "--n", "2048", "--sizes", "32", "64",
                           "--batch-sizes", "128", "256", "512", "1024", *device],
            "models": ["bench/bench_models.py", "--n", "200", "--batch-sizes", "50", "100", "200", *device],
            "memory": ["bench/bench_memory.py", "--repeats", "1", *sets],
            "demo": ["bench/bench_demo.py", "--repeats", "1", *sets],
        }
    demo = ["bench/bench_demo.py", "--repeats", str(demo_repeats(args)), *DEMO_SEEDS, *sets]
    if args.profile == "headline":
        return {"models": ["bench/bench_models.py", *device], "demo": demo}
    return {
        "vote": ["bench/bench_vote.py"] + (["--quick"] if quick else []),
        "embeddings": ["bench/bench_embeddings.py"] + (["--n", "256", "--repeats", "2"] if quick else []) + device,
        "models": ["bench/bench_models.py"] + (["--quick"] if quick else ["--n", "100", "--repeats", "2", "--degrees", "0.6",
                                                     "--batch-sizes", "25", "50", "100",
                                                     "--threads", "1", "2"]) + device,
        "memory": ["bench/bench_memory.py"] + (["--sizes", "50", "100", "200", "--repeats", "1", "--steps", "3"]
                                               if quick else []) + sets,
        "demo": ["bench/bench_demo.py", "--repeats", str(demo_repeats(args)), "--seeds", "1", "--compare-reuse", *sets,
                 "--set", "population.size=60", "--set", "population.generations=2", "--set", "population.degrees=[0.6,0.5]",
                 "--set", "private.rows=[0,300]", "--set", "evaluation.reference.rows=[1800,2100]",
                 "--set", "model.num_inference_steps=5"] if quick else demo,
    }


def run_bench(name: str, cmd: list[str]) -> dict:
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    started = time.perf_counter()
    # bench_models.py imports torch itself: give it the OpenMP wait policy the library uses.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.Popen([PYTHON, *cmd], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if not line.startswith("{"):
            print(line, end="", flush=True)
    proc.wait()
    seconds = round(time.perf_counter() - started, 1)
    if proc.returncode != 0:
        print(f"=== {name} FAILED (exit {proc.returncode})", flush=True)
        return {"bench": name, "error": f"exit {proc.returncode}", "tail": "".join(lines[-20:]), "command": cmd,
                "seconds": seconds}
    result = last_json_line("".join(lines))
    result.update(command=" ".join([".venv/bin/python", *cmd]), seconds=seconds, text="".join(
        line for line in lines if not line.startswith("{")))
    return result


# ---------------------------------------------------------------------- markdown


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def section_vote(r: dict) -> list[str]:
    rows = [{"method": x["method"], "N_priv": x["n_priv"], "N_syn": x["n_syn"], "median s": x["seconds"]["median"],
             "min s": x["seconds"]["min"], "max s": x["seconds"]["max"], "runs": x["seconds"]["runs"],
             "peak RSS MiB": x.get("peak_rss_mb"), "data MiB": x.get("data_mb"), "peak - data MiB": x.get("vote_extra_mb"),
             "recall": x.get("recall"), "": "" if x.get("measured", True) else "extrapolated"} for x in r["rows"]]
    cols = [(k, k) for k in rows[0]] if rows else []
    out = ["## The vote: k-NN over N_priv x N_syn (d = 1280)", "", f"`{r['command']}`", "",
           "k = 1, random float32 rows, each size in its own process (peak = that process's ru_maxrss; "
           "`data` = the two embedding matrices themselves). numpy brute force only up to 20k x 20k "
           "(4e8 pairs); faiss IVF only up to 10k x 10k (slower than exact here, see below).", "",
           markdown_table(rows, cols), "", "Scaling exponent of time vs N_priv x N_syn (log-log least squares):", ""]
    fit_rows = []
    for method, fits in r["fits"].items():
        for subset, f in fits.items():
            if f:
                fit_rows.append({"method": method, "points": subset, "exponent": f["exponent"], "r2": f["r2"]})
    out += [markdown_table(fit_rows, [(k, k) for k in ("method", "points", "exponent", "r2")]), ""]
    return out


def section_embeddings(r: dict) -> list[str]:
    rows = [{"sweep": x["sweep"], "embedding": x["embedding"], "input px": x["input_size"], "batch": x["batch_size"],
             "img/s median": (x["images_per_s"] or {}).get("median"), "min": (x["images_per_s"] or {}).get("min"),
             "max": (x["images_per_s"] or {}).get("max"), "peak RSS MiB": x.get("peak_rss_mb"),
             "note": x.get("error", "")} for x in r["rows"]]
    return ["## Embedding throughput", "", f"`{r['command']}`", "",
            f"{r['n']} {r['source']} images per call, {r['repeats']} runs, device {r['device']}, {r['threads']} torch "
            "threads; peak = VmHWM reset before each configuration.", "",
            markdown_table(rows, [(k, k) for k in rows[0]]), ""]


def section_models(r: dict) -> list[str]:
    """The models benchmark: float32 GEMM vs UNet GFLOP/s (where it reports them), torch.compile, API throughput."""
    out = ["## Foundation model: float32 peak and throughput (bench/bench_models.py)", "", f"`{r['command']}`", ""]
    if r.get("cpu_flags") is not None:
        out += [f"CPU flags found: {', '.join(r['cpu_flags']) or 'none'}; `model.autocast: auto` runs the UNet in "
                f"{r.get('autocast_auto', '-')} here.", ""]
    peak = [x for x in r.get("peak") or [] if isinstance(x, dict)]
    if peak:
        out += [f"UNet FLOPs per image-step (FlopCounterMode): {fmt(r.get('unet_gflop_per_image_step'))} GFLOP. "
                "GFLOP/s of the UNet (through `model.random`) and of a float32 GEMM, per thread count, batch and variant; "
                "ratio = UNet / GEMM, both measured in the same rounds.", "",
                markdown_table(peak, [(k, k) for k in peak[0]]), ""]
    if isinstance(r.get("compile"), dict):
        out += ["torch.compile: " + ", ".join(f"{k} {fmt(v)}" for k, v in r["compile"].items()), ""]
    rows = [{"api": x.get("api"), "degree": x.get("degree"), "batch": x.get("batch_size"),
             "threads": x.get("threads", r.get("threads")), "compute": x.get("dtype", "float32"),
             "samples/s median": x.get("median"), "min": x.get("min"), "max": x.get("max"), "x float32": x.get("x_float32")}
            for x in r.get("results") or []]
    if rows:
        out += [f"API throughput: DDIM {r.get('ddim_steps')} steps, n={r.get('n')} per call, {r.get('repeats')} runs, "
                f"{r.get('device')}.", "", markdown_table(rows, [(k, k) for k in rows[0]]), ""]
    return out


def section_memory(r: dict) -> list[str]:
    rows = [{"step": x["step"], "N_syn": x["n_syn"], "peak MiB median": x["median"], "min": x["min"], "max": x["max"],
             "runs": x["runs"], "RSS after imports MiB": x["rss_after_imports_mb"], "step s": x["step_s"],
             "all lookahead images (f32) MiB": x["lookahead_images_mib"]} for x in r["rows"]]
    slopes = [f"{step}: **{fmt(fit['slope'] * 1024)} KiB per synthetic sample** (intercept {fmt(fit['intercept'])} MiB, "
              f"r2 {fmt(fit['r2'])})" for step, fit in (r.get("fits") or {}).items() if fit]
    return [f"## Peak memory of embed_synthetic (the lookahead) and dp_vote vs N_syn (lookahead {r['lookahead']})", "",
            f"`{r['command']}`", "",
            f"Each step in a fresh process (peak = ru_maxrss); DDIM {r['ddim_steps']} steps (memory does not depend "
            "on it). Plot: `bench/memory_curve.png`.", "",
            markdown_table(rows, [(k, k) for k in rows[0]]), "",
            "Fitted slopes: " + "; ".join(slopes) + ".", "",
            "RSS of a fresh process that has imported and loaded both networks (embed_synthetic's floor), before any work: "
            + ", ".join(f"{k} {v} MiB" for k, v in (r.get("floor_stages_mb") or {}).items()) + ".", ""]


def section_demo(r: dict) -> list[str]:
    """The demo: the paired kfp.local and in-process runs, per task and per step, and the seeds x reuse runs."""
    paired = " ".join(r.get("paired_overrides") or []) or "none"
    out = ["## The whole demo", "", f"`{r['command']}`", "",
           f"Config `{r['config']}` with `{' '.join('--set ' + o for o in r['overrides'])}`; the modes below ran the same "
           f"work (cell overrides: `{paired}`), {r['repeats']} run(s) per mode; model precision {r.get('precision', '-')}.", ""]
    rows = [{"mode": m, "wall s median": s["median"], "min": s["min"], "max": s["max"], "runs": s["runs"],
             "CPU s (user+sys)": r.get("cpu_s", {}).get(m, {}).get("median")} for m, s in r["wall_s"].items()]
    out += [markdown_table(rows, [(k, k) for k in rows[0]]), ""]
    if "orchestration_overhead_ratio" in r:
        out += [f"kfp.local / in-process wall time, same work, same run: **{r['orchestration_overhead_ratio']:.3f}** "
                f"(target <= {TARGET_OVERHEAD_RATIO})", ""]
    if r["runs"].get("kfp"):
        kfp = sorted(r["runs"]["kfp"], key=lambda x: x["wall_s"])[len(r["runs"]["kfp"]) // 2]
        out += ["### kfp.local: seconds per task (its progress lines) and peak RSS per process", "",
                markdown_table([{"task": t["task"], "s": t["seconds"]} for t in kfp["tasks"]],
                               [("task", "task"), ("s", "s")]), "",
                markdown_table([{"process": p["process"], "alive s": p.get("seconds"), "cpu s": p.get("cpu_s"),
                                 "peak RSS MiB": p["peak_rss_mb"]}
                                for p in kfp["processes"] if p["process"] != "(shell wrapper)"],
                               [("process", "process"), ("alive s", "alive s (polled)"), ("cpu s", "CPU s (polled)"),
                                ("peak RSS MiB", "peak RSS MiB")]), "",
                f"Max over the whole process tree (wait4 ru_maxrss): **{kfp['tree_peak_rss_mb']} MiB**; "
                f"{kfp['num_processes']} processes (shell wrappers included).", ""]
    if r["runs"].get("inprocess"):
        inproc = sorted(r["runs"]["inprocess"], key=lambda x: x["wall_s"])[len(r["runs"]["inprocess"]) // 2]
        out += ["### In one process: seconds and peak RSS per step", "",
                "Peak = VmHWM reset before each step (includes what earlier steps left resident).", "",
                markdown_table(inproc["steps"], STEP_COLUMNS), "",
                markdown_table(r.get("inprocess_per_generation", []),
                               [("generation", "generation (0 = embed + initial, -1 = evaluate)"),
                                                                       ("seconds", "s")]), "",
                "Where the in-process time goes:", "",
                markdown_table([{"what": k, "s": v} for k, v in inproc["breakdown_s"].items()],
                               [("what", "what"), ("s", "s")]), "",
                f"Process peak RSS {inproc['process_peak_rss_mb']} MiB; imports {inproc['imports_s']} s. UNet image-steps "
                "(forward passes x batch) per step kind: "
                + (", ".join(f"{k} {v}" for k, v in (inproc.get("image_steps") or {}).items()) or "n/a") + ".", ""]
    if r["runs"].get("subprocess"):
        sub = sorted(r["runs"]["subprocess"], key=lambda x: x["wall_s"])[len(r["runs"]["subprocess"]) // 2]
        out += ["### One process per step, without kfp", "",
                markdown_table(sub["steps"], STEP_COLUMNS), ""]
    if r.get("reuse"):
        out += section_reuse(r["seed_runs"], r["reuse"])
    out += [f"Context: {r.get('other_machine_context') or OFFICIAL_CONTEXT}.", ""]
    return out


def section_reuse(rows: list[dict], reuse: dict) -> list[str]:
    """The in-process runs per seed and reuse setting, each setting's mean and spread, the calls saved and the verdict."""
    table = [{"seed": x["seed"], "reuse": x["reuse_lookahead"], "FD": x["fd"], "class TV": x["class_tv"],
              "UNet image-steps": x["image_steps"], "images asked": x["images"], "wall s": x["wall_s"],
              "precision": x.get("precision")} for x in rows]
    settings = [{"reuse": setting, "figure": label, **(figures.get(key) or {})}
                for setting, figures in reuse["settings"].items() for key, label in REUSE_FIGURES]
    saved = ", ".join(f"{k} {100 * v:.1f}%" for k, v in reuse["saved_fraction"].items()) or "n/a"
    return ["### Lookahead reuse: seeds x population.reuse_lookahead, in one process", "",
            "Final generation's FD and class TV; the DP noise is fresh in every run.", "",
            markdown_table(table, [(k, k) for k in table[0]]), "",
            markdown_table(settings, [(k, k) for k in ("reuse", "figure", "mean", "std", "min", "max", "runs")]), "",
            f"Calls saved by reuse: {saved}. Verdict: reuse is **{verdict_word(reuse.get('not_worse'))}** on FD and class "
            f"TV. Rule: {reuse['rule']}.", ""]


def succeeded(result: dict | None) -> dict | None:
    """A benchmark's result, or None where it did not run or failed."""
    return result if result and "error" not in result else None


def best_unet_gemm(models: dict) -> dict | None:
    """The models benchmark's best float32 UNet / GEMM GFLOP/s ratio, read defensively (its JSON keys may change)."""
    rows = [x for x in models.get("peak") or [] if isinstance(x, dict) and isinstance(x.get("ratio"), (int, float))]
    float32 = [x for x in rows if "float32" in str(x.get("precision") or x.get("variant") or "float32")]
    if float32:
        best = peak_row(max(float32, key=lambda x: x["ratio"]))
        library = [x for x in float32 if x.get("variant") == "float32"]  # the library's own float32 path
        return {**best, "library": peak_row(max(library, key=lambda x: x["ratio"])) if library else None}
    if isinstance(models.get("best_ratio"), (int, float)):
        config = dict(models.get("best_config") or {})
        return {"ratio": models["best_ratio"], "unet_gflops": None, "gemm_gflops": None,
                "precision": config.pop("precision", "float32"), "config": config, "library": None}
    return None


def peak_row(row: dict) -> dict:
    """One row of the models benchmark's peak table: its ratio, rates, precision and configuration."""
    return {"ratio": row["ratio"], "unet_gflops": row.get("unet_gflops"), "gemm_gflops": row.get("gemm_gflops"),
            "precision": row.get("precision", "float32"),
            "config": {k: row[k] for k in ("variant", "batch_size", "threads") if k in row}}


def headline_figures(results: dict) -> dict:
    """Issue 18's figures, each ratio from figures of one benchmark of this run: written to results.json as ``headline``."""
    machine, benches = results["machine"], results["benches"]
    found = set(machine.get("cpu_simd") or [])
    figures: dict = {"cpu_model": machine.get("cpu_model"), "nproc": machine.get("nproc"),
                     "cpu_flags": {flag: flag in found for flag in CPU_FLAGS}, "other_machine_context": OFFICIAL_CONTEXT}
    models = succeeded(benches.get("models"))
    if models:
        best = best_unet_gemm(models)
        figures["unet_gemm"] = None if best is None else {
            **best, "target": TARGET_UNET_GEMM_RATIO, "met": best["ratio"] >= TARGET_UNET_GEMM_RATIO,
            "unet_gflop_per_image_step": models.get("unet_gflop_per_image_step"),
            "autocast_auto": models.get("autocast_auto")}
    demo = succeeded(benches.get("demo"))
    if demo:
        ratio = demo.get("orchestration_overhead_ratio")
        walls = demo.get("wall_s") or {}
        figures["overhead"] = None if ratio is None else {
            "ratio": ratio, "target": TARGET_OVERHEAD_RATIO, "met": ratio <= TARGET_OVERHEAD_RATIO,
            "kfp_s": (walls.get("kfp") or {}).get("median"), "inprocess_s": (walls.get("inprocess") or {}).get("median"),
            "pairs": demo.get("orchestration_overhead_pairs") or [],
            "overrides": demo.get("paired_overrides"), "precision": demo.get("precision")}
        reuse = demo.get("reuse")
        if reuse:
            figures["reuse"] = {"settings": reuse["settings"], "saved_fraction": reuse["saved_fraction"],
                                "verdict": reuse["verdict"], "not_worse": reuse["not_worse"], "rule": reuse["rule"],
                                "precision": sorted({x.get("precision") or "-" for x in demo.get("seed_runs") or []})}
    return figures


def spread_text(values: dict | None, digits: int = 4) -> str:
    """'mean ± std (min-max, n runs)' of a spread, '-' where it was not measured."""
    if not values:
        return "-"
    return (f"{values['mean']:.{digits}g} ± {values['std']:.2g} ({values['min']:.{digits}g}-{values['max']:.{digits}g}, "
            f"{values['runs']} runs)")


def headline_lines(figures: dict) -> list[str]:
    """The headline figures as markdown bullets (also printed at the end of the run)."""
    flags = ", ".join(f"{flag} {'yes' if has else 'no'}" for flag, has in figures["cpu_flags"].items())
    out = [f"- machine: {figures['cpu_model']}, {figures['nproc']} CPUs; CPU flags: {flags}"]
    overhead = figures.get("overhead")
    if overhead:
        cell = " ".join(overhead["overrides"] or []) or "config as is"
        pairs = overhead["pairs"]
        out.append(f"- kfp.local / in-process wall time, same work (`{cell}`), "
                   f"same run: **{overhead['ratio']:.3f}** (median {overhead['kfp_s']} s / median {overhead['inprocess_s']} s"
                   f" of {len(pairs) or 1} pair(s); each pair: {', '.join(f'{r:.3f}' for r in pairs) or '-'}; "
                   "target <= "
                   f"{overhead['target']}: {'met' if overhead['met'] else 'NOT met'}); precision {overhead['precision']}")
    unet = figures.get("unet_gemm")
    if unet:
        config = ", ".join(f"{k} {v}" for k, v in unet["config"].items())
        rates = (f"UNet {unet['unet_gflops']} of GEMM {unet['gemm_gflops']} GFLOP/s; " if unet["unet_gflops"] is not None
                 else "")
        out.append(f"- UNet / GEMM GFLOP/s, best {unet['precision']} configuration ({config}): **{unet['ratio']:.3f}** "
                   f"({rates}target >= {unet['target']}: {'met' if unet['met'] else 'NOT met'}); GEMM in float32; "
                   f"{fmt(unet['unet_gflop_per_image_step'])} GFLOP per image-step; `model.autocast: auto` resolves to "
                   f"{unet['autocast_auto'] or '-'} here")
        library = unet.get("library")
        if library and library["config"] != unet["config"]:
            config = ", ".join(f"{k} {v}" for k, v in library["config"].items() if k != "variant")
            out.append(f"- UNet / GEMM GFLOP/s of the library's own float32 path (variant float32), best at {config}: "
                       f"**{library['ratio']:.3f}** (UNet {library['unet_gflops']} of GEMM {library['gemm_gflops']} GFLOP/s)")
    elif "unet_gemm" in figures:
        out.append("- UNet / GEMM GFLOP/s: not in the models benchmark's output")
    reuse = figures.get("reuse")
    if reuse:
        without, with_ = reuse["settings"]["false"], reuse["settings"]["true"]
        saved = reuse["saved_fraction"].get("image_steps")
        out.append(f"- UNet image-steps per demo run: without reuse {spread_text(without['image_steps'], 6)}, with reuse "
                   f"{spread_text(with_['image_steps'], 6)}"
                   + (f": reuse saves **{100 * saved:.1f}%**" if saved is not None else ""))
        for key, label in (("fd", "FD"), ("class_tv", "class TV")):
            out.append(f"- demo {label} (final generation): without reuse {spread_text(without[key])}; with reuse "
                       f"{spread_text(with_[key])}")
        out.append(f"- lookahead reuse is **{verdict_word(reuse['not_worse'])}** on FD and class TV (rule: {reuse['rule']}); "
                   f"precision {', '.join(reuse['precision'])}")
    return out


def headline(results: dict) -> list[str]:
    """Computed from the figures: the issue's ratios, where the time and memory go."""
    benches = results["benches"]
    out = ["## Headline (computed from the figures below; every ratio from figures taken in the same run)", "",
           *headline_lines(results["headline"])]
    demo = succeeded(benches.get("demo"))
    if demo and demo["runs"].get("inprocess"):
        inproc = sorted(demo["runs"]["inprocess"], key=lambda x: x["wall_s"])[len(demo["runs"]["inprocess"]) // 2]
        total = sum(inproc["breakdown_s"].values()) or 1.0
        top = list(inproc["breakdown_s"].items())[:5]
        out.append("- in-process time goes to: " + "; ".join(f"{k} {v:.0f} s ({100 * v / total:.0f}%)" for k, v in top))
    vote = succeeded(benches.get("vote"))
    if vote:
        fit = vote["fits"]["faiss_exact"].get("pairs>=1e7") or vote["fits"]["faiss_exact"].get("all")
        demo_vote = next((x for x in vote["rows"] if x["n_priv"] == 1800 and x["method"] == "faiss_exact"), None)
        out.append(f"- vote (faiss exact): time ~ (N_priv N_syn)^{fit['exponent']}"
                   + (f"; the demo's own vote (1,800 x 300) takes {demo_vote['seconds']['median']} s" if demo_vote else ""))
    memory = succeeded(benches.get("memory"))
    if memory:
        for step, fit in (memory.get("fits") or {}).items():
            if fit:
                out.append(f"- {step} peak memory grows {fit['slope'] * 1024:.2f} KiB per synthetic sample "
                           f"(intercept {fit['intercept']:.0f} MiB: the fixed cost of what the step imports and loads)")
    out.append(f"- context: {OFFICIAL_CONTEXT}")
    return [*out, ""]


def hand_written_sections(text: str) -> list[str]:
    """The "## " sections of a RESULTS.md that hold :data:`HAND_WRITTEN_MARK`, each through to the next "## "
    heading outside a code block (its "### " subsections included)."""
    sections: list[list[str]] = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if line.startswith("## ") and not fenced:
            sections.append([])
        if sections:
            sections[-1].append(line)
    return ["\n".join(section).strip() for section in sections if HAND_WRITTEN_MARK in section]


def write_markdown(path: Path, results: dict, analysis: str | None) -> None:
    info = results["machine"]
    lines = ["# Benchmark results", "",
             f"Written by `bench/run_all.py --profile {results['profile']}` on {info['date']}. Figures only (median, min, "
             "max); nothing is asserted.", "",
             "## Machine", "",
             f"- CPU: {info.get('cpu_model')} ({', '.join(info.get('cpu_simd', []))}; not found: "
             f"{', '.join(info.get('cpu_flags_missing', [])) or '-'}); `nproc` = {info.get('nproc')}",
             f"- torch {info.get('torch')} ({info.get('torch_threads')} intra-op threads, {info.get('torch_interop_threads')} "
             f"inter-op), faiss-cpu {info.get('faiss-cpu')} ({info.get('faiss_omp_threads')} OpenMP threads), numpy "
             f"{info.get('numpy')}, diffusers {info.get('diffusers')}, kfp {info.get('kfp')}, Python {info.get('python')}; "
             f"CUDA: {info.get('cuda') or 'none'}",
             f"- thread environment: {info.get('env_threads') or 'none set'}; the library sets OMP_WAIT_POLICY=PASSIVE "
             "by default (privevo/runtime.py)",
             f"- load average at start {' '.join(info.get('loadavg', []))}, at end {' '.join(results.get('loadavg_end') or [])}: "
             "the machine is shared with other engineers' test runs, so wall times carry contention "
             "(CPU seconds are reported beside them where available).", "",
             "```", info.get("free_h") or "", "```", ""]
    lines += headline(results)
    if analysis:
        lines += [analysis.strip(), ""]
    sections = {"demo": section_demo, "vote": section_vote, "embeddings": section_embeddings,
                "models": section_models, "memory": section_memory}
    for name, render in sections.items():
        result = results["benches"].get(name)
        if not result:
            continue
        if "error" in result:
            lines += [f"## {name}: failed ({result['error']})", "", "```", result.get("tail", ""), "```", ""]
            continue
        try:
            lines += render(result)
        except (KeyError, IndexError, TypeError) as err:
            lines += [f"## {name}", "", f"(could not render: {err!r}; see results.json)", ""]
    if path.is_file():
        for section in hand_written_sections(path.read_text()):
            lines += [section, ""]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes everywhere (smoke test); = --profile quick")
    parser.add_argument("--profile", choices=PROFILES, default="default",
                        help="default: everything; headline: only issue 18's figures (models and demo); quick: smoke test")
    parser.add_argument("--only", default=None, help=f"comma list of {', '.join(BENCHES)} (default: all the profile runs; "
                        "'' with --merge: run nothing, rewrite RESULTS.md from --json)")
    parser.add_argument("--demo-repeats", type=int, default=None,
                        help=f"kfp.local / in-process pairs of the demo (default {HEADLINE_PAIRS} in the headline profile, "
                        "else 1)")
    parser.add_argument("--device", default=None, help="device for the embedding and model benchmarks")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the demo and memory benchmarks (repeatable)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other benchmarks' figures already in --json (rerun a subset with --only)")
    parser.add_argument("--json", default=str(BENCH_DIR / "results.json"))
    parser.add_argument("--markdown", default=str(BENCH_DIR / "RESULTS.md"))
    parser.add_argument("--analysis", default=str(BENCH_DIR / "analysis.md"),
                        help="hand-written analysis inserted into the markdown if the file exists")
    args = parser.parse_args()

    if args.quick:
        args.profile = "quick"
    cmds = commands(args)
    chosen = list(cmds) if args.only is None else [b.strip() for b in args.only.split(",") if b.strip()]
    started = time.perf_counter()
    results = {"machine": machine_info(), "profile": args.profile, "device": args.device or "auto",
               "overrides": args.overrides, "benches": {}}
    previous: dict = {}
    if args.merge and Path(args.json).is_file():
        previous = json.loads(Path(args.json).read_text())
        results["benches"] = previous.get("benches", {})
        results["machine_previous"] = previous.get("machine")
    unknown = [name for name in chosen if name not in cmds]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}: the {args.profile} profile runs {', '.join(cmds)}")
    for name in chosen:  # --only "" --merge re-renders RESULTS.md from results.json without running anything
        results["benches"][name] = run_bench(name, cmds[name])
        write_json(args.json, results)  # keep what is done if a later benchmark fails
    from bench._common import loadavg

    results["loadavg_end"] = loadavg()
    results["seconds_total"] = round(time.perf_counter() - started, 1)
    if previous and not chosen:  # a re-render: the machine, date and load are those of the run that took the figures
        for key in ("machine", "profile", "loadavg_end", "seconds_total"):
            results[key] = previous.get(key, results[key])
        results.pop("machine_previous", None)
    for result in results["benches"].values():
        result.pop("text", None)
    results["headline"] = headline_figures(results)
    write_json(args.json, results)
    analysis = Path(args.analysis).read_text() if args.analysis and Path(args.analysis).is_file() else None
    if args.markdown:
        write_markdown(Path(args.markdown), results, analysis)
    print("\nheadline (ratios of figures from this run):\n" + "\n".join(headline_lines(results["headline"])))
    print(f"\nwrote {args.json}" + (f" and {args.markdown}" if args.markdown else "") +
          f" in {results['seconds_total']:.0f} s")


if __name__ == "__main__":
    main()
