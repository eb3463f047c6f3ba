"""The pipeline at the paper's scale with the null model: per-step time, memory and I/O, how each grows, the vote's floor.

The null model and embedding (``model.kind: null``, ``embedding.name: null``: seeded noise images and content-seeded
2,048-d vectors, no network) leave everything but the model's own compute: the vote, storage, the run layout, the
manifests, the audit and orchestration. Each rung of the ladder is one run of a CIFAR-10-like config (32x32x3,
10 classes, conditional, 2 generations), made in one process step by step, every step in its own subprocess (its
peak RSS is its own), and printed per step: wall and CPU seconds, peak RSS, bytes read and written and the storage
requests (counted at the storage backend), the same summed per step kind, then per generation the files' sizes and
the manifests' sizes, and the audit's time and peak RSS. The smallest rung also runs through kfp.local
(``pipeline.py run``) for its overhead.

Then a log-log fit of each step's seconds (and peak RSS) against N_priv, N_syn and the lookahead L over the ladder,
the CIFAR-10 prediction of each, and which term dominates; the vote's time beside its GEMM floor
(2 N_priv N_syn d / this machine's float32 GEMM rate, measured on a 2,048-d block); and the Camelyon17 vote
(302,436 private embeddings against 50,000 synthetic, 2 classes), streamed from a memory map in blocks
and the unconditional CIFAR-10 vote (``--votes``; ``--vote-fraction`` searches that share of the private rows and
scales the time linearly: the vote is one pass over the private set; said so in the output).

Profiles: ``smoke`` (seconds), ``ladder`` (minutes), ``large`` (20,000 x 20,000, lookahead 8), ``cifar10``
(50,000 x 50,000, lookahead 8, 4 shards, 2 generations, then the ladder and the votes). Figures only: nothing here
asserts.

Usage:
    .venv/bin/python bench/bench_scale.py [--profile smoke|ladder|cifar10] [--work DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import PYTHON, REPO_ROOT, fit_power_law, format_table, last_json_line, machine_info, vmhwm_mb

CLASSES = 10
DIM = 2048
CAMELYON_PRIVATE, CAMELYON_SYNTHETIC, CAMELYON_CLASSES = 302_436, 50_000, 2


@dataclass(frozen=True)
class Rung:
    """One run's sizes."""

    n_priv: int
    n_syn: int
    lookahead: int
    generations: int = 2
    shards: int = 2
    image_size: int = 32

    @property
    def name(self) -> str:
        return f"p{self.n_priv}-s{self.n_syn}-L{self.lookahead}-i{self.image_size}"


#: The ladder varies one size at a time around a base, so the fit can tell the terms apart.
LADDERS = {
    "smoke": [Rung(500, 500, 1)],
    "ladder": [Rung(2000, 2000, 2), Rung(8000, 2000, 2), Rung(2000, 8000, 2), Rung(2000, 2000, 8),
               Rung(8000, 8000, 2), Rung(2000, 2000, 2, image_size=64)],
}
CIFAR10 = Rung(50_000, 50_000, 8, shards=4)
LADDERS["cifar10"] = [CIFAR10, *LADDERS["ladder"]]  # the full size first: its figures are printed and saved first
LADDERS["large"] = [Rung(20_000, 20_000, 8, shards=4)]  # the largest rung a busy 2-core machine runs in minutes


def config_for(rung: Rung, work: Path) -> dict[str, Any]:
    """A CIFAR-10-like config of the rung's sizes on the null model, its private set an .npz of random images."""
    data = work / f"private-{rung.n_priv}-{rung.image_size}.npz"
    if not data.exists():
        import numpy as np

        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (rung.n_priv, rung.image_size, rung.image_size, 3), dtype=np.uint8)
        np.savez(data, images=images, labels=rng.integers(0, CLASSES, rung.n_priv))
    return {
        "name": "scale", "seed": 0, "image_size": rung.image_size, "channels": 3,
        "class_names": [f"c{i}" for i in range(CLASSES)],
        "run_root": str(work / "runs"), "private_root": str(work / "private"),
        "private": {"source": "npz", "path": str(data)},
        "model": {"kind": "null", "allow_null": True, "batch_size": 500},
        "embedding": {"name": "null", "dim": DIM, "batch_size": 1000},
        "population": {"size": rung.n_syn, "generations": rung.generations, "degrees": 0.3,
                       "lookahead": rung.lookahead, "num_shards": rung.shards, "conditional": True},
        "privacy": {"noise_multiplier": 7.0711, "delta": 1e-5, "dataset_budget": 1e6, "max_private_rows": rung.n_priv,
                    "threshold": 2.0, "k": 1},
    }


