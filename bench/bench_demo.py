"""The whole demo, end to end: through kfp.local, and the same steps in one process.

Modes (``--modes``, default ``kfp,inprocess``):
- ``kfp``: ``pipeline.py run`` as a subprocess (kfp.local: every task is its own Python
  process, run one after another). Per-task seconds are parsed from its
  ``[  n] task-name  done in  x s`` lines. Peak RSS: every descendant process's VmHWM is
  polled every 0.1 s (the peak of each task process, named from its command line), and the
  exact maximum over the whole process tree comes from ``RUSAGE_CHILDREN`` (ru_maxrss)
  after the run.
- ``inprocess``: one fresh Python process calls ``privevo.steps`` directly (embed_private,
  generate_initial per shard, then embed_synthetic per shard, dp_vote and generate_variations
  per shard for every
  generation, then ``evaluation.evaluate_run``). Per-step peak RSS is the process's
  **VmHWM, reset before each step** (``/proc/self/clear_refs``), so it is that step's peak
  *including* what earlier steps left resident (imported modules, allocator caches);
  the process's overall peak is its ru_maxrss. Time inside the steps is also split by
  what it was spent on (model and embedding loading, RANDOM_API, VARIATION_API for the
  lookahead and for the next generation, embedding, the k-NN vote, the rest).
- ``subprocess``: each step through its plain command line (``python -m components.X``),
  one process per step, no kfp: separates the per-process cost from kfp.local's own.

The overhead ratio is kfp wall time / in-process wall time (both from process start to end,
imports included). By default the config is ``configs/demo.yaml`` with the official
comparison task pinned by ``--set`` (population.size=300, generations=5, lookahead=2, DDIM 25
steps, private rows [0, 1800]); ours is compared with the official implementation's 285 s and
1.05 GB (targets: <= 2/3 of the time, <= 0.6 GB in any process). Figures only.

Usage:
    .venv/bin/python bench/bench_demo.py [--repeats 1] [--modes kfp,inprocess] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench._common import (  # noqa: E402
    OFFICIAL_PEAK_GB,
    OFFICIAL_SECONDS,
    PYTHON,
    STEP_COLUMNS,
    TARGET_PEAK_GB,
    TARGET_SECONDS,
    format_table,
    last_json_line,
    loadavg,
    peak_rss_mb,
    reset_vmhwm,
    summary,
    vmhwm_mb,
)

OFFICIAL_TASK = [
    "population.size=300", "population.generations=5", "population.lookahead=2",
    "model.num_inference_steps=25", "private.rows=[0,1800]",
]
STEP_LINE = re.compile(r"\[\s*(\d+)\]\s+(\S+)\s+done in\s+([\d.]+) s")
MIB_PER_GB = 1e9 / 2**20


# ------------------------------------------------------------ process-tree peaks


class TreeWatcher(threading.Thread):
    """Polls the VmHWM of every descendant of ``root`` (peak per process, named by its command)."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peaks: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self.first_seen: dict[int, float] = {}
        self.last_seen: dict[int, float] = {}
        self.cpu: dict[int, float] = {}
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.poll()
            self.stop_event.wait(self.interval)

    def poll(self) -> None:
        children = defaultdict(list)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
                children[ppid].append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
        stack, seen = [self.root], []
        while stack:
            pid = stack.pop()
            seen.append(pid)
            stack.extend(children.get(pid, []))
        now = time.perf_counter()
        for pid in seen:
            hwm = vmhwm_mb(pid)
            if hwm is None:
                continue
            self.first_seen.setdefault(pid, now)
            self.last_seen[pid] = now
            try:
                with open(f"/proc/{pid}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                self.cpu[pid] = (int(fields[11]) + int(fields[12])) / self.ticks  # utime + stime
            except (OSError, ValueError, IndexError):
                pass
            self.peaks[pid] = max(self.peaks.get(pid, 0.0), hwm)
            if pid not in self.names:
                self.names[pid] = process_name(pid, self.root)

    def stop(self) -> None:
        self.stop_event.set()
        self.join()


def process_name(pid: int, root: int) -> str:
    """A readable name for a process of the run: the kfp task it executes, or its program."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = [a.decode(errors="replace") for a in handle.read().split(b"\0") if a]
    except OSError:
        return "?"
    if pid == root:
        return "pipeline.py (kfp.local driver)"
    if argv and "python" not in Path(argv[0]).name:
        return "(shell wrapper)"
    if "--function_to_execute" in argv:
        name = argv[argv.index("--function_to_execute") + 1]
        try:
            params = json.loads(argv[argv.index("--executor_input") + 1])["inputs"]["parameterValues"]
        except (ValueError, KeyError, IndexError):
            params = {}
        if "generation" in params:
            name += f" g{int(params['generation'])}"
        if "shard" in params:
            name += f" s{int(params['shard'])}"
        return name
    return " ".join(Path(a).name if i == 0 else a for i, a in enumerate(argv[:3]))[:60]


# ------------------------------------------------------------------------- modes


def official_overrides(args) -> list[str]:
    return ([] if args.no_official else OFFICIAL_TASK) + missing_classifier_override(args.config) + args.overrides


def missing_classifier_override(config_path: str) -> list[str]:
    """Skip the class-mix metric when the config's public classifier has not been trained yet."""
    import yaml

    with open(REPO_ROOT / config_path) as handle:
        path = (yaml.safe_load(handle).get("evaluation") or {}).get("classifier_path")
    if path and not (REPO_ROOT / path).is_dir():
        print(f"  note: {path} does not exist: evaluating without the classifier", file=sys.stderr)
        return ["evaluation.classifier_path=null"]
    return []


def run_kfp(args, workdir: Path, run_id: str) -> dict:
    """``pipeline.py run`` in a subprocess: wall time, per-task times, per-process peaks."""
    cmd = [PYTHON, "pipeline.py", "run", "--config", args.config, "--run-root", str(workdir / "runs"),
           "--run-id", run_id, "--pipeline-root", str(workdir / "kfp"), "--set", f"private_root={workdir / 'private'}"]
    for override in official_overrides(args):
        cmd += ["--set", override]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watcher = TreeWatcher(proc.pid)
    watcher.start()
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if args.verbose:
            print("    | " + line.rstrip("\n"), flush=True)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    watcher.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline.py run failed ({proc.returncode}):\n" + "\n".join(lines[-30:]))
    tasks = []
    for line in lines:
        if match := STEP_LINE.search(line):
            tasks.append({"task": match.group(2), "seconds": float(match.group(3))})
    reported = next((float(m.group(1)) for line in lines if (m := re.search(r"wall time: ([\d.]+) s", line))), None)
    processes = [{"process": watcher.names.get(pid, "?"), "pid": pid, "peak_rss_mb": round(peak, 1),
                  "seconds": round(watcher.last_seen[pid] - watcher.first_seen[pid], 1),
                  "cpu_s": round(watcher.cpu.get(pid, 0.0), 1)}
                 for pid, peak in watcher.peaks.items()]
    processes.sort(key=lambda p: -p["peak_rss_mb"])
    return {
        "wall_s": round(wall, 2),
        "pipeline_reported_wall_s": reported,
        "tasks": tasks,
        "tasks_sum_s": round(sum(t["seconds"] for t in tasks), 2),
        "evaluate_s": sum(t["seconds"] for t in tasks if t["task"] == "evaluate"),
        "processes": processes,
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),  # wait4: the whole waited tree
        "tree_peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # wait4: max over the whole waited tree
        "polled_max_task_rss_mb": max((p["peak_rss_mb"] for p in processes if p["pid"] != proc.pid), default=None),
        "driver_peak_rss_mb": round(watcher.peaks.get(proc.pid, 0.0), 1),
        "num_processes": len(processes),
    }


