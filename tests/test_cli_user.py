"""The command line as a user runs it: from the project root, with the default folders (runs/, runs-private/).

One run of configs/tiny.yaml under runs/ is interrupted with Ctrl-C, resumed, and then every command that takes a
run is pointed at it by id, by relative path and by absolute path. The run folders get unique ids and are removed
afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, wait_for_http

from privevo.testing import assert_close_images


def remove_run(run_id: str) -> None:
    """Remove a run made under the default folders, and kfp.local's log of it."""
    for folder in (ROOT / "runs" / run_id, ROOT / "runs-private" / run_id):
        shutil.rmtree(folder, ignore_errors=True)
    (ROOT / "local_outputs" / f"{run_id}.log").unlink(missing_ok=True)


@pytest.fixture
def new_run_id(request) -> str:
    """A run id no other run uses; whatever it leaves under runs/ and runs-private/ is removed after the test."""
    run_id = f"cli-user-{uuid.uuid4().hex[:8]}"
    request.addfinalizer(lambda: remove_run(run_id))
    return run_id


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single line a user error prints on stderr (nothing else, no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


@dataclass
class InterruptedRun:
    """A run under runs/ that Ctrl-C stopped during its first shards, then `run --resume` finished."""

    run_id: str
    interrupt: subprocess.CompletedProcess
    interrupt_seconds: float  # from Ctrl-C to the process's exit
    files_after_interrupt: list[Path]
    resume: subprocess.CompletedProcess

    @property
    def run_dir(self) -> Path:
        return ROOT / "runs" / self.run_id


@pytest.fixture(scope="module")
def interrupted_run(request) -> InterruptedRun:
    run_id = f"cli-user-{uuid.uuid4().hex[:8]}"
    request.addfinalizer(lambda: remove_run(run_id))
    process = subprocess.Popen([sys.executable, "pipeline.py", "run", "--config", "configs/tiny.yaml", "--run-id", run_id],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its own process group, as a terminal's Ctrl-C reaches it
    marker = ROOT / "runs" / run_id / "gen-000" / "steps"
    deadline = time.time() + 300
    while not marker.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), "the run never reached its first shard"
    os.killpg(process.pid, signal.SIGINT)
    interrupted_at = time.time()
    out, err = process.communicate(timeout=120)
    seconds = time.time() - interrupted_at
    interrupt = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    files = sorted(p for folder in (ROOT / "runs" / run_id, ROOT / "runs-private" / run_id) for p in folder.rglob("*"))
    resume = subprocess.run([sys.executable, "pipeline.py", "run", "--resume", run_id], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    return InterruptedRun(run_id, interrupt, seconds, files, resume)


def test_ctrl_c_stops_a_run_in_one_line_that_says_how_to_resume(interrupted_run: InterruptedRun):
    result = interrupted_run.interrupt
    assert result.returncode == 130
    assert one_error_line(result) == (f"error: interrupted: continue run {interrupted_run.run_id} with "
                                      f"`python pipeline.py run --resume {interrupted_run.run_id}`")
    assert interrupted_run.interrupt_seconds < 60  # not after kfp.local retried the interrupted steps
    # nothing half-written: no temp file, and every array file that exists loads whole
    assert not [p for p in interrupted_run.files_after_interrupt if ".tmp-" in p.name]
    for path in interrupted_run.files_after_interrupt:
        if path.suffix == ".npz" and path.exists():
            with np.load(path) as npz:
                assert npz.files


def test_the_interrupted_run_resumes_to_a_clean_audit(interrupted_run: InterruptedRun, run_cli):
    resume = interrupted_run.resume
    assert resume.returncode == 0, resume.stdout[-3000:] + resume.stderr[-3000:]
    assert f"run path: runs/{interrupted_run.run_id}" in resume.stdout
    assert run_cli("audit", interrupted_run.run_id).stdout.strip().splitlines()[-1] == "audit: OK"


@pytest.mark.parametrize("form", ["id", "relative path", "absolute path"])
def test_audit_and_report_take_a_run_under_the_default_folder(interrupted_run: InterruptedRun, run_cli, form):
    run_id = interrupted_run.run_id
    name = {"id": run_id, "relative path": f"runs/{run_id}", "absolute path": str(ROOT / "runs" / run_id)}[form]
    result = run_cli("audit", name)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "audit: OK"
    result = run_cli("report", name)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = result.stdout.strip().removeprefix("report: ")
    assert printed.endswith(f"runs/{run_id}/report/index.html") and (ROOT / printed).is_file()


def test_rerun_evaluate_and_resume_with_a_setting_changed(interrupted_run: InterruptedRun, run_cli):
    run_id, run_json = interrupted_run.run_id, interrupted_run.run_dir / "run.json"
    result = run_cli("rerun", run_id, "--step", "evaluate")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "final_epsilon" in json.loads(result.stdout.strip().splitlines()[-1])

    before = run_json.read_text()
    result = run_cli("run", "--resume", run_id, "--set", "privacy.epsilon=2")
    assert result.returncode == 2
    assert one_error_line(result).startswith("error: --set privacy.epsilon cannot change on resume: ")
    assert run_json.read_text() == before

    result = run_cli("run", "--resume", f"runs/{run_id}", "--set", "evaluation.samples_per_grid=8")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    record = json.loads(run_json.read_text())
    assert record["config"]["evaluation"]["samples_per_grid"] == 8
    assert record["amendments"][-1]["changed"] == {"evaluation.samples_per_grid": [16, 8]}
    assert run_cli("audit", str(interrupted_run.run_dir)).stdout.strip().splitlines()[-1] == "audit: OK"


@pytest.mark.parametrize(("args", "message"), [
    (["--step", "generate_variations", "--generation", "1"], "error: generate_variations needs --shard N"),
    (["--step", "generate_variations", "--shard", "1"], "error: generate_variations needs --generation N"),
    (["--step", "evaluate", "--generation", "1"], "error: evaluate takes no --generation"),
    (["--step", "generate_initial", "--generation", "0", "--shard", "0"], "error: generate_initial takes no --generation"),
    (["--step", "generate_variations", "--generation", "1", "--shard", "1"],
     "error: generate_variations's output for generation 1 shard 1 exists: add --force"),
    (["--step", "generate_variations", "--generation", "1", "--shard", "1", "--force"],
     "error: generate_variations's output for generation 1 shard 1 cannot be replaced: the vote of generation 2 "
     "already released"),
    (["--step", "initial_shard", "--shard", "0", "--force"], "the vote of generation 1 already released"),
    (["--step", "embed_private", "--force"], "the vote of generation 1 already released"),
    (["--step", "dp_vote", "--generation", "1", "--force"], "error: dp_vote never replaces its DP release"),
    (["--step", "embed_synthetic", "--generation", "1", "--shard", "0", "--force-new-noise"],
     "error: --force-new-noise redraws a vote's noise"),
])
def test_rerun_refuses_in_one_line_and_changes_nothing(interrupted_run: InterruptedRun, run_cli, args, message):
    before = {p: p.read_bytes() for p in interrupted_run.run_dir.rglob("*") if p.is_file()}
    result = run_cli("rerun", interrupted_run.run_id, *args)
    assert result.returncode == 2
    assert one_error_line(result).startswith("error: ") and message in result.stderr
    assert {p: p.read_bytes() for p in interrupted_run.run_dir.rglob("*") if p.is_file()} == before


def test_rerun_force_recomputes_a_step_nothing_was_released_from(interrupted_run: InterruptedRun, run_cli):
    run_id, run_dir = interrupted_run.run_id, interrupted_run.run_dir
    shard = run_dir / "gen-002" / "shards" / "shard-001.npz"
    record = run_dir / "gen-002" / "steps" / "generate_variations-001.json"
    before, finished_at = dict(np.load(shard)), json.loads(record.read_text())["finished_at"]
    time.sleep(1.1)  # the step record's time is to the second
    result = run_cli("rerun", run_id, "--step", "generate_variations", "--generation", "2", "--shard", "1", "--force")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reusing" not in result.stderr  # computed again, not the stored output handed back
    assert json.loads(record.read_text())["finished_at"] != finished_at
    after = np.load(shard)  # seeded: the same parents and children (another process: within the rounding tolerance)
    np.testing.assert_array_equal(after["parent_ids"], before["parent_ids"])
    assert_close_images(after["images"], before["images"])
    assert run_cli("audit", run_id).stdout.strip().splitlines()[-1] == "audit: OK"
    assert run_cli("rerun", run_id, "--step", "evaluate").returncode == 0  # merges generation 2 again
    assert (run_dir / "gen-002" / "population.npz").is_file()
    assert run_cli("audit", run_id).stdout.strip().splitlines()[-1] == "audit: OK"


def test_ctrl_c_stops_serve_cleanly(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "pipeline.py", "serve", "--model-kind", "ddpm_unet", "--model-path",
                                "models/tiny-unet", "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v2/health/ready", process, "serve", timeout=120)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "stopped serving (interrupted)", err
