"""Quality metrics for a synthetic population.

Every function takes plain arrays (feature rows = samples, integer labels) so the
report can compute them on any embedding. Distances are computed in float64.
A Frechet distance on features other than Inception-v3 pool3 is not "FID" and must be
labelled with the embedding it used.
"""

from __future__ import annotations

import math

import numpy as np

from privevo.errors import UserError

#: Rows per block in the pairwise distance computations (bounds memory to ~8 MB a block).
DISTANCE_BLOCK = 1024

# ------------------------------------------------------------------------ checks


def _features(array: np.ndarray, name: str, min_rows: int) -> np.ndarray:
    """A finite float64 2-D feature array with at least ``min_rows`` rows, or a UserError."""
    features = np.asarray(array)
    if features.ndim != 2:
        raise UserError(f"{name} must be a 2-D array (samples x features), got shape {features.shape}")
    if features.shape[0] < min_rows:
        raise UserError(f"{name} has {features.shape[0]} samples: at least {min_rows} are needed")
    if features.shape[1] < 1:
        raise UserError(f"{name} has no feature columns")
    features = features.astype(np.float64)
    if not np.all(np.isfinite(features)):
        raise UserError(f"{name} contains NaN or infinite values: check the embedding step")
    return features


def _same_dim(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Raise a UserError unless both feature arrays have the same number of columns."""
    if a.shape[1] != b.shape[1]:
        raise UserError(
            f"{name_a} has {a.shape[1]} features per sample but {name_b} has {b.shape[1]}: "
            "embed both sets with the same embedding"
        )


# ------------------------------------------------------------- Frechet distance


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues clipped)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance_from_stats(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``, with the trace of the square
    root taken as the sum of square roots of the eigenvalues of ``S1^(1/2) S2 S1^(1/2)``
    (similar to ``S1 S2``, but symmetric): stable for singular covariances, no complex
    round-off.
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    dim = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.ndim != 1 or mu2.shape != mu1.shape:
        raise UserError(f"means must be 1-D of the same length, got shapes {mu1.shape} and {mu2.shape}")
    if sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise UserError(
            f"covariances must be {dim}x{dim} to match the means, got shapes {sigma1.shape} and {sigma2.shape}"
        )
    for value in (mu1, mu2, sigma1, sigma2):
        if not np.all(np.isfinite(value)):
            raise UserError("means and covariances must be finite")
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    distance = float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    return max(distance, 0.0)


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of feature rows."""
    x = _features(features, "features", 2)
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (FID when the features are Inception pool3).

    When one set has fewer rows than dimensions (a few hundred synthetic samples in
    1280-d), its covariance ``S = Xc^T Xc / (n-1)`` has rank < dim and the trace term is
    taken from the small ``n x n`` matrix ``Xc S_other Xc^T / (n-1)`` (same non-zero
    eigenvalues as ``S_other^(1/2) S S_other^(1/2)``): exact, and no dim x dim
    eigendecomposition.
    """
    a = _features(features_a, "features_a", 2)
    b = _features(features_b, "features_b", 2)
    _same_dim(a, b, "features_a", "features_b")
    small, large = (b, a) if len(b) <= len(a) else (a, b)
    if len(small) - 1 >= small.shape[1]:
        return frechet_distance_from_stats(*feature_stats(a), *feature_stats(b))
    mu_small, mu_large = small.mean(axis=0), large.mean(axis=0)
    centred = (small - mu_small) / np.sqrt(len(small) - 1)
    sigma_large = np.cov(large, rowvar=False, ddof=1).reshape(large.shape[1], large.shape[1])
    middle = centred @ sigma_large @ centred.T
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    trace_small = float(np.sum(centred**2))
    distance = float(np.sum((mu_small - mu_large) ** 2) + trace_small + np.trace(sigma_large) - 2.0 * trace_sqrt)
    return max(distance, 0.0)


# ---------------------------------------------------------- precision / recall


def _block_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between the rows of a and b (float64, negatives from round-off clipped)."""
    squared = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.clip(squared, 0.0, None))


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row to its k-th nearest other row in the same set (exact, blockwise)."""
    n = len(features)
    radii = np.empty(n, dtype=np.float64)
    for start in range(0, n, DISTANCE_BLOCK):
        rows = features[start : start + DISTANCE_BLOCK]
        nearest = np.full((len(rows), k), np.inf)
        for col in range(0, n, DISTANCE_BLOCK):
            block = _block_distances(rows, features[col : col + DISTANCE_BLOCK])
            own = np.arange(start, start + len(rows))
            inside = (own >= col) & (own < col + block.shape[1])
            block[np.nonzero(inside)[0], own[inside] - col] = np.inf  # a point is not its own neighbour
            merged = np.concatenate([nearest, block], axis=1)
            nearest = np.partition(merged, k - 1, axis=1)[:, :k]
        radii[start : start + len(rows)] = nearest.max(axis=1)
    return radii


def _inside_manifold(queries: np.ndarray, support: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """For each query row, whether it lies within the radius of at least one support row."""
    inside = np.zeros(len(queries), dtype=bool)
    for start in range(0, len(queries), DISTANCE_BLOCK):
        rows = queries[start : start + DISTANCE_BLOCK]
        hit = np.zeros(len(rows), dtype=bool)
        for col in range(0, len(support), DISTANCE_BLOCK):
            block = _block_distances(rows, support[col : col + DISTANCE_BLOCK])
            hit |= (block <= radii[None, col : col + DISTANCE_BLOCK]).any(axis=1)
        inside[start : start + len(rows)] = hit
    return inside


def precision_recall(real_features: np.ndarray, fake_features: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN manifolds.

    Each point's radius is the distance to its k-th nearest neighbour in its own set.
    Precision is the fraction of fake samples within the radius of some real sample
    (quality); recall is the fraction of real samples within the radius of some fake
    sample (coverage).
    """
    real = _features(real_features, "real_features", 2)
    fake = _features(fake_features, "fake_features", 2)
    _same_dim(real, fake, "real_features", "fake_features")
    smallest = min(len(real), len(fake))
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= smallest - 1:
        raise UserError(f"k must be an integer in 1..{smallest - 1} (smaller set size minus one), got {k!r}")
    k = int(k)
    precision = _inside_manifold(fake, real, knn_radii(real, k)).mean()
    recall = _inside_manifold(real, fake, knn_radii(fake, k)).mean()
    return float(precision), float(recall)


# ------------------------------------------------------------------- class mix


def class_histogram(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Fraction of samples in each class (float64, length num_classes, sums to 1)."""
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    values = np.asarray(labels)
    if values.ndim != 1 or len(values) == 0:
        raise UserError(f"labels must be a non-empty 1-D array, got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.integer):
        raise UserError(f"labels must be integers (class indices), got dtype {values.dtype}")
    if values.min() < 0 or values.max() >= num_classes:
        raise UserError(f"labels must lie in 0..{num_classes - 1}; found values outside that range")
    return np.bincount(values, minlength=num_classes).astype(np.float64) / len(values)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance 0.5 * sum |p - q| between two class distributions (0 = same, 1 = disjoint)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.ndim != 1 or p.shape != q.shape:
        raise UserError(f"distributions must be 1-D of the same length, got shapes {p.shape} and {q.shape}")
    for name, dist in (("p", p), ("q", q)):
        if not np.all(np.isfinite(dist)) or np.any(dist < 0) or not math.isclose(dist.sum(), 1.0, abs_tol=1e-6):
            raise UserError(f"{name} must be non-negative fractions summing to 1 (use class_histogram on labels)")
    return float(0.5 * np.abs(p - q).sum())
