"""Noise, threshold, selection and accounting (privevo.privacy)."""

import inspect
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privevo import privacy
from privevo.errors import UserError
from privevo.privacy import Ledger, PrivacyEvent

# Known values from the algorithm doc (delta = 1e-5 unless noted).
KNOWN = [
    (5 * math.sqrt(2), 20, 1e-5, 2.594, 0.01),
    (2 * math.sqrt(2), 29, 3e-6, 9.92, 0.01),
]


@pytest.mark.parametrize("sigma,T,delta,expected,tol", KNOWN)
def test_known_epsilons(sigma, T, delta, expected, tol):
    assert privacy.schedule_epsilon([sigma] * T, delta) == pytest.approx(expected, abs=tol)


def test_sigma_10_within_prv_bounds():
    eps = privacy.schedule_epsilon([10.0] * 20, 1e-5)
    assert 1.750 <= eps <= 1.770
    assert privacy.gdp_epsilon([10.0] * 20, 1e-5) == pytest.approx(1.760, abs=1e-3)


def test_paper_headline_calibration_round_trip():
    sigma = privacy.calibrate_noise_multiplier(0.67, 1e-5, 20)
    assert sigma == pytest.approx(17 * math.sqrt(2), rel=0.01)
    assert privacy.schedule_epsilon([sigma] * 20, 1e-5) == pytest.approx(0.67, abs=0.005)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(sigma=st.floats(1.0, 40.0), T=st.integers(1, 40))
def test_prv_agrees_with_closed_form(sigma, T):
    prv = privacy.schedule_epsilon([sigma] * T, 1e-5, mechanism="gaussian")
    closed = privacy.gdp_epsilon([sigma] * T, 1e-5)
    # prv-accountant's upper bound: within twice its error target, plus a relative 1e-5 for its discretisation
    # at large epsilon (sigma 1, T 20: 28.37548 against 28.37347 + 0.002)
    assert closed - 1e-9 <= prv <= closed + 2 * privacy.EPS_ERROR + 1e-5 * closed


@settings(max_examples=10, deadline=None)
@given(sigma=st.floats(1.0, 30.0), T=st.integers(1, 30))
def test_epsilon_grows_with_T_and_falls_with_sigma(sigma, T):
    base = privacy.schedule_epsilon([sigma] * T, 1e-5)
    assert privacy.schedule_epsilon([sigma] * (T + 5), 1e-5) > base
    assert privacy.schedule_epsilon([sigma * 1.5] * T, 1e-5) < base


@settings(max_examples=6, deadline=None)
@given(eps=st.floats(0.3, 12.0), T=st.integers(1, 30))
def test_calibration_round_trip(eps, T):
    sigma = privacy.calibrate_noise_multiplier(eps, 1e-5, T)
    assert privacy.schedule_epsilon([sigma] * T, 1e-5) == pytest.approx(eps, abs=0.01)


def test_heterogeneous_schedule_matches_closed_form():
    sigmas = [5.0, 5.0, 8.0, 12.0, 12.0, 12.0]
    assert privacy.schedule_epsilon(sigmas, 1e-5) == pytest.approx(privacy.gdp_epsilon(sigmas, 1e-5), abs=0.011)


def test_subsampling_lowers_epsilon():
    full = privacy.schedule_epsilon([4.0] * 10, 1e-5)
    sub = privacy.schedule_epsilon([4.0] * 10, 1e-5, sampling_rate=0.2)
    assert 0 < sub < full


def test_sigma_zero_is_infinite_and_no_events_is_zero():
    assert privacy.schedule_epsilon([0.0], 1e-5) == math.inf
    assert privacy.compute_epsilon([], 1e-5) == 0.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: privacy.calibrate_noise_multiplier(-1, 1e-5, 10),
        lambda: privacy.calibrate_noise_multiplier(1, 1.5, 10),
        lambda: privacy.calibrate_noise_multiplier(1, 1e-5, 0),
        lambda: privacy.schedule_epsilon([1.0], 0.0),
        lambda: PrivacyEvent(generation=1, noise_multiplier=-2.0),
        lambda: PrivacyEvent(generation=1, noise_multiplier=2.0, sampling_rate=0.0),
    ],
)
def test_bad_accounting_arguments_are_one_line_errors(call):
    with pytest.raises(UserError) as info:
        call()
    assert "\n" not in str(info.value)


