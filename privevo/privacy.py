"""Differential privacy for Private Evolution: every piece of DP logic lives here.

Each generation's vote is one Gaussian mechanism with L2 sensitivity 1 (one private
sample moves one unit of weight). Its DP output is the noisy histogram; everything
computed from it (threshold, selection, variations) is post-processing.

This module holds the only secret randomness (:func:`secret_rng`: DP noise and the
private subsample), the noise, the threshold and selection, the release of a vote
(write-once, charged in the ledger), the accountant, calibration and the one budget
rule (:func:`check_budget`). Privacy events are data (:class:`PrivacyEvent`), kept
in an append-only :class:`Ledger`; epsilon is always recomputed from the ledger by
``prv-accountant``, never read from a config. The closed-form mu-GDP composition is
kept as a cross-check (:func:`gdp_epsilon`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from privevo import storage
from privevo.errors import UserError

if TYPE_CHECKING:
    from privevo.config import Config, PrivacyConfig
    from privevo.layout import RunLayout

logger = logging.getLogger(__name__)

#: prv-accountant's discretisation error on epsilon; reported epsilons are its estimate.
EPS_ERROR = 0.01

Selection = Literal["sample", "rank"]


# --------------------------------------------------------------------------- noise


def secret_rng() -> np.random.Generator:
    """A generator freshly seeded from OS entropy: the only source of secret randomness.

    There is deliberately no seed argument: whoever knows the seed of the DP noise
    can subtract it. The entropy is drawn with :mod:`secrets` and never stored.
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(secrets.randbits(128))))


def gaussian_noise(shape: int | tuple[int, ...], sigma: float) -> np.ndarray:
    """N(0, sigma^2) noise from :func:`secret_rng`."""
    if sigma < 0 or not math.isfinite(sigma):
        raise UserError(f"noise multiplier must be a finite number >= 0, got {sigma}")
    return secret_rng().normal(0.0, sigma, size=shape)


def private_subsample(n: int, rate: float) -> np.ndarray:
    """Poisson subsample (a boolean mask) of the private set for amplification; secret randomness."""
    if rate >= 1:
        return np.ones(n, dtype=bool)
    return secret_rng().random(n) < rate


def add_noise(histogram: np.ndarray, sigma: float, sensitivity: float = 1.0) -> np.ndarray:
    """The Gaussian mechanism: every bin, empty ones included, gets N(0, (sigma*sensitivity)^2)."""
    return histogram.astype(np.float64) + gaussian_noise(histogram.shape, sigma * sensitivity)


def threshold(noisy_histogram: np.ndarray, h: float) -> np.ndarray:
    """The paper's threshold: ``max(h~ - H, 0)``, cutting bins that are mostly noise."""
    return np.maximum(noisy_histogram - h, 0.0)


