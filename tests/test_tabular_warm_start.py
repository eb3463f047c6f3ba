"""The optional DP warm start (privacy.warm_start_share) on configs/tiny-tabular.yaml: one ledger event inside the
run's budget, reused by a rerun, the model's prior, audited like a vote's release; refused for images."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

import privevo
from privevo import privacy
from privevo.api import plan_steps
from privevo.audit import audit_run
from privevo.config import load_config
from privevo.errors import UserError
from privevo.modalities import get_modality
from privevo.run_record import Run
from privevo.step_table import StepArgs, step

TINY_TABULAR = ROOT / "configs" / "tiny-tabular.yaml"
SHARE = 0.2
WARM = {"privacy.warm_start_share": SHARE}


@pytest.fixture(scope="module")
def warm_run(tmp_path_factory) -> privevo.api.RunResult:
    """tiny-tabular with a warm start, run in this process once."""
    base = tmp_path_factory.mktemp("warm")
    return privevo.run(TINY_TABULAR, WARM, run_root=base / "runs", private_root=base / "private", run_id="warm")


def _warm_events(events: list[privacy.PrivacyEvent]) -> list[privacy.PrivacyEvent]:
    return [e for e in events if e.reason == privacy.WARM_START]


def test_the_warm_start_is_one_ledger_event_counted_in_the_run_s_epsilon_within_its_budget(warm_run) -> None:
    events = warm_run.run.ledger().events
    [warm] = _warm_events(events)
    columns = len(warm_run.run.config.tabular.columns)
    assert (warm.generation, warm.k, warm.status) == (0, columns, "released")
    assert warm.sensitivity == pytest.approx(math.sqrt(columns))
    assert warm.release_uri == "gen-000/noisy_marginals.npz" and warm.release_sha256
    votes = [e for e in events if e.reason == "vote"]
    assert len(votes) == 3 and len(events) == 4
    delta = warm_run.delta
    assert warm_run.epsilon == privacy.compute_epsilon(events, delta) <= 4.0
    assert warm_run.epsilon > privacy.compute_epsilon(votes, delta) + 0.1  # the warm start is paid for
    # the votes' noise is calibrated for what the warm start leaves: more than without it
    alone = privacy.calibrate_noise_multiplier(4.0, delta, 3)
    assert votes[0].noise_multiplier > alone
    # and the warm start takes its declared share of the run's rho
    assert privacy.zcdp_rho([warm]) / privacy.zcdp_rho(events) == pytest.approx(SHARE)
    charges = privacy.load_dataset_ledger(warm_run.run.config).charges
    assert [c.event.charge_id for c in charges if c.event.reason == privacy.WARM_START] == [warm.charge_id]
    params = warm_run.run.layout.step_record(0, "warm_start")
    assert '"epsilon_after"' in Path(params).read_text()


def test_a_rerun_reuses_the_release_without_a_second_event(warm_run) -> None:
    run = warm_run.run
    release = Path(run.layout.warm_start_release)
    before = release.read_bytes()
    charges = len(privacy.load_dataset_ledger(run.config).charges)
    result = step("warm_start").call(run, StepArgs())
    assert release.read_bytes() == before
    assert len(_warm_events(run.ledger().events)) == 1 and len(run.ledger().events) == 4
    assert len(privacy.load_dataset_ledger(run.config).charges) == charges
    assert result["sha256"] == _warm_events(run.ledger().events)[0].release_sha256


def test_the_random_api_and_the_variation_draw_from_the_noisy_marginals() -> None:
    """job's marginal puts all its mass on 'sales' and hours' on its atom 40 (every other count negative, so clipped
    to 0): every random row, and every resampled value, takes them."""
    config = load_config(TINY_TABULAR, [f"privacy.warm_start_share={SHARE}"])
    modality = get_modality(config)
    hook = modality.warm_start(config)
    assert hook is not None
    names = [c.name for c in config.tabular.columns]
    noisy = np.concatenate([np.full(n, 5.0) for n in hook.bins])
    offsets = np.concatenate([[0], np.cumsum(hook.bins)])
    job, hours = names.index("job"), names.index("hours")
    noisy[offsets[job]:offsets[job + 1]] = [-3.0, -1.0, 7.0, -2.0]  # clerk, crafts, sales, manager
    hours_bins = hook.columns[hours]
    noisy[offsets[hours]:offsets[hours + 1]] = -1.0
    noisy[offsets[hours] + int(np.searchsorted(hours_bins.points, 40.0))] = 9.0
    model = hook.apply(modality.load_model(config), noisy)
    rows = model.random(200, seed=3)
    assert set(rows[:, job]) == {2.0} and set(rows[:, hours]) == {40.0}
    plain = modality.load_model(config).random(200, seed=3)
    assert len(set(plain[:, job])) > 1  # without the warm start they are uniform
    varied = model.variation(plain, 1.0, seed=4)  # degree 1: every value is resampled
    assert set(varied[:, job]) == {2.0} and set(varied[:, hours]) == {40.0}
    with pytest.raises(UserError, match="belongs to another schema"):
        hook.apply(modality.load_model(config), noisy[:-1])


def test_given_the_label_each_column_is_drawn_from_its_class_s_marginal() -> None:
    """tabular.warm_start_given_label: job's table puts 'clerk' on <=50K and 'manager' on >50K; the label's own
    marginal is 1-way. Rows drawn, pinned or resampled follow their label."""
    config = load_config(TINY_TABULAR, [f"privacy.warm_start_share={SHARE}", "tabular.warm_start_given_label=true"])
    modality = get_modality(config)
    hook = modality.warm_start(config)
    assert hook is not None
    names = [c.name for c in config.tabular.columns]
    job, income = names.index("job"), names.index("income")
    assert hook.bins[job] == 2 * 4 and hook.bins[income] == 2
    counts = hook.counts(np.array([[30, 0, 40, 0.5, 0], [50, 3, 40, 0.5, 1], [40, 3, 20, 0.25, 1]], np.float64))
    offsets = np.concatenate([[0], np.cumsum(hook.bins)])
    assert list(counts[offsets[job]:offsets[job + 1]]) == [1, 0, 0, 0, 0, 0, 0, 2]  # (<=50K, clerk), (>50K, manager)
    assert list(counts[offsets[income]:offsets[income + 1]]) == [1, 2]
    noisy = np.full(sum(hook.bins), 5.0)
    noisy[offsets[job]:offsets[job + 1]] = [9, -1, -1, -1, -1, -1, -1, 9]
    model = hook.apply(modality.load_model(config), noisy)
    rows = model.random(200, seed=1)
    assert set(rows[:, income]) == {0.0, 1.0}
    assert np.all(rows[:, job] == np.where(rows[:, income] == 1, 3.0, 0.0))
    pinned = model.random(50, labels=1, seed=2)
    assert set(pinned[:, income]) == {1.0} and set(pinned[:, job]) == {3.0}
    varied = model.variation(rows, 1.0, seed=3)  # every value drawn again, given the row's label, which is kept
    assert np.array_equal(varied[:, income], rows[:, income])
    assert np.all(varied[:, job] == np.where(varied[:, income] == 1, 3.0, 0.0))


def test_the_step_exists_only_when_the_config_asks_for_it() -> None:
    plain = load_config(TINY_TABULAR)
    warm = load_config(TINY_TABULAR, [f"privacy.warm_start_share={SHARE}"])
    assert "warm_start" not in [p.label for p in plan_steps(plain)]
    labels = [p.label for p in plan_steps(warm)]
    assert labels.index("warm_start") < labels.index("generate_initial s0")
    assert step("warm_start").reads_private(warm) and not step("warm_start").reads_private(plain)
    assert privacy.WARM_START not in [e.reason for e in privacy.run_planned_events(plain, 1.0)]
    assert len(privacy.run_planned_events(warm, 1.0)) == len(privacy.run_planned_events(plain, 1.0)) + 1


def test_the_planned_budget_counts_the_warm_start() -> None:
    """An explicit noise whose votes alone fit the budget is refused once the warm start is added."""
    overrides = ["privacy.epsilon=null", "privacy.noise_multiplier=3.0"]
    config = load_config(TINY_TABULAR, overrides)
    votes = privacy.compute_epsilon(privacy.run_planned_events(config, 3.0), config.privacy.delta)
    budget = f"privacy.epsilon_budget={votes * 1.05}"
    privacy.check_planned_budget(load_config(TINY_TABULAR, [*overrides, budget]))
    with pytest.raises(UserError, match="and the warm start would spend"):
        privacy.check_planned_budget(load_config(TINY_TABULAR, [*overrides, budget, "privacy.warm_start_share=0.3"]))


def test_the_audit_checks_the_warm_start_s_release(warm_run, tmp_path) -> None:
    report = audit_run(warm_run.run)
    assert report.ok, report.first_failure
    assert [r["reason"] for r in report.generations[0]["releases"]] == [privacy.WARM_START]
    charged = [c for c in report.checks if c["check"] == "release charged once"]
    assert len(charged) == 4 and all(c["ok"] for c in charged)
    leaks = [c["ok"] for c in report.checks if c["check"] == "no private data in released files"]
    assert leaks and all(leaks)
    # a changed release is named, like a vote's
    copy = tmp_path / "runs" / "warm"
    shutil.copytree(warm_run.path, copy)
    release = copy / "gen-000" / "noisy_marginals.npz"
    np.savez(release, noisy_histogram=np.zeros(3))
    changed = audit_run(Run.locate(str(copy), str(tmp_path / "runs")))
    assert not changed.ok
    assert "gen-000/noisy_marginals.npz" in changed.first_failure["detail"]


def test_a_warm_start_for_images_is_refused_in_one_line(tmp_path, run_cli) -> None:
    result = run_cli("run", "--config", str(ROOT / "configs" / "tiny.yaml"), "--set", "privacy.warm_start_share=0.1",
                     "--run-root", str(tmp_path / "runs"), "--pipeline-root", str(tmp_path / "kfp"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: privacy.warm_start_share: modality image has no DP warm start (tabular has one): set it to 0"]
    assert not (tmp_path / "runs").exists()
