"""The guarantee under adversarial review: charge before release, no fingerprint of the private set,
epsilon as an upper bound, exact discrete noise, and an audit that names what breaks it."""

import hashlib
import math

import numpy as np
import pytest
from conftest import ROOT, make_tiny_run

from privevo import audit, privacy, steps, storage
from privevo.config import load_config
from privevo.errors import UserError
from privevo.run_record import Run


def _ready_to_vote(tmp_path, run_id: str, *overrides: str) -> Run:
    run = make_tiny_run(tmp_path, run_id, *overrides)
    for shard in range(run.config.population.num_shards):
        steps.embed_synthetic(run, 1, shard)
    return run


def _events(run: Run) -> list[privacy.PrivacyEvent]:
    return run.ledger().events


def _releases(run: Run) -> list[str]:
    names = [run.layout.relative(u) for u in storage.list_files(run.layout.run_dir)]
    return sorted(name for name in names if run.layout.is_release(name))


def _each_release_paid_once(run: Run) -> None:
    events = _events(run)
    for name in _releases(run):
        assert sum(e.release_uri == name for e in events) == 1, name


class _Crash(Exception):
    pass


def _crash_when_writing(monkeypatch, run: Run, fails, why: str) -> None:
    """Make ``storage.write_npz`` raise _Crash for every URI ``fails(uri)`` accepts (a kill at that moment)."""
    real_write = storage.write_npz

    def write(uri, arrays, **kwargs):
        if fails(uri):
            raise _Crash(why)
        return real_write(uri, arrays, **kwargs)

    monkeypatch.setattr(storage, "write_npz", write)


# ------------------------------------------------------------------ 1. charge before release


def test_a_crash_after_the_release_write_leaves_it_paid_and_a_redraw_counts_it(tmp_path, monkeypatch):
    run = _ready_to_vote(tmp_path, "crash-after-write")
    sigma = privacy.noise_multiplier_for(run.config)

    def crash(*args, **kwargs):
        raise _Crash("killed between the release and its ledger completion")

    monkeypatch.setattr(privacy, "_complete_event", crash)
    with pytest.raises(_Crash):
        steps.dp_vote(run, 1, steps.private_reference(run))
    monkeypatch.undo()
    assert _releases(run) == ["gen-001/noisy_histogram.npz"]
    assert [e.status for e in _events(run)] == ["pending"]  # paid before it existed
    _each_release_paid_once(run)

    # The redraw is charged on top of the crashed release: two releases, two events, epsilon of both.
    steps.dp_vote(run, 1, steps.private_reference(run), force_new_noise=True)
    assert len(_releases(run)) == 2 and len(_events(run)) == 2
    _each_release_paid_once(run)
    assert run.ledger().epsilon() == pytest.approx(privacy.schedule_epsilon([sigma] * 2, run.config.privacy.delta))
    # tiny's budget (epsilon 4 over 2 votes) is now spent: a third release is refused, nothing written
    with pytest.raises(UserError, match="over the budget"):
        steps.dp_vote(run, 1, steps.private_reference(run), force_new_noise=True)
    assert len(_releases(run)) == 2 and len(_events(run)) == 2


def test_a_crash_before_the_release_write_is_completed_without_a_second_charge(tmp_path, monkeypatch):
    run = _ready_to_vote(tmp_path, "crash-before-write")
    _crash_when_writing(monkeypatch, run, lambda uri: run.layout.is_release(run.layout.relative(uri)),
                        "killed after the charge, before the release")
    with pytest.raises(_Crash):
        steps.dp_vote(run, 1, steps.private_reference(run))
    monkeypatch.undo()
    assert _releases(run) == [] and [e.status for e in _events(run)] == ["pending"]
    # An auditor sees a charge without a release: counted, not a failure.
    assert run.ledger().epsilon() > 0

    steps.dp_vote(run, 1, steps.private_reference(run))  # the retry writes the paid-for release
    assert _releases(run) == ["gen-001/noisy_histogram.npz"]
    assert [e.status for e in _events(run)] == ["released"]
    assert _events(run)[0].release_sha256 == storage.sha256_uri(run.layout.release(1))


