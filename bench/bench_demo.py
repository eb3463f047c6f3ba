"""The whole demo, end to end: through kfp.local, and the same steps in one process.

Modes (``--modes``, default ``kfp,inprocess``):
- ``kfp``: ``pipeline.py run`` as a subprocess (kfp.local: every task is its own Python
  process; a generation's shards run side by side). Per-task seconds are parsed from its
  ``[  n] task-name  done in  x s`` lines. Peak RSS: every descendant process's VmHWM is
  polled every 0.1 s (the peak of each task process, named from its command line), and the
  exact maximum over the whole process tree comes from ``RUSAGE_CHILDREN`` (ru_maxrss)
  after the run.
- ``inprocess``: one fresh Python process runs the steps through the library's in-process runner
  (``privevo.api.execute``, what ``privevo.run`` does: embed_private, generate_initial per shard,
  then embed_synthetic per shard, dp_vote and generate_variations per shard for every generation,
  then evaluate): the same work as the pipeline's tasks. Per-step peak RSS is the process's
  **VmHWM, reset before each step** (``/proc/self/clear_refs``), so it is that step's peak
  *including* what earlier steps left resident; the process's overall peak is its ru_maxrss. Time inside the steps is split by
  what it was spent on (model and embedding loading, RANDOM_API, VARIATION_API for the
  lookahead and for the next generation, embedding, the k-NN vote, the rest). UNet
  image-steps (forward passes x batch, counted by a forward hook on ``model.unet``; "n/a"
  for a model without one) and images asked of the model are counted per step kind, and
  the final FD and class TV are read from the evaluation.
- ``subprocess``: each step through its plain command line (``python -m components.X``),
  one process per step, no kfp: separates the per-process cost from kfp.local's own.

Seeds and lookahead reuse (``--seeds N --compare-reuse``): the in-process demo runs for
``seed`` 0..N-1 x ``population.reuse_lookahead`` in {false, true} (the DP noise is fresh in
every run), and prints each run's final FD, class TV and image-steps, their mean and spread
per setting, the image-steps reuse saves, and whether reuse is not worse. Rule: reuse is
"not worse" on a metric (lower is better for FD and TV) when its mean with reuse is at most
the mean without plus the larger of the two settings' sample standard deviations.

The overhead ratio is kfp wall time / in-process wall time of the same work in the same
benchmark run: the kfp run gets exactly the overrides of the paired in-process run (the
first seed, the config's own reuse setting), and that in-process run is also one of the
seed runs (no extra run). Both walls run from process start to end, imports included;
target <= 1.05. By default the config is ``configs/demo.yaml`` with the demo-sized task
pinned by ``--set`` (population.size=300, generations=5, lookahead=2, DDIM 25 steps, private
rows [0, 1800]); bench/bench_solver.py sets the sampler and its steps per run. Figures only.

Usage:
    .venv/bin/python bench/bench_demo.py [--repeats 1] [--modes kfp,inprocess] [--seeds 3 --compare-reuse]
        [--set key=value ...]
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
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench._common import (  # noqa: E402
    OFFICIAL_CONTEXT,
    PYTHON,
    REUSE_FIGURES,
    STEP_COLUMNS,
    TARGET_OVERHEAD_RATIO,
    format_table,
    last_json_line,
    loadavg,
    peak_rss_mb,
    reset_vmhwm,
    spread,
    summary,
    verdict_word,
    vmhwm_mb,
)

#: The demo-sized task the official implementation was measured on (issue 8), pinned by default.
OFFICIAL_TASK = [
    "population.size=300", "population.generations=5", "population.lookahead=2",
    "model.scheduler=ddim", "model.num_inference_steps=25", "private.rows=[0,1800]",
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


def official_overrides(args: argparse.Namespace, cell: list[str] | None = None) -> list[str]:
    """The demo-sized task, the classifier fallback, the user's ``--set`` and then one grid cell's overrides."""
    return ([] if args.no_official else OFFICIAL_TASK) + missing_classifier_override(args.config) + args.overrides + (cell or [])


def cell_overrides(seed: int | None, reuse: bool | None) -> list[str]:
    """The overrides of one seed x reuse cell (None: the config's own setting)."""
    reuse_set = [] if reuse is None else [f"population.reuse_lookahead={str(reuse).lower()}"]
    return ([] if seed is None else [f"seed={seed}"]) + reuse_set


def missing_classifier_override(config_path: str) -> list[str]:
    """Skip the class-mix metric when the config's public classifier has not been trained yet."""
    import yaml

    with open(REPO_ROOT / config_path) as handle:
        path = (yaml.safe_load(handle).get("evaluation") or {}).get("classifier_path")
    if path and not (REPO_ROOT / path).is_dir():
        print(f"  note: {path} does not exist: evaluating without the classifier", file=sys.stderr)
        return ["evaluation.classifier_path=null"]
    return []


def run_kfp(args: argparse.Namespace, workdir: Path, run_id: str, cell: list[str]) -> dict:
    """``pipeline.py run`` in a subprocess: wall time, per-task times, per-process peaks."""
    cmd = [PYTHON, "pipeline.py", "run", "--config", args.config, "--run-root", str(workdir / "runs"),
           "--run-id", run_id, "--pipeline-root", str(workdir / "kfp"), "--set", f"private_root={workdir / 'private'}"]
    for override in official_overrides(args, cell):
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


def run_inprocess(args: argparse.Namespace, workdir: Path, run_id: str, cell: list[str]) -> dict:
    """All steps in one fresh Python process (see ``inprocess_worker``)."""
    # The worker gets the expanded overrides and --no-official, so they are applied exactly once.
    cmd = [PYTHON, __file__, "--inprocess-worker", str(workdir), run_id, "--config", args.config, "--no-official"]
    for override in official_overrides(args, cell):
        cmd += ["--set", override]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"in-process worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = last_json_line(proc.stdout)
    result["wall_s"] = round(wall, 2)
    return result


def run_subprocess_steps(args: argparse.Namespace, workdir: Path, run_id: str, cell: list[str]) -> dict:
    """Each step via its plain command line, one process each (no kfp)."""
    from privevo.config import load_config

    overrides = [*official_overrides(args, cell), f"run_root={workdir / 'runs'}", f"private_root={workdir / 'private'}"]
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
            proc = subprocess.Popen([PYTHON, "-m", f"privevo.components.{module}", *base, *extra], cwd=REPO_ROOT,
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
    from privevo import api
    from privevo.image.evaluation import FD_KEY

    t_imports = time.perf_counter() - t_start
    config = api.load(config_path, overrides, run_root=f"{workdir}/runs", private_root=f"{workdir}/private")
    run = api.start_run(config, run_id)

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

    image_steps: dict[str, int] = defaultdict(int)  # step kind -> UNet forward passes x batch
    images: dict[str, int] = defaultdict(int)  # step kind -> images asked of the model
    models: dict[int, Any] = {}  # id -> model: load_model returns one cached instance, instrumented once
    unet_hooked = []

    def count_images(func):
        def wrapper(first, *a, **k):
            images[current["step"]] += len(first) if hasattr(first, "__len__") else int(first)
            return func(first, *a, **k)
        return wrapper

    def count_image_steps(module, args, kwargs, output) -> None:
        sample = args[0] if args else kwargs["sample"]
        image_steps[current["step"]] += int(sample.shape[0])

    def instrument_model(model):
        if id(model) in models:
            return model
        models[id(model)] = model
        model.random = timed("RANDOM_API (generation 0)", count_images(model.random))
        model.variation = timed(lambda step: "VARIATION_API lookahead (embed_synthetic)" if step == "embed_synthetic"
                                else "VARIATION_API next generation", count_images(model.variation))
        unet = getattr(model, "unet", None)
        if hasattr(unet, "register_forward_hook"):
            unet.register_forward_hook(count_image_steps, with_kwargs=True)
            unet_hooked.append(True)
        return model

    original_load_model, original_load_embedding = steps.load_model, steps.load_embedding
    steps.load_model = lambda cfg: instrument_model(timed("load diffusion model", original_load_model)(cfg))
    steps.load_embedding = timed("load embedding model", original_load_embedding)
    voting.nearest_neighbour_histogram = timed("k-NN vote (faiss)", voting.nearest_neighbour_histogram)
    try:
        from privevo.image.embeddings.effnet_lite0 import EfficientNetLite0Embedding
        from privevo.image.embeddings.pixels import PixelEmbedding

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

    def step(planned: api.PlannedStep, call) -> None:
        """Time one step of the library's in-process runner, and reset the peak RSS before it."""
        current["step"] = planned.spec.name
        reset_vmhwm()
        t0, c0 = time.perf_counter(), cpu_seconds()
        call()
        records.append({"step": planned.label, "kind": planned.spec.name, "generation": planned.generation,
                        "seconds": round(time.perf_counter() - t0, 3), "cpu_s": round(cpu_seconds() - c0, 2),
                        "peak_rss_mb": round(vmhwm_mb() or 0.0, 1) if hwm_reset else None})

    api.execute(run, around=step)  # every step in DAG order, as privevo.run runs them
    evaluated = api.RunResult(run).metrics
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
        "seed": config.seed,
        "reuse_lookahead": config.population.reuse_lookahead,
        "final": {key: evaluated["final"].get(key) for key in (FD_KEY, "class_tv", "precision", "recall")},
        "images": dict(images, total=sum(images.values())),
        # counted only where the model has a torch ``unet`` (an in-process diffusion model)
        "image_steps": dict(image_steps, total=sum(image_steps.values())) if unet_hooked else None,
        "model_precision": ", ".join(sorted({model_precision(m) for m in models.values()})) or None,
    }))


