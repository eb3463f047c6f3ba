"""Audit, write-once DP releases, reruns that never spend privacy twice, resume after a crash."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, tiny_args

import privevo
from privevo import privacy
from privevo.config import load_config
from privevo.privacy import noise_multiplier_for

TINY = ROOT / "configs" / "tiny.yaml"


def audit(run_cli, run, *extra):
    return run_cli("audit", run.run_id, "--run-root", run.run_root, *extra)


def ledger_events(run):
    return json.loads((run.run_dir / "ledger.json").read_text())["events"]


def test_audit_passes_and_lists_every_generation(tiny_run, run_cli):
    result = audit(run_cli, tiny_run)
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "audit: OK"
    for g in range(3):
        assert f"generation {g}: epsilon after" in result.stdout
    assert "DP release gen-002/noisy_histogram.npz" in result.stdout
    report = json.loads(audit(run_cli, tiny_run, "--json").stdout)
    assert report["ok"] and [g["generation"] for g in report["generations"]] == [0, 1, 2]
    assert report["epsilon"] == pytest.approx(json.loads((tiny_run.run_dir / "metrics.json").read_text())
                                              ["final"]["epsilon"])


@pytest.mark.parametrize(
    "target,needle",
    [
        ("gen-001/population.npz", "gen-001/population.npz"),
        ("gen-002/noisy_histogram.npz", "gen-002/noisy_histogram.npz"),
        ("ledger.json", "ledger"),
    ],
)
def test_tampering_fails_the_audit_and_names_the_file(tiny_run, tmp_path, run_cli, target, needle):
    run = tiny_run.copy(tmp_path)
    path = run.run_dir / target
    if target == "ledger.json":
        ledger = json.loads(path.read_text())
        ledger["events"][0]["noise_multiplier"] *= 2  # understates the privacy cost
        path.write_text(json.dumps(ledger))
    else:
        data = np.load(path)
        arrays = {k: data[k] for k in data.files}
        key = "images" if "images" in arrays else "noisy_histogram"
        arrays[key] = arrays[key].copy()
        arrays[key].flat[0] = arrays[key].flat[0] + 1
        np.savez_compressed(path, **arrays)
    result = audit(run_cli, run)
    assert result.returncode == 1
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("audit: FAILED:") and needle in last


def test_rerun_vote_reuses_release_and_force_charges_once_more(tiny_run, tmp_path, run_cli):
    run = tiny_run.copy(tmp_path)
    config = load_config(ROOT / "configs" / "tiny.yaml")
    sigma = noise_multiplier_for(config)
    release = run.run_dir / "gen-002" / "noisy_histogram.npz"
    before = release.read_bytes()
    epsilon_before = privacy.Ledger.from_dict(json.loads((run.run_dir / "ledger.json").read_text())).epsilon()

    result = run_cli("rerun", run.run_id, "--run-root", run.run_root, "--step", "dp_vote", "--generation", "2")
    assert result.returncode == 0, result.stderr
    assert "reusing it" in result.stderr
    assert release.read_bytes() == before and len(ledger_events(run)) == 2
    assert audit(run_cli, run).returncode == 0

    # The target epsilon is spent: a forced redraw is refused, nothing is written.
    result = run_cli("rerun", run.run_id, "--run-root", run.run_root, "--step", "dp_vote", "--generation", "2",
                     "--force-new-noise")
    assert result.returncode == 2 and "over the budget" in result.stderr.strip().splitlines()[-1]
    assert len(ledger_events(run)) == 2 and len(list(run.run_dir.rglob("noisy_histogram*.npz"))) == 2

    # With room in the budget, it draws again and charges exactly one more composition.
    run_json = run.run_dir / "run.json"
    record = json.loads(run_json.read_text())
    record["config"]["privacy"]["epsilon_budget"] = 100.0
    run_json.write_text(json.dumps(record))
    result = run_cli("rerun", run.run_id, "--run-root", run.run_root, "--step", "dp_vote", "--generation", "2",
                     "--force-new-noise")
    assert result.returncode == 0, result.stderr
    events = ledger_events(run)
    assert len(events) == 3 and events[-1]["reason"] == "force-new-noise"
    after = privacy.Ledger.from_dict(json.loads((run.run_dir / "ledger.json").read_text())).epsilon()
    assert after > epsilon_before
    assert after == pytest.approx(privacy.schedule_epsilon([sigma] * 3, config.privacy.delta))
    assert release.read_bytes() == before  # the first release stays as it was
    # metrics.json still reports the old epsilon: the audit flags it until evaluate reruns.
    assert audit(run_cli, run).returncode == 1
    assert run_cli("rerun", run.run_id, "--run-root", run.run_root, "--step", "evaluate").returncode == 0
    assert audit(run_cli, run).returncode == 0


def test_two_runs_share_generation_zero_but_not_noise(tiny_run, tmp_path):
    """A second run of the same config starts from the same generation 0 as the kfp.local run, and draws its own noise.

    The second run is made in this process (which runner ran it does not matter here), maybe at another torch thread
    count than kfp.local's steps: generation 0 is the same up to the suite's float-kernel tolerance."""
    from privevo.testing import assert_close_images

    privevo.run(TINY, ["population.generations=1", "population.degrees=0.6"], run_root=tmp_path / "runs",
                private_root=tmp_path / "private", run_id="second")
    first, second = tiny_run.run_dir, tmp_path / "runs" / "second"
    assert_close_images(np.load(first / "gen-000/population.npz")["images"],
                        np.load(second / "gen-000/population.npz")["images"])
    assert not np.array_equal(np.load(first / "gen-001/noisy_histogram.npz")["noisy_histogram"],
                              np.load(second / "gen-001/noisy_histogram.npz")["noisy_histogram"])


def _kill_when(process: subprocess.Popen, target, during: str) -> None:
    """SIGKILL ``process``'s whole group once ``target`` exists (the run is then in ``during``)."""
    deadline = time.time() + 300
    while not target.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert target.exists(), f"the run never reached {during}"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_kill_mid_generation_then_resume_twice(tmp_path, run_cli):
    """SIGKILL the whole local run while generation 1's variations are made, resume it, SIGKILL the resume during
    generation 2's vote, resume again, and check the record: the votes are paid once each."""
    runs = tmp_path / "runs"
    resume = ["run", "--resume", "killed", "--run-root", str(runs), "--pipeline-root", str(tmp_path / "kfp")]
    commands = [tiny_args(runs, tmp_path / "private", "--run-id", "killed"), resume]
    for command, (marker, during) in zip(commands, [("gen-001/selection.npz", "generate_variations"),
                                                    ("gen-001/population.npz", "dp_vote")], strict=True):
        process = subprocess.Popen([sys.executable, "pipeline.py", *command], cwd=ROOT, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _kill_when(process, runs / "killed" / marker, during)
        assert not (runs / "killed" / "metrics.json").exists()
        # No half file that looks whole: every population file that exists loads.
        for path in runs.rglob("*.npz"):
            assert np.load(path).files

    result = run_cli(*resume)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    from conftest import TinyRun

    run = TinyRun(str(runs), str(tmp_path / "private"), "killed", result.stdout)
    assert audit(run_cli, run).returncode == 0
    assert [e["generation"] for e in ledger_events(run)] == [1, 2]
    assert json.loads((run.run_dir / "run.json").read_text())["status"] == "complete"


def test_canary_never_reaches_a_released_file(tmp_path, run_cli):
    """A distinctive private image and its embedding appear in no released byte."""
    from privevo.image.embeddings.pixels import PixelEmbedding

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    canary = np.zeros((28, 28, 1), np.uint8)
    canary[::2, ::2] = 255
    canary[5:9, 5:20] = 77
    images[17] = canary
    private = tmp_path / "private.npz"
    np.savez(private, images=images)
    # in this process: every released file is a step's, and the steps are the pipeline's (test_privacy_guarantees
    # checks the kfp.local run's own files, its pipeline root included)
    privevo.run(TINY, ["private.source=npz", f"private.path={private}", "private.split=null", "private.classes=null",
                       "private.rows=null"], run_root=tmp_path / "runs", private_root=tmp_path / "private",
                run_id="canary")
    canary_embedding = PixelEmbedding(28, 1).embed(canary[None])[0]
    needles = [canary.tobytes(), canary_embedding.astype(np.float32).tobytes(),
               canary_embedding.astype(np.float64).tobytes()]
    released = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert released
    for path in released:
        blobs = [path.read_bytes()]
        if path.suffix == ".npz":
            data = np.load(path)
            blobs += [data[k].tobytes() for k in data.files]
        for blob in blobs:
            for needle in needles:
                assert needle not in blob, path
    run_dir = tmp_path / "runs" / "canary"
    assert run_cli("audit", "canary", "--run-root", str(tmp_path / "runs")).returncode == 0
    assert not (run_dir / "private_embeddings.npz").exists()


def test_audit_rerun_and_report_accept_the_run_path_that_run_prints(tiny_run, run_cli):
    printed = next(line for line in tiny_run.stdout.splitlines() if line.startswith("run path: "))
    run_path = printed.removeprefix("run path: ")
    assert run_path == str(tiny_run.run_dir)
    result = run_cli("audit", run_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "audit: OK"
    result = run_cli("audit", "no-such-run", "--run-root", tiny_run.run_root)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: no run no-such-run")


def test_a_new_run_with_an_existing_id_is_refused(tiny_run, tmp_path, run_cli):
    run = tiny_run.copy(tmp_path)
    before = sorted(p for p in run.run_dir.rglob("*"))
    result = run_cli(*tiny_args(run.run_root, tmp_path / "private", "--run-id", run.run_id))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: run {run.run_id} already exists") and "--resume" in last
    assert sorted(p for p in run.run_dir.rglob("*")) == before