# ---------------------------------------------------------------------------- workers (one subprocess each)


def _count_storage() -> dict[str, int]:
    """Count the local store's requests and bytes in this process (wraps the backend's methods)."""
    from privevo import storage

    counts = {"requests": 0, "read_bytes": 0, "written_bytes": 0}
    backend = storage._LOCAL

    def wrap(name: str) -> None:
        method = getattr(backend, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            counts["requests"] += 1
            result = method(*args, **kwargs)
            if name == "read_bytes":
                counts["read_bytes"] += len(result)
            elif name == "write_bytes":
                counts["written_bytes"] += len(args[1])
            return result

        setattr(backend, name, counted)

    for name in ("read_bytes", "write_bytes", "exists", "list", "sha256", "size", "update_json", "delete", "download"):
        wrap(name)
    return counts


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def _usage(started: float, cpu_started: float, counts: dict[str, int]) -> dict[str, Any]:
    """The step's wall and CPU seconds (imports left out), this process's peak RSS (VmHWM: ru_maxrss would keep the
    forking parent's) and its storage counts."""
    return {"seconds": round(time.perf_counter() - started, 3), "cpu_s": round(_cpu_s() - cpu_started, 3),
            "peak_rss_mb": round(vmhwm_mb() or 0.0, 1), **counts}


def worker_step(run_root: str, run_id: str, index: int) -> dict[str, Any]:
    """Run planned step ``index`` of a run, as the in-process runner would."""
    from privevo.api import plan_steps
    from privevo.run_record import Run

    counts = _count_storage()
    run = Run.open(run_root, run_id)
    planned = plan_steps(run.config)[index]
    started, cpu_started = time.perf_counter(), _cpu_s()
    planned(run)
    return {"step": planned.label, "generation": planned.generation, **_usage(started, cpu_started, counts)}


def worker_audit(run_root: str, run_id: str) -> dict[str, Any]:
    """Audit a finished run."""
    from privevo.audit import audit_run
    from privevo.run_record import Run

    counts = _count_storage()
    run = Run.open(run_root, run_id)
    started, cpu_started = time.perf_counter(), _cpu_s()
    report = audit_run(run)
    return {"step": "audit", "ok": report.ok, "first_failure": report.first_failure,
            **_usage(started, cpu_started, counts)}


def worker_gemm(dim: int) -> dict[str, Any]:
    """This machine's float32 GEMM rate on a (4,096 x dim) x (dim x 4,096) block, best of 5 (what faiss's search runs)."""
    import numpy as np

    from privevo import voting  # noqa: F401  (the vote's thread settings)

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4096, dim), np.float32), rng.standard_normal((dim, 4096), np.float32)
    a @ b
    flop, cpu_started = 2 * 4096 * 4096 * dim, _cpu_s()
    best = min(_timed(lambda: a @ b) for _ in range(5))
    # per CPU second too: on a shared machine the wall rate follows the load, the CPU rate much less
    per_cpu_s = 5 * flop / (_cpu_s() - cpu_started)
    return {"gemm_gflops": round(flop / best / 1e9, 1), "gemm_gflop_per_cpu_s": round(per_cpu_s / 1e9, 1)}


