"""No timing side channel: a vote on N and on 20N private rows releases the same bytes, except the DP release and what
is computed from it, and no released time stamp taken during or after the work over the private set."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import ROOT

N = 16
RUN_ID = "timing"
#: Computed from the DP release: the release itself and the parents selected from it.
DP_DERIVED = {"gen-001/noisy_histogram.npz", "gen-001/selection.npz"}
#: Values that differ between any two runs whatever the private set: the public steps' own durations and
#: random charge tokens; the sha256 of a DP release.
VARYING_KEYS = {"seconds", "charge_id", "release_sha256"}
ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")


def _write_private_set(folder: Path, rows: int) -> list[str]:
    """``rows`` random 28x28 grayscale images of tiny's three classes, as an .npz; the config keys that read it."""
    rng = np.random.default_rng(rows)
    np.savez(folder / "private.npz", images=rng.integers(0, 256, (rows, 28, 28, 1), dtype=np.uint8),
             labels=rng.choice([1, 7, 8], rows))
    return ["private.source=npz", f"private.path={folder}/private.npz"]


def vote_on(root: Path, write_private: Callable[[Path], list[str]],
            *overrides: str) -> tuple[dict[str, tuple[bytes, float]], float]:
    """Run tiny's public steps, then embed_private and the first vote on the private set ``write_private`` writes into
    ``root`` (returning its config keys), in the same folders each time; returns the released files (bytes and
    modification time) and when the private work began."""
    from privevo import steps
    from privevo.config import load_config

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    config = load_config(ROOT / "configs" / "tiny.yaml", [
        f"run_root={root}/runs", f"private_root={root}/private", f"model.path={ROOT / 'models' / 'tiny-unet'}",
        "private.split=null", "private.rows=null", *write_private(root), *overrides,
    ])
    run = steps.resolve_run(config, {}, RUN_ID, resume=False, kfp_run_id="kfp-run")  # as the pipeline starts
    for shard in range(config.population.num_shards):
        steps.generate_initial(run, shard)
        steps.embed_synthetic(run, 1, shard)
    time.sleep(1.1)  # the released time stamps have one-second resolution: a later one would show
    began = time.time()
    steps.embed_private(run)
    steps.dp_vote(run, 1, steps.private_reference(run))
    released = {}
    for folder, _, files in os.walk(run.layout.run_dir):
        for name in files:
            path = os.path.join(folder, name)
            released[os.path.relpath(path, run.layout.run_dir)] = (Path(path).read_bytes(), os.path.getmtime(path))
    return released, began


def _vote(root: Path, rows: int) -> tuple[dict[str, tuple[bytes, float]], float]:
    """The vote on ``rows`` private rows, padded to 20N."""
    return vote_on(root, lambda folder: _write_private_set(folder, rows), f"privacy.max_private_rows={20 * N}")


def _masked(value: Any, times: list[str]) -> Any:
    """A JSON value with its time stamps (collected in ``times``) and VARYING_KEYS masked."""
    if isinstance(value, dict):
        return {k: "<varies>" if k in VARYING_KEYS else _masked(v, times) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, times) for v in value]
    if isinstance(value, str) and ISO_TIME.match(value):
        times.append(value)
        return "<time>"
    return value


def _manifest_view(value: dict[str, Any], generation: str) -> dict[str, Any]:
    """A manifest part with the records (sha256, size) of DP-derived files and of JSON files (which hold public
    timings: compared themselves above) left as their names."""
    return {name: record if not name.endswith(".json") and f"{generation}/{name}" not in DP_DERIVED else "<file>"
            for name, record in value["files"].items()}


def test_released_tier_of_a_vote_does_not_depend_on_the_private_set_size(tmp_path):
    small, began_small = _vote(tmp_path / "work", N)
    large, began_large = _vote(tmp_path / "work", 20 * N)

    assert set(small) == set(large)
    assert set(small) >= DP_DERIVED
    for name in sorted(small):
        assert small[name][1] <= began_small and large[name][1] <= began_large, f"{name} was modified after the " \
            "private work began"
        if name in DP_DERIVED:
            continue
        if not name.endswith(".json"):
            assert small[name][0] == large[name][0], name
            continue
        times_small: list[str] = []
        times_large: list[str] = []
        first = _masked(json.loads(small[name][0]), times_small)
        second = _masked(json.loads(large[name][0]), times_large)
        if "/manifest/" in name:
            generation = name.split("/", 1)[0]
            first, second = _manifest_view(first, generation), _manifest_view(second, generation)
        assert first == second, name
        for stamp, began in [(t, began_small) for t in times_small] + [(t, began_large) for t in times_large]:
            assert dt.datetime.fromisoformat(stamp).timestamp() <= began, f"{name}: {stamp} is after the private work"

    vote_record = json.loads(small["gen-001/steps/dp_vote.json"][0])
    assert not {"seconds", "finished_at", "started_at"} & set(vote_record)
    ledger = json.loads(small["ledger.json"][0])
    assert ledger["events"] and all(event["created_at"] for event in ledger["events"])


def test_private_timings_and_data_quality_stay_in_the_private_tier(tmp_path):
    _vote(tmp_path / "work", N)
    private = tmp_path / "work" / "private" / RUN_ID
    timings = json.loads((private / "private_timings.json").read_text())
    assert [entry["step"] for entry in timings] == ["embed_private", "dp_vote"]
    quality = json.loads((private / "data_quality.json").read_text())
    assert quality["records_kept"] == N and quality["records_voting"] == N
    assert quality["within_max_private_rows"] is True
    stored = np.load(private / "private_embeddings.npz")
    assert len(stored["embeddings"]) == 20 * N and int(stored["real"].sum()) == N