def test_a_forced_redraw_is_idempotent_per_redraw_key_even_after_a_later_failure(tmp_path, monkeypatch):
    run = _ready_to_vote(tmp_path, "retry", "privacy.epsilon_budget=100")
    steps.dp_vote(run, 1, steps.private_reference(run))
    _crash_when_writing(monkeypatch, run, lambda uri: uri == run.layout.selection(1),
                        "the task fails after its charge (KFP retries it)")
    with pytest.raises(_Crash):
        steps.dp_vote(run, 1, steps.private_reference(run), force_new_noise=True, redraw_key="kfp-run-7")
    monkeypatch.undo()
    assert len(_events(run)) == 2
    # the retry of the same KFP run reuses its redraw: no third draw, no third charge
    steps.dp_vote(run, 1, steps.private_reference(run), force_new_noise=True, redraw_key="kfp-run-7")
    assert len(_events(run)) == 2 and len(_releases(run)) == 2
    assert "gen-001/noisy_histogram-redraw-kfp-run-7.npz" in _releases(run)
    # another run (another key) redraws and pays again
    steps.dp_vote(run, 1, steps.private_reference(run), force_new_noise=True, redraw_key="kfp-run-8")
    assert len(_events(run)) == 3 and len(_releases(run)) == 3
    _each_release_paid_once(run)


# ------------------------------------------------------------------ 2 and 5. no fingerprint, no private facts


def _private_digests(private_dir) -> set[str]:
    digests = set()
    for path in private_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            digests |= {hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()}
    return digests


def test_no_hash_of_the_private_tier_reaches_a_released_place(tiny_run):
    from pathlib import Path

    digests = _private_digests(Path(tiny_run.private_root) / tiny_run.run_id)
    assert digests
    released = [Path(tiny_run.run_root), Path(str(tiny_run.run_root) + "-kfp")]  # the run root and kfp.local's root
    texts = [tiny_run.stdout] + [p.read_text(errors="ignore") for root in released for p in root.rglob("*") if p.is_file()]
    assert len(texts) > 20
    assert not [d for d in digests if any(d in text for text in texts)]


def test_the_audit_fails_on_a_released_private_hash(tiny_run, tmp_path):
    run = Run.open(str(tiny_run.copy(tmp_path).run_root), tiny_run.run_id)
    digest = storage.sha256_uri(run.layout.private_embeddings)
    storage.write_json(run.layout.report_file("notes.json"), {"private_embeddings": digest})
    report = audit.audit_run(run)
    assert not report.ok
    assert report.first_failure["detail"].startswith("report/notes.json holds the hash of a private-tier file")


def test_private_embedding_shows_no_progress(tmp_path, capsys, caplog):
    """embed_private shows no progress bar or line, which would tell the private set's size.

    With an embedding that reports progress: the same embedding over other images does.
    """
    import logging

    from privevo.image.embeddings import load_embedding

    caplog.set_level(logging.INFO, logger="privevo.progress")
    config = load_config(ROOT / "configs" / "tiny.yaml", [
        f"run_root={tmp_path}/runs", f"private_root={tmp_path}/private", "embedding.name=effnet_lite0"])
    steps.embed_private(Run.create(config, "quiet"))
    assert not [r for r in caplog.records if r.name == "privevo.progress"] and capsys.readouterr().err == ""
    load_embedding(config).embed(np.zeros((3, 28, 28, 1), np.uint8), 2)  # progress on: a line the test would see
    assert [r.getMessage() for r in caplog.records if r.name == "privevo.progress"] == ["embed effnet_lite0: 3/3 img"]


def test_a_small_private_set_is_not_refused_by_its_size(tmp_path):
    # Refusing when N / sqrt(k) <= H would tell the private set's size through a failure.
    run = _ready_to_vote(tmp_path, "small", "private.rows=[0, 2]", "privacy.threshold=50")
    steps.dp_vote(run, 1, steps.private_reference(run))
    assert storage.exists(run.layout.release(1)) and storage.exists(run.layout.selection(1)) and len(_events(run)) == 1


# ------------------------------------------------------------------ 3. non-DP evaluation stays private


def _one_generation_to_evaluate(tmp_path, run_id: str):
    """A one-generation tiny run with evaluation.against_private, complete up to its evaluate step."""
    run = make_tiny_run(tmp_path, run_id, "population.generations=1", "population.degrees=[0.5]",
                        "evaluation.against_private=true")
    for shard in range(run.config.population.num_shards):
        steps.embed_synthetic(run, 1, shard)
    steps.dp_vote(run, 1, steps.private_reference(run))
    for shard in range(run.config.population.num_shards):
        steps.generate_variations(run, 1, shard)
    return run


