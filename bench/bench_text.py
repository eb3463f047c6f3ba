"""Aug-PE on the five fortunes categories (configs/fortunes.yaml), scored as issue 27's table is.

The task: entries of 5 to 60 words of the computers, people, politics, science and work
categories, about 80% private and 20% held out (the public SHA-256 split rule), conditional,
50 samples per class, 4 votes, epsilon 4 at delta 1e-5, 48 new tokens at most, SmolLM2-135M-Instruct
writing, all-MiniLM-L6-v2 voting.

Each seed's run is one fresh Python process running the whole pipeline through the Python API
(``privevo.run``: every step in DAG order, the run's own evaluation and report included). Its
wall time (process start to the run's end, imports included), CPU time and peak RSS
(``ru_maxrss``) are taken before the bench scores generation 0 (the random API only) and the final
generation against the held-out texts:

- **FD** and **k-NN precision / recall** (k = 3) in MiniLM space (:func:`privevo.text.metrics.text_metrics`);
- **downstream accuracy**: a logistic regression on the MiniLM embeddings trained on the synthetic
  texts and tested on *all* held-out texts (the run's own metrics.json tests on one half of the
  held-out texts; the bench follows the issue);
- **words**: the mean word count.

``--score RUN`` scores every generation of a finished run instead (e.g. the kfp.local demo's), without running.

The baseline row is 250 real private texts (50 per class, drawn by each seed), scored the same way.
The DP noise is fresh OS entropy in every run; ``seed`` changes the public randomness. Figures only.

Usage:
    .venv/bin/python bench/bench_text.py [--seeds 0 1 2] [--set key=value ...] [--json out.json]
    .venv/bin/python bench/bench_text.py --score runs/fortunes-20261206-045309
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before any import of the library: the worker's wall includes them

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench._common import format_table, loadavg, markdown_table, own_figures, run_worker, spread, write_json  # noqa: E402

CONFIG = "configs/fortunes.yaml"
PER_CLASS = 50
CLASSIFIER_SEED = 0
#: Issue 27's figures for the reference implementation (LLMAugPE, a 2-core AMD EPYC): context, another machine.
REFERENCE = [
    {"set": "reference, generation 0 (random API only)", "fd": 0.410, "precision": 0.82, "recall": 0.36,
     "accuracy": 0.626, "words": 33.0},
    {"set": "reference, after 4 votes", "fd": 0.396, "precision": 0.96, "recall": 0.30, "accuracy": 0.695,
     "words": 29.5, "wall_s": 547, "peak_rss_mb": 2100},
    {"set": "reference's 250 real private texts", "fd": 0.299, "precision": 0.85, "recall": 0.85, "accuracy": 0.718,
     "words": 19.3},
]
GOAL = "FD <= 0.35, accuracy >= 0.71, recall >= 0.45, words within 3 of the held-out texts' (mean of the seeds)"
METRICS = ("fd", "precision", "recall", "accuracy", "words")
COLUMNS = [("set", "set"), ("fd", "FD (MiniLM)"), ("precision", "precision"), ("recall", "recall"),
           ("accuracy", "downstream accuracy"), ("words", "words (mean)"), ("wall_s", "wall s"), ("cpu_s", "CPU s"),
           ("peak_rss_mb", "peak RSS MiB")]


def texts(config: str, overrides: list[str]) -> tuple[Any, Any, Any, Any, Any]:
    """The loaded config, the private texts and labels, and the held-out texts and labels."""
    from privevo.api import load
    from privevo.text.data import load_texts

    loaded = load(config, overrides)
    assert loaded.text is not None and loaded.evaluation.reference is not None
    private, private_labels = load_texts(loaded.private, loaded.text, loaded.class_names, 0)
    held_out, held_out_labels = load_texts(loaded.evaluation.reference, loaded.text, loaded.class_names, 0)
    return loaded, private, private_labels, held_out, held_out_labels


class Scorer:
    """Scores sets of labelled texts against the held-out texts in MiniLM space, as the issue's table does."""

    def __init__(self, config: str, overrides: list[str]) -> None:
        from privevo.text.embedding import SentenceEmbedding

        self.config, self.private, self.private_labels, self.held_out, self.held_out_labels = texts(config, overrides)
        assert self.config.text is not None
        self.embedding = SentenceEmbedding.from_pretrained(self.config.text.embedding_path,
                                                           self.config.text.embedding_max_length, "cpu")
        self.reference = self.embed(self.held_out)

    def embed(self, samples: Any) -> Any:
        return self.embedding.embed(samples, self.config.embedding.batch_size, False)

    def score(self, samples: Any, labels: Any) -> dict[str, float | None]:
        """FD, precision/recall (k = 3), downstream accuracy on all held-out texts, mean words."""
        from privevo.text.metrics import _accuracy, text_metrics

        embedded = self.embed(samples)
        scores = text_metrics("minilm", embedded, self.reference, samples, self.held_out)
        return {"fd": scores["fd_minilm"], "precision": scores["precision"], "recall": scores["recall"],
                "accuracy": _accuracy(embedded, labels, self.reference, self.held_out_labels, CLASSIFIER_SEED),
                "words": scores["words_mean"]}

    def real(self, seed: int) -> tuple[Any, Any]:
        """``PER_CLASS`` private texts of each class, drawn by ``seed``."""
        import numpy as np

        rng = np.random.default_rng(seed)
        rows = np.sort(np.concatenate([rng.choice(np.flatnonzero(self.private_labels == c), PER_CLASS, replace=False)
                                       for c in range(len(self.config.class_names or []))]))
        return self.private[rows], self.private_labels[rows]


def rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


def mean_of(values: list[Any]) -> float | None:
    """The mean of the values that are not None (None if none is)."""
    summary = spread(values)
    return None if summary is None else summary["mean"]


def worker(args: argparse.Namespace) -> None:
    """One run in this process; prints generation 0 and the final generation's figures as the last JSON line."""
    import privevo

    workdir = Path(args.workdir)
    overrides = [f"seed={args.seed}", *args.set]
    result = privevo.run(args.config, overrides=overrides, run_root=workdir / "runs",
                         private_root=workdir / "private", run_id=f"fortunes-seed{args.seed}")
    figures = own_figures(STARTED)  # before scoring: the run's own cost
    scorer = Scorer(args.config, overrides)
    first, last = result.population(0), result.population()
    print(json.dumps({"seed": args.seed, "generation_0": rounded(scorer.score(first.samples, first.labels)),
                      "final": rounded(scorer.score(last.samples, last.labels)), "final_generation": result.generation(),
                      **figures, "epsilon": result.epsilon,
                      "examples": [str(t) for t in last.samples[:: max(1, len(last.samples) // 5)]]}))


def score_run(path: str, config: str, overrides: list[str]) -> None:
    """Every generation of the run at ``path`` scored as the table does, one JSON line each."""
    import privevo

    result = privevo.open_run(path)
    scorer = Scorer(config, overrides)
    for generation in range(result.generation() + 1):
        population = result.population(generation)
        print(json.dumps({"generation": generation, **rounded(scorer.score(population.samples, population.labels))}),
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--score", metavar="RUN", help="score the generations of this finished run and stop")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.score:
        score_run(args.score, args.config, args.set)
        return
    load_before = loadavg()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-text-") as folder:
        for seed in args.seeds:
            extra = [argument for override in args.set for argument in ("--set", override)]
            runs.append(run_worker([str(Path(__file__).resolve()), "--worker", "--config", args.config, "--seed",
                                    str(seed), "--workdir", folder, *extra]))
            print(json.dumps(runs[-1]), flush=True)
    rows: list[dict[str, Any]] = list(REFERENCE)
    for part, name in (("generation_0", "generation 0"), ("final", "final")):
        for run in runs:
            rows.append({"set": f"ours, {name}, seed {run['seed']}", **run[part],
                         **({key: run[key] for key in ("wall_s", "cpu_s", "peak_rss_mb")} if part == "final" else {})})
        keys = METRICS + (("wall_s", "cpu_s", "peak_rss_mb") if part == "final" else ())
        rows.append({"set": f"ours, {name}, mean", **{k: mean_of([r[k] if k in r else r[part][k] for r in runs])
                                                       for k in keys}})
    scorer = Scorer(args.config, args.set)
    real = [scorer.score(*scorer.real(seed)) for seed in args.seeds]
    rows.append({"set": f"{PER_CLASS * len(scorer.config.class_names or [])} real private texts (mean of seeds)",
                 **{k: mean_of([r[k] for r in real]) for k in METRICS}})
    held_out_words = float(sum(len(str(t).split()) for t in scorer.held_out) / len(scorer.held_out))
    rows.append({"set": f"held-out texts ({len(scorer.held_out)})", "words": round(held_out_words, 1)})
    mean = next(r for r in rows if r["set"] == "ours, final, mean")
    goal = (mean["fd"] <= 0.35 and mean["accuracy"] >= 0.71 and mean["recall"] >= 0.45
            and abs(mean["words"] - held_out_words) <= 3)
    print(format_table(rows, COLUMNS))
    print(f"goal ({GOAL}): {'met' if goal else 'NOT met'}")
    print(f"load average before / after: {load_before} / {loadavg()}")
    print(markdown_table(rows, COLUMNS))
    if args.json:
        write_json(args.json, {"rows": rows, "runs": runs, "goal_met": goal, "overrides": args.set})


if __name__ == "__main__":
    main()
