"""Fewer model calls at equal quality: the demo with DDIM-25 beside multistep solvers at fewer steps, in one run.

Each setting is ``SCHEDULER:STEPS`` (``model.scheduler`` and ``model.num_inference_steps``; a
variation at degree d runs ``int(d * steps)`` of them). For every seed the settings run back to
back through the in-process demo of bench/bench_demo.py (one fresh process per run, the
demo-sized task pinned), their order alternating from seed to seed (A, B, B, A, ...), so load
from other work on a shared machine falls on all settings alike. Printed per run: FD and class
TV of the final generation, UNet image-steps, wall seconds and the load average; per setting:
mean and spread, the image-steps and wall against the first setting (the baseline) as a ratio
of means, and the verdict by bench/bench_demo.py's rule (not worse on a metric when its mean is
at most the baseline's mean + the larger of the two sample standard deviations). Figures only.

Usage:
    .venv/bin/python bench/bench_solver.py [--settings ddim:25 dpm_solver:10] [--seeds 3] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench._common import REUSE_FIGURES, format_table, loadavg, spread, verdict_word  # noqa: E402
from bench.bench_demo import not_worse, official_overrides, run_inprocess, seed_row  # noqa: E402

RULE = ("a setting is not worse than the baseline on a metric (lower is better for FD and class TV) when its mean <= "
        "the baseline's mean + the larger of the two settings' sample standard deviations (n - 1)")


def setting_overrides(setting: str) -> list[str]:
    """``SCHEDULER:STEPS`` as config overrides."""
    scheduler, _, steps = setting.partition(":")
    if not scheduler or not steps.isdigit():
        raise ValueError(f"setting {setting!r}: expected SCHEDULER:STEPS, e.g. dpm_solver:10")
    return [f"model.scheduler={scheduler}", f"model.num_inference_steps={steps}"]


def plan(settings: list[str], seeds: int) -> list[tuple[int, str]]:
    """(seed, setting) in run order: every setting per seed, the order reversed on odd seeds."""
    return [(seed, s) for seed in range(seeds) for s in (settings if seed % 2 == 0 else settings[::-1])]


def compare(rows: list[dict[str, Any]], settings: list[str]) -> list[dict[str, Any]]:
    """Per setting: the spread of each figure, the ratios of image-steps and wall to the baseline's, the verdict."""
    out: list[dict[str, Any]] = []
    for setting in settings:
        chosen = [r for r in rows if r["setting"] == setting]
        out.append({"setting": setting, "figures": {key: spread([r[key] for r in chosen]) for key, _ in REUSE_FIGURES}})
    base = out[0]["figures"]
    for entry in out:
        figures = entry["figures"]
        for key in ("image_steps", "wall_s"):
            if figures[key] and base[key] and base[key]["mean"]:
                entry[f"{key}_ratio"] = round(figures[key]["mean"] / base[key]["mean"], 3)
        entry["verdict"], entry["not_worse"] = not_worse(figures, base)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--settings", nargs="+", default=["ddim:25", "dpm_solver:10"],
                        help="SCHEDULER:STEPS; the first is the baseline")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-official", action="store_true", help="do not pin the demo-sized task")
    args = parser.parse_args()
    try:
        cells = {s: setting_overrides(s) for s in args.settings}
    except ValueError as err:
        parser.error(str(err))

    rows: list[dict[str, Any]] = []
    jobs = plan(args.settings, args.seeds)
    started = time.perf_counter()
    for number, (seed, setting) in enumerate(jobs, 1):
        load = loadavg() or []
        print(f"  run {number}/{len(jobs)} seed {seed} {setting} (load {' '.join(load)}) ...", flush=True)
        workdir = Path(tempfile.mkdtemp(prefix="bench-solver-"))
        try:
            result = run_inprocess(args, workdir, f"bench-solver-{number}", [f"seed={seed}", *cells[setting]])
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        row = {"setting": setting, **seed_row(result, False), "load": (load or ["?"])[0]}
        rows.append(row)
        print(f"    {setting}: FD {row['fd']}, class TV {row['class_tv']}, image-steps {row['image_steps']}, "
              f"wall {row['wall_s']:.1f} s", flush=True)

    settings = compare(rows, args.settings)
    print(f"\ndemo ({args.config}; {' '.join(official_overrides(args))}): runs in order")
    print(format_table(rows, [("setting", "setting"), ("seed", "seed"), ("fd", "FD"), ("class_tv", "class TV"),
                              ("image_steps", "UNet image-steps"), ("wall_s", "wall s"), ("load", "load at start"),
                              ("precision", "precision")]))
    table = []
    for entry in settings:
        for key, label in REUSE_FIGURES:
            table.append({"setting": entry["setting"], "figure": label, **(entry["figures"][key] or {})})
    print("\nper setting (mean, sample std, min-max):")
    print(format_table(table, [("setting", "setting"), ("figure", "figure"), ("mean", "mean"), ("std", "std"),
                               ("min", "min"), ("max", "max"), ("runs", "runs")]))
    print(f"\nagainst the baseline {args.settings[0]} (ratios of means, this run):")
    for entry in settings[1:]:
        verdicts = "; ".join(f"{m} n/a" if v is None else
                             f"{m} {verdict_word(v['not_worse'])} ({v['mean_with']:.4g} vs bound {v['bound']:.4g})"
                             for m, v in entry["verdict"].items())
        print(f"  {entry['setting']}: image-steps x{entry.get('image_steps_ratio')}, wall x{entry.get('wall_s_ratio')}; "
              f"{verdict_word(entry['not_worse'])} overall: {verdicts}")
    print(f"rule: {RULE}")
    print(json.dumps({"bench": "solver", "config": args.config, "overrides": official_overrides(args),
                      "runs": rows, "settings": settings, "rule": RULE,
                      "seconds_total": round(time.perf_counter() - started, 1)}, default=str))


if __name__ == "__main__":
    main()
