"""Steps over the run layout: synthetic embeddings for the vote (embed_synthetic) and what the vote checks."""

import numpy as np
import pytest
from conftest import ROOT, make_tiny_run

from privevo import steps
from privevo.errors import UserError
from privevo.population import Population
from privevo.testing import BATCH_TOLERANCE, assert_close_images


def _vote_embeddings(run, generation: int) -> np.ndarray:
    for shard in range(run.config.population.num_shards):
        steps.embed_synthetic(run, generation, shard)
    return np.concatenate([np.load(run.layout.synthetic_embeddings(generation, s))["embeddings"]
                           for s in range(run.config.population.num_shards)])


@pytest.mark.model_outputs
def test_lookahead_embeddings_do_not_depend_on_the_sharding(tmp_path):
    # The shipped model: a trained UNet keeps the rounding differences of other batch sizes within a
    # grey level, where the random-weight tiny UNet amplifies them to tens of levels.
    options = [f"model.path={ROOT / 'models' / 'fashion-mnist-ddpm'}", "model.autocast=off", "population.lookahead=2"]
    two = make_tiny_run(tmp_path / "two", "two-shards", "population.num_shards=2", *options)
    one = make_tiny_run(tmp_path / "one", "one-shard", "population.num_shards=1", *options)
    # shards run at other batch sizes than the whole: equal within the suite's float-kernel tolerance
    assert_close_images(steps.load_population(two, 0).samples, steps.load_population(one, 0).samples)
    sharded, whole = _vote_embeddings(two, 1), _vote_embeddings(one, 1)
    assert sharded.shape == (two.config.population.size, whole.shape[1])
    # pixel embeddings (x / 255) of lookahead variations: the same tolerance, in embedding units
    assert np.abs(sharded - whole).max() <= BATCH_TOLERANCE.max_levels / 255 + 1e-6
    assert np.mean(sharded != whole) <= BATCH_TOLERANCE.max_fraction
    # the lookahead means are of variations, not of the images themselves
    assert not np.allclose(whole, steps.load_embedding(one.config).embed(steps.load_population(one, 0).samples))


def test_the_vote_refuses_embeddings_of_a_population_that_changed(tmp_path):
    run = make_tiny_run(tmp_path, "changed")
    _vote_embeddings(run, 1)
    shard_uri = run.layout.shard(0, 1)
    with open(shard_uri, "rb") as handle:
        shard = run.modality.decode_population(handle.read(), shard_uri)
    changed = Population(255 - shard.samples, shard.labels, shard.parent_ids, generation=0)
    with open(shard_uri, "wb") as handle:
        handle.write(run.modality.encode_population(changed))

    with pytest.raises(UserError, match="run embed_synthetic for generation 1 shard 1 first"):
        steps.dp_vote(run, 1, steps.private_reference(run))
    assert not (tmp_path / "runs" / "changed" / "gen-001" / "noisy_histogram.npz").exists()  # nothing released

    before = np.load(run.layout.synthetic_embeddings(1, 1))["embeddings"]
    steps.embed_synthetic(run, 1, 1)  # notices the change and embeds the shard again
    assert not np.array_equal(np.load(run.layout.synthetic_embeddings(1, 1))["embeddings"], before)
    assert steps.dp_vote(run, 1, steps.private_reference(run))["generation"] == 1


def test_the_vote_maps_the_private_embeddings_and_refuses_a_changed_file(tmp_path, monkeypatch):
    from privevo import storage, voting

    run = make_tiny_run(tmp_path, "mapped")
    _vote_embeddings(run, 1)
    uri = run.layout.private_embeddings
    with open(uri, "rb") as handle:
        embedded = handle.read()
    stored = dict(np.load(uri))
    stored["embeddings"][0, 0] += 1.0  # one value changed, the file still well formed
    storage.write_npz(uri, stored, compress=False)
    with pytest.raises(UserError, match="changed since it was embedded: rerun embed_private in a new run"):
        steps.dp_vote(run, 1, steps.private_reference(run))
    assert not (tmp_path / "runs" / "mapped" / "gen-001" / "noisy_histogram.npz").exists()  # nothing released

    with open(uri, "wb") as handle:
        handle.write(embedded)
    searched = []
    vote = voting.nearest_neighbour_histogram

    def spy(private, *args):
        searched.append((type(private), private.shape))
        return vote(private, *args)

    monkeypatch.setattr(voting, "nearest_neighbour_histogram", spy)
    assert steps.dp_vote(run, 1, steps.private_reference(run))["generation"] == 1
    assert searched == [(np.memmap, stored["embeddings"].shape)]  # the vote searched the file where it lies


def test_embed_synthetic_needs_the_population_shard(tmp_path):
    run = make_tiny_run(tmp_path, "early")
    with pytest.raises(UserError, match="run generate_variations for generation 1 shard 0 first"):
        steps.embed_synthetic(run, 2, 0)
    with pytest.raises(UserError, match=r"generation must be in 1\.\.2"):
        steps.embed_synthetic(run, 3, 0)


