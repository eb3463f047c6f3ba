"""The DP nearest-neighbour vote (privevo.voting)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privevo.errors import UserError
from privevo.voting import lookahead_embeddings, nearest_neighbour_histogram


def brute_force_histogram(private, synthetic, k, private_labels=None, synthetic_labels=None):
    """Reference: float64 distances, full sort, per-class masks."""
    histogram = np.zeros(len(synthetic))
    for i, x in enumerate(private.astype(np.float64)):
        candidates = np.arange(len(synthetic))
        if private_labels is not None:
            candidates = candidates[synthetic_labels == private_labels[i]]
        d = ((synthetic[candidates].astype(np.float64) - x) ** 2).sum(axis=1)
        for j in candidates[np.argsort(d, kind="stable")[:k]]:
            histogram[j] += 1 / np.sqrt(k)
    return histogram


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("labelled", [False, True])
def test_faiss_equals_brute_force(k, labelled):
    rng = np.random.default_rng(k + 10 * labelled)
    private = rng.normal(size=(400, 32)).astype(np.float32)
    synthetic = rng.normal(size=(150, 32)).astype(np.float32)
    pl = rng.integers(0, 3, 400) if labelled else None
    sl = np.arange(150) % 3 if labelled else None
    got = nearest_neighbour_histogram(private, synthetic, k, pl, sl)
    assert np.array_equal(got, brute_force_histogram(private, synthetic, k, pl, sl))
    assert got.sum() == pytest.approx(400 * k / np.sqrt(k))


@settings(max_examples=25, deadline=None)
@given(
    n_private=st.integers(2, 60),
    n_synthetic=st.integers(3, 40),
    k=st.integers(1, 3),
    labelled=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_sensitivity_is_one(n_private, n_synthetic, k, labelled, seed):
    """Removing any one private sample moves the clean histogram by exactly 1 in L2."""
    rng = np.random.default_rng(seed)
    private = rng.normal(size=(n_private, 8)).astype(np.float32)
    synthetic = rng.normal(size=(n_synthetic, 8)).astype(np.float32)
    pl = rng.integers(0, 2, n_private) if labelled else None
    sl = np.arange(n_synthetic) % 2 if labelled else None
    if labelled and min(np.bincount(sl)) < k:
        k = 1
    full = nearest_neighbour_histogram(private, synthetic, k, pl, sl)
    removed = rng.integers(n_private)
    keep = np.arange(n_private) != removed
    neighbour = nearest_neighbour_histogram(private[keep], synthetic, k, None if pl is None else pl[keep], sl)
    assert np.linalg.norm(full - neighbour) == pytest.approx(1.0)
    assert np.linalg.norm(full - neighbour) <= 1.0 + 1e-9


def test_nan_embeddings_are_a_one_line_error_without_values():
    private = np.ones((4, 3), np.float32)
    private[2, 1] = np.nan
    with pytest.raises(UserError) as info:
        nearest_neighbour_histogram(private, np.zeros((5, 3), np.float32))
    assert "NaN" in str(info.value) and "\n" not in str(info.value)


def test_too_few_synthetic_samples_per_class():
    with pytest.raises(UserError, match="k=3"):
        nearest_neighbour_histogram(
            np.zeros((4, 2), np.float32), np.zeros((4, 2), np.float32), 3, np.zeros(4, int), np.array([0, 0, 1, 1])
        )


def test_lookahead_is_the_mean_of_variation_embeddings_and_streams():
    images = np.arange(10 * 2 * 2 * 1, dtype=np.uint8).reshape(10, 2, 2, 1)
    calls = []

    def vary(batch, repeat, start):
        calls.append(len(batch))
        return batch + np.uint8(2 * repeat + 1)  # repeats add 1, 3, 5

    def embed(x):
        return x.reshape(len(x), -1).astype(np.float32)

    got = lookahead_embeddings(images, 3, vary, embed, batch_size=4)
    expected = embed(images) + 3.0  # mean of +1, +3, +5
    assert np.allclose(got, expected)
    assert max(calls) == 4 and sum(calls) == 30  # batches of 4, three repeats each
    assert np.array_equal(lookahead_embeddings(images, 0, vary, embed), embed(images))