def test_non_dp_evaluation_writes_only_to_the_private_tier(tmp_path):
    from privevo import evaluation

    run = _one_generation_to_evaluate(tmp_path, "nondp")
    result = evaluation.evaluate_run(run)
    assert result["non_dp"] is False and not any(row["non_dp"] for row in result["generations"])
    assert "non_dp" not in evaluation.headline_metrics(result)
    private = storage.read_json(run.layout.non_dp_metrics)
    assert private["non_dp"] is True and all(row["non_dp"] for row in private["generations"])
    released = "".join(storage.read_bytes(u).decode(errors="ignore") for u in storage.list_files(run.layout.run_dir))
    assert "private set (non-DP" not in released and '"non_dp": true' not in released


def test_a_failing_non_dp_evaluation_ends_the_step_as_a_working_one_would(tmp_path, monkeypatch, caplog):
    # Whether scoring the private set works may depend on one private record: the step's outcome and its log lines
    # must not show it, and the reason goes to the private tier only.
    from privevo import evaluation

    run = _one_generation_to_evaluate(tmp_path, "nondp-fails")
    modality = type(run.modality)
    scorer = modality.scorer
    working_lines = []
    for broken in (False, True):
        def scoring(self, run_, broken=broken):
            score = scorer(self, run_)

            def scored(reference, last, log_rows):
                if broken and log_rows is False:  # the scoring against the private set
                    raise ValueError("a private record's detail")
                return score(reference, last, log_rows)

            return scored

        monkeypatch.setattr(modality, "scorer", scoring)
        caplog.clear()
        with caplog.at_level("INFO", logger=evaluation.logger.name):
            evaluation.evaluate_run(run)
        lines = [record.getMessage() for record in caplog.records if record.name == evaluation.logger.name]
        if not broken:
            working_lines = lines
            storage.delete(run.layout.non_dp_metrics)
    assert lines == working_lines and any("non-DP metrics" in line for line in lines)
    assert not storage.exists(run.layout.non_dp_metrics)
    assert "a private record's detail" in storage.read_bytes(run.layout.private_log).decode()
    released = "".join(storage.read_bytes(u).decode(errors="ignore") for u in storage.list_files(run.layout.run_dir))
    assert "a private record's detail" not in released


# ------------------------------------------------------------------ 4. epsilon is the upper bound


@pytest.mark.parametrize("mechanism", ["discrete_gaussian", "gaussian"])
def test_known_value_within_0005_and_never_below_the_exact_one(mechanism):
    sigma = 5 * math.sqrt(2)
    exact = privacy.gdp_epsilon([sigma] * 20, 1e-5)  # the continuous Gaussian's exact value, 2.5944
    value = privacy.schedule_epsilon([sigma] * 20, 1e-5, mechanism=mechanism)
    assert abs(value - 2.594) <= 0.005
    if mechanism == "gaussian":
        assert exact <= value <= exact + 2 * privacy.EPS_ERROR  # prv-accountant's upper bound


@pytest.mark.parametrize("mechanism", ["discrete_gaussian", "gaussian"])
@pytest.mark.parametrize(("target", "generations"), [(4.0, 2), (4.0, 5), (2.6, 20), (0.67, 20)])
def test_calibration_never_lands_above_its_target(mechanism, target, generations):
    sigma = privacy.calibrate_noise_multiplier(target, 1e-5, generations, mechanism=mechanism)
    assert privacy.schedule_epsilon([sigma] * generations, 1e-5, mechanism=mechanism) <= target
    assert privacy.schedule_epsilon([sigma * 0.999] * generations, 1e-5, mechanism=mechanism) > target - 0.01


def test_the_budget_rule_has_no_tolerance_above_the_upper_bound():
    config = load_config(ROOT / "configs" / "tiny.yaml", ["privacy.epsilon=null", "privacy.noise_multiplier=2.0"])
    planned = [privacy.PrivacyEvent(generation=g, noise_multiplier=2.0, mechanism="discrete_gaussian") for g in (1, 2)]
    spent = privacy.compute_epsilon(planned, 1e-5)
    budget = config.privacy.model_copy(update={"epsilon_budget": spent - 0.004})
    with pytest.raises(UserError, match="over the budget"):
        privacy.check_budget([], planned, budget, "the schedule")
    privacy.check_budget([], planned, config.privacy.model_copy(update={"epsilon_budget": spent}), "the schedule")