def _timed(call: Any) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def worker_vote_data(work: str, n_priv: int) -> dict[str, Any]:
    """Write n_priv standard normal private rows to an .npy (in its own process: the vote's measure stays its own)."""
    import numpy as np

    path = Path(work) / f"vote-private-{n_priv}.npy"
    if not path.exists():
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_priv, DIM))
        rng = np.random.default_rng(1)
        for start in range(0, n_priv, 16384):
            out[start : start + 16384] = rng.standard_normal((min(16384, n_priv - start), DIM), np.float32)
        out.flush()
        del out
    return {"path": str(path)}


def _peak_anonymous_mb(stop: threading.Event, peak: list[float]) -> None:
    """Poll this process's anonymous RSS (a memory map's clean pages are the page cache's, not the vote's)."""
    while not stop.wait(0.1):
        peak[0] = max(peak[0], _status_mb("RssAnon"))


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        return next((int(line.split()[1]) / 1024 for line in handle if line.startswith(field + ":")), 0.0)


def worker_vote(work: str, n_priv: int, n_syn: int, classes: int, fraction: float) -> dict[str, Any]:
    """The vote (privevo.voting.nearest_neighbour_histogram) of ``fraction`` of n_priv private rows, streamed from a
    memory-mapped .npy, against n_syn synthetic rows (per class when classes > 1); its peak anonymous memory."""
    import numpy as np

    from privevo.voting import nearest_neighbour_histogram

    path = Path(work) / f"vote-private-{n_priv}.npy"
    rows = int(n_priv * fraction)
    private = np.load(path, mmap_mode="r")[:rows]
    rng = np.random.default_rng(2)
    synthetic = rng.standard_normal((n_syn, DIM), np.float32)
    labels = (rng.integers(0, classes, rows), np.arange(n_syn) % classes) if classes > 1 else (None, None)
    baseline = _status_mb("RssAnon")
    peak, stop = [baseline], threading.Event()
    poller = threading.Thread(target=_peak_anonymous_mb, args=(stop, peak), daemon=True)
    poller.start()
    started, cpu_started = time.perf_counter(), _cpu_s()
    histogram = nearest_neighbour_histogram(private, synthetic, 1, labels[0], labels[1])
    seconds = time.perf_counter() - started
    stop.set()
    poller.join()
    return {"rows": rows, "seconds": round(seconds, 2), "cpu_s": round(_cpu_s() - cpu_started, 1),
            "peak_anon_mb": round(peak[0], 1), "anon_before_vote_mb": round(baseline, 1),
            "votes": round(float(histogram.sum()), 1)}


# ---------------------------------------------------------------------------- driver


