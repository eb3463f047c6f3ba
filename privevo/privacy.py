"""Differential privacy for Private Evolution: every piece of DP logic lives here.

Each generation's vote is one Gaussian mechanism with L2 sensitivity 1 (one private
sample moves one unit of weight). Its DP output is the noisy histogram; everything
computed from it (threshold, selection, variations) is post-processing. An optional DP
warm start (``privacy.warm_start_share``) releases the private set's noisy 1-way marginals
once, before generation 0, as one more Gaussian event of the same ledger
(:func:`release_warm_start`).

This module holds the only secret randomness (:func:`secret_rng`: DP noise and the
private subsample), the noise, the threshold and selection, the release of a vote
(write-once, charged in the ledger), the accountant, calibration and the one budget
rule (:func:`check_budget`). Privacy events are data (:class:`PrivacyEvent`), kept
in an append-only :class:`Ledger`; epsilon is always recomputed from the ledger by
``prv-accountant``, never read from a config. The closed-form mu-GDP composition is
kept as a cross-check (:func:`gdp_epsilon`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import io
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from privevo import storage
from privevo.errors import UserError

if TYPE_CHECKING:
    from privevo.config import Config, PrivacyConfig
    from privevo.layout import RunLayout
    from privevo.modalities import WarmStart

logger = logging.getLogger(__name__)

#: prv-accountant's error bound on epsilon (continuous Gaussian). Every reported epsilon is the
#: accountant's *upper* bound, so it is at most 2 * EPS_ERROR above the exact value.
EPS_ERROR = 0.001

Mechanism = Literal["discrete_gaussian", "gaussian"]
#: The vote's noise: exact discrete Gaussian on integer counts (OpenDP, secure randomness) by
#: default; the continuous Gaussian (numpy, float64) only where asked for.
MECHANISMS: tuple[str, ...] = ("discrete_gaussian", "gaussian")

#: Deltas at which the privacy report gives epsilon.
DELTA_GRID = (1e-4, 1e-5, 1e-6, 1e-7, 1e-8)

#: Who the guarantee protects against whom: the neighbouring datasets of the analysis.
NEIGHBOURING_RELATION = (
    "add or remove one private record (an image, a table row or a text) of the selected private set (the records "
    "left after private.classes, private.rows and private.limit; the selection itself is a public function of the "
    "config)"
)

Selection = Literal["sample", "rank", "top", "family"]

#: What every output of a run without a DP guarantee says (see :func:`non_private_reasons`).
NOT_PRIVATE = "NOT PRIVATE"


# --------------------------------------------------------------------------- noise


def secret_rng() -> np.random.Generator:
    """A generator freshly seeded from OS entropy: the secret randomness of the private subsample
    and of the continuous Gaussian.

    There is deliberately no seed argument: whoever knows the seed of the DP noise
    can subtract it. The entropy is drawn with :mod:`secrets` and never stored.
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(secrets.randbits(128))))


def gaussian_noise(shape: int | tuple[int, ...], sigma: float) -> np.ndarray:
    """Continuous N(0, sigma^2) noise in float64 from :func:`secret_rng` (``privacy.mechanism: gaussian``)."""
    _check_sigma(sigma)
    return secret_rng().normal(0.0, sigma, size=shape)


def discrete_gaussian_noise(n: int, scale: float) -> np.ndarray:
    """``n`` exact discrete Gaussian integers of the given scale, from OpenDP's CSPRNG.

    Integer noise on integer counts has no low-order bits to leak, unlike floating-point
    Gaussian samplers (Mironov 2012; Jin et al. 2022).
    """
    _check_sigma(scale)
    if scale == 0 or n == 0:
        return np.zeros(n, np.int64)
    import opendp.prelude as dp

    dp.enable_features("contrib")
    space = dp.vector_domain(dp.atom_domain(T=int)), dp.l2_distance(T=int)
    return np.asarray(dp.m.make_gaussian(*space, scale=float(scale))([0] * n), dtype=np.int64)


def _check_sigma(sigma: float) -> None:
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise UserError(f"noise multiplier must be a finite number >= 0, got {sigma}")


def private_subsample(n: int, rate: float) -> np.ndarray:
    """Poisson subsample (a boolean mask) of the private set for amplification; secret randomness."""
    if rate >= 1:
        return np.ones(n, dtype=bool)
    return secret_rng().random(n) < rate


def add_noise(histogram: np.ndarray, sigma: float, k: int = 1, mechanism: Mechanism = "discrete_gaussian") -> np.ndarray:
    """The Gaussian mechanism on a k-NN vote: every bin, empty ones included, gets noise.

    ``histogram`` holds weights 1/sqrt(k) (L2 sensitivity 1). For the discrete Gaussian the
    counts are scaled back to integers (each private sample adds 1 to k bins), get integer
    noise of scale sigma*sqrt(k), and are divided by sqrt(k) again (post-processing).
    """
    if mechanism == "gaussian":
        return histogram.astype(np.float64) + gaussian_noise(histogram.shape, sigma)
    root_k = math.sqrt(k)
    counts = np.rint(np.asarray(histogram, np.float64) * root_k).astype(np.int64)
    return (counts + discrete_gaussian_noise(len(counts), sigma * root_k)) / root_k


def threshold(noisy_histogram: np.ndarray, h: float) -> np.ndarray:
    """The paper's threshold: ``max(h~ - H, 0)``, cutting bins that are mostly noise."""
    return np.maximum(noisy_histogram - h, 0.0)


