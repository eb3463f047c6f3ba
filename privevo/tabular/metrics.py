"""Metrics for synthetic tables against a held-out reference table (never the private one), and report views.

- **Marginal TVD**: the mean total-variation distance of every 1-, 2- and 3-way marginal; numeric
  columns are cut into 10 quantile bins of the reference (categoricals are their codes).
- **Wasserstein**: per numeric column, scipy's 1-D Wasserstein distance divided by the column's
  declared range (0: same distribution, 1: as far apart as the domain allows).
- **Utility**: scikit-learn's ``HistGradientBoostingClassifier`` predicts the label column from the
  others. The reference is split once, by a fixed public seed, into halves: the model trained on
  the synthetic table and the same model trained on as many real rows of the first half (the
  ceiling) are both tested on the second half (accuracy, ROC AUC).
"""

from __future__ import annotations

import html
import io
import itertools
from typing import Any

import numpy as np

from privevo.tabular.schema import Schema

BINS = 10
SPLIT_SEED = 0


def binned(schema: Schema, codes: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes as small integers (categoricals: the code; numerics: one of 10 quantile bins of the reference) and
    each column's number of values."""
    out = np.empty(codes.shape, dtype=np.int64)
    sizes = np.empty(codes.shape[1], dtype=np.int64)
    for j, column in enumerate(schema.columns):
        if column.type == "categorical":
            out[:, j] = codes[:, j].astype(np.int64)
            sizes[j] = len(column.categories or [])
        else:
            edges = np.unique(np.quantile(reference[:, j], np.linspace(0, 1, BINS + 1)[1:-1]))
            out[:, j] = np.searchsorted(edges, codes[:, j], side="right")
            sizes[j] = len(edges) + 1
    return out, sizes


def marginal_tvd(schema: Schema, synthetic: np.ndarray, reference: np.ndarray, ways: int) -> float:
    """The mean TVD of every ``ways``-way marginal of ``synthetic`` against ``reference``."""
    a, sizes = binned(schema, synthetic, reference)
    b, _ = binned(schema, reference, reference)
    distances = []
    for columns in itertools.combinations(range(len(schema.columns)), ways):
        shape = tuple(int(sizes[j]) for j in columns)
        cells = int(np.prod(shape))
        p = np.bincount(np.ravel_multi_index(tuple(a[:, j] for j in columns), shape), minlength=cells) / len(a)
        q = np.bincount(np.ravel_multi_index(tuple(b[:, j] for j in columns), shape), minlength=cells) / len(b)
        distances.append(0.5 * float(np.abs(p - q).sum()))
    return float(np.mean(distances)) if distances else 0.0


def wasserstein(schema: Schema, synthetic: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Per numeric column, the Wasserstein distance divided by the declared range."""
    from scipy.stats import wasserstein_distance

    return {c.name: float(wasserstein_distance(synthetic[:, j], reference[:, j])) / float(c.max - c.min)  # type: ignore[operator]
            for j, c in enumerate(schema.columns) if c.type != "categorical"}


def reference_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference's training and test rows: a permutation by the fixed public seed, cut in half."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def _fit_score(schema: Schema, train: np.ndarray, test: np.ndarray, seed: int) -> dict[str, float | None]:
    """Accuracy and ROC AUC of a gradient-boosted classifier of the label column, trained on ``train``."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    label = schema.label_index
    assert label is not None
    features = [j for j in range(len(schema.columns)) if j != label]
    categorical = schema.categorical[features]
    y_train, y_test = train[:, label].astype(np.int64), test[:, label].astype(np.int64)
    classes = len(schema.class_names or [])
    if len(np.unique(y_train)) < 2:  # one class: the model predicts it everywhere
        only = int(y_train[0]) if len(y_train) else 0
        return {"accuracy": float(np.mean(y_test == only)), "roc_auc": 0.5 if len(np.unique(y_test)) > 1 else None}
    model = HistGradientBoostingClassifier(categorical_features=categorical, random_state=seed)
    model.fit(train[:, features], y_train)
    probabilities = np.zeros((len(test), classes))
    probabilities[:, model.classes_] = model.predict_proba(test[:, features])
    accuracy = float(np.mean(probabilities.argmax(axis=1) == y_test))
    present = np.unique(y_test)
    if len(present) < 2:
        return {"accuracy": accuracy, "roc_auc": None}
    if classes == 2:
        auc = float(roc_auc_score(y_test, probabilities[:, 1]))
    else:
        scores = probabilities[:, present] / np.maximum(probabilities[:, present].sum(axis=1, keepdims=True), 1e-12)
        auc = float(roc_auc_score(y_test, scores, multi_class="ovr", labels=present))
    return {"accuracy": accuracy, "roc_auc": auc}


def utility(schema: Schema, synthetic: np.ndarray, reference: np.ndarray, seed: int = 0) -> dict[str, Any] | None:
    """Downstream utility of ``synthetic`` beside as many real rows (None without a label column)."""
    if schema.label_index is None:
        return None
    train_rows, test_rows = reference_split(len(reference))
    real = reference[train_rows[: len(synthetic)]]
    test = reference[test_rows]
    return {"synthetic": _fit_score(schema, synthetic, test, seed), "real": _fit_score(schema, real, test, seed),
            "train_rows": len(synthetic), "real_rows": len(real), "test_rows": len(test)}


def table_metrics(schema: Schema, synthetic: np.ndarray, reference: np.ndarray, with_utility: bool = True,
                  seed: int = 0) -> dict[str, Any]:
    """Every metric of one synthetic table: ``tvd_1way`` .. ``tvd_3way``, ``wasserstein`` (mean and per column)
    and, with ``with_utility``, ``utility``."""
    ways = min(3, len(schema.columns))
    row: dict[str, Any] = {f"tvd_{k}way": marginal_tvd(schema, synthetic, reference, k) for k in range(1, ways + 1)}
    per_column = wasserstein(schema, synthetic, reference)
    row["wasserstein"] = float(np.mean(list(per_column.values()))) if per_column else None
    row["wasserstein_per_column"] = per_column
    if with_utility:
        row["utility"] = utility(schema, synthetic, reference, seed)
    return row


# ---------------------------------------------------------------------------- report views


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def histograms_png(schema: Schema, synthetic: np.ndarray, reference: np.ndarray) -> bytes:
    """Per column, the synthetic table's histogram beside the reference's (categories; 10 quantile bins)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = len(schema.columns)
    width = min(4, columns)
    rows = -(-columns // width)
    figure, axes = plt.subplots(rows, width, figsize=(3.2 * width, 2.4 * rows), squeeze=False)
    a, sizes = binned(schema, synthetic, reference)
    b, _ = binned(schema, reference, reference)
    for j, column in enumerate(schema.columns):
        axis = axes[j // width][j % width]
        cells = np.arange(sizes[j])
        axis.bar(cells - 0.2, np.bincount(a[:, j], minlength=sizes[j]) / max(len(a), 1), 0.4, label="synthetic")
        axis.bar(cells + 0.2, np.bincount(b[:, j], minlength=sizes[j]) / max(len(b), 1), 0.4, label="reference")
        axis.set_title(column.name + ("" if column.type == "categorical" else " (deciles of reference)"), fontsize=8)
        labels = column.categories if column.type == "categorical" else [str(c + 1) for c in cells]
        axis.set_xticks(cells, labels, rotation=90 if column.type == "categorical" else 0)
        axis.tick_params(labelsize=6)
    for j in range(columns, rows * width):
        axes[j // width][j % width].axis("off")
    axes[0][0].legend(fontsize=6)
    figure.tight_layout()
    data = _png(figure)
    plt.close(figure)
    return data


def utility_html(result: dict[str, Any] | None) -> str:
    """The utility table: accuracy and ROC AUC of the classifier trained on synthetic rows and on real ones."""
    if not result:
        return ""

    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{rows}</td><td>{cell(result[key]['accuracy'])}</td>"
        f"<td>{cell(result[key]['roc_auc'])}</td></tr>"
        for key, name, rows in (("synthetic", "synthetic table", result["train_rows"]),
                                ("real", "real rows of the reference's training half", result["real_rows"])))
    return ("<table><tr><th>trained on</th><th>rows</th><th>accuracy</th><th>ROC AUC</th></tr>" + body + "</table>"
            f"<p>HistGradientBoostingClassifier, tested on the reference's other half ({result['test_rows']} rows).</p>")
