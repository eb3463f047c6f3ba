"""Helpers shared by the benchmark scripts: peak memory, summaries, tables, subprocess workers.

Peak memory is always *peak resident set size* (RSS), read from the kernel:
- ``peak_rss_mb()``: this process's peak so far (``getrusage(RUSAGE_SELF).ru_maxrss``).
- ``children_peak_rss_mb()``: the largest peak among waited-for descendants
  (``RUSAGE_CHILDREN``; Linux reports the max over the whole waited tree, not a sum).
- ``vmhwm_mb()`` / ``reset_vmhwm()``: ``VmHWM`` from ``/proc/self/status``, which can be reset
  by writing 5 to ``/proc/self/clear_refs`` (Linux >= 4.0), giving the peak of one phase of
  a long-lived process.
Figures only: nothing here asserts on time or memory.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "bench"
PYTHON = sys.executable

#: The official implementation's figures for the demo-sized task (issue 8), measured on another
#: machine: shown as context only, never divided by figures of this machine.
OFFICIAL_SECONDS = 285.0
OFFICIAL_PEAK_GB = 1.05
OFFICIAL_CONTEXT = (f"the official implementation took {OFFICIAL_SECONDS:.0f} s and {OFFICIAL_PEAK_GB} GB for this task "
                    "(measured on another machine, not compared)")
#: Targets of ratios taken within one run (issue 18).
TARGET_OVERHEAD_RATIO = 1.05  # kfp.local wall / in-process wall, same work
TARGET_UNET_GEMM_RATIO = 0.5  # the UNet's float32 GFLOP/s / the machine's float32 GEMM GFLOP/s
#: The figures of each lookahead-reuse setting (bench_demo's seed runs), with their labels.
REUSE_FIGURES = (("fd", "FD"), ("class_tv", "class TV"), ("image_steps", "UNet image-steps"), ("images", "images asked"),
                 ("wall_s", "wall s"))
#: The CPU flags that decide the kernels and the precision of ``model.autocast: auto``.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def peak_rss_mb() -> float:
    """Peak RSS of this process, MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def own_figures(started: float) -> dict[str, float]:
    """This process's wall seconds since ``started``, CPU seconds and peak RSS (MiB), rounded for a results row."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def children_peak_rss_mb() -> float:
    """Largest peak RSS of any waited-for descendant, MiB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _status_kb(field: str, pid: int | str = "self") -> float | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def vmhwm_mb(pid: int | str = "self") -> float | None:
    """VmHWM (peak RSS since start or since the last reset), MiB."""
    kb = _status_kb("VmHWM", pid)
    return None if kb is None else kb / 1024


def vmrss_mb(pid: int | str = "self") -> float | None:
    kb = _status_kb("VmRSS", pid)
    return None if kb is None else kb / 1024


def reset_vmhwm() -> bool:
    """Reset this process's VmHWM to its current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def summary(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Median, min, max and count of ``values``."""
    values = [float(v) for v in values]
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "runs": len(values),
    }


def spread(values: Sequence[float | None], digits: int = 4) -> dict[str, Any] | None:
    """Mean, sample standard deviation (n - 1; 0 for one value), min and max of the values given; None if none is."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    return {
        "mean": round(statistics.fmean(present), digits),
        "std": round(statistics.stdev(present), digits) if len(present) > 1 else 0.0,
        "min": round(min(present), digits),
        "max": round(max(present), digits),
        "runs": len(present),
    }


def verdict_word(not_worse: bool | None) -> str:
    """How lookahead reuse compares: 'not worse', 'WORSE' or 'undecided' (a metric was not measured)."""
    return {True: "not worse", False: "WORSE", None: "undecided"}[not_worse]


def fit_power_law(xs: Iterable[float], ys: Iterable[float]) -> dict[str, float] | None:
    """Least squares on log y = a log x + b; returns exponent a, prefactor exp(b) and r^2."""
    import numpy as np

    x, y = np.log(np.asarray(list(xs), float)), np.log(np.asarray(list(ys), float))
    if len(x) < 2:
        return None
    a, b = np.polyfit(x, y, 1)
    residual = y - (a * x + b)
    total = ((y - y.mean()) ** 2).sum()
    return {"exponent": round(float(a), 3), "prefactor": float(np.exp(b)),
            "r2": round(float(1 - (residual**2).sum() / total) if total else 1.0, 4)}


def fit_line(xs: Iterable[float], ys: Iterable[float]) -> dict[str, float] | None:
    """Least squares y = slope x + intercept, with r^2."""
    import numpy as np

    x, y = np.asarray(list(xs), float), np.asarray(list(ys), float)
    if len(x) < 2:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    total = ((y - y.mean()) ** 2).sum()
    return {"slope": float(slope), "intercept": float(intercept),
            "r2": round(float(1 - (residual**2).sum() / total) if total else 1.0, 4)}


# Columns of a per-step table (bench_demo's in-process and one-process-per-step modes).
STEP_COLUMNS = [("step", "step"), ("seconds", "s"), ("cpu_s", "CPU s"), ("peak_rss_mb", "peak RSS MiB")]


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A fixed-width text table; ``columns`` are (key, header) pairs."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
        return str(value)

    cells = [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, (_, h) in enumerate(columns)]
    lines = ["  ".join(h.rjust(w) for (_, h), w in zip(columns, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """The same table as GitHub markdown."""
    header = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "| " + " | ".join("---:" for _ in columns) + " |"
    body = []
    for row in rows:
        values = []
        for key, _ in columns:
            value = row.get(key)
            values.append("-" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value)))
        body.append("| " + " | ".join(values) + " |")
    return "\n".join([header, sep, *body])


def run_worker(args: list[str], timeout: float | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python <args>`` in a fresh process; return the JSON object on its last stdout line."""
    proc = subprocess.run([PYTHON, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return last_json_line(proc.stdout)


def last_json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in the output")


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (and how loaded it was)."""
    info: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
                            "platform": platform.platform()}
    try:
        info["nproc"] = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip())
    except (OSError, ValueError):
        info["nproc"] = os.cpu_count()
    try:
        info["free_h"] = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.strip()
    except OSError:
        info["free_h"] = None
    try:
        with open("/proc/cpuinfo") as handle:
            models = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        info["cpu_model"] = models[0] if models else platform.processor()
        with open("/proc/cpuinfo") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
        info["cpu_simd"] = [f for f in CPU_FLAGS if f in flags]
        info["cpu_flags_missing"] = [f for f in CPU_FLAGS if f not in flags]
    except OSError:
        info["cpu_model"] = platform.processor()
    try:
        with open("/proc/loadavg") as handle:
            info["loadavg"] = handle.read().split()[:3]
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    for package in ("torch", "faiss-cpu", "numpy", "diffusers", "kfp"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = None
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["torch_interop_threads"] = torch.get_num_interop_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a figure we cannot read is just missing
        pass
    try:
        import faiss

        info["faiss_omp_threads"] = faiss.omp_get_max_threads()
    except Exception:  # noqa: BLE001
        pass
    info["env_threads"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
    return info


def loadavg() -> list[str] | None:
    try:
        with open("/proc/loadavg") as handle:
            return handle.read().split()[:3]
    except OSError:
        return None


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
