"""Per-process costs: thread settings (privevo.runtime) and steps that load only what they need."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_run

from privevo import runtime

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_cpu_budget_is_within_the_affinity_mask():
    budget = runtime.cpu_budget()
    assert 1 <= budget <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("files, quota", [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "50000 100000\n"}, 0.5),
    ({"cpu.max": "250000 100000\n"}, 2.5),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.5),
    ({}, None),
])
def test_cgroup_quota_caps_the_cpu_budget(tmp_path, monkeypatch, files, quota):
    """A container's CPU limit (cgroup v2 cpu.max, or v1 cfs quota/period) caps the budget, rounded up."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    real_open = open

    def cgroup_in_tmp(path, *args, **kwargs):
        if str(path).startswith("/sys/fs/cgroup/"):
            path = tmp_path / str(path).removeprefix("/sys/fs/cgroup/")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(runtime, "open", cgroup_in_tmp, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert runtime._cgroup_cpu_quota() == quota
    assert runtime.cpu_budget() == (8 if quota is None else math.ceil(quota))


def test_passive_waiting_keeps_an_explicit_setting(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    runtime.prefer_passive_waiting()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    runtime.prefer_passive_waiting()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_torch_threads_are_only_ever_lowered(monkeypatch):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        runtime.configure_torch_threads()
        assert torch.get_num_threads() == 1  # a caller's lower choice is kept
        torch.set_num_threads(runtime.cpu_budget() + 3)
        runtime.configure_torch_threads()
        assert torch.get_num_threads() == runtime.cpu_budget()
    finally:
        torch.set_num_threads(before)


def test_shard_steps_split_the_cpus_between_concurrent_shards(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_budget", lambda: 8)
    monkeypatch.delenv(runtime.CONCURRENT_SHARDS_ENV, raising=False)
    assert runtime.shard_cpu_budget() == 8  # a cluster pod: its own budget
    monkeypatch.setenv(runtime.CONCURRENT_SHARDS_ENV, "2")
    assert runtime.shard_cpu_budget() == 4
    monkeypatch.setenv(runtime.CONCURRENT_SHARDS_ENV, "16")
    assert runtime.shard_cpu_budget() == 1
    monkeypatch.setenv(runtime.CONCURRENT_SHARDS_ENV, "not a number")
    assert runtime.shard_cpu_budget() == 8


def _modules_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; return which heavy modules it imported."""
    probe = code + (
        "\nimport json, os, sys\n"
        "print(json.dumps({'diffusers': 'diffusers' in sys.modules, 'torch': 'torch' in sys.modules,"
        " 'gcs': 'google.cloud.storage' in sys.modules,"
        " 'omp': os.environ.get('OMP_WAIT_POLICY')}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, env=env,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_embedding_step_does_not_import_diffusers():
    found = _modules_after(
        "from privevo import steps\n"
        "from privevo.config import load_config\n"
        "steps.load_embedding(load_config('configs/demo.yaml'))\n"
    )
    assert found["torch"] and not found["diffusers"]
    assert found["omp"] == "PASSIVE"  # set before torch loaded OpenMP


def test_embed_synthetic_without_lookahead_embeds_the_images_without_the_model(tmp_path, monkeypatch):
    from privevo import steps

    run = make_tiny_run(tmp_path, "no-lookahead", "population.lookahead=0")

    def no_model(_config):
        raise AssertionError("embed_synthetic without lookahead loaded the diffusion model")

    monkeypatch.setattr(steps, "load_model", no_model)
    reference = steps.embed_synthetic(run, 1, 1)
    shard = steps.load_population(run, 0).samples[steps.shard_slice(run.config.population.size, 1, 2)]
    expected = steps.load_embedding(run.config).embed(shard)
    assert np.array_equal(np.load(reference["uri"])["embeddings"], expected)


def test_dp_vote_imports_no_torch(tmp_path):
    """The only step that reads private data each generation runs no network: embed_synthetic did."""
    from privevo import steps

    run = make_tiny_run(tmp_path, "vote")
    for shard in range(run.config.population.num_shards):
        steps.embed_synthetic(run, 1, shard)
    found = _modules_after(
        "from privevo import steps\n"
        "from privevo.run_record import Run\n"
        f"run = Run.open({run.config.run_root!r}, 'vote')\n"
        "assert steps.dp_vote(run, 1, steps.private_reference(run))['generation'] == 1\n"
    )
    assert not found["torch"] and not found["diffusers"]
    assert not found["gcs"]  # a local run root never loads google-cloud-storage


def test_progress_without_a_terminal_logs_lines_and_private_work_logs_nothing(monkeypatch, caplog):
    import logging

    monkeypatch.setattr(runtime, "PROGRESS_LOG_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="privevo.progress"):
        with runtime.Progress(30, "ddpm: random", "img") as progress:  # pytest's stderr is no terminal
            for _ in range(3):
                progress.update(10)
        assert [r.getMessage() for r in caplog.records] == [f"ddpm: random: {n}/30 img" for n in (10, 20, 30)]
        caplog.clear()
        with runtime.Progress(30, "embed", "img", enabled=False) as progress:
            progress.update(30)
        assert caplog.records == []
