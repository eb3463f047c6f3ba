"""The null model and embedding: refused unless asked for, seeded per sample and per content, and real backends of the
normal pipeline (a run of them passes the audit, in process and through kfp.local)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from privevo.audit import audit_run
from privevo.config import load_config
from privevo.errors import UserError
from tests.conftest import ROOT, tiny_args

NULL = ["model.kind=null", "model.allow_null=true", "embedding.name=null", "embedding.dim=64"]


def _config(*overrides: str):
    return load_config(ROOT / "configs" / "tiny.yaml", [*NULL, *overrides])


@pytest.mark.parametrize("refused", ["model.allow_null=false", "model.kind=ddpm_unet"])
def test_null_is_refused_unless_allowed(refused):
    overrides = [*NULL, refused] if refused.startswith("model.allow") else ["embedding.name=null", "embedding.dim=64"]
    with pytest.raises(UserError) as error:
        load_config(ROOT / "configs" / "tiny.yaml", overrides)
    message = str(error.value)
    assert "\n" not in message and "allow_null" in message and "benchmarks" in message


def test_null_model_draws_per_sample_and_varies_by_degree():
    from privevo.image.models import load_model

    model = load_model(_config("model.batch_size=3"))
    whole = model.random(7, seed=5)
    assert whole.shape == (7, 28, 28, 1) and whole.dtype == np.uint8
    assert np.array_equal(model.random(4, seed=5, first_index=3), whole[3:])  # shards draw the same samples
    assert not np.array_equal(model.random(7, seed=6), whole)
    assert np.array_equal(model.variation(whole, 0.0, seed=1), whole)
    changed = [(model.variation(whole, degree, seed=1) != whole).mean() for degree in (0.2, 0.8)]
    assert 0.1 < changed[0] < 0.3 and 0.7 < changed[1] < 0.9  # a degree share of the pixels drawn anew


def test_null_embedding_is_seeded_by_content():
    from privevo.image.embeddings import load_embedding

    embedding = load_embedding(_config())
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    vectors = embedding.embed(images)
    assert vectors.shape == (5, 64) and vectors.dtype == np.float32
    assert np.array_equal(embedding.embed(images[[4, 2]]), vectors[[4, 2]])  # any batch: the same rows
    assert len({row.tobytes() for row in vectors}) == 5


@pytest.mark.slow
def test_null_run_in_process_passes_the_audit(tmp_path):
    import privevo

    result = privevo.run("tiny", NULL, run_root=tmp_path / "runs", private_root=tmp_path / "private", run_id="null")
    report = audit_run(result.run)
    assert report.ok, report.first_failure
    assert result.last_generation == 2
    assert len(result.population().samples) == 24


@pytest.mark.slow
def test_null_run_through_kfp_local_passes_the_audit(tmp_path, run_cli):
    # one generation has every kind of task; each more is only more kfp.local process start-ups
    one_generation = ["population.generations=1", "population.degrees=[0.5]"]
    sets = [arg for item in [*NULL, *one_generation] for arg in ("--set", item)]
    started = time.monotonic()
    result = run_cli(*tiny_args(tmp_path / "runs", tmp_path / "private", "--run-id", "null-kfp", *sets))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert time.monotonic() - started < 300  # no network, no model: minutes would mean a step hangs
    audit = run_cli("audit", "null-kfp", "--run-root", str(tmp_path / "runs"), "--json")
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr[-3000:]
    assert json.loads(audit.stdout)["ok"] is True