def select_parents(
    weights: np.ndarray,
    n: int,
    rng: np.random.Generator,
    method: Selection = "sample",
) -> np.ndarray:
    """Indices of ``n`` parents chosen in proportion to thresholded counts ``weights``.

    ``sample`` draws with replacement in proportion; ``rank`` gives each candidate
    its proportional share of children deterministically (largest remainder, ties
    broken by rank of count). When every weight is zero the choice falls back to
    uniform over the population, with a warning (never 0/0).
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or len(weights) == 0:
        raise ValueError("weights must be a non-empty 1-D array")
    if np.any(weights < 0) or not np.all(np.isfinite(weights)):
        raise ValueError("weights must be finite and non-negative")
    total = weights.sum()
    if total <= 0:
        logger.warning(
            "every thresholded count is zero (noise or threshold too large for the private "
            "set): selecting %d parents uniformly from the population", n
        )
        weights = np.ones_like(weights)
        total = weights.sum()
    p = weights / total
    if method == "sample":
        return np.sort(rng.choice(len(p), size=n, replace=True, p=p))
    if method == "rank":
        share = p * n
        counts = np.floor(share).astype(np.int64)
        remainder = share - counts
        order = np.lexsort((-p, -remainder))  # largest remainder first, then larger count
        counts[order[: n - counts.sum()]] += 1
        return np.repeat(np.arange(len(p)), counts)
    raise UserError(f"unknown selection method {method!r}: use 'sample' or 'rank'")


# ------------------------------------------------------------------- accounting


@dataclass(frozen=True)
class PrivacyEvent:
    """One executed vote: a (possibly subsampled) Gaussian mechanism.

    ``noise_multiplier`` is the noise standard deviation divided by the L2
    sensitivity. ``release_sha256`` names the noisy histogram this event paid for.
    """

    generation: int
    noise_multiplier: float
    sensitivity: float = 1.0
    sampling_rate: float = 1.0
    release_sha256: str = ""
    release_uri: str = ""
    reason: str = "vote"
    created_at: str = ""

    def __post_init__(self) -> None:
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise UserError(f"noise multiplier must be >= 0, got {self.noise_multiplier}")
        if not 0 < self.sampling_rate <= 1:
            raise UserError(f"sampling rate must be in (0, 1], got {self.sampling_rate}")

    @property
    def mechanism_key(self) -> tuple[float, float]:
        """Events with the same key are self-compositions of one mechanism."""
        return (float(self.noise_multiplier), float(self.sampling_rate))


@dataclass
class Ledger:
    """Append-only list of privacy events; the single source of spent epsilon."""

    delta: float
    events: list[PrivacyEvent] = field(default_factory=list)

    def append(self, event: PrivacyEvent) -> None:
        """Record one executed mechanism."""
        self.events.append(event)

    def epsilon(self, upto_generation: int | None = None) -> float:
        """Epsilon at ``self.delta`` for the events (optionally up to a generation)."""
        events = [e for e in self.events if upto_generation is None or e.generation <= upto_generation]
        return compute_epsilon(events, self.delta)

    def to_dict(self) -> dict:
        return {"delta": self.delta, "events": [asdict(e) for e in self.events]}

    @classmethod
    def from_dict(cls, data: dict) -> Ledger:
        return cls(delta=float(data["delta"]), events=[PrivacyEvent(**e) for e in data["events"]])

    @classmethod
    def load(cls, uri: str, delta: float) -> Ledger:
        """The ledger stored at ``uri``; an empty one (at ``delta``) before the first vote."""
        if not storage.exists(uri):
            return cls(delta=delta)
        return cls.from_dict(storage.read_json(uri))


def _prv_epsilon(groups: Counter, delta: float) -> float:
    """Composed epsilon (estimate) of heterogeneous Gaussian mechanisms via prv-accountant."""
    from prv_accountant import GaussianMechanism, PoissonSubsampledGaussianMechanism, PRVAccountant

    prvs, counts = [], []
    for (sigma, q), count in sorted(groups.items()):
        if q < 1:
            prvs.append(PoissonSubsampledGaussianMechanism(sampling_probability=q, noise_multiplier=sigma))
        else:
            prvs.append(GaussianMechanism(noise_multiplier=sigma))
        counts.append(count)
    accountant = PRVAccountant(
        prvs=prvs, max_self_compositions=counts, eps_error=EPS_ERROR, delta_error=delta / 1000
    )
    _, eps_estimate, _ = accountant.compute_epsilon(delta=delta, num_self_compositions=counts)
    return max(float(eps_estimate), 0.0)


def compute_epsilon(events: Sequence[PrivacyEvent], delta: float) -> float:
    """Epsilon spent by ``events`` at ``delta`` (0 for none, inf if any sigma is 0)."""
    if not 0 < delta < 1:
        raise UserError(f"delta must be in (0, 1), got {delta}")
    if not events:
        return 0.0
    if any(e.noise_multiplier == 0 for e in events):
        return math.inf
    return _prv_epsilon(Counter(e.mechanism_key for e in events), delta)


def schedule_epsilon(
    noise_multipliers: Sequence[float], delta: float, sampling_rate: float = 1.0
) -> float:
    """Epsilon of a planned schedule (one vote per entry); used for calibration and budgets."""
    events = [
        PrivacyEvent(generation=g + 1, noise_multiplier=s, sampling_rate=sampling_rate)
        for g, s in enumerate(noise_multipliers)
    ]
    return compute_epsilon(events, delta)


def gdp_mu(noise_multipliers: Sequence[float]) -> float:
    """mu of the mu-GDP composition of full-batch Gaussian mechanisms."""
    return math.sqrt(sum(1.0 / s**2 for s in noise_multipliers))


def gdp_delta(epsilon: float, mu: float) -> float:
    """delta(eps) of mu-GDP: Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""
    from scipy import stats  # imported where used: steps without a vote never load scipy

    first = stats.norm.cdf(-epsilon / mu + mu / 2)
    second = math.exp(epsilon + stats.norm.logcdf(-epsilon / mu - mu / 2))  # stable for large eps
    return float(first - second)