def model_precision(model: Any) -> str:
    """What the model computes in: its autocast dtype as resolved at load time, else its weights' dtype."""
    dtype = getattr(model, "autocast_dtype", None) or getattr(model, "dtype", None)
    device = getattr(model, "device", None)
    name = str(dtype).replace("torch.", "") if dtype is not None else "float32"
    return f"{name} on {device}" if device is not None else name


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


RUNNERS = {"kfp": run_kfp, "inprocess": run_inprocess, "subprocess": run_subprocess_steps}
NOT_WORSE_RULE = ("reuse is not worse on a metric (lower is better for FD and class TV) when its mean with reuse <= the mean "
                  "without + the larger of the two settings' sample standard deviations (n - 1)")


def plan_jobs(args: argparse.Namespace, modes: list[str], default_reuse: bool) -> list[dict[str, Any]]:
    """The runs in order: the paired cell (first seed, the config's reuse setting) in every mode back to back for each
    repeat (the order of the modes alternates between repeats), then the other in-process seed x reuse cells once each."""
    seeds: list[int | None] = list(range(args.seeds)) if args.seeds else [None]
    reuses: list[bool | None] = [False, True] if args.compare_reuse else [None]
    paired = (seeds[0], default_reuse if args.compare_reuse else None)
    jobs = [{"mode": m, "seed": paired[0], "reuse": paired[1], "repeat": r, "paired": True}
            for r in range(args.repeats) for m in (modes if r % 2 == 0 else modes[::-1])]  # alternate who runs first
    if "inprocess" in modes:
        jobs += [{"mode": "inprocess", "seed": s, "reuse": u, "repeat": 0, "paired": False}
                 for s in seeds for u in reuses if (s, u) != paired]
    return jobs


