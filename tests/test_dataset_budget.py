"""One budget per private data set, across runs: the data-set ledger in the private tier, charged by every vote,
checked at a run's start and at every vote, shown by ``budget --dataset`` and the audit, and not reset by deleting a
run's released ledger."""

import subprocess
import sys
import time

import pytest
from conftest import ROOT, make_tiny_run

import privevo
from privevo import audit, cli, kfp_client, privacy, steps, storage
from privevo.config import load_config
from privevo.errors import UserError
from privevo.layout import RunLayout
from privevo.run_record import Run

TINY = ROOT / "configs" / "tiny.yaml"


def _one_run_epsilon() -> float:
    """What one run of configs/tiny.yaml spends (its 2 votes at the calibrated noise)."""
    config = load_config(TINY)
    sigma = privacy.noise_multiplier_for(config)
    return privacy.schedule_epsilon([sigma] * config.population.generations, config.privacy.delta)


def _voting_run(tmp_path, run_id: str, budget: float) -> Run:
    """A tiny run on tmp_path's private root with the data-set budget ``budget``, ready for its first vote."""
    run = make_tiny_run(tmp_path, run_id, f"privacy.dataset_budget={budget!r}")
    for shard in range(run.config.population.num_shards):
        steps.embed_synthetic(run, 1, shard)
    return run


def _releases(run: Run) -> list[str]:
    names = [run.layout.relative(u) for u in storage.list_files(run.layout.run_dir)]
    return sorted(name for name in names if RunLayout.is_release(name))


def _charges(run: Run) -> list[privacy.DatasetCharge]:
    return privacy.load_dataset_ledger(run.config).charges


def _check(report: audit.AuditReport, name: str) -> dict:
    return next(c for c in report.checks if c["check"] == name)


def test_a_second_run_is_refused_in_one_line_before_its_first_vote(tmp_path, capsys):
    budget = _one_run_epsilon()
    roots = {"run_root": tmp_path / "runs", "private_root": tmp_path / "private"}
    first = privevo.run(TINY, {"privacy.dataset_budget": budget}, run_id="first", **roots)
    assert first.epsilon <= budget
    with pytest.raises(UserError) as refused:
        privevo.run(TINY, {"privacy.dataset_budget": budget}, run_id="second", **roots)
    message = str(refused.value)
    assert "\n" not in message and "per data set" in message
    assert f"of its budget {budget:g}" in message and "this run's 2 planned votes" in message
    assert not (tmp_path / "runs" / "second").exists()  # refused before anything of it, its votes included

    assert cli.main(["budget", "--dataset", "/usr/share/datasets/fashion-mnist",
                     "--private-root", str(tmp_path / "private")]) == 0
    out = capsys.readouterr().out
    assert f"epsilon spent {privacy.format_epsilon(first.epsilon)}" in out and "remaining 0.0000" in out
    assert f"run first: epsilon {privacy.format_epsilon(first.epsilon)} per run (2 events)" in out
    assert "run second" not in out  # the refused attempt spent nothing


def test_each_vote_is_charged_to_the_data_set_and_refused_over_its_budget(tmp_path, capsys):
    one, two = _voting_run(tmp_path, "one", _one_run_epsilon()), _voting_run(tmp_path, "two", _one_run_epsilon())
    steps.dp_vote(one, 1, steps.private_reference(one))
    steps.dp_vote(two, 1, steps.private_reference(two))  # two votes on the data set: one run's epsilon, all of it
    steps.dp_vote(two, 1, steps.private_reference(two))  # a retried vote reuses its release: not charged again
    assert [c.run_id for c in _charges(one)] == ["one", "two"]

    # The vote is the authoritative check (on a cluster the run's start cannot read the private tier).
    with pytest.raises(UserError, match=r"per data set, all runs.*vote 1 would bring it to") as refused:
        steps.dp_vote(two, 1, steps.private_reference(two), force_new_noise=True)
    assert "\n" not in str(refused.value)
    assert _releases(two) == ["gen-001/noisy_histogram.npz"] and len(two.ledger().events) == 1  # nothing drawn
    assert len(_charges(two)) == 2
    with pytest.raises(UserError, match="this run's 2 planned votes"):
        Run.start(two.config, "three", resume=False)

    assert cli.main(["budget", "--dataset", "/usr/share/datasets/fashion-mnist",
                     "--private-root", str(tmp_path / "private")]) == 0
    out = capsys.readouterr().out
    assert "run one: epsilon" in out and "run two: epsilon" in out and "remaining 0.0000" in out