def gdp_epsilon(noise_multipliers: Sequence[float], delta: float) -> float:
    """Closed-form epsilon of composed full-batch Gaussian mechanisms (the cross-check)."""
    from scipy import optimize

    mu = gdp_mu(noise_multipliers)
    if gdp_delta(0.0, mu) <= delta:
        return 0.0
    return float(optimize.brentq(lambda e: gdp_delta(e, mu) - delta, 0.0, 1e3))


def calibrate_noise_multiplier(
    epsilon: float, delta: float, generations: int, sampling_rate: float = 1.0
) -> float:
    """Smallest constant noise multiplier whose ``generations`` votes spend ``epsilon``.

    A 1-D root find on the accountant's epsilon, which falls monotonically in sigma.
    """
    from scipy import optimize

    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise UserError(f"target epsilon must be a positive number, got {epsilon}")
    validate_schedule_args(generations, delta, sampling_rate)

    def excess(sigma: float) -> float:
        return schedule_epsilon([sigma] * generations, delta, sampling_rate) - epsilon

    low, high = 0.3, 1.0
    while excess(high) > 0:
        high *= 2
        if high > 1e5:
            raise UserError(f"epsilon={epsilon} cannot be met with {generations} generations at delta={delta}")
    if excess(low) < 0:
        raise UserError(
            f"epsilon={epsilon} is so large that the noise multiplier falls below {low}; "
            "lower the target epsilon"
        )
    return float(optimize.brentq(excess, low, high, xtol=1e-4))


def validate_schedule_args(generations: int, delta: float, sampling_rate: float = 1.0) -> None:
    """One-line errors for impossible accounting arguments."""
    if generations < 1:
        raise UserError(f"generations must be at least 1, got {generations}")
    if not 0 < delta < 1:
        raise UserError(f"delta must be in (0, 1), got {delta}")
    if not 0 < sampling_rate <= 1:
        raise UserError(f"sampling rate must be in (0, 1], got {sampling_rate}")


# ------------------------------------------------------------------ budget


def noise_multiplier_for(config: Config) -> float:
    """The per-vote noise multiplier: explicit, or calibrated from the target epsilon."""
    privacy = config.privacy
    if privacy.noise_multiplier is not None:
        return privacy.noise_multiplier
    assert privacy.epsilon is not None  # the config holds exactly one of the two
    return calibrate_noise_multiplier(privacy.epsilon, privacy.delta, config.population.generations,
                                      privacy.sampling_rate)


def budget_of(privacy: PrivacyConfig) -> float | None:
    """The epsilon a run may spend: ``epsilon_budget``, else the target ``epsilon`` (None: unlimited)."""
    return privacy.epsilon_budget if privacy.epsilon_budget is not None else privacy.epsilon


def check_budget(spent: Sequence[PrivacyEvent], planned: Sequence[PrivacyEvent], privacy: PrivacyConfig,
                 what: str) -> None:
    """The one budget rule: refuse ``planned`` events when, composed with ``spent``, they exceed the budget."""
    budget = budget_of(privacy)
    if budget is None:
        return
    after = compute_epsilon([*spent, *planned], privacy.delta)
    if after > budget + EPS_ERROR:
        raise UserError(f"{what} would spend epsilon={after:.4g} in total, over the budget {budget:g}: "
                        "nothing was released; raise the noise or the budget, or run fewer votes")