def _variations_of_generation_1(run) -> tuple[Population, list[dict]]:
    for shard in range(run.config.population.num_shards):
        steps.embed_synthetic(run, 1, shard)
    steps.dp_vote(run, 1, steps.private_reference(run))
    records = []
    for shard in range(run.config.population.num_shards):
        steps.generate_variations(run, 1, shard)
        with open(run.layout.step_record(1, "generate_variations", shard)) as handle:
            records.append(__import__("json").load(handle)["params"])
    return steps.load_population(run, 1), records


def test_reuse_lookahead_makes_the_first_children_from_the_votes_variations(tmp_path):
    run = make_tiny_run(tmp_path, "reuse", "population.lookahead=2", "population.reuse_lookahead=true",
                        "privacy.epsilon=null", "privacy.noise_multiplier=0", "privacy.threshold=0",
                        "privacy.allow_non_private=true", "privacy.dataset_budget=null")
    population, records = _variations_of_generation_1(run)
    lookahead = np.concatenate([np.load(run.layout.lookahead_variations(1, s))["variations"]
                                for s in range(run.config.population.num_shards)], axis=1)
    assert lookahead.shape[:2] == (2, run.config.population.size)
    seen: dict[int, int] = {}
    expected_reused = 0
    for child, parent in enumerate(population.parent_ids.tolist()):
        k = seen.get(parent, 0)
        seen[parent] = k + 1
        if k < 2:  # the parent's first two children are its lookahead variations, exactly
            expected_reused += 1
            assert np.array_equal(population.samples[child], lookahead[k, parent])
    assert sum(r["reused_lookahead"] for r in records) == expected_reused > 0
    assert sum(r["reused_lookahead"] + r["fresh_variations"] for r in records) == run.config.population.size


def test_reuse_lookahead_does_not_depend_on_the_sharding(tmp_path, monkeypatch):
    run = make_tiny_run(tmp_path, "shards", "population.lookahead=2", "population.reuse_lookahead=true")
    parents = np.array([0, 0, 0, 3, 3, 5, 5, 5, 5, 7, 8, 8])
    variations = np.arange(2 * 9 * 2, dtype=np.uint8).reshape(2, 9, 2, 1, 1)  # (L, N, H, W, C): each one distinct
    monkeypatch.setattr(steps, "_lookahead_variations",
                        lambda run, generation, repeats, candidates: variations[repeats, candidates])
    whole, whole_offset = steps._reused_lookahead(run, 1, parents, slice(0, 12))
    assert whole_offset == 0 and sorted(whole) == [0, 1, 3, 4, 5, 6, 9, 10, 11]  # at most 2 children per parent
    assert np.array_equal(whole[6], variations[1, 5])
    merged, fresh_before = {}, 0
    for part in (slice(0, 4), slice(4, 7), slice(7, 12)):  # another sharding: the same children, the same seeds
        reused, offset = steps._reused_lookahead(run, 1, parents, part)
        assert offset == fresh_before  # fresh children are numbered globally
        fresh_before += (part.stop - part.start) - len(reused)
        merged.update({i + part.start: image for i, image in reused.items()})
    assert sorted(merged) == sorted(whole) and all(np.array_equal(merged[i], whole[i]) for i in whole)


def test_a_reused_output_is_in_its_steps_manifest_after_a_crash_before_the_part(tmp_path):
    """A try that wrote its output but stopped before its manifest part: the retry that reuses the output lists it."""
    import os

    from privevo import storage

    run = make_tiny_run(tmp_path, "crashed")
    steps.embed_synthetic(run, 1, 0)
    for generation, writer, uri in ((0, "generate_initial-000", run.layout.shard(0, 0)),
                                    (1, "embed_synthetic-000", run.layout.synthetic_embeddings(1, 0))):
        part = run.layout.manifest_part(generation, writer)
        os.remove(part)  # as if the try had stopped right after writing its output
        assert storage.relative_to(uri, run.layout.gen_dir(generation)) not in storage.read_manifest(
            run.layout.manifest_dir(generation))
    steps.generate_initial(run, 0)
    steps.embed_synthetic(run, 1, 0)
    for generation, uri in ((0, run.layout.shard(0, 0)), (1, run.layout.synthetic_embeddings(1, 0))):
        listed = storage.read_manifest(run.layout.manifest_dir(generation))
        assert listed[storage.relative_to(uri, run.layout.gen_dir(generation))]["sha256"] == storage.sha256_uri(uri)


def test_a_loaded_model_is_kept_while_what_its_backend_reads_stays_the_same():
    from privevo.config import load_config

    def config(*overrides: str):
        return load_config(ROOT / "configs" / "tiny.yaml", [f"model.path={ROOT / 'models' / 'tiny-unet'}", *overrides])

    model = steps.load_model(config())
    assert steps.load_model(config("privacy.epsilon=2.0", "population.size=7", "private.limit=5", "seed=3")) is model
    assert steps.load_model(config("model.num_inference_steps=2")) is not model
    embedding = steps.load_embedding(config())
    assert steps.load_embedding(config("model.batch_size=3")) is embedding
    assert steps.load_embedding(config("embedding.batch_size=3")) is not embedding