def run_inprocess(args, workdir: Path, run_id: str) -> dict:
    """All steps in one fresh Python process (see ``inprocess_worker``)."""
    # The worker gets the expanded overrides and --no-official, so they are applied exactly once.
    cmd = [PYTHON, __file__, "--inprocess-worker", str(workdir), run_id, "--config", args.config, "--no-official"]
    for override in official_overrides(args):
        cmd += ["--set", override]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"in-process worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = last_json_line(proc.stdout)
    result["wall_s"] = round(wall, 2)
    return result


def run_subprocess_steps(args, workdir: Path, run_id: str) -> dict:
    """Each step via its plain command line, one process each (no kfp)."""
    from privevo.config import load_config

    overrides = [*official_overrides(args), f"run_root={workdir / 'runs'}", f"private_root={workdir / 'private'}"]
    config = load_config(args.config, overrides)
    base = ["--config", args.config, "--run-id", run_id] + [x for o in overrides for x in ("--set", o)]
    plan = [("embed_private", [])]
    plan += [("generate_initial", ["--shard", str(s)]) for s in range(config.population.num_shards)]
    for g in range(1, config.population.generations + 1):
        plan += [("embed_synthetic", ["--generation", str(g), "--shard", str(s)])
                 for s in range(config.population.num_shards)]
        plan.append(("dp_vote", ["--generation", str(g)]))
        plan += [("generate_variations", ["--generation", str(g), "--shard", str(s)])
                 for s in range(config.population.num_shards)]
    plan.append(("evaluate", []))
    steps = []
    started = time.perf_counter()
    for module, extra in plan:
        t0 = time.perf_counter()
        with tempfile.TemporaryFile("w+") as log:
            proc = subprocess.Popen([PYTHON, "-m", f"components.{module}", *base, *extra], cwd=REPO_ROOT,
                                    stdout=log, stderr=subprocess.STDOUT, text=True)
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode:
                log.seek(0)
                raise RuntimeError(f"{module} failed:\n{log.read()[-2000:]}")
        steps.append({"step": f"{module} {' '.join(extra)}".strip(), "seconds": round(time.perf_counter() - t0, 2),
                      "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)})
    wall = time.perf_counter() - started
    return {"wall_s": round(wall, 2), "steps": steps, "cpu_s": round(sum(s["cpu_s"] for s in steps), 1),
            "max_step_peak_rss_mb": max(s["peak_rss_mb"] for s in steps),
            "note": "peak per step is the wait4 ru_maxrss of that step's process"}


# ------------------------------------------------------------ in-process worker


def inprocess_worker(workdir: str, run_id: str, config_path: str, overrides: list[str]) -> None:
    """Run every step of the demo in this process; print per-step time, VmHWM and a time breakdown."""
    t_start = time.perf_counter()
    import privevo.steps as steps
    from privevo import evaluation
    from privevo.config import load_config
    from privevo.run import Run

    t_imports = time.perf_counter() - t_start
    config = load_config(config_path, [*overrides, f"run_root={workdir}/runs", f"private_root={workdir}/private"])
    run = Run.create(config, run_id)

    breakdown: dict[str, float] = defaultdict(float)
    current = {"step": ""}

    def timed(category, func):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return func(*a, **k)
            finally:
                key = category(current["step"]) if callable(category) else category
                breakdown[key] += time.perf_counter() - t0
        return wrapper

    import privevo.voting as voting

    def instrument_model(model):
        model.random = timed("RANDOM_API (generation 0)", model.random)
        model.variation = timed(lambda step: "VARIATION_API lookahead (embed_synthetic)" if step == "embed_synthetic"
                                else "VARIATION_API next generation", model.variation)
        return model

    original_load_model, original_load_embedding = steps.load_model, steps.load_embedding
    steps.load_model = lambda cfg: instrument_model(timed("load diffusion model", original_load_model)(cfg))
    steps.load_embedding = timed("load embedding model", original_load_embedding)
    voting.nearest_neighbour_histogram = timed("k-NN vote (faiss)", voting.nearest_neighbour_histogram)
    try:
        from privevo.embeddings.effnet_lite0 import EfficientNetLite0Embedding
        from privevo.embeddings.pixels import PixelEmbedding

        EfficientNetLite0Embedding.embed = timed(lambda step: f"embed ({step})", EfficientNetLite0Embedding.embed)
        PixelEmbedding.embed = timed(lambda step: f"embed ({step})", PixelEmbedding.embed)
        original_init = EfficientNetLite0Embedding.__init__
        EfficientNetLite0Embedding.__init__ = timed(lambda step: f"load embedding model ({step})", original_init)
    except ImportError:
        pass

    records = []
    hwm_reset = reset_vmhwm()

    def cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def step(name: str, kind: str, generation: int, func):
        current["step"] = kind
        reset_vmhwm()
        t0, c0 = time.perf_counter(), cpu_seconds()
        func()
        records.append({"step": name, "kind": kind, "generation": generation,
                        "seconds": round(time.perf_counter() - t0, 3), "cpu_s": round(cpu_seconds() - c0, 2),
                        "peak_rss_mb": round(vmhwm_mb() or 0.0, 1) if hwm_reset else None})

    shards = config.population.num_shards
    step("embed_private", "embed_private", 0, lambda: steps.embed_private(run))
    private_ref = steps.private_reference(run)
    for s in range(shards):
        step(f"generate_initial s{s}", "generate_initial", 0, lambda s=s: steps.generate_initial(run, s))
    for g in range(1, config.population.generations + 1):
        for s in range(shards):
            step(f"embed_synthetic g{g} s{s}", "embed_synthetic", g, lambda g=g, s=s: steps.embed_synthetic(run, g, s))
        step(f"dp_vote g{g}", "dp_vote", g, lambda g=g: steps.dp_vote(run, g, private_ref))
        for s in range(shards):
            step(f"generate_variations g{g} s{s}", "generate_variations", g,
                 lambda g=g, s=s: steps.generate_variations(run, g, s))
    step("evaluate", "evaluate", -1, lambda: evaluation.evaluate_run(run))
    total = time.perf_counter() - t_start
    in_steps = sum(r["seconds"] for r in records)
    # Resetting VmHWM also resets the kernel's hiwater mark that ru_maxrss reads for a live
    # process, so the process peak is the larger of ru_maxrss and every step's peak.
    process_peak = max([peak_rss_mb()] + [r["peak_rss_mb"] or 0.0 for r in records])
    gpu_peak = None
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            gpu_peak = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    accounted = sum(v for k, v in breakdown.items())
    breakdown["other inside steps (I/O, hashing, metrics, ...)"] = max(in_steps - accounted, 0.0)
    breakdown["imports before the first step"] = t_imports
    print(json.dumps({
        "steps": records,
        "imports_s": round(t_imports, 2),
        "steps_sum_s": round(in_steps, 2),
        "worker_total_s": round(total, 2),
        "cpu_s": round(cpu_seconds(), 1),
        "process_peak_rss_mb": round(process_peak, 1),
        "cuda_max_allocated_mb": gpu_peak,
        "vmhwm_reset_per_step": hwm_reset,
        "breakdown_s": {k: round(v, 2) for k, v in sorted(breakdown.items(), key=lambda kv: -kv[1])},
        "epsilon": run.ledger().epsilon(),
    }))


# ---------------------------------------------------------------------- driver


def median_run(runs: list[dict]) -> dict:
    """The run whose wall time is the median (the upper one of an even count)."""
    return sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]


def per_generation(records: list[dict]) -> list[dict]:
    """In-process seconds per generation (0 = embed + initial; -1 = evaluate)."""
    totals: dict[int, float] = defaultdict(float)
    for r in records:
        totals[r["generation"]] += r["seconds"]
    return [{"generation": g, "seconds": round(s, 2)} for g, s in sorted(totals.items(), key=lambda kv: (kv[0] < 0, kv[0]))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-official", action="store_true", help="do not pin the official-comparison task")
    parser.add_argument("--modes", default="kfp,inprocess", help="comma list of kfp, inprocess, subprocess")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the run folders (printed)")
    parser.add_argument("--verbose", action="store_true", help="echo pipeline.py's output")
    parser.add_argument("--inprocess-worker", nargs=2, metavar=("WORKDIR", "RUN_ID"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.inprocess_worker:
        inprocess_worker(*args.inprocess_worker, args.config, args.overrides)
        return

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    results: dict[str, list[dict]] = {m: [] for m in modes}
    started = time.perf_counter()
    for repeat in range(args.repeats):
        for mode in modes:
            workdir = Path(tempfile.mkdtemp(prefix=f"bench-demo-{mode}-"))
            run_id = f"bench-{mode}-{repeat}"
            print(f"  repeat {repeat + 1}/{args.repeats} {mode:<10} (load {' '.join(loadavg() or [])}) ...", flush=True)
            runner = {"kfp": run_kfp, "inprocess": run_inprocess, "subprocess": run_subprocess_steps}[mode]
            result = runner(args, workdir, run_id)
            result["loadavg_after"] = loadavg()
            results[mode].append(result)
            print(f"    {mode}: {result['wall_s']:.1f} s", flush=True)
            if args.keep:
                print(f"    kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)

    summaries = {mode: summary([r["wall_s"] for r in runs], 1) for mode, runs in results.items()}
    cpu = {mode: summary([r["cpu_s"] for r in runs], 1) for mode, runs in results.items()}
    out: dict = {"bench": "demo", "config": args.config, "overrides": official_overrides(args),
                 "repeats": args.repeats, "runs": results, "wall_s": summaries, "cpu_s": cpu,
                 "official": {"seconds": OFFICIAL_SECONDS, "peak_gb": OFFICIAL_PEAK_GB,
                              "target_seconds": round(TARGET_SECONDS, 1), "target_peak_gb": TARGET_PEAK_GB}}

    print(f"\ndemo ({args.config}; {' '.join(official_overrides(args))}), {args.repeats} run(s) per mode")
    print(format_table([{"mode": m, **s, "cpu": cpu[m]["median"],
                         "load": " ".join((median_run(results[m]).get("loadavg_after") or [])[:1])}
                        for m, s in summaries.items()],
                       [("mode", "mode"), ("median", "wall s median"), ("min", "min"), ("max", "max"), ("runs", "runs"),
                        ("cpu", "CPU s (user+sys)"), ("load", "loadavg after")]))

    if "kfp" in results:
        kfp = median_run(results["kfp"])
        print("\nkfp.local per task (seconds from its progress lines; peak RSS polled from /proc, per process):")
        peaks = defaultdict(list)
        for p in kfp["processes"]:
            peaks[p["process"]].append(p["peak_rss_mb"])
        task_rows = [{"task": t["task"], "seconds": t["seconds"]} for t in kfp["tasks"]]
        print(format_table(task_rows, [("task", "task"), ("seconds", "s")]))
        print("\npeak RSS per process (MiB):")
        print(format_table([p for p in kfp["processes"] if p["process"] != "(shell wrapper)"],
                           [("process", "process"), ("seconds", "alive s (polled)"), ("cpu_s", "CPU s (polled)"),
                            ("peak_rss_mb", "peak RSS MiB")]))
        print(f"max over the process tree (wait4 ru_maxrss): {kfp['tree_peak_rss_mb']} MiB; "
              f"driver pipeline.py {kfp['driver_peak_rss_mb']} MiB; {kfp['num_processes']} processes")
        out["kfp_peak_rss_mb"] = summary([r["tree_peak_rss_mb"] for r in results["kfp"]], 1)

    if "inprocess" in results:
        inproc = median_run(results["inprocess"])
        print("\nin-process per step (seconds; peak = VmHWM reset before each step, so it includes what is already resident):")
        print(format_table(inproc["steps"], STEP_COLUMNS))
        gens = per_generation(inproc["steps"])
        out["inprocess_per_generation"] = gens
        print("\nin-process seconds per generation (0 = embed_private + generate_initial, -1 = evaluate):")
        print(format_table(gens, [("generation", "generation"), ("seconds", "s")]))
        print("\nwhere the in-process time goes (s):")
        print(format_table([{"what": k, "seconds": v} for k, v in inproc["breakdown_s"].items()],
                           [("what", "what"), ("seconds", "s")]))
        print(f"in-process: imports {inproc['imports_s']} s, steps {inproc['steps_sum_s']} s, "
              f"process peak RSS {inproc['process_peak_rss_mb']} MiB")
        out["inprocess_peak_rss_mb"] = summary([r["process_peak_rss_mb"] for r in results["inprocess"]], 1)

    if "subprocess" in results:
        sub = median_run(results["subprocess"])
        print("\none process per step, no kfp (seconds incl. process start and imports; peak = wait4 ru_maxrss):")
        print(format_table(sub["steps"], STEP_COLUMNS))

    comparison = []
    for mode, runs in results.items():
        wall = summaries[mode]["median"]
        evaluate = [r.get("evaluate_s") or sum(s["seconds"] for s in r.get("steps", []) if s.get("kind") == "evaluate"
                                               or str(s.get("step", "")).startswith("evaluate")) for r in runs]
        evaluate_s = sorted(evaluate)[len(evaluate) // 2]
        peak = {"kfp": lambda r: r["tree_peak_rss_mb"], "inprocess": lambda r: r["process_peak_rss_mb"],
                "subprocess": lambda r: r["max_step_peak_rss_mb"]}[mode]
        peak_mb = sorted(peak(r) for r in runs)[len(runs) // 2]
        peak_gb = peak_mb * 2**20 / 1e9
        for label, seconds in ((mode, wall), (f"{mode} without evaluate", wall - evaluate_s)):
            comparison.append({"mode": label, "seconds": round(seconds, 1), "time_ratio": round(seconds / OFFICIAL_SECONDS, 3),
                               "peak_gb": round(peak_gb, 3), "peak_ratio": round(peak_gb / OFFICIAL_PEAK_GB, 3),
                               "time_ok": seconds <= TARGET_SECONDS, "memory_ok": peak_gb <= TARGET_PEAK_GB})
    out["vs_official"] = comparison
    if "kfp" in summaries and "inprocess" in summaries:
        out["orchestration_overhead_ratio"] = round(summaries["kfp"]["median"] / summaries["inprocess"]["median"], 3)
        print(f"\norchestration overhead ratio kfp.local / in-process: {out['orchestration_overhead_ratio']:.2f}")
    print(f"\nvs the official implementation ({OFFICIAL_SECONDS:.0f} s, {OFFICIAL_PEAK_GB} GB; "
          f"targets <= {TARGET_SECONDS:.0f} s (ratio 0.667) and <= {TARGET_PEAK_GB} GB "
          f"(ratio {TARGET_PEAK_GB / OFFICIAL_PEAK_GB:.3f})):")
    print(
        format_table(
            comparison,
            [
                ("mode", "mode"),
                ("seconds", "ours s"),
                ("time_ratio", "ours/official time"),
                ("peak_gb", "ours peak GB"),
                ("peak_ratio", "ours/official peak"),
                ("time_ok", "time within target"),
                ("memory_ok", "memory within target"),
            ],
        )
    )
    out["seconds_total"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