def test_deleting_the_released_ledger_does_not_reset_the_budget_and_fails_the_audit(tmp_path):
    run = _voting_run(tmp_path, "erased", _one_run_epsilon())
    steps.dp_vote(run, 1, steps.private_reference(run))
    report = audit.audit_run(run)
    assert _check(report, "ledger.json copies the data-set ledger")["ok"]
    assert report.dataset is not None and [row["run_id"] for row in report.dataset["runs"]] == ["erased"]
    spent = privacy.load_dataset_ledger(run.config).epsilon()

    storage.write_json(run.layout.ledger_json, {"delta": run.config.privacy.delta, "events": []})
    assert privacy.load_dataset_ledger(run.config).epsilon() == spent  # the private ledger still holds the vote
    with pytest.raises(UserError, match=r"of its budget .*this run's 2 planned votes"):
        privacy.check_dataset_plan(run.config, "next")
    failed = _check(audit.audit_run(run), "data-set charges in ledger.json")
    assert failed["ok"] is False and "gen-001/noisy_histogram.npz" in failed["detail"]


def test_a_vote_stopped_before_its_release_is_charged_once_when_resumed(tmp_path, monkeypatch):
    run = _voting_run(tmp_path, "resumed", 100.0)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt  # killed after both charges, before the release exists

    monkeypatch.setattr(privacy, "_write_release", stop)
    with pytest.raises(KeyboardInterrupt):
        steps.dp_vote(run, 1, steps.private_reference(run))
    monkeypatch.undo()
    assert _releases(run) == [] and [e.status for e in run.ledger().events] == ["pending"]
    steps.dp_vote(run, 1, steps.private_reference(run))
    (event,) = run.ledger().events
    (charge,) = _charges(run)
    assert charge.matches("resumed", event) and _releases(run) == ["gen-001/noisy_histogram.npz"]
    assert _check(audit.audit_run(run), "ledger.json copies the data-set ledger")["ok"]


_CHARGER = """
import os, sys, time
from privevo import privacy
from privevo.config import load_config
from privevo.layout import RunLayout

config_path, private_root, run_id, start, count = sys.argv[1:]
config = load_config(config_path, [f"private_root={private_root}", f"run_root={private_root}-runs"])
layout = RunLayout(config.run_root, run_id, config.private_root)
while not os.path.exists(start):
    time.sleep(0.001)
for g in range(1, int(count) + 1):
    event = privacy.PrivacyEvent(generation=g, noise_multiplier=5.0, release_uri=f"gen-{g:03d}/noisy_histogram.npz",
                                 mechanism="discrete_gaussian", status="pending", charge_id=f"{run_id}-{g}")
    privacy._charge_dataset(layout, config, event, check=False)
"""


def test_two_processes_charging_at_once_lose_no_charge(tmp_path):
    start, count = tmp_path / "start", 25
    workers = [subprocess.Popen([sys.executable, "-c", _CHARGER, str(TINY), str(tmp_path / "private"), run_id,
                                 str(start), str(count)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
               for run_id in ("left", "right")]
    time.sleep(1.0)  # both started and waiting: they charge at once
    start.touch()
    for worker in workers:
        assert worker.wait(timeout=120) == 0, worker.stderr.read() if worker.stderr else ""
    config = load_config(TINY, [f"private_root={tmp_path / 'private'}"])
    stored = storage.read_json(privacy.dataset_ledger_uri(config))["charges"]
    assert sorted(c["charge_id"] for c in stored) == sorted(f"{r}-{g}" for r in ("left", "right")
                                                            for g in range(1, count + 1))


def test_a_config_without_a_data_set_budget_is_refused_and_cannot_be_scheduled():
    with pytest.raises(UserError, match=r"privacy\.dataset_budget is not set"):
        privacy.check_planned_budget(load_config(TINY, ["privacy.dataset_budget=null"]))
    allowed = load_config(TINY, ["privacy.dataset_budget=null", "privacy.allow_non_private=true"])
    privacy.check_planned_budget(allowed)  # the operator's choice: a run without the data set's bound
    with kfp_client._compiled(allowed) as (_, spec), pytest.raises(UserError, match=r"no privacy\.dataset_budget"):
        kfp_client._check_dataset_budget(spec)
    with kfp_client._compiled(load_config(TINY)) as (_, spec):
        kfp_client._check_dataset_budget(spec)