def check_planned_budget(config: Config) -> None:
    """Refuse a config whose planned votes alone already exceed its budget."""
    sigma = noise_multiplier_for(config)
    planned = [PrivacyEvent(generation=g + 1, noise_multiplier=sigma, sampling_rate=config.privacy.sampling_rate)
               for g in range(config.population.generations)]
    check_budget([], planned, config.privacy, f"the planned {len(planned)} votes at noise multiplier {sigma:.4g}")


# ------------------------------------------------------------------ releases


@dataclass(frozen=True)
class Release:
    """A generation's DP release in force: the noisy histogram and where it lies."""

    noisy_histogram: np.ndarray
    uri: str
    sha256: str


def current_release(layout: RunLayout, ledger: Ledger, generation: int) -> str | None:
    """URI of the generation's DP release in force: the latest one the ledger paid for.

    A release written just before a crash, before its ledger event, is still the
    release (it happened): it is returned, and charged when reused.
    """
    paid = [e for e in ledger.events if e.generation == generation and e.release_uri]
    if paid:
        return layout.absolute(paid[-1].release_uri)
    first = layout.release(generation)
    return first if storage.exists(first) else None


def release_vote(
    layout: RunLayout,
    config: Config,
    generation: int,
    clean_histogram: Callable[[], np.ndarray],
    force_new_noise: bool = False,
) -> Release:
    """The generation's DP release: reused when it exists, else noised, written once and charged.

    ``clean_histogram`` computes the clean vote; it runs only when a new release is drawn,
    and its result never leaves this function. ``force_new_noise`` draws again beside the
    first release and charges the ledger again.
    """
    sigma = noise_multiplier_for(config)
    ledger = Ledger.load(layout.ledger_json, config.privacy.delta)
    uri = current_release(layout, ledger, generation)
    if uri and not force_new_noise:
        logger.info("generation %d: the DP release already exists: reusing it (no new noise, no new charge)",
                    generation)
        sha = storage.sha256_uri(uri)
        _charge(layout, config, generation, sigma, uri, sha, reason="vote")
        return Release(storage.read_npz(uri)["noisy_histogram"], uri, sha)
    planned = PrivacyEvent(generation=generation, noise_multiplier=sigma, sampling_rate=config.privacy.sampling_rate)
    check_budget(ledger.events, [planned], config.privacy, f"vote {generation}")
    noisy = add_noise(clean_histogram(), sigma)
    reason = "force-new-noise" if uri else "vote"
    uri = layout.release(generation) if reason == "vote" else layout.redraw(generation, _now_tag())
    try:
        sha = storage.write_npz(uri, {"noisy_histogram": noisy}, exclusive=True)
    except storage.AlreadyExists:  # a concurrent retry released first: use its draw, discard ours
        noisy = storage.read_npz(uri)["noisy_histogram"]
        sha = storage.sha256_uri(uri)
    _charge(layout, config, generation, sigma, uri, sha, reason=reason)
    logger.info("generation %d: released the noisy histogram (sigma=%.4g)", generation, sigma)
    return Release(noisy, uri, sha)


def _now_tag() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S%f")


def _charge(layout: RunLayout, config: Config, generation: int, sigma: float, release_uri: str, sha256: str,
            reason: str) -> None:
    """Append the release's ledger event unless one already pays for this exact release."""
    event = PrivacyEvent(
        generation=generation, noise_multiplier=sigma, sensitivity=1.0,
        sampling_rate=config.privacy.sampling_rate, release_sha256=sha256,
        release_uri=layout.relative(release_uri), reason=reason,
        created_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )

    def append(current: dict[str, Any] | None) -> dict[str, Any]:
        ledger = Ledger.from_dict(current) if current else Ledger(delta=config.privacy.delta)
        if not any(e.release_sha256 == sha256 for e in ledger.events):
            ledger.append(event)
        return ledger.to_dict()

    storage.update_json(layout.ledger_json, append)
