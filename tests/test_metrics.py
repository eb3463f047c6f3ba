"""Metrics against reference computations (privevo.metrics)."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torchmetrics.image.fid import _compute_fid

from privevo import metrics
from privevo.errors import UserError
from privevo.image import evaluation as image_evaluation


def _random_covariance(rng: np.random.Generator, dim: int) -> np.ndarray:
    """A random symmetric positive definite, non-diagonal matrix."""
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def _scipy_reference(mu1, s1, mu2, s2) -> float:
    """The textbook formula with scipy's general matrix square root."""
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * root))


# ------------------------------------------------------------- Frechet distance


def test_frechet_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(loc=3.0, scale=5.0, size=(300, 16)).astype(np.float32)
    scale = np.trace(np.cov(x.astype(np.float64), rowvar=False))
    assert metrics.frechet_distance(x, x) <= 1e-6 * scale


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    v1, v2 = rng.uniform(0.1, 4.0, size=8), rng.uniform(0.1, 4.0, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    got = metrics.frechet_distance_from_stats(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_sampled_gaussians_near_truth():
    rng = np.random.default_rng(2)
    a = rng.normal(loc=0.0, scale=1.0, size=(20000, 3))
    b = rng.normal(loc=[2.0, 0.0, 0.0], scale=[1.0, 2.0, 1.0], size=(20000, 3))
    # ||mu||^2 = 4; variances (1, 4, 1) vs 1: (1 + 4 - 4) = 1 in the second dimension.
    assert metrics.frechet_distance(a, b) == pytest.approx(5.0, abs=0.15)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_frechet_matches_scipy_and_torchmetrics(seed):
    rng = np.random.default_rng(seed)
    dim = 12
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    s1, s2 = _random_covariance(rng, dim), _random_covariance(rng, dim)
    got = metrics.frechet_distance_from_stats(mu1, s1, mu2, s2)
    assert got == pytest.approx(_scipy_reference(mu1, s1, mu2, s2), rel=1e-5)
    tm = _compute_fid(*(torch.from_numpy(v) for v in (mu1, s1, mu2, s2))).item()
    assert got == pytest.approx(tm, rel=1e-5)


def test_frechet_on_features_matches_torchmetrics_stats():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(200, 10)) @ rng.normal(size=(10, 10))
    b = rng.normal(size=(150, 10)) @ rng.normal(size=(10, 10)) + 0.5
    stats = [torch.from_numpy(v) for v in (*metrics.feature_stats(a), *metrics.feature_stats(b))]
    assert np.allclose(stats[1].numpy(), np.cov(a.T))
    assert metrics.frechet_distance(a, b) == pytest.approx(_compute_fid(*stats).item(), rel=1e-5)


def test_frechet_singular_covariance_is_finite_and_symmetric():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(5, 20)), rng.normal(size=(6, 20))  # fewer samples than dimensions
    d_ab, d_ba = metrics.frechet_distance(a, b), metrics.frechet_distance(b, a)
    assert math.isfinite(d_ab) and d_ab > 0
    assert d_ab == pytest.approx(d_ba, rel=1e-8)


@pytest.mark.parametrize(
    "a,b",
    [
        (np.zeros((1, 4)), np.zeros((5, 4))),
        (np.zeros((5, 4)), np.zeros((5, 3))),
        (np.zeros(5), np.zeros((5, 1))),
        (np.full((3, 2), np.nan), np.zeros((3, 2))),
    ],
)
def test_frechet_bad_input(a, b):
    with pytest.raises(UserError):
        metrics.frechet_distance(a, b)


# ---------------------------------------------------------- precision / recall


def _clusters(rng: np.random.Generator, centres: np.ndarray, per: int) -> np.ndarray:
    return np.concatenate([c + 0.1 * rng.normal(size=(per, centres.shape[1])) for c in centres])


def test_precision_recall_identical_sets():
    x = np.random.default_rng(8).normal(size=(200, 5))
    assert metrics.precision_recall(x, x.copy(), k=3) == (1.0, 1.0)


def test_precision_recall_disjoint_clusters():
    rng = np.random.default_rng(9)
    real = rng.normal(size=(100, 4))
    fake = rng.normal(size=(120, 4)) + 100.0
    assert metrics.precision_recall(real, fake) == (0.0, 0.0)


