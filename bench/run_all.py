"""Run every benchmark, write ``bench/results.json`` and ``bench/RESULTS.md``.

Each benchmark runs as its own subprocess (its stdout is echoed; the JSON object on its
last line is kept). ``bench/bench_models.py`` (the foundation model's samples/s) is another
engineer's script and is called as is. Figures only: nothing is asserted.

Usage:
    .venv/bin/python bench/run_all.py [--quick] [--only vote,embeddings,models,memory,demo]
        [--profile default|quick|gpu] [--device cuda] [--demo-repeats 1] [--json bench/results.json]
        [--markdown bench/RESULTS.md] [--set key=value ...]

``--quick`` shrinks every benchmark (smoke test, minutes); ``--profile gpu`` is what
``bench/gpu.sh`` runs; ``--set`` overrides go to the demo and memory benchmarks (e.g.
``--set model.device=cuda``). The default profile takes about 30-40 minutes on 2 cores.
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
    OFFICIAL_PEAK_GB,
    OFFICIAL_SECONDS,
    PYTHON,
    STEP_COLUMNS,
    TARGET_PEAK_GB,
    TARGET_SECONDS,
    last_json_line,
    machine_info,
    markdown_table,
    write_json,
)

BENCHES = ("vote", "embeddings", "models", "memory", "demo")


def commands(args) -> dict[str, list[str]]:
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
    return {
        "vote": ["bench/bench_vote.py"] + (["--quick"] if quick else []),
        "embeddings": ["bench/bench_embeddings.py"] + (["--n", "256", "--repeats", "2"] if quick else []) + device,
        "models": ["bench/bench_models.py"] + (["--n", "16", "--repeats", "2", "--batch-sizes", "16"] if quick
                                               else ["--n", "100", "--repeats", "2", "--degrees", "0.6",
                                                     "--batch-sizes", "25", "50", "100",
                                                     "--threads", "1", "2"]) + device,
        "memory": ["bench/bench_memory.py"] + (["--sizes", "50", "100", "200", "--repeats", "1", "--steps", "3"]
                                               if quick else []) + sets,
        "demo": ["bench/bench_demo.py", "--repeats", str(args.demo_repeats)] + sets
                + (["--set", "population.size=60", "--set", "population.generations=2", "--set", "population.degrees=[0.6,0.5]",
                    "--set", "private.rows=[0,300]", "--set", "model.num_inference_steps=5"] if quick else []),
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
    rows = [{"api": x["api"], "degree": x["degree"], "batch": x["batch_size"], "threads": x.get("threads", r["threads"]),
             "compute": x.get("dtype", "float32"),
             "samples/s median": x["median"], "min": x["min"], "max": x["max"], "x float32": x.get("x_float32")}
            for x in r["results"]]
    return ["## Foundation model throughput (bench/bench_models.py)", "", f"`{r['command']}`", "",
            f"DDIM {r['ddim_steps']} steps, n={r['n']} per call, {r['repeats']} runs, {r['device']}; one thread is what "
            "each local shard step gets (two shards at once on two cores).", "",
            markdown_table(rows, [(k, k) for k in rows[0]]), ""]


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
    out = ["## The whole demo", "", f"`{r['command']}`", "",
           f"Config `{r['config']}` with `{' '.join('--set ' + o for o in r['overrides'])}`; {r['repeats']} run(s) per mode.", ""]
    rows = [{"mode": m, "wall s median": s["median"], "min": s["min"], "max": s["max"], "runs": s["runs"],
             "CPU s (user+sys)": r.get("cpu_s", {}).get(m, {}).get("median")} for m, s in r["wall_s"].items()]
    out += [markdown_table(rows, [(k, k) for k in rows[0]]), ""]
    if "orchestration_overhead_ratio" in r:
        out += [f"Orchestration overhead ratio kfp.local / in-process: **{r['orchestration_overhead_ratio']:.2f}**", ""]
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
                f"Process peak RSS {inproc['process_peak_rss_mb']} MiB; imports {inproc['imports_s']} s.", ""]
    if r["runs"].get("subprocess"):
        sub = sorted(r["runs"]["subprocess"], key=lambda x: x["wall_s"])[len(r["runs"]["subprocess"]) // 2]
        out += ["### One process per step, without kfp", "",
                markdown_table(sub["steps"], STEP_COLUMNS), ""]
    out += ["### Against the official implementation", "",
            f"Official: {OFFICIAL_SECONDS:.0f} s and {OFFICIAL_PEAK_GB} GB; targets <= {TARGET_SECONDS:.0f} s "
            f"(time ratio <= 0.667) and <= {TARGET_PEAK_GB} GB in any process "
            f"(ratio <= {TARGET_PEAK_GB / OFFICIAL_PEAK_GB:.3f}).", "",
            markdown_table(r["vs_official"], [("mode", "mode"), ("seconds", "ours s"), ("time_ratio", "ours/official time"),
                                              ("peak_gb", "ours peak GB"), ("peak_ratio", "ours/official peak"),
                                              ("time_ok", "time within target"), ("memory_ok", "memory within target")]), ""]
    return out


def headline(results: dict) -> list[str]:
    """Computed from the figures: where the time and memory go, and what is above target."""
    benches = results["benches"]
    out = ["## Headline (computed from the figures below)", ""]
    demo = benches.get("demo")
    if demo and "error" not in demo:
        for row in demo["vs_official"]:
            out.append(f"- {row['mode']}: {row['seconds']} s ({row['time_ratio']:.2f} x official; target 0.667) - "
                       f"peak {row['peak_gb']} GB ({row['peak_ratio']:.2f} x official; "
                       f"target {TARGET_PEAK_GB / OFFICIAL_PEAK_GB:.3f}) - "
                       f"time {'within' if row['time_ok'] else 'ABOVE'} target, "
                       f"memory {'within' if row['memory_ok'] else 'ABOVE'} target")
        if demo["runs"].get("inprocess"):
            inproc = sorted(demo["runs"]["inprocess"], key=lambda x: x["wall_s"])[len(demo["runs"]["inprocess"]) // 2]
            total = sum(inproc["breakdown_s"].values()) or 1.0
            top = list(inproc["breakdown_s"].items())[:5]
            out.append("- in-process time goes to: " + "; ".join(f"{k} {v:.0f} s ({100 * v / total:.0f}%)" for k, v in top))
        if "orchestration_overhead_ratio" in demo:
            out.append(f"- kfp.local / in-process wall time: {demo['orchestration_overhead_ratio']:.2f}")
    vote = benches.get("vote")
    if vote and "error" not in vote:
        fit = vote["fits"]["faiss_exact"].get("pairs>=1e7") or vote["fits"]["faiss_exact"].get("all")
        demo_vote = next((x for x in vote["rows"] if x["n_priv"] == 1800 and x["method"] == "faiss_exact"), None)
        out.append(f"- vote (faiss exact): time ~ (N_priv N_syn)^{fit['exponent']}"
                   + (f"; the demo's own vote (1,800 x 300) takes {demo_vote['seconds']['median']} s" if demo_vote else ""))
    memory = benches.get("memory")
    if memory and "error" not in memory:
        for step, fit in (memory.get("fits") or {}).items():
            if fit:
                out.append(f"- {step} peak memory grows {fit['slope'] * 1024:.2f} KiB per synthetic sample "
                           f"(intercept {fit['intercept']:.0f} MiB: the fixed cost of what the step imports and loads)")
    return [*out, ""]


def write_markdown(path: Path, results: dict, analysis: str | None) -> None:
    info = results["machine"]
    lines = ["# Benchmark results", "",
             f"Written by `bench/run_all.py` on {info['date']}. Figures only (median, min, max); nothing is asserted.", "",
             "## Machine", "",
             f"- CPU: {info.get('cpu_model')} ({', '.join(info.get('cpu_simd', []))}); `nproc` = {info.get('nproc')}",
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
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes everywhere (smoke test); = --profile quick")
    parser.add_argument("--profile", choices=("default", "quick", "gpu"), default="default")
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma list of {', '.join(BENCHES)}")
    parser.add_argument("--demo-repeats", type=int, default=1)
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
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    started = time.perf_counter()
    results = {"machine": machine_info(), "profile": args.profile, "device": args.device or "auto",
               "overrides": args.overrides, "benches": {}}
    if args.merge and Path(args.json).is_file():
        previous = json.loads(Path(args.json).read_text())
        results["benches"] = previous.get("benches", {})
        results["machine_previous"] = previous.get("machine")
    cmds = commands(args)
    unknown = [name for name in chosen if name not in cmds]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}: use {', '.join(BENCHES)}")
    for name in chosen:  # --only "" --merge re-renders RESULTS.md from results.json without running anything
        results["benches"][name] = run_bench(name, cmds[name])
        write_json(args.json, results)  # keep what is done if a later benchmark fails
    from bench._common import loadavg

    results["loadavg_end"] = loadavg()
    results["seconds_total"] = round(time.perf_counter() - started, 1)
    for result in results["benches"].values():
        result.pop("text", None)
    write_json(args.json, results)
    analysis = Path(args.analysis).read_text() if args.analysis and Path(args.analysis).is_file() else None
    if args.markdown:
        write_markdown(Path(args.markdown), results, analysis)
    print(f"\nwrote {args.json}" + (f" and {args.markdown}" if args.markdown else "") +
          f" in {results['seconds_total']:.0f} s")


if __name__ == "__main__":
    main()