def test_ledger_recomputes_epsilon_from_events():
    ledger = Ledger(delta=1e-5)
    for g in range(1, 21):
        ledger.append(PrivacyEvent(generation=g, noise_multiplier=5 * math.sqrt(2), release_sha256=f"{g:064x}"))
    restored = Ledger.from_dict(ledger.to_dict())
    assert restored.events == ledger.events
    assert restored.epsilon() == pytest.approx(2.594, abs=0.01)
    assert restored.epsilon(upto_generation=10) < restored.epsilon()
    # A second, forced release of the same generation is charged again.
    restored.append(PrivacyEvent(generation=20, noise_multiplier=5 * math.sqrt(2), reason="force-new-noise"))
    assert restored.epsilon() == pytest.approx(privacy.schedule_epsilon([5 * math.sqrt(2)] * 21, 1e-5, mechanism="gaussian"))


# ------------------------------------------------------------------------- noise


def test_noise_has_no_seed_parameter():
    assert "seed" not in inspect.signature(privacy.gaussian_noise).parameters
    assert "seed" not in inspect.signature(privacy.add_noise).parameters


def test_identical_votes_get_different_noise_even_with_global_seeds():
    histogram = np.arange(50, dtype=np.float64)
    np.random.seed(0)
    first = privacy.add_noise(histogram, 3.0)
    np.random.seed(0)
    second = privacy.add_noise(histogram, 3.0)
    assert not np.array_equal(first, second)


def test_every_bin_gets_noise():
    noisy = privacy.add_noise(np.zeros(1000), 2.0, mechanism="gaussian")
    assert np.all(noisy != 0.0)
    # discrete noise is 0 with probability about 0.2 at sigma 2: most bins, not all, move
    discrete = privacy.add_noise(np.zeros(1000), 2.0)
    assert 600 < np.count_nonzero(discrete) < 950


def test_noise_is_gaussian_with_sigma_times_sensitivity():
    # KS test at a false-alarm rate of 1e-6: fails by chance once in a million runs.
    sigma = 1.5
    noise = privacy.add_noise(np.zeros(20000), sigma, mechanism="gaussian")
    assert stats.kstest(noise, "norm", args=(0.0, sigma)).pvalue > 1e-6
    # and it really is that scale: a wrong sigma is rejected.
    assert stats.kstest(noise, "norm", args=(0.0, 2 * sigma)).pvalue < 1e-6


# ----------------------------------------------------------- threshold/selection


def test_threshold_subtracts_and_clips():
    assert np.array_equal(privacy.threshold(np.array([-1.0, 0.5, 2.0, 5.5]), 2.0), [0.0, 0.0, 0.0, 3.5])


def test_all_zero_falls_back_to_uniform_with_warning(caplog):
    rng = np.random.default_rng(0)
    with caplog.at_level("WARNING"):
        parents = privacy.select_parents(np.zeros(10), 5000, rng)
    assert "uniformly" in caplog.text
    counts = np.bincount(parents, minlength=10)
    assert stats.chisquare(counts).pvalue > 1e-6


def test_sampling_is_proportional():
    weights = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    parents = privacy.select_parents(weights, 100000, np.random.default_rng(1))
    counts = np.bincount(parents, minlength=5)
    assert counts[0] == 0
    expected = weights[1:] / weights.sum() * 100000
    assert stats.chisquare(counts[1:], expected).pvalue > 1e-6


def test_sampling_is_seeded():
    weights = np.array([1.0, 5.0, 2.0])
    a = privacy.select_parents(weights, 20, np.random.default_rng(7))
    b = privacy.select_parents(weights, 20, np.random.default_rng(7))
    assert np.array_equal(a, b)


def test_rank_selection_allocates_proportional_shares():
    parents = privacy.select_parents(np.array([0.0, 1.0, 3.0, 6.0]), 10, np.random.default_rng(0), "rank")
    assert np.bincount(parents, minlength=4).tolist() == [0, 1, 3, 6]
    parents = privacy.select_parents(np.array([1.0, 1.0, 1.0]), 4, np.random.default_rng(0), "rank")
    assert len(parents) == 4 and sorted(np.bincount(parents).tolist()) == [1, 1, 2]
