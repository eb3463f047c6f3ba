"""Metrics for synthetic texts against a held-out reference set (never the private one), and report views.

- **Frechet distance** (``fd_<space>``, e.g. ``fd_minilm``) and **k-NN precision / recall** (k = 3)
  between the synthetic and reference texts' sentence embeddings (the vote's space, named by
  ``text.embedding_name``), with the image metrics' math (privevo.metrics).
- **Length**: the mean word count (``words_mean``, beside the reference's ``reference_words_mean``)
  and the Wasserstein distance between the two sets' word-count distributions
  (``words_wasserstein``, in words).
- **Downstream accuracy** (labelled runs, final generation): a logistic regression on the
  sentence embeddings predicts the class. The reference is split once, by a fixed public seed,
  into halves: the classifier trained on the synthetic texts and the same trained on as many
  real texts of the first half (the ceiling) are both tested on the second half.
"""

from __future__ import annotations

import html
import io
from typing import Any

import numpy as np

from privevo import metrics

K = 3
SPLIT_SEED = 0


def word_counts(texts: np.ndarray) -> np.ndarray:
    """Words per text."""
    return np.array([len(str(t).split()) for t in texts], dtype=np.float64)


def text_metrics(space: str, synthetic: np.ndarray, reference: np.ndarray, synthetic_texts: np.ndarray,
                 reference_texts: np.ndarray) -> dict[str, float | None]:
    """FD and precision/recall of the embeddings, and the length metrics of the texts (None where a set is too small
    for a metric)."""
    from scipy.stats import wasserstein_distance

    enough = min(len(synthetic), len(reference)) > K
    precision, recall = metrics.precision_recall(reference, synthetic, K) if enough else (None, None)
    syn_words, ref_words = word_counts(synthetic_texts), word_counts(reference_texts)
    return {f"fd_{space}": metrics.frechet_distance(synthetic, reference) if enough else None,
            "precision": precision, "recall": recall,
            "words_mean": float(syn_words.mean()) if len(syn_words) else None,
            "reference_words_mean": float(ref_words.mean()) if len(ref_words) else None,
            "words_wasserstein": float(wasserstein_distance(syn_words, ref_words)) if len(syn_words) and len(
                ref_words) else None}


def reference_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference's training and test rows: a permutation by the fixed public seed, cut in half."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def _accuracy(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray,
              seed: int) -> float:
    """Test accuracy of a logistic regression trained on ``train`` (one class: that class everywhere)."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(train_labels)) < 2:
        only = int(train_labels[0]) if len(train_labels) else -1
        return float(np.mean(test_labels == only))
    model = LogisticRegression(max_iter=1000, random_state=seed)
    model.fit(train, train_labels)
    return float(np.mean(model.predict(test) == test_labels))


def downstream(synthetic: np.ndarray, synthetic_labels: np.ndarray, reference: np.ndarray,
               reference_labels: np.ndarray, seed: int = 0) -> dict[str, Any] | None:
    """Accuracy of the classifier trained on the synthetic texts beside one trained on as many real texts (None
    without labels on both sides)."""
    if len(synthetic_labels) == 0 or np.any(synthetic_labels < 0) or len(reference_labels) < 2:
        return None
    train_rows, test_rows = reference_split(len(reference))
    real_rows = train_rows[: len(synthetic)]
    test, test_labels = reference[test_rows], reference_labels[test_rows]
    return {"synthetic": _accuracy(synthetic, synthetic_labels, test, test_labels, seed),
            "real": _accuracy(reference[real_rows], reference_labels[real_rows], test, test_labels, seed),
            "train_texts": len(synthetic), "real_texts": len(real_rows), "test_texts": len(test_rows)}


# ---------------------------------------------------------------------------- report views


def length_curve_png(rows: list[dict[str, Any]]) -> bytes:
    """The mean word count over generations beside the reference's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3))
    generations = [r["generation"] for r in rows]
    for key, label in (("words_mean", "synthetic"), ("reference_words_mean", "reference")):
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            axis.plot(generations, [np.nan if v is None else v for v in values], marker="o", label=label)
    axis.set_xlabel("generation")
    axis.set_ylabel("mean words per text")
    axis.legend(fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def samples_html(texts: np.ndarray, labels: np.ndarray, class_names: list[str] | None, per_class: int) -> str:
    """Up to ``per_class`` texts of each class (or of the set), HTML-escaped, as a table."""
    rows = []
    for label in np.unique(labels):
        name = class_names[int(label)] if class_names is not None and 0 <= label < len(class_names) else ""
        for text in texts[labels == label][:per_class]:
            rows.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(text))}</td></tr>")
    return '<table class="texts"><tr><th>class</th><th>text</th></tr>' + "".join(rows) + "</table>"


def downstream_html(result: dict[str, Any] | None) -> str:
    """The downstream table: accuracy of the classifier trained on synthetic texts and on real ones."""
    if not result:
        return ""
    body = "".join(f"<tr><td>{name}</td><td>{count}</td><td>{result[key]:.3f}</td></tr>"
                   for key, name, count in (("synthetic", "synthetic texts", result["train_texts"]),
                                            ("real", "real texts of the reference's first half", result["real_texts"])))
    return ("<table><tr><th>trained on</th><th>texts</th><th>accuracy</th></tr>" + body + "</table>"
            f"<p>Logistic regression on the sentence embeddings, tested on the reference's other half "
            f"({result['test_texts']} texts).</p>")