def _worker(*args: str, timeout: float = 7200) -> dict[str, Any]:
    proc = subprocess.run([PYTHON, __file__, "--worker", *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed ({proc.returncode}): {proc.stderr.strip()[-3000:]}")
    return last_json_line(proc.stdout)


def _sizes(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    return len(files), sum(p.stat().st_size for p in files)


def run_rung(rung: Rung, work: Path) -> dict[str, Any]:
    """One run of the rung, step by step in subprocesses, then its audit; per-step figures and per-generation sizes."""
    from privevo.api import plan_steps, start_run
    from privevo.config import parse_config

    rung_dir = work / rung.name
    shutil.rmtree(rung_dir, ignore_errors=True)
    rung_dir.mkdir(parents=True)
    config = parse_config(config_for(rung, rung_dir))
    run = start_run(config, "scale")
    steps = []
    for index, planned in enumerate(plan_steps(config)):
        steps.append(_worker("step", config.run_root, "scale", str(index)))
        print(f"  {planned.label}: {steps[-1]['seconds']} s, {steps[-1]['peak_rss_mb']} MiB", flush=True)
    audit = _worker("audit", config.run_root, "scale")
    layout = run.layout
    generations = []
    for g in range(rung.generations + 1):
        files, size = _sizes(Path(layout.gen_dir(g)))
        manifests, manifest_size = _sizes(Path(layout.manifest_dir(g)))
        generations.append({"generation": g, "files": files, "mb": round(size / 2**20, 1), "manifest_parts": manifests,
                            "manifest_kb": round(manifest_size / 1024, 1)})
    return {"rung": asdict(rung), "name": rung.name, "steps": steps, "audit": audit, "generations": generations}


def run_kfp_local(rung: Rung, work: Path) -> dict[str, Any]:
    """The rung through kfp.local (``pipeline.py run``): wall, CPU and the largest step's peak RSS (RUSAGE_CHILDREN)."""
    import yaml

    rung_dir = work / f"kfp-{rung.name}"
    shutil.rmtree(rung_dir, ignore_errors=True)
    rung_dir.mkdir(parents=True)
    path = rung_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config_for(rung, rung_dir)))
    started = time.perf_counter()
    pid = subprocess.Popen([PYTHON, "pipeline.py", "run", "--config", str(path), "--run-id", "scale",
                            "--pipeline-root", str(rung_dir / "kfp")], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL).pid
    _, status, usage = os.wait4(pid, 0)
    return {"name": rung.name, "exit": os.waitstatus_to_exitcode(status), "seconds": round(time.perf_counter() - started, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def step_kind(label: str) -> str:
    return label.split()[0]


def fits(rungs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per step kind: CPU seconds (summed over a run's shards and generations; wall seconds follow a shared machine's
    load) as a power law in each size, from the rungs that vary that size alone around the base; the CIFAR-10
    prediction multiplies the factors (beside the measured figure when a rung has CIFAR-10's sizes)."""
    base_index = rungs.index(smallest(rungs))
    base = rungs[base_index]["rung"]
    totals = []
    for r in rungs:
        per_kind: dict[str, dict[str, float]] = {}
        for s in r["steps"] + [r["audit"]]:
            entry = per_kind.setdefault(step_kind(s["step"]), {"seconds": 0.0, "peak_rss_mb": 0.0})
            entry["seconds"] += s["cpu_s"]
            entry["peak_rss_mb"] = max(entry["peak_rss_mb"], s["peak_rss_mb"])
        totals.append((r["rung"], per_kind))
    rows = []
    measured = next((k for r, k in totals if r == asdict(CIFAR10)), {})
    for kind in totals[base_index][1]:
        row: dict[str, Any] = {"step": kind}
        predicted_s = totals[base_index][1][kind]["seconds"]
        for size, target in (("n_priv", CIFAR10.n_priv), ("n_syn", CIFAR10.n_syn), ("lookahead", CIFAR10.lookahead)):
            points = [(r[size], k[kind]["seconds"]) for r, k in totals
                      if all(r[o] == base[o] for o in ("n_priv", "n_syn", "lookahead", "image_size") if o != size)
                      and kind in k]
            fit = fit_power_law([max(x, 1) for x, _ in points], [max(y, 1e-3) for _, y in points]) \
                if len({x for x, _ in points}) > 1 else None
            row[f"exp_{size}"] = None if fit is None else fit["exponent"]
            if fit is not None:
                predicted_s *= (target / max(base[size], 1)) ** max(fit["exponent"], 0.0)
        row["base_s"] = round(totals[base_index][1][kind]["seconds"], 2)
        row["cifar10_predicted_s"] = round(predicted_s, 1)
        row["cifar10_measured_s"] = round(measured[kind]["seconds"], 1) if kind in measured else None
        rows.append(row)
    return rows


def smallest(rungs: list[dict[str, Any]]) -> dict[str, Any]:
    """The rung of the fewest private rows x synthetic samples x lookahead x pixels: the fits' base."""
    return min(rungs, key=lambda r: (r["rung"]["n_priv"] * r["rung"]["n_syn"] * max(r["rung"]["lookahead"], 1)
                                     * r["rung"]["image_size"] ** 2))


def per_kind(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The rung's steps summed per step kind (the largest process's peak), in the plan's order, then the audit."""
    kinds: dict[str, dict[str, Any]] = {}
    for s in [*result["steps"], result["audit"]]:
        row = kinds.setdefault(step_kind(s["step"]), {"step": step_kind(s["step"]), "processes": 0, "seconds": 0.0,
                                                      "cpu_s": 0.0, "peak_rss_mb": 0.0, "read_mib": 0.0,
                                                      "written_mib": 0.0, "requests": 0})
        row["processes"] += 1
        row["seconds"] += s["seconds"]
        row["cpu_s"] += s["cpu_s"]
        row["peak_rss_mb"] = max(row["peak_rss_mb"], s["peak_rss_mb"])
        row["read_mib"] += s["read_bytes"] / 2**20
        row["written_mib"] += s["written_bytes"] / 2**20
        row["requests"] += s["requests"]
    return [{k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()} for row in kinds.values()]


def print_rung(result: dict[str, Any], gemm: dict[str, float]) -> None:
    print(f"\n== {result['name']} ({result['rung']})")
    columns = [("step", "step"), ("seconds", "wall s"), ("cpu_s", "CPU s"), ("peak_rss_mb", "peak RSS MiB"),
               ("read_bytes", "read B"), ("written_bytes", "written B"), ("requests", "storage req")]
    print(format_table([*result["steps"], result["audit"]], columns))
    print("per step kind (summed over shards and generations; peak: the largest process's):")
    print(format_table(per_kind(result), [("step", "step"), ("processes", "processes"), ("seconds", "wall s"),
                                          ("cpu_s", "CPU s"), ("peak_rss_mb", "peak RSS MiB"), ("read_mib", "read MiB"),
                                          ("written_mib", "written MiB"), ("requests", "storage req")]))
    print(format_table(result["generations"], [("generation", "gen"), ("files", "files"), ("mb", "MiB"),
                                               ("manifest_parts", "manifest parts"), ("manifest_kb", "manifest KiB")]))
    print(f"audit: {'OK' if result['audit']['ok'] else result['audit']['first_failure']}")
    n_priv, n_syn = result["rung"]["n_priv"], result["rung"]["n_syn"]
    votes = [s for s in result["steps"] if step_kind(s["step"]) == "dp_vote"]
    flop = 2 * n_priv * n_syn * DIM / CLASSES  # per class: each private row searches its class's tenth
    print(f"{result['name']}: dp_vote {max(s['seconds'] for s in votes):.1f} s and "
          f"{max(s['cpu_s'] for s in votes):.1f} CPU s per generation, GEMM floor {flop / gemm['gemm_gflops'] / 1e9:.2f} s "
          f"and {flop / gemm['gemm_gflop_per_cpu_s'] / 1e9:.2f} CPU s (2 N_priv N_syn d / {CLASSES} classes at "
          f"{gemm['gemm_gflops']} GFLOP/s, {gemm['gemm_gflop_per_cpu_s']} GFLOP per CPU s); largest step "
          f"peak {max(s['peak_rss_mb'] for s in result['steps']):.0f} MiB; audit {result['audit']['seconds']} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(LADDERS), default="ladder")
    parser.add_argument("--work", default="/tmp/privevo-bench-scale", help="scratch folder (runs, data, memory maps)")
    parser.add_argument("--json", help="write every figure to this JSON file")
    parser.add_argument("--votes", action="store_true", help="also the CIFAR-10 (unconditional) and Camelyon17 votes "
                                                             "at full size (always with --profile cifar10)")
    parser.add_argument("--vote-fraction", type=float, default=1.0,
                        help="share of the private rows those votes search (time scaled linearly, and said so)")
    parser.add_argument("--no-kfp", action="store_true", help="skip the kfp.local run of the smallest rung")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "step":
            out = worker_step(rest[0], rest[1], int(rest[2]))
        elif kind == "audit":
            out = worker_audit(rest[0], rest[1])
        elif kind == "gemm":
            out = worker_gemm(int(rest[0]))
        elif kind == "vote-data":
            out = worker_vote_data(rest[0], int(rest[1]))
        else:
            out = worker_vote(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), float(rest[4]))
        print(json.dumps(out, default=str))
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    print(f"machine: {info.get('cpu_model')}, {info.get('nproc')} CPUs, load {info.get('loadavg')}, {info['date']}")
    gemm = _worker("gemm", str(DIM))
    print(f"float32 GEMM on a 4096 x {DIM} x 4096 block: {gemm['gemm_gflops']} GFLOP/s wall, "
          f"{gemm['gemm_gflop_per_cpu_s']} GFLOP per CPU second")
    results: dict[str, Any] = {"machine": info, "gemm": gemm, "rungs": []}

    def save() -> None:  # after each rung too: a long profile's figures outlive a later failure
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))

    for rung in LADDERS[args.profile]:
        print(f"\nrung {rung.name} ...", flush=True)
        results["rungs"].append(run_rung(rung, work))
        print_rung(results["rungs"][-1], gemm)
        save()
    if not args.no_kfp:
        first = smallest(results["rungs"])
        results["kfp_local"] = run_kfp_local(Rung(**first["rung"]), work)
        in_process = sum(s["seconds"] for s in first["steps"])
        kfp = results["kfp_local"]
        print(f"\nkfp.local, {kfp['name']}: exit {kfp['exit']}, {kfp['seconds']} s wall ({in_process:.1f} s of steps in "
              f"process), {kfp['cpu_s']} CPU s, largest step {kfp['peak_rss_mb']} MiB")
    if len(results["rungs"]) > 1:
        results["fits"] = fits(results["rungs"])
        print("\nFits (CPU seconds per run of each step kind ~ size^exponent, one size varied at a time; CIFAR-10 "
              "prediction from the base rung):")
        print(format_table(results["fits"], [("step", "step"), ("exp_n_priv", "exp N_priv"), ("exp_n_syn", "exp N_syn"),
                                             ("exp_lookahead", "exp L"), ("base_s", "base CPU s"),
                                             ("cifar10_predicted_s", "CIFAR-10 CPU s (pred.)"),
                                             ("cifar10_measured_s", "CIFAR-10 CPU s (measured)")]))
        top = max(results["fits"], key=lambda row: row["cifar10_predicted_s"])
        print(f"dominant at CIFAR-10 scale (predicted): {top['step']} ({top['cifar10_predicted_s']} CPU s per run)")
    rate = gemm["gemm_gflops"] * 1e9
    if args.votes or args.profile == "cifar10":
        fraction = args.vote_fraction
        for label, n_priv, classes in (("CIFAR-10 unconditional", CIFAR10.n_priv, 1),
                                       ("Camelyon17", CAMELYON_PRIVATE, CAMELYON_CLASSES)):
            _worker("vote-data", str(work), str(n_priv))
            vote = _worker("vote", str(work), str(n_priv), str(CAMELYON_SYNTHETIC), str(classes), str(fraction))
            scaled = vote["seconds"] / fraction
            flop = 2 * n_priv * CAMELYON_SYNTHETIC * DIM / classes
            floor, cpu_floor = flop / rate, flop / (gemm["gemm_gflop_per_cpu_s"] * 1e9)
            results[label] = {**vote, "fraction": fraction, "seconds_full": round(scaled, 1), "floor_s": round(floor, 1),
                              "cpu_s_full": round(vote["cpu_s"] / fraction, 1), "cpu_floor_s": round(cpu_floor, 1)}
            note = "" if fraction == 1 else f" (searched {vote['rows']} of {n_priv} rows and scaled by 1/{fraction}: " \
                                            "the vote is one pass over the private rows)"
            print(f"{label} vote, {n_priv} x {CAMELYON_SYNTHETIC} x {DIM}, {classes} class(es): {scaled:.0f} s{note}, "
                  f"GEMM floor {floor:.0f} s; {vote['cpu_s'] / fraction:.0f} CPU s against a GEMM floor of {cpu_floor:.0f} "
                  f"CPU s; peak anonymous memory {vote['peak_anon_mb']} MiB "
                  f"({vote['anon_before_vote_mb']} MiB before the vote, the synthetic set included; the private rows "
                  "stream from a memory map)")
            save()
    save()


if __name__ == "__main__":
    main()