def select_parents(
    weights: np.ndarray,
    n: int,
    rng: np.random.Generator,
    method: Selection = "sample",
) -> np.ndarray:
    """Indices of ``n`` parents chosen from the candidates by their thresholded counts ``weights``.

    ``sample`` draws with replacement in proportion; ``rank`` gives each candidate
    its proportional share of children deterministically (largest remainder, ties
    broken by rank of count); ``top`` takes the ``n`` largest counts, each once (ties
    in random order; Tab-PE's rank selection, for more candidates than parents);
    ``family`` cuts the candidates into ``n`` runs of equal length (the population's
    slots: a kept parent and its children, or a slot's random candidates) and takes
    each run's largest count (ties at random): every slot goes on, so the set keeps
    its spread while each slot moves toward the private data. When every weight is
    zero the choice falls back to uniform over the population, with a warning
    (never 0/0).
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
    if method == "top":
        if n > len(p):
            raise ValueError(f"top selection needs at least {n} candidates, got {len(p)}")
        return np.sort(np.lexsort((rng.permutation(len(p)), -p))[:n])
    if method == "family":
        if len(p) % n:
            raise ValueError(f"family selection needs {n} slots of equal length, got {len(p)} candidates")
        ties = rng.random(len(p)).reshape(n, -1)
        best = np.lexsort((ties, -p.reshape(n, -1)), axis=1)[:, 0]
        return np.arange(n) * (len(p) // n) + best
    raise UserError(f"unknown selection method {method!r}: use 'sample', 'rank', 'top' or 'family'")


# ------------------------------------------------------------------- accounting


@dataclass(frozen=True)
class PrivacyEvent:
    """One DP release of a vote: a (possibly subsampled) Gaussian mechanism.

    ``noise_multiplier`` is the noise standard deviation divided by the L2 sensitivity.
    ``release_uri`` names the noisy histogram this event pays for. An event is written
    ``pending`` *before* its release exists and becomes ``released`` with the release's
    sha256 once it is written: every release on disk is paid for whatever moment a crash
    hits. Pending events count in epsilon like released ones.
    """

    generation: int  # the vote's generation; 0 for the warm start
    noise_multiplier: float
    sensitivity: float = 1.0
    sampling_rate: float = 1.0
    release_sha256: str = ""
    release_uri: str = ""
    reason: str = "vote"
    created_at: str = ""
    mechanism: str = "gaussian"  # ledgers written before the discrete Gaussian hold continuous events
    k: int = 1  # the integer counts one record moves by 1: a vote's k neighbours, the warm start's C marginals
    status: str = "released"
    redraw_key: str = ""
    charge_id: str = ""  # random, set when the event is made: names its charge in the data-set ledger too

    def __post_init__(self) -> None:
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise UserError(f"noise multiplier must be >= 0, got {self.noise_multiplier}")
        if not 0 < self.sampling_rate <= 1:
            raise UserError(f"sampling rate must be in (0, 1], got {self.sampling_rate}")
        if self.mechanism not in MECHANISMS:
            raise UserError(f"unknown mechanism {self.mechanism!r}: use one of {', '.join(MECHANISMS)}")
        if self.mechanism == "discrete_gaussian" and self.k > 1 and self.sampling_rate < 1:
            raise UserError("the discrete Gaussian with privacy.k > 1 cannot be subsampled: "
                            "set privacy.sampling_rate to 1 or privacy.mechanism to gaussian")

    @property
    def mechanism_key(self) -> tuple[str, float, float, int]:
        """Events with the same key are self-compositions of one mechanism."""
        return (self.mechanism, float(self.noise_multiplier), float(self.sampling_rate), int(self.k))


@dataclass
class Ledger:
    """Append-only list of privacy events; the single source of spent epsilon."""

    delta: float
    events: list[PrivacyEvent] = field(default_factory=list)

    def append(self, event: PrivacyEvent) -> None:
        """Record one executed mechanism."""
        self.events.append(event)

    def epsilon(self, upto_generation: int | None = None) -> float:
        """Epsilon (the accountant's upper bound) at ``self.delta``, optionally up to a generation."""
        events = [e for e in self.events if upto_generation is None or e.generation <= upto_generation]
        return compute_epsilon(events, self.delta)

    def to_dict(self) -> dict[str, Any]:
        return {"delta": self.delta, "events": [asdict(e) for e in self.events]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ledger:
        return cls(delta=float(data["delta"]), events=[PrivacyEvent(**e) for e in data["events"]])

    @classmethod
    def load(cls, uri: str, delta: float) -> Ledger:
        """The ledger stored at ``uri``; an empty one (at ``delta``) before the first vote."""
        if not storage.exists(uri):
            return cls(delta=delta)
        return cls.from_dict(storage.read_json(uri))


def _prv_epsilon(groups: Counter, delta: float) -> float:
    """Upper bound on the composed epsilon of continuous Gaussian mechanisms (prv-accountant)."""
    from prv_accountant import GaussianMechanism, PoissonSubsampledGaussianMechanism, PRVAccountant

    prvs: list[Any] = []
    counts = []
    for (_, sigma, q, _k), count in sorted(groups.items()):
        if q < 1:
            prvs.append(PoissonSubsampledGaussianMechanism(sampling_probability=q, noise_multiplier=sigma))
        else:
            prvs.append(GaussianMechanism(noise_multiplier=sigma))
        counts.append(count)
    accountant = PRVAccountant(prvs=prvs, max_self_compositions=counts, eps_error=EPS_ERROR, delta_error=delta / 1000)
    _, _, eps_upper = accountant.compute_epsilon(delta=delta, num_self_compositions=counts)
    return max(float(eps_upper), 0.0)


def _pld_epsilon(groups: Counter, delta: float) -> float:
    """Epsilon of any mix of mechanisms from dp-accounting's pessimistic privacy-loss distributions.

    A discrete Gaussian vote with k > 1 moves k integer counts by 1, each with independent
    noise of scale sigma*sqrt(k): k self-compositions of the one-dimensional mechanism.
    """
    from dp_accounting.pld import privacy_loss_distribution as pld

    composed = None
    for (mechanism, sigma, q, k), count in sorted(groups.items()):
        if mechanism == "discrete_gaussian":
            one = pld.from_discrete_gaussian_mechanism(sigma * math.sqrt(k), sampling_prob=q).self_compose(count * k)
        else:
            one = pld.from_gaussian_mechanism(sigma, sampling_prob=q).self_compose(count)
        composed = one if composed is None else composed.compose(one)
    assert composed is not None
    return max(float(composed.get_epsilon_for_delta(delta)), 0.0)


def compute_epsilon(events: Sequence[PrivacyEvent], delta: float) -> float:
    """Epsilon spent by ``events`` at ``delta``: the accountant's upper bound (0 for none, inf if any sigma is 0).

    Continuous Gaussians alone go to prv-accountant (upper bound); any discrete Gaussian puts
    the whole composition on dp-accounting's pessimistic privacy-loss distributions.
    """
    if not 0 < delta < 1:
        raise UserError(f"delta must be in (0, 1), got {delta}")
    if not events:
        return 0.0
    if any(e.noise_multiplier == 0 for e in events):
        return math.inf
    return _cached_epsilon(tuple(sorted(Counter(e.mechanism_key for e in events).items())), delta)


@functools.lru_cache(maxsize=256)
def _cached_epsilon(groups: tuple[tuple[tuple[str, float, float, int], int], ...], delta: float) -> float:
    counter = Counter(dict(groups))
    if all(mechanism == "gaussian" for mechanism, *_ in counter):
        return _prv_epsilon(counter, delta)
    return _pld_epsilon(counter, delta)


def schedule_epsilon(
    noise_multipliers: Sequence[float], delta: float, sampling_rate: float = 1.0,
    mechanism: Mechanism = "discrete_gaussian", k: int = 1, warm_start: WarmStartPlan | None = None,
) -> float:
    """Epsilon of a planned schedule (one vote per entry, and the warm start's event when planned); used for
    calibration and budgets."""
    return compute_epsilon(_planned_events(noise_multipliers, sampling_rate, mechanism, k, warm_start), delta)


#: The ledger's reason of the warm start's event (a vote's is "vote" or "force-new-noise").
WARM_START = "warm_start"

#: (share, marginals): the warm start's share of the run's rho and the number C of marginals it releases.
WarmStartPlan = tuple[float, int]


def warm_start_multiplier(vote_sigma: float, generations: int, share: float) -> float:
    """The warm start's noise multiplier (noise std / its L2 sensitivity) for a share of the run's privacy loss.

    Gaussian mechanisms compose additively in rho-zCDP (and in mu^2 of mu-GDP): a vote costs 1/(2 sigma^2), so the
    warm start gets ``share`` of the run's total when 1/(2 s^2) = share / (1 - share) * generations / (2 sigma^2).
    The votes are counted as full-batch here; the accountant composes the real events whatever they are.
    """
    if not 0 < share < 1:
        raise UserError(f"privacy.warm_start_share must lie in (0, 1) for a warm start, got {share}")
    return vote_sigma * math.sqrt((1 - share) / (share * generations))


def _warm_start_event(vote_sigma: float, generations: int, plan: WarmStartPlan, mechanism: Mechanism,
                      **fields: Any) -> PrivacyEvent:
    """The warm start's event: C column histograms, each moved by 1 in one bin when one record is added or removed,
    so L2 sensitivity sqrt(C); as the accountant counts it, C compositions of a unit-sensitivity (discrete) Gaussian
    of scale s*sqrt(C) (k = C, like a vote with k neighbours). Never subsampled."""
    share, marginals = plan
    return PrivacyEvent(generation=0, noise_multiplier=warm_start_multiplier(vote_sigma, generations, share),
                        sensitivity=math.sqrt(marginals), mechanism=mechanism, k=marginals, reason=WARM_START,
                        **fields)


def _planned_events(noise_multipliers: Sequence[float], sampling_rate: float, mechanism: Mechanism,
                    k: int, warm_start: WarmStartPlan | None = None) -> list[PrivacyEvent]:
    votes = [PrivacyEvent(generation=g + 1, noise_multiplier=s, sampling_rate=sampling_rate, mechanism=mechanism, k=k)
             for g, s in enumerate(noise_multipliers)]
    if warm_start is None:
        return votes
    return [_warm_start_event(noise_multipliers[0], len(noise_multipliers), warm_start, mechanism), *votes]


def warm_start_plan(config: Config) -> WarmStartPlan | None:
    """The config's warm start (share, number of marginals), None without one; a modality without a warm start is
    a one-line UserError."""
    share = config.privacy.warm_start_share
    if not share:
        return None
    return share, len(warm_start_hook(config).bins)


def warm_start_hook(config: Config) -> WarmStart:
    """The modality's warm start (:class:`privevo.modalities.WarmStart`) for a config that asks for one."""
    from privevo.modalities import get_modality

    hook = get_modality(config).warm_start(config)
    if hook is None:
        raise UserError(f"privacy.warm_start_share: modality {config.modality} has no DP warm start (tabular has "
                        "one): set it to 0")
    return hook


def run_planned_events(config: Config, vote_sigma: float) -> list[PrivacyEvent]:
    """Every event a run of ``config`` plans: its warm start, if any, then its votes at ``vote_sigma``."""
    privacy = config.privacy
    return _planned_events([vote_sigma] * config.population.generations, privacy.sampling_rate, privacy.mechanism,
                           privacy.k, warm_start_plan(config))


def gdp_mu(noise_multipliers: Sequence[float]) -> float:
    """mu of the mu-GDP composition of full-batch Gaussian mechanisms."""
    return math.sqrt(sum(1.0 / s**2 for s in noise_multipliers))


def zcdp_rho(events: Sequence[PrivacyEvent]) -> float:
    """rho of the rho-zCDP composition of full-batch (discrete) Gaussian votes.

    A discrete Gaussian of scale s on integer counts of sensitivity 1 is 1/(2 s^2)-zCDP (Canonne, Kamath and
    Steinke 2020); a vote with k neighbours is, as the accountant counts it, k such mechanisms of scale
    sigma*sqrt(k), so each vote adds k/(2 sigma^2 k) = 1/(2 sigma^2). mu-GDP holds for the continuous Gaussian only.
    """
    return sum(e.k / (2 * (e.noise_multiplier * math.sqrt(e.k)) ** 2) for e in events)


def zcdp_epsilon(rho: float, delta: float) -> float:
    """Epsilon at ``delta`` from rho-zCDP, ``rho + 2 sqrt(rho log(1/delta))`` (Bun and Steinke 2016): looser than the
    accountant's, so the accountant's epsilon must not exceed it (the cross-check)."""
    return rho + 2 * math.sqrt(rho * math.log(1 / delta))


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


@functools.lru_cache(maxsize=64)
def calibrate_noise_multiplier(
    epsilon: float, delta: float, generations: int, sampling_rate: float = 1.0,
    mechanism: Mechanism = "discrete_gaussian", k: int = 1, warm_start: WarmStartPlan | None = None,
) -> float:
    """The smallest constant noise multiplier (to 1e-4) whose ``generations`` votes spend at most ``epsilon``, with
    the warm start's event (its share of the run, :func:`warm_start_multiplier`) when ``warm_start`` plans one.

    A 1-D root find on the accountant's upper bound, which falls monotonically in sigma; the
    result is then nudged up until its upper bound does not exceed the target.
    """
    from scipy import optimize

    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise UserError(f"target epsilon must be a positive number, got {epsilon}")
    validate_schedule_args(generations, delta, sampling_rate)

    def excess(sigma: float) -> float:
        return schedule_epsilon([sigma] * generations, delta, sampling_rate, mechanism, k, warm_start) - epsilon

    low, high = 0.3, 1.0
    while excess(high) > 0:
        high *= 2
        if high > 1e5:
            raise UserError(f"epsilon={epsilon} cannot be met with {generations} generations at delta={delta}")
    if excess(low) < 0:
        raise UserError(
            f"epsilon={epsilon} is so large that the noise multiplier falls below {low}; lower the target epsilon"
        )
    sigma = float(optimize.brentq(excess, low, high, xtol=1e-5))
    while excess(sigma) > 0:
        sigma += 1e-4
    return sigma


def validate_schedule_args(generations: int, delta: float, sampling_rate: float = 1.0) -> None:
    """One-line errors for impossible accounting arguments."""
    if generations < 1:
        raise UserError(f"generations must be at least 1, got {generations}")
    if not 0 < delta < 1:
        raise UserError(f"delta must be in (0, 1), got {delta}")
    if not 0 < sampling_rate <= 1:
        raise UserError(f"sampling rate must be in (0, 1], got {sampling_rate}")


# ------------------------------------------------------------------ privacy report


def non_private_reasons(privacy: PrivacyConfig | None, events: Sequence[PrivacyEvent] = ()) -> list[str]:
    """Why a run (its privacy config and the events it charged) has no DP guarantee; empty when it has one.

    Only the operator makes such a run (``privacy.allow_non_private`` in the compiled config), and every output of
    it says NOT PRIVATE with these reasons.
    """
    reasons = []
    if (privacy is not None and privacy.noise_multiplier == 0) or any(e.noise_multiplier == 0 for e in events):
        reasons.append("noise multiplier 0: votes are released without noise, so epsilon is infinite")
    if privacy is not None and privacy.dataset_budget is None:
        reasons.append("no privacy.dataset_budget: the private data set's epsilon over all its runs is unbounded")
    return reasons


def privacy_report(events: Sequence[PrivacyEvent], delta: float, privacy: PrivacyConfig | None = None) -> dict[str, Any]:
    """What a data owner hands to a reviewer: whether the run is private at all, every event, epsilon per generation
    and over a grid of deltas, and the composition's rho-zCDP (discrete Gaussian) or mu-GDP (continuous)."""
    generations = sorted({e.generation for e in events})
    noisy_full_batch = bool(events) and all(e.sampling_rate == 1 and e.noise_multiplier > 0 for e in events)
    mechanisms = sorted({e.mechanism for e in events})
    reasons = non_private_reasons(privacy, events)
    return {
        "private": not reasons,
        "non_private_reasons": reasons,
        "neighbouring_relation": NEIGHBOURING_RELATION,
        "sensitivity": "L2 sensitivity 1 per vote: each private record gives weight 1/sqrt(k) to each of its k nearest "
                       "synthetic samples (per class when conditional: disjoint histograms compose in parallel)"
                       + ("; the warm start's C column histograms: L2 sensitivity sqrt(C), one count of each (k = C)"
                          if any(e.reason == WARM_START for e in events) else ""),
        "accountant": (f"prv-accountant, upper bound (eps_error {EPS_ERROR:g})" if mechanisms == ["gaussian"]
                       else "dp-accounting privacy-loss distributions, pessimistic estimate"),
        "delta": delta,
        "epsilon": compute_epsilon(events, delta),
        "events": [{"generation": e.generation, "mechanism": e.mechanism, "noise_multiplier": e.noise_multiplier,
                    "sampling_rate": e.sampling_rate, "k": e.k, "reason": e.reason, "status": e.status,
                    "release_uri": e.release_uri, "release_sha256": e.release_sha256} for e in events],
        "epsilon_by_generation": [
            {"generation": g, "epsilon": compute_epsilon([e for e in events if e.generation <= g], delta)}
            for g in generations
        ],
        "epsilon_at_delta": [{"delta": d, "epsilon": compute_epsilon(events, d)} for d in DELTA_GRID],
        "mu_gdp": (gdp_mu([e.noise_multiplier for e in events])
                   if noisy_full_batch and mechanisms == ["gaussian"] else None),
        "rho_zcdp": zcdp_rho(events) if noisy_full_batch and mechanisms != ["gaussian"] else None,
    }


def format_privacy_report(report: dict[str, Any]) -> list[str]:
    """The privacy report as text lines (audit, budget --report); epsilons rounded up, sigmas down."""
    lines = [f"{NOT_PRIVATE}: {'; '.join(report['non_private_reasons'])}"] if not report.get("private", True) else []
    lines += [f"privacy report: epsilon = {format_epsilon(report['epsilon'])} at delta = {report['delta']:g} "
              f"(upper bound; {report['accountant']})",
              f"  neighbouring datasets: {report['neighbouring_relation']}",
              f"  sensitivity: {report['sensitivity']}"]
    for event in report["events"]:
        where = ""
        if event["release_uri"]:
            sha = event["release_sha256"][:16] + "…" if event["release_sha256"] else "(pending)"
            where = f" {event['release_uri']} sha256={sha}"
        lines.append(f"  event gen {event['generation']}: {event['mechanism']} sigma={format_sigma(event['noise_multiplier'])} "
                     f"q={event['sampling_rate']:g} k={event['k']} {event['reason']} {event['status']}{where}")
    for row in report["epsilon_by_generation"]:
        lines.append(f"  after generation {row['generation']}: epsilon = {format_epsilon(row['epsilon'])}")
    lines.append("  epsilon at delta: " + ", ".join(f"{r['delta']:g} -> {format_epsilon(r['epsilon'])}"
                                                    for r in report["epsilon_at_delta"]))
    if report.get("rho_zcdp") is not None:
        lines.append(f"  rho-zCDP: rho = {format_epsilon(report['rho_zcdp'])} "
                     "(the discrete Gaussian's summary: sum over votes of 1/(2 sigma^2); mu-GDP does not hold for it)")
    if report["mu_gdp"] is not None:
        lines.append(f"  mu-GDP: mu = {format_epsilon(report['mu_gdp'])} (continuous-Gaussian composition; a cross-check)")
    return lines


def _rounded(value: float, digits: int, up: bool) -> str:
    """``value`` at ``digits`` decimals, rounded up or down; a value within float error of a step stays on it."""
    if not math.isfinite(value):
        return str(value)
    scaled = value * 10**digits
    nearest = round(scaled)
    if abs(scaled - nearest) <= 1e-9 * max(1.0, abs(scaled)):  # 1.76 * 1e4 = 17600.000000000004 is still 1.7600
        scaled = nearest
    return f"{(math.ceil(scaled) if up else math.floor(scaled)) / 10**digits:.{digits}f}"


def format_epsilon(epsilon: float, digits: int = 4) -> str:
    """A privacy loss (epsilon, rho, mu) for display, rounded up: what is shown is never below the bound."""
    return _rounded(epsilon, digits, up=True)


def format_sigma(sigma: float, digits: int = 4) -> str:
    """A noise multiplier for display, rounded down: what is shown never claims more noise than was added."""
    return _rounded(sigma, digits, up=False)


def format_required_sigma(sigma: float, digits: int = 4) -> str:
    """A noise multiplier that must be met (calibration's answer), rounded up: the value shown still meets the target."""
    return _rounded(sigma, digits, up=True)


# ------------------------------------------------------------------ budget


def noise_multiplier_for(config: Config, layout: RunLayout | None = None) -> float:
    """The per-vote noise multiplier: explicit, or calibrated from the target epsilon.

    With the run's ``layout`` a run calibrates once (resolve_config) and keeps the result in its
    calibration.json, so each vote's process does not calibrate again (seconds of accounting). The
    file holds only the config's privacy inputs and the noise they give, and is used only for the
    same inputs; whatever it says, the budget rule checks every release against the target.
    """
    privacy = config.privacy
    if privacy.noise_multiplier is not None:
        return privacy.noise_multiplier
    assert privacy.epsilon is not None  # the config holds exactly one of the two
    plan = warm_start_plan(config)
    inputs: dict[str, Any] = {"epsilon": privacy.epsilon, "delta": privacy.delta,
                              "generations": config.population.generations, "sampling_rate": privacy.sampling_rate,
                              "mechanism": privacy.mechanism, "k": privacy.k}
    if plan is not None:
        inputs["warm_start"] = list(plan)
    if layout is not None and storage.exists(layout.calibration_json):
        kept = storage.read_json(layout.calibration_json)
        if kept.get("inputs") == inputs:
            return float(kept["noise_multiplier"])
    sigma = calibrate_noise_multiplier(privacy.epsilon, privacy.delta, config.population.generations,
                                       privacy.sampling_rate, privacy.mechanism, privacy.k, plan)
    if layout is not None:
        storage.write_json(layout.calibration_json, {"inputs": inputs, "noise_multiplier": sigma})
    return sigma


def budget_of(privacy: PrivacyConfig) -> float | None:
    """The epsilon a run may spend: ``epsilon_budget``, else the target ``epsilon`` (None: unlimited)."""
    return privacy.epsilon_budget if privacy.epsilon_budget is not None else privacy.epsilon


def check_budget(spent: Sequence[PrivacyEvent], planned: Sequence[PrivacyEvent], privacy: PrivacyConfig,
                 what: str) -> None:
    """The one budget rule: refuse ``planned`` events when, composed with ``spent``, their upper bound exceeds the budget.

    ``spent`` holds every event of the ledger, pending ones included: every release that
    exists or may exist.
    """
    budget = budget_of(privacy)
    if budget is None:
        return
    after = compute_epsilon([*spent, *planned], privacy.delta)
    if after > budget:
        raise UserError(f"{what} would spend epsilon={format_epsilon(after)} in total, over the budget {budget:g}: "
                        "nothing was released; raise the noise or the budget, or run fewer votes")


def check_planned_budget(config: Config) -> None:
    """Refuse a config whose planned votes alone already exceed its budget or its data set's, and one without a
    data-set budget unless the operator allows a run without a DP guarantee (``privacy.allow_non_private``)."""
    privacy = config.privacy
    if privacy.dataset_budget is None and not privacy.allow_non_private:
        raise UserError("privacy.dataset_budget is not set: give the epsilon the private data set may spend over its "
                        "whole life, across all runs (or privacy.allow_non_private: true for a run without that bound)")
    sigma = noise_multiplier_for(config)
    planned = run_planned_events(config, sigma)
    what = (f"the planned {config.population.generations} votes at noise multiplier {format_sigma(sigma)}"
            + (" and the warm start" if len(planned) > config.population.generations else ""))
    check_budget([], planned, privacy, what)
    check_dataset_budget([], planned, privacy, what)


# ------------------------------------------------------------------ data-set budget


@dataclass(frozen=True)
class DatasetCharge:
    """One run's event in a data-set ledger: which run (its id and folder) paid what on the data set."""

    run_id: str
    run: str
    event: PrivacyEvent

    def matches(self, run_id: str, event: PrivacyEvent) -> bool:
        """Whether this charge pays for ``event`` of run ``run_id`` (a retried or resumed vote is charged once)."""
        return (self.run_id == run_id and self.event.release_uri == event.release_uri
                and self.event.charge_id == event.charge_id)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "run": self.run, **asdict(self.event)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetCharge:
        fields = dict(data)
        return cls(fields.pop("run_id"), fields.pop("run"), PrivacyEvent(**fields))


@dataclass
class DatasetLedger:
    """Every run's privacy events on one private data set (PRIVATE tier, written only by the vote): its lifetime spend.

    Kept at ``layout.dataset_ledger``, keyed by the data set as the config declares it; ``budget`` and ``delta`` are
    those of the last charge's config. The run's released ledger.json is a copy of that run's part of it.
    """

    dataset: dict[str, Any]
    budget: float | None
    delta: float
    charges: list[DatasetCharge] = field(default_factory=list)

    @property
    def events(self) -> list[PrivacyEvent]:
        return [c.event for c in self.charges]

    def epsilon(self, delta: float | None = None) -> float:
        """The data set's spend over all runs at ``delta`` (default: the ledger's)."""
        return compute_epsilon(self.events, self.delta if delta is None else delta)

    def runs(self) -> list[str]:
        """The run ids that charged the data set, in the order of their first charge."""
        return list(dict.fromkeys(c.run_id for c in self.charges))

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "budget": self.budget, "delta": self.delta,
                "charges": [c.to_dict() for c in self.charges]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetLedger:
        return cls(dict(data["dataset"]), data["budget"], float(data["delta"]),
                   [DatasetCharge.from_dict(c) for c in data["charges"]])


def dataset_summary(ledger: DatasetLedger) -> dict[str, Any]:
    """What a data set has spent, per run and in total (at the ledger's delta), and what is left of its budget."""
    spent = ledger.epsilon()
    runs = []
    for run_id in ledger.runs():
        events = [c.event for c in ledger.charges if c.run_id == run_id]
        runs.append({"run_id": run_id, "events": len(events), "epsilon": compute_epsilon(events, ledger.delta)})
    return {"dataset": ledger.dataset, "delta": ledger.delta, "budget": ledger.budget, "epsilon": spent,
            "remaining": None if ledger.budget is None else max(ledger.budget - spent, 0.0), "runs": runs}


def format_dataset_summary(summary: dict[str, Any], per_run: bool = True) -> list[str]:
    """A data set's spend as text lines (audit, budget --dataset, the run's summary): total and remaining, then per
    run unless not ``per_run``."""
    declared = " ".join(f"{key}={value}" for key, value in sorted(summary["dataset"].items())
                        if value is not None and key not in ("source", "path"))
    dataset = summary["dataset"]
    budget = ("no data-set budget (privacy.allow_non_private)" if summary["budget"] is None else
              f"budget {summary['budget']:g}, remaining {_rounded(summary['remaining'], 4, up=False)}")
    lines = [f"private data set {dataset['source']} {dataset['path']} {declared}".rstrip(),
             f"  per data set, all runs: epsilon spent {format_epsilon(summary['epsilon'])} at delta "
             f"{summary['delta']:g}; {budget}"]
    lines += [f"  run {row['run_id']}: epsilon {format_epsilon(row['epsilon'])} per run ({row['events']} events)"
              for row in summary["runs"] if per_run]
    return lines


def dataset_ledgers(private_root: str, path: str) -> list[DatasetLedger]:
    """The data-set ledgers under ``private_root`` whose declared private path is ``path`` (one per declared row
    selection of it: classes, rows, limit)."""
    from privevo.layout import LEDGER_JSON, datasets_dir, normalised

    storage.mark_private(private_root)
    wanted = normalised(path)
    ledgers = [DatasetLedger.from_dict(storage.read_json(uri)) for uri in storage.list_files(datasets_dir(private_root))
               if uri.rsplit("/", 1)[-1] == LEDGER_JSON]
    return [ledger for ledger in ledgers if ledger.dataset["path"] == wanted]


def dataset_delta(privacy: PrivacyConfig) -> float:
    """The delta of the data-set budget: ``privacy.dataset_delta``, else the run's delta."""
    return privacy.dataset_delta if privacy.dataset_delta is not None else privacy.delta


def dataset_ledger_uri(config: Config) -> str:
    """Where the data-set ledger of the config's private data set lies (PRIVATE tier)."""
    from privevo.layout import dataset_declaration, dataset_ledger

    return dataset_ledger(config.private_root, dataset_declaration(config.private))


def load_dataset_ledger(config: Config) -> DatasetLedger:
    """The data-set ledger of the config's private data set; an empty one before its first charge."""
    uri = dataset_ledger_uri(config)
    return DatasetLedger.from_dict(storage.read_json(uri)) if storage.exists(uri) else _empty_dataset_ledger(config)


def _empty_dataset_ledger(config: Config) -> DatasetLedger:
    from privevo.layout import dataset_declaration

    return DatasetLedger(dataset_declaration(config.private), config.privacy.dataset_budget,
                         dataset_delta(config.privacy))


def check_dataset_budget(spent: Sequence[PrivacyEvent], planned: Sequence[PrivacyEvent], privacy: PrivacyConfig,
                         what: str) -> None:
    """The data-set budget rule: refuse ``planned`` when, composed with every run's ``spent`` events on the data set,
    the accountant's epsilon at the data-set delta exceeds ``privacy.dataset_budget`` (no budget: nothing refused)."""
    budget = privacy.dataset_budget
    if budget is None:
        return
    delta = dataset_delta(privacy)
    after = compute_epsilon([*spent, *planned], delta)
    if after > budget:
        raise UserError(f"the private data set has spent epsilon {format_epsilon(compute_epsilon(spent, delta))} of "
                        f"its budget {budget:g} (per data set, all runs, at delta {delta:g}); {what} would bring it to "
                        f"{format_epsilon(after)}: nothing was released; raise privacy.dataset_budget or the noise")


def check_dataset_plan(config: Config, run_id: str) -> None:
    """Refuse, before the first vote, a run whose planned votes not yet charged would exceed the data set's remaining
    budget.

    Best effort: only a local private root is read here. On a cluster the step that starts a run has no access to the
    private tier, so a gs:// one is left to the vote, whose charge is the authoritative check (:func:`release_vote`).
    """
    if config.privacy.dataset_budget is None or storage.is_gcs(config.private_root):
        return
    ledger = load_dataset_ledger(config)
    charged = {(c.event.generation, c.event.reason) for c in ledger.charges
               if c.run_id == run_id and c.event.reason in ("vote", WARM_START)}
    planned = [e for e in run_planned_events(config, noise_multiplier_for(config))
               if (e.generation, e.reason) not in charged]
    if planned:
        votes = sum(e.reason != WARM_START for e in planned)
        what = f"this run's {votes} planned vote{'' if votes == 1 else 's'}" + (
            " and its warm start" if len(planned) > votes else "")
        check_dataset_budget(ledger.events, planned, config.privacy, what)


def _charge_dataset(layout: RunLayout, config: Config, event: PrivacyEvent, check: bool) -> None:
    """Record ``event`` of the run in the data-set ledger once (atomically: a lock locally, a generation precondition
    on gs://), refusing it over the data-set budget when ``check`` (a release not drawn yet)."""
    uri = dataset_ledger_uri(config)
    run_id = layout.run_id

    def charge(current: dict[str, Any] | None) -> dict[str, Any]:
        ledger = DatasetLedger.from_dict(current) if current else _empty_dataset_ledger(config)
        if any(c.matches(run_id, event) for c in ledger.charges):
            return ledger.to_dict()
        if check:
            check_dataset_budget(ledger.events, [event], config.privacy, _what(event))
        ledger.budget, ledger.delta = config.privacy.dataset_budget, dataset_delta(config.privacy)
        ledger.charges.append(DatasetCharge(run_id, layout.run_dir, replace(event, status="charged", release_sha256="")))
        return ledger.to_dict()

    if any(c.matches(run_id, event) for c in load_dataset_ledger(config).charges):
        return  # a reused release already charged: nothing to write
    storage.update_json(uri, charge)


# ------------------------------------------------------------------ releases


@dataclass(frozen=True)
class Release:
    """A generation's DP release in force: the noisy histogram and where it lies."""

    noisy_histogram: np.ndarray
    uri: str
    sha256: str


def release_vote(
    layout: RunLayout,
    config: Config,
    generation: int,
    clean_histogram: Callable[[], np.ndarray],
    force_new_noise: bool = False,
    redraw_key: str | None = None,
    created_at: float | None = None,
) -> Release:
    """The generation's DP release: reused when it exists, else charged, then noised and written once.

    Charge before release: a *pending* ledger event names the release before its file is
    created, and is completed with the file's sha256 after. Whatever moment a crash hits,
    every release on disk is paid for by exactly one event; a pending event whose file is
    missing is completed by the next attempt without a second charge. The data-set ledger
    (every run on the private data set, private tier) is charged with the same event
    just before the run's ledger, atomically and against ``privacy.dataset_budget``, and
    once per event: a crash between the two charges the data set again on the retry (an
    over-count, never an under-count). ``clean_histogram``
    runs only when a new release is drawn, and its result never leaves this function.

    ``force_new_noise`` draws again beside the first release and charges again, once per
    ``redraw_key`` (a KFP run id: a retried task reuses its redraw; None: a new key).
    ``created_at`` (seconds since the epoch, default now) stamps a new event: a time taken before the private work
    began, so that the ledger tells nothing of how long that work took.
    """
    privacy = config.privacy
    sigma = noise_multiplier_for(config, layout)
    stamp = _utc_iso(time.time() if created_at is None else created_at)
    ledger = Ledger.load(layout.ledger_json, privacy.delta)
    ours = [e for e in ledger.events if e.generation == generation]
    if not ours and storage.exists(layout.release(generation)):
        # A release without an event (written before charge-before-release, with continuous noise): charge it now.
        legacy = replace(_new_event(config, generation, sigma, layout.release(generation), layout, "vote", "", stamp),
                         mechanism="gaussian")
        event = _append_event(layout, privacy.delta, legacy, budget=None)
        ours = [event]
    if force_new_noise and ours:
        key = redraw_key or _fresh_tag()
        event_in_force = next((e for e in reversed(ours) if redraw_key and e.redraw_key == redraw_key), None)
    else:  # a first vote keeps the key too: its retry under force_new_noise then finds it
        key, event_in_force = (redraw_key or "") if force_new_noise else "", (ours[-1] if ours else None)

    if event_in_force is not None:
        uri = layout.absolute(event_in_force.release_uri)
        if storage.exists(uri):
            _charge_dataset(layout, config, event_in_force, check=False)  # released: recorded, whatever the budget
            return _reuse(layout, event_in_force, uri)
        if event_in_force.status == "released":
            raise UserError(f"{event_in_force.release_uri} is missing although the ledger paid for it: restore it, "
                            "or draw again with --force-new-noise (charged again)")
        _charge_dataset(layout, config, event_in_force, check=True)  # charged there already, unless made before it
        logger.info("generation %d: the release was paid for but never written (a crash): writing it now", generation)
        charged: Mechanism = "gaussian" if event_in_force.mechanism == "gaussian" else "discrete_gaussian"
        noisy = add_noise(clean_histogram(), event_in_force.noise_multiplier, event_in_force.k,
                          charged)  # the noise that was charged, whatever the config says now
        return _write_release(layout, event_in_force, noisy)

    reason = "force-new-noise" if ours else "vote"
    uri = layout.redraw(generation, key) if ours else layout.release(generation)
    event = _new_event(config, generation, sigma, uri, layout, reason, key, stamp)
    check_budget(ledger.events, [event], privacy, f"vote {generation}")  # fail fast, before any work
    check_dataset_budget(load_dataset_ledger(config).events, [event], privacy, f"vote {generation}")
    clean = clean_histogram()
    _charge_dataset(layout, config, event, check=True)  # the data set's charge first: a crash after it over-counts
    event = _append_event(layout, privacy.delta, event, budget=privacy)  # the run's charge is durable ...
    noisy = add_noise(clean, sigma, privacy.k, privacy.mechanism)
    del clean
    return _write_release(layout, event, noisy)  # ... before the release exists


def release_warm_start(layout: RunLayout, config: Config, clean_counts: Callable[[], np.ndarray],
                       created_at: float | None = None) -> Release:
    """The run's DP warm start: the noisy counts of the C column histograms (concatenated), reused when they exist,
    else charged as one ledger event (:func:`_warm_start_event`), then noised and written once, exactly like a vote's
    release (:func:`release_vote`: charge before release, the data-set ledger first, a pending event completed by
    the next attempt). The noise is the run's mechanism at scale s*sqrt(C) on each count, from the CSPRNG;
    ``clean_counts`` runs only when a release is drawn and its result never leaves this function."""
    privacy = config.privacy
    plan = warm_start_plan(config)
    if plan is None:
        raise UserError("this run's config asks for no warm start (privacy.warm_start_share is 0)")
    uri = layout.warm_start_release
    ledger = Ledger.load(layout.ledger_json, privacy.delta)
    ours = [e for e in ledger.events if e.reason == WARM_START]
    if ours:
        event = ours[-1]
        if storage.exists(uri):
            _charge_dataset(layout, config, event, check=False)
            return _reuse(layout, event, uri)
        if event.status == "released":
            raise UserError(f"{event.release_uri} is missing although the ledger paid for it: restore it, or start "
                            "a new run")
        _charge_dataset(layout, config, event, check=True)
        logger.info("the warm start was paid for but never written (a crash): writing it now")
        return _write_release(layout, event, _noisy_counts(clean_counts(), event))
    stamp = _utc_iso(time.time() if created_at is None else created_at)
    event = _warm_start_event(noise_multiplier_for(config, layout), config.population.generations, plan,
                              privacy.mechanism, release_uri=layout.relative(uri), created_at=stamp, status="pending",
                              charge_id=secrets.token_hex(8))
    check_budget(ledger.events, [event], privacy, _what(event))  # fail fast, before any work
    check_dataset_budget(load_dataset_ledger(config).events, [event], privacy, _what(event))
    clean = clean_counts()
    _charge_dataset(layout, config, event, check=True)
    event = _append_event(layout, privacy.delta, event, budget=privacy)
    noisy = _noisy_counts(clean, event)
    del clean
    return _write_release(layout, event, noisy)


def _noisy_counts(counts: np.ndarray, event: PrivacyEvent) -> np.ndarray:
    """Integer counts with the event's noise on each: scale noise_multiplier * sensitivity (sqrt(k))."""
    mechanism: Mechanism = "gaussian" if event.mechanism == "gaussian" else "discrete_gaussian"
    root_k = math.sqrt(event.k)  # add_noise's histogram holds weights 1/sqrt(k): counts scaled back by it after
    noisy = add_noise(np.asarray(counts, np.float64) / root_k, event.noise_multiplier, event.k, mechanism) * root_k
    return np.rint(noisy) if mechanism == "discrete_gaussian" else noisy  # integer counts plus integer noise


def read_warm_start(layout: RunLayout, delta: float) -> np.ndarray:
    """The run's released noisy marginals (public), checked against the ledger event that paid for them."""
    event = next((e for e in Ledger.load(layout.ledger_json, delta).events if e.reason == WARM_START), None)
    uri = layout.warm_start_release
    if event is None or not storage.exists(uri):
        raise UserError(f"run {layout.run_id} has no warm start yet: run warm_start first")
    data = storage.read_bytes(uri)
    if event.status == "released" and event.release_sha256 != storage.sha256_bytes(data):
        raise UserError(f"{event.release_uri} changed after it was released: restore it (the audit names it)")
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return np.asarray(npz["noisy_histogram"], np.float64)


def _what(event: PrivacyEvent) -> str:
    """An event's release as messages name it: "vote 3" or "the warm start"."""
    return "the warm start" if event.reason == WARM_START else f"vote {event.generation}"


def _new_event(config: Config, generation: int, sigma: float, uri: str, layout: RunLayout, reason: str,
               redraw_key: str, created_at: str) -> PrivacyEvent:
    privacy = config.privacy
    return PrivacyEvent(
        generation=generation, noise_multiplier=sigma, sampling_rate=privacy.sampling_rate,
        release_uri=layout.relative(uri), reason=reason, created_at=created_at, mechanism=privacy.mechanism,
        k=privacy.k, status="pending", redraw_key=redraw_key, charge_id=secrets.token_hex(8),
    )


def _append_event(layout: RunLayout, delta: float, event: PrivacyEvent, budget: PrivacyConfig | None) -> PrivacyEvent:
    """Append a pending event atomically (re-checking the budget against the ledger as it is); returns the event
    that pays for its release (a concurrent attempt's, if it got there first)."""

    def append(current: dict[str, Any] | None) -> dict[str, Any]:
        ledger = Ledger.from_dict(current) if current else Ledger(delta=delta)
        if any(e.release_uri == event.release_uri for e in ledger.events):
            return ledger.to_dict()
        if budget is not None:
            check_budget(ledger.events, [event], budget, _what(event))
        ledger.append(event)
        return ledger.to_dict()

    storage.update_json(layout.ledger_json, append)
    stored = Ledger.load(layout.ledger_json, delta).events
    return next(e for e in stored if e.release_uri == event.release_uri)


def _write_release(layout: RunLayout, event: PrivacyEvent, noisy: np.ndarray) -> Release:
    """Write a paid-for release once and complete its event."""
    uri = layout.absolute(event.release_uri)
    with contextlib.suppress(storage.AlreadyExists):  # a concurrent attempt released first: use its draw
        storage.write_npz(uri, {"noisy_histogram": noisy}, exclusive=True)
    logger.info("%s: released the noisy histogram (%s, sigma=%.4g)", _what(event), event.mechanism,
                event.noise_multiplier)
    return _reuse(layout, event, uri)


def _reuse(layout: RunLayout, event: PrivacyEvent, uri: str) -> Release:
    """The release in force, read back; completes its event if it is still pending."""
    data = storage.read_bytes(uri)
    sha = storage.sha256_bytes(data)
    if event.status == "pending":
        _complete_event(layout, event, sha)
    elif event.release_sha256 != sha:
        raise UserError(f"{event.release_uri} changed after it was released: restore it (the audit names it)")
    else:
        logger.info("%s: the DP release already exists: reusing it (no new noise, no new charge)", _what(event))
    storage.note_reused(uri, sha)  # in the vote's manifest part, even when the try that wrote it stopped before it
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return Release(npz["noisy_histogram"], uri, sha)


def _complete_event(layout: RunLayout, event: PrivacyEvent, sha256: str) -> None:
    def complete(current: dict[str, Any] | None) -> dict[str, Any]:
        assert current is not None  # the pending event is in it
        ledger = Ledger.from_dict(current)
        ledger.events = [replace(e, status="released", release_sha256=sha256)
                         if e.release_uri == event.release_uri and e.status == "pending" else e for e in ledger.events]
        return ledger.to_dict()

    storage.update_json(layout.ledger_json, complete)


def _utc_iso(seconds: float) -> str:
    """A time (seconds since the epoch) as ISO 8601 UTC, to the second."""
    return _dt.datetime.fromtimestamp(seconds, _dt.UTC).isoformat(timespec="seconds")


def _fresh_tag() -> str:
    """A redraw tag no other redraw has: the time and 32 random bits."""
    return f"{_dt.datetime.now(_dt.UTC).strftime('%Y%m%dT%H%M%S%f')}-{secrets.token_hex(4)}"