# ------------------------------------------------------------------ 6. exact discrete noise from a CSPRNG


def test_discrete_noise_is_integer_and_has_the_stated_scale():
    counts = np.zeros(20000)
    noisy = privacy.add_noise(counts, 3.0, mechanism="discrete_gaussian")
    assert np.all(noisy == np.round(noisy))
    assert np.std(noisy) == pytest.approx(3.0, rel=0.05)
    again = privacy.add_noise(counts, 3.0, mechanism="discrete_gaussian")
    assert not np.array_equal(noisy, again)  # fresh secret randomness each draw
    k = 4  # weights 1/sqrt(k): integer counts after scaling back, noise sigma*sqrt(k) on them
    scaled = privacy.add_noise(np.full(5000, 3 / math.sqrt(k)), 1.5, k=k) * math.sqrt(k)
    assert np.allclose(scaled, np.round(scaled)) and np.std(scaled) == pytest.approx(1.5 * math.sqrt(k), rel=0.08)


def test_discrete_and_continuous_accounting_agree():
    discrete = privacy.schedule_epsilon([2.418] * 5, 1e-5, mechanism="discrete_gaussian")
    continuous = privacy.schedule_epsilon([2.418] * 5, 1e-5, mechanism="gaussian")  # prv-accountant's upper bound
    exact = privacy.gdp_epsilon([2.418] * 5, 1e-5)  # the continuous Gaussian, closed form: 3.9991
    assert abs(discrete - exact) <= 0.0025  # 3.9971: the discrete Gaussian is a hair more private
    assert abs(discrete - continuous) <= 0.0025 + 2 * privacy.EPS_ERROR


def test_votes_are_charged_as_discrete_gaussian_by_default(tmp_path):
    run = _ready_to_vote(tmp_path, "discrete")
    steps.dp_vote(run, 1, steps.private_reference(run))
    (event,) = _events(run)
    assert event.mechanism == "discrete_gaussian" and event.status == "released"
    noisy = storage.read_npz(run.layout.release(1))["noisy_histogram"]
    assert np.all(noisy == np.round(noisy))
    assert storage.read_json(run.layout.step_record(1, "dp_vote"))["params"]["mechanism"] == "discrete_gaussian"


# ------------------------------------------------------------------ 8. a tampered file fails the audit, naming it


def test_a_tampered_population_fails_the_audit_without_a_traceback(tiny_run, tmp_path, run_cli):
    run = tiny_run.copy(tmp_path)
    population = run.run_dir / "gen-001" / "population.npz"
    data = bytearray(population.read_bytes())
    data[len(data) // 2: len(data) // 2 + 2] = bytes([data[len(data) // 2] ^ 0xFF, data[len(data) // 2 + 1] ^ 0xFF])
    population.write_bytes(bytes(data))
    result = run_cli("audit", run.run_id, "--run-root", run.run_root)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("audit: FAILED:") and "gen-001/population.npz" in last
    report = audit.audit_run(Run.open(run.run_root, run.run_id))
    assert any(c["check"] == "released arrays readable" and c["ok"] is False for c in report.checks)


def test_a_retried_first_vote_under_force_new_noise_reuses_its_release(tmp_path, monkeypatch):
    run = _ready_to_vote(tmp_path, "first-forced")
    _crash_when_writing(monkeypatch, run, lambda uri: uri == run.layout.selection(1),
                        "the task fails after its release (KFP retries it)")
    with pytest.raises(_Crash):  # a UI run with force_new_noise=true: the first vote of the generation
        steps.dp_vote(run, 1, steps.private_reference(run), force_new_noise=True, redraw_key="kfp-run-1")
    monkeypatch.undo()
    steps.dp_vote(run, 1, steps.private_reference(run), force_new_noise=True, redraw_key="kfp-run-1")
    assert len(_events(run)) == 1 and _releases(run) == ["gen-001/noisy_histogram.npz"]


def test_a_remote_url_with_credentials_is_refused():
    with pytest.raises(UserError, match="must not hold credentials"):
        load_config(ROOT / "configs" / "tiny.yaml", ["model.kind=remote", "model.path=null",
                                                     "model.remote={url: 'http://user:secret@127.0.0.1:8080'}"])