def test_precision_recall_half_the_modes():
    rng = np.random.default_rng(10)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    real = _clusters(rng, centres, 200)
    fake = _clusters(rng, centres[:2], 150)  # covers two of the four real modes
    precision, recall = metrics.precision_recall(real, fake, k=5)
    assert precision >= 0.95
    assert recall == pytest.approx(0.5, abs=0.05)


def test_precision_recall_blocks_match_single_block(monkeypatch):
    rng = np.random.default_rng(11)
    real, fake = rng.normal(size=(90, 3)), rng.normal(loc=0.3, size=(70, 3))
    whole = metrics.precision_recall(real, fake, k=2)
    monkeypatch.setattr(metrics, "DISTANCE_BLOCK", 16)
    assert metrics.precision_recall(real, fake, k=2) == whole


def test_knn_radii_matches_brute_force():
    x = np.random.default_rng(12).normal(size=(40, 3))
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert np.allclose(metrics.knn_radii(x, 3), np.sort(d, axis=1)[:, 2])


@pytest.mark.parametrize("k", [0, 5, 2.0, True])
def test_precision_recall_bad_k(k):
    x = np.zeros((5, 2))
    with pytest.raises(UserError):
        metrics.precision_recall(x, x, k=k)


# ------------------------------------------------------------------- class mix


def test_class_histogram_and_total_variation():
    p = metrics.class_histogram(np.array([0, 0, 1, 2]), 4)
    assert p.tolist() == [0.5, 0.25, 0.25, 0.0]
    assert metrics.total_variation(p, p) == 0.0
    assert metrics.total_variation(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == 1.0
    assert metrics.total_variation(p, np.array([0.0, 0.25, 0.25, 0.5])) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "labels,n", [(np.array([0, 3]), 3), (np.array([-1]), 2), (np.array([]), 2), (np.array([0.5]), 2)]
)
def test_class_histogram_bad_input(labels, n):
    with pytest.raises(UserError):
        metrics.class_histogram(labels, n)


def test_total_variation_rejects_counts():
    with pytest.raises(UserError):
        metrics.total_variation(np.array([2.0, 1.0]), np.array([1.0, 2.0]))


# ---------------------------------------------------------- downstream accuracy


def _easy_images(rng: np.random.Generator, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of 28x28x1 uint8 images: dark, bright, vertical stripes."""
    dark = rng.integers(0, 60, size=(per_class, 28, 28, 1))
    bright = rng.integers(190, 256, size=(per_class, 28, 28, 1))
    stripes = np.zeros((per_class, 28, 28, 1), dtype=np.int64)
    stripes[:, :, ::4] = 255
    stripes = stripes + rng.integers(0, 30, size=stripes.shape)
    images = np.clip(np.concatenate([dark, bright, stripes]), 0, 255).astype(np.uint8)
    labels = np.repeat(np.arange(3), per_class)
    return images, labels


def test_downstream_accuracy_on_easy_data():
    rng = np.random.default_rng(13)
    train_images, train_labels = _easy_images(rng, 20)
    test_images, test_labels = _easy_images(rng, 20)
    keep = test_labels != 2  # class 2 absent from the test set
    result = image_evaluation.downstream_accuracy(
        train_images, train_labels, test_images[keep], test_labels[keep], num_classes=4, epochs=8
    )
    assert result["accuracy"] > 0.9
    assert len(result["per_class_accuracy"]) == 4
    assert result["per_class_accuracy"][2] is None and result["per_class_accuracy"][3] is None
    assert all(a > 0.9 for a in result["per_class_accuracy"][:2])


def test_downstream_protocol_is_printable():
    assert {"model", "epochs", "seed"} <= image_evaluation.DOWNSTREAM_PROTOCOL.keys()


def test_low_rank_path_equals_the_full_computation():
    """Fewer samples than dimensions takes the n x n path; it must equal the dim x dim one."""
    from privevo.metrics import feature_stats, frechet_distance, frechet_distance_from_stats

    rng = np.random.default_rng(3)
    real = rng.normal(size=(400, 64)) @ rng.normal(size=(64, 64))
    fake = rng.normal(size=(40, 64)) * 2 + 0.5
    full = frechet_distance_from_stats(*feature_stats(real), *feature_stats(fake))
    assert frechet_distance(real, fake) == pytest.approx(full, rel=1e-8)
    assert frechet_distance(fake, real) == pytest.approx(full, rel=1e-8)
