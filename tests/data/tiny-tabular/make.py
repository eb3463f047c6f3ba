"""Writes private.csv and reference.csv: a small table with a label that depends on the other columns.

Run once (``python tests/data/tiny-tabular/make.py``); the CSVs are committed beside it.
"""

from pathlib import Path

import numpy as np

JOBS = ["clerk", "crafts", "sales", "manager"]


def table(rows: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    job = rng.integers(0, len(JOBS), rows)
    age = np.clip(np.round(rng.normal(38 + 4 * job, 9)), 17, 90).astype(int)
    hours = np.where(rng.random(rows) < 0.5, 40, np.clip(np.round(rng.normal(42, 10)), 1, 99)).astype(int)
    score = np.round(rng.beta(2 + job, 3), 4)
    high = (0.03 * (age - 38) + 0.5 * job + 0.04 * (hours - 40) + 2 * score + rng.normal(0, 0.8, rows)) > 1.8
    lines = ["age,job,hours,score,income"]
    lines += [f"{a},{JOBS[j]},{h},{s},{'>50K' if y else '<=50K'}" for a, j, h, s, y in
              zip(age, job, hours, score, high, strict=True)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    here = Path(__file__).parent
    (here / "private.csv").write_text(table(240, 1))
    (here / "reference.csv").write_text(table(240, 2))