def seed_row(result: dict[str, Any], paired: bool) -> dict[str, Any]:
    """One in-process run's row of the seeds x reuse table."""
    from privevo.image.evaluation import FD_KEY

    final = result.get("final") or {}
    return {"seed": result.get("seed"), "reuse_lookahead": result.get("reuse_lookahead"), "paired": paired,
            "wall_s": result["wall_s"], "fd": final.get(FD_KEY), "class_tv": final.get("class_tv"),
            "image_steps": (result.get("image_steps") or {}).get("total"),
            "image_steps_by_step": result.get("image_steps"), "images": (result.get("images") or {}).get("total"),
            "precision": result.get("model_precision")}


def compare_reuse(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread of FD, class TV, image-steps and wall time per reuse setting, the calls saved and the verdict."""
    settings = {}
    for reuse in (False, True):
        chosen = [r for r in rows if r["reuse_lookahead"] is reuse]
        settings[str(reuse).lower()] = {key: spread([r[key] for r in chosen]) for key, _ in REUSE_FIGURES}
    without, with_ = settings["false"], settings["true"]
    saved = {}
    for key in ("image_steps", "images"):
        if without[key] and with_[key] and without[key]["mean"]:
            saved[key] = round(1 - with_[key]["mean"] / without[key]["mean"], 4)
    verdict, overall = not_worse(with_, without)
    return {"settings": settings, "saved_fraction": saved, "verdict": verdict, "rule": NOT_WORSE_RULE,
            "not_worse": overall}


def not_worse(candidate: dict[str, Any], baseline: dict[str, Any]) -> tuple[dict[str, Any], bool | None]:
    """The rule on FD and class TV (lower is better): the candidate's mean <= the baseline's + the larger sample std.

    ``candidate`` and ``baseline`` map each metric to its :func:`spread` (None where not measured). Returns the
    verdict per metric and overall (None when a metric was not measured)."""
    verdict: dict[str, Any] = {}
    for metric in ("fd", "class_tv"):
        a, b = candidate[metric], baseline[metric]
        if a is None or b is None:
            verdict[metric] = None
            continue
        bound = b["mean"] + max(a["std"], b["std"])
        verdict[metric] = {"mean_with": a["mean"], "mean_without": b["mean"], "bound": round(bound, 4),
                           "not_worse": a["mean"] <= bound}
    known = [v["not_worse"] for v in verdict.values() if v is not None]
    return verdict, all(known) if len(known) == len(verdict) else None


def print_seed_runs(rows: list[dict[str, Any]], reuse: dict[str, Any]) -> None:
    """The seeds x reuse table, each setting's mean and spread, the calls saved and the verdict."""
    print("\nin-process runs per seed and population.reuse_lookahead (final generation; DP noise fresh in each run):")
    print(format_table(rows, [("seed", "seed"), ("reuse_lookahead", "reuse"), ("fd", "FD"), ("class_tv", "class TV"),
                              ("image_steps", "UNet image-steps"), ("images", "images asked"), ("wall_s", "wall s"),
                              ("precision", "precision")]))
    table = []
    for setting, figures in reuse["settings"].items():
        for key, label in REUSE_FIGURES:
            table.append({"reuse": setting, "figure": label, **(figures[key] or {})})
    print("\nper setting (mean, sample std, min-max):")
    print(format_table(table, [("reuse", "reuse"), ("figure", "figure"), ("mean", "mean"), ("std", "std"), ("min", "min"),
                               ("max", "max"), ("runs", "runs")]))
    saved = reuse["saved_fraction"]
    print("calls saved by reuse: " + (", ".join(f"{k.replace('_', '-')} {100 * v:.1f}%" for k, v in saved.items()) or "n/a"))
    verdicts = []
    for metric, v in reuse["verdict"].items():
        verdicts.append(f"{metric} n/a" if v is None else
                        f"{metric} {v['mean_with']:.4g} vs bound {v['bound']:.4g} ({verdict_word(v['not_worse'])})")
    print(f"verdict: reuse is {verdict_word(reuse['not_worse'])} on FD and class TV: {'; '.join(verdicts)}")
    print(f"rule: {reuse['rule']}")


def fmt(value: Any) -> str:
    """A figure for a progress line ('n/a' where it was not measured)."""
    return "n/a" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-official", action="store_true", help="do not pin the demo-sized task (OFFICIAL_TASK)")
    parser.add_argument("--modes", default="kfp,inprocess", help="comma list of kfp, inprocess, subprocess")
    parser.add_argument("--repeats", type=int, default=1, help="runs of the paired cell (kfp.local and in-process) per mode")
    parser.add_argument("--seeds", type=int, default=0, help="run the in-process demo for seed 0..N-1 (0: the config's seed)")
    parser.add_argument("--compare-reuse", action="store_true",
                        help="run the in-process demo with population.reuse_lookahead false and true")
    parser.add_argument("--keep", action="store_true", help="keep the run folders (printed)")
    parser.add_argument("--verbose", action="store_true", help="echo pipeline.py's output")
    parser.add_argument("--inprocess-worker", nargs=2, metavar=("WORKDIR", "RUN_ID"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.inprocess_worker:
        inprocess_worker(*args.inprocess_worker, args.config, args.overrides)
        return

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in RUNNERS]
    if unknown or not modes:
        parser.error(f"unknown mode(s) {unknown}: use a comma list of {', '.join(RUNNERS)}")
    if (args.seeds or args.compare_reuse) and "inprocess" not in modes:
        parser.error("--seeds and --compare-reuse run the in-process demo: add inprocess to --modes")
    from privevo.config import load_config
    from privevo.errors import UserError

    try:
        default_reuse = load_config(args.config, official_overrides(args)).population.reuse_lookahead
    except UserError as err:
        parser.error(str(err))
    jobs = plan_jobs(args, modes, default_reuse)
    paired = cell_overrides(jobs[0]["seed"], jobs[0]["reuse"])
    results: dict[str, list[dict]] = {m: [] for m in modes}  # the paired cell's runs, per mode
    seed_runs: list[dict] = []  # one row per in-process seed x reuse cell
    started = time.perf_counter()
    for number, job in enumerate(jobs, 1):
        mode, cell = job["mode"], cell_overrides(job["seed"], job["reuse"])
        workdir = Path(tempfile.mkdtemp(prefix=f"bench-demo-{mode}-"))
        run_id = f"bench-{mode}-{number}"
        print(f"  run {number}/{len(jobs)} {mode:<10} {' '.join(cell) or '(config as is)'}"
              f"{' (paired)' if job['paired'] else ''} (load {' '.join(loadavg() or [])}) ...", flush=True)
        result = RUNNERS[mode](args, workdir, run_id, cell)
        result["loadavg_after"] = loadavg()
        if job["paired"]:
            results[mode].append(result)
        line = f"    {mode}: {result['wall_s']:.1f} s"
        if mode == "inprocess" and job["repeat"] == 0:
            seed_runs.append(seed_row(result, job["paired"]))
            row = seed_runs[-1]
            line += f"; FD {fmt(row['fd'])}, class TV {fmt(row['class_tv'])}, UNet image-steps {fmt(row['image_steps'])}"
        print(line, flush=True)
        if args.keep:
            print(f"    kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    summaries = {mode: summary([r["wall_s"] for r in runs], 1) for mode, runs in results.items()}
    cpu = {mode: summary([r["cpu_s"] for r in runs], 1) for mode, runs in results.items()}
    out: dict = {"bench": "demo", "config": args.config, "overrides": official_overrides(args),
                 "paired_overrides": paired, "repeats": args.repeats, "runs": results, "wall_s": summaries, "cpu_s": cpu,
                 "other_machine_context": OFFICIAL_CONTEXT}

    print(f"\ndemo ({args.config}; {' '.join(official_overrides(args))}), paired cell {' '.join(paired) or '(config as is)'}: "
          f"{args.repeats} run(s) per mode")
    print(format_table([{"mode": m, **s, "cpu": cpu[m]["median"],
                         "load": " ".join((median_run(results[m]).get("loadavg_after") or [])[:1])}
                        for m, s in summaries.items()],
                       [("mode", "mode"), ("median", "wall s median"), ("min", "min"), ("max", "max"), ("runs", "runs"),
                        ("cpu", "CPU s (user+sys)"), ("load", "loadavg after")]))

    if "kfp" in results:
        kfp = median_run(results["kfp"])
        print("\nkfp.local per task (seconds from its progress lines; peak RSS polled from /proc, per process):")
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
        counted = inproc.get("image_steps") or {}
        print("UNet image-steps (forward passes x batch) per step kind: "
              + (", ".join(f"{k} {v}" for k, v in counted.items()) or "n/a (the model has no torch unet)")
              + "; images asked of the model: " + ", ".join(f"{k} {v}" for k, v in (inproc.get("images") or {}).items()))
        out["inprocess_peak_rss_mb"] = summary([r["process_peak_rss_mb"] for r in results["inprocess"]], 1)
        out["precision"] = inproc.get("model_precision")
        print(f"model precision (resolved by the model at load time, in-process): {out['precision']}; "
              "the kfp.local run loads the same config on the same machine")

    if "subprocess" in results:
        sub = median_run(results["subprocess"])
        print("\none process per step, no kfp (seconds incl. process start and imports; peak = wait4 ru_maxrss):")
        print(format_table(sub["steps"], STEP_COLUMNS))

    if "kfp" in summaries and "inprocess" in summaries:
        ratio = round(summaries["kfp"]["median"] / summaries["inprocess"]["median"], 3)
        pairs = [round(k["wall_s"] / i["wall_s"], 3) for k, i in zip(results["kfp"], results["inprocess"], strict=True)]
        out["orchestration_overhead_ratio"] = ratio
        out["orchestration_overhead_pairs"] = pairs
        out["orchestration_overhead_target"] = TARGET_OVERHEAD_RATIO
        print(f"\nkfp.local / in-process wall time, same overrides ({' '.join(paired) or 'config as is'}), same benchmark run: "
              f"{ratio:.3f} (median / median; each pair, run back to back: {', '.join(f'{r:.3f}' for r in pairs)}; "
              f"target <= {TARGET_OVERHEAD_RATIO}: {'met' if ratio <= TARGET_OVERHEAD_RATIO else 'NOT met'})")
    out["seed_runs"] = seed_runs
    if args.seeds or args.compare_reuse:
        out["reuse"] = compare_reuse(seed_runs)
        print_seed_runs(seed_runs, out["reuse"])
    print(f"\ncontext: {OFFICIAL_CONTEXT}")
    out["seconds_total"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
