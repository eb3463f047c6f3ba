"""The population schedule: several children per parent, kept parents, and phases of selection rules (Tab-PE)."""

import json
from pathlib import Path

import numpy as np
import pytest

import privevo
from privevo import privacy, steps
from privevo.audit import audit_run
from privevo.config import load_config, parse_config
from privevo.errors import UserError

NON_PRIVATE = ["privacy.epsilon=null", "privacy.noise_multiplier=0", "privacy.allow_non_private=true",
               "privacy.dataset_budget=null"]


def test_flat_keys_are_one_phase_of_todays_rule() -> None:
    config = load_config("configs/tiny.yaml", ["privacy.selection=rank", "privacy.threshold=2"])
    population = config.population
    assert population.schedule is None
    assert [population.candidates(g) for g in range(population.generations + 1)] == [population.size] * 3
    for generation in (1, 2):
        phase = population.phase(generation, config.privacy)
        assert (phase.selection, phase.threshold, phase.variations_per_parent, phase.keep_selected) == \
            ("rank", 2.0, 1, False)


def test_phases_fill_in_the_flat_keys_and_must_last_t_generations() -> None:
    data = load_config("configs/tiny-tabular.yaml").model_dump(mode="json")
    data["population"].update(variations_per_parent=3, schedule=[{"generations": 1}, {"generations": 2,
                                                                                      "keep_selected": True}])
    config = parse_config(data)
    assert [config.population.candidates(g) for g in range(4)] == [60, 180, 240, 240]
    assert config.population.phase(1, config.privacy).selection == config.privacy.selection
    data["population"]["initial_candidates_per_slot"] = 4
    assert [parse_config(data).population.candidates(g) for g in range(4)] == [240, 180, 240, 240]
    data["population"]["schedule"] = [{"generations": 2}]
    with pytest.raises(UserError, match=r"population\.schedule's phases last 2 generations but generations is 3"):
        parse_config(data)


def test_top_selection_takes_the_largest_counts_once_each() -> None:
    weights = np.array([0.0, 5.0, 1.0, 5.0, 0.0, 3.0, 0.0, 0.0])
    rng = np.random.default_rng(0)
    assert privacy.select_parents(weights, 3, rng, "top").tolist() == [1, 3, 5]
    zeros_broken = {tuple(privacy.select_parents(weights, 5, np.random.default_rng(s), "top")) for s in range(20)}
    assert all({1, 2, 3, 5} < set(chosen) for chosen in zeros_broken) and len(zeros_broken) > 1  # ties at random
    with pytest.raises(ValueError, match="at least 9 candidates"):
        privacy.select_parents(weights, 9, rng, "top")


def test_family_selection_takes_each_slots_largest_count() -> None:
    """Four slots of two candidates: each slot keeps its most-voted candidate (ties at random), so every slot goes on."""
    weights = np.array([0.0, 5.0, 1.0, 1.0, 3.0, 0.0, 0.0, 0.0])
    picks = {tuple(privacy.select_parents(weights, 4, np.random.default_rng(s), "family")) for s in range(20)}
    assert {(p[0], p[2]) for p in picks} == {(1, 4)}
    assert {p[1] for p in picks} == {2, 3} and {p[3] for p in picks} == {6, 7}
    with pytest.raises(ValueError, match="3 slots of equal length"):
        privacy.select_parents(weights, 3, np.random.default_rng(0), "family")


def _run(tmp_path: Path, name: str, *overrides: str) -> privevo.RunResult:
    return privevo.run("configs/tiny-tabular.yaml", overrides=[f"name={name}", *overrides],
                       run_root=str(tmp_path / "runs"), private_root=str(tmp_path / "private"), run_id=name)


@pytest.mark.slow
def test_a_two_phase_schedule_runs_end_to_end(tmp_path: Path) -> None:
    result = _run(tmp_path, "phases")
    run = result.run
    size = run.config.population.size
    candidates = [steps.load_candidates(run, g) for g in range(4)]
    assert [len(c) for c in candidates] == [60, 60, 180, 180]  # sample, then top with 2 children and the parent
    for generation in (2, 3):
        selection = np.load(run.layout.selection(generation))
        parents = selection["parent_ids"]
        assert len(parents) == size and len(np.unique(parents)) == size  # the top counts, each once
        previous, current = candidates[generation - 1], candidates[generation]
        kept = current.samples[::3]  # each slot: its kept parent, then its children
        assert np.array_equal(kept, previous.samples[parents])
        assert np.array_equal(current.parent_ids, np.repeat(parents, 3))
        record = json.loads(Path(run.layout.step_record(generation, "dp_vote")).read_text())["params"]
        assert record["selection"] == "top"
        # the output of a keep_selected generation is its selected set: what the API, evaluation and export use
        output = result.population(generation)
        assert np.array_equal(output.samples, kept) and np.array_equal(output.parent_ids, parents)
    assert len(result.population(1)) == size  # a sampling generation's output is its candidates
    assert len(np.load(run.layout.release(2))["noisy_histogram"]) == 60
    assert len(np.load(run.layout.release(3))["noisy_histogram"]) == 180  # one bin per candidate
    assert audit_run(run).first_failure is None
    folder = result.export(str(tmp_path / "out"), format="csv")
    assert len((folder / "synthetic.csv").read_text().splitlines()) == size + 1


@pytest.mark.slow
def test_the_first_vote_picks_size_parents_among_more_random_candidates(tmp_path: Path) -> None:
    """initial_candidates_per_slot: the random API draws that many samples per slot of generation 0, the first vote
    has one bin per candidate and picks ``size`` parents; the audit knows the larger first histogram."""
    result = _run(tmp_path, "initial", "population.initial_candidates_per_slot=3")
    run = result.run
    size = run.config.population.size
    initial = steps.load_candidates(run, 0)
    assert len(initial) == 3 * size and len(np.unique(initial.samples, axis=0)) > 2 * size  # fresh draws
    assert len(np.load(run.layout.release(1))["noisy_histogram"]) == 3 * size
    assert len(np.load(run.layout.selection(1))["parent_ids"]) == size
    assert [len(steps.load_candidates(run, g)) for g in (1, 2, 3)] == [60, 180, 180]
    assert audit_run(run).first_failure is None


@pytest.mark.slow
@pytest.mark.parametrize("selection", ["sample", "family"])
def test_more_random_candidates_per_slot_keep_the_slots_class(tmp_path: Path, selection: str) -> None:
    """Conditional: a slot's random candidates share its class, and the first vote fills each class's slots from
    that class's candidates (``family``: each slot from its own candidates)."""
    result = privevo.run("configs/tiny-text.yaml", overrides=[
        "population.initial_candidates_per_slot=2", "population.generations=1", "population.degrees=0.5",
        f"population.schedule=[{{generations: 1, selection: {selection}}}]"],
        run_root=str(tmp_path / "runs"), private_root=str(tmp_path / "private"), run_id="classes")
    run = result.run
    initial = steps.load_candidates(run, 0)
    slot_labels = initial.labels[::2]
    assert len(initial) == 2 * run.config.population.size
    assert np.array_equal(initial.labels, np.repeat(slot_labels, 2)) and len(np.unique(slot_labels)) == 2
    parents = np.load(run.layout.selection(1))["parent_ids"]
    assert np.array_equal(initial.labels[parents], slot_labels)
    if selection == "family":
        assert np.array_equal(parents // 2, np.arange(len(slot_labels)))
        weights = privacy.threshold(np.load(run.layout.release(1))["noisy_histogram"],
                                    run.config.population.phase(1, run.config.privacy).threshold)
        assert np.array_equal(weights.reshape(-1, 2).max(axis=1), weights[parents])  # the slot's largest count
    assert audit_run(run).first_failure is None


@pytest.mark.slow
@pytest.mark.parametrize("lookahead", [0, 1])
def test_the_candidates_do_not_depend_on_the_sharding(tmp_path: Path, lookahead: int) -> None:
    """Without noise the whole run is a function of the config: one shard and three make the same candidates,
    exactly (the table model is numpy on discrete codes), kept parents and reused lookahead variations included."""
    options = [*NON_PRIVATE, f"population.lookahead={lookahead}", "population.reuse_lookahead=true"]
    runs = [_run(tmp_path, f"shards-{n}", f"population.num_shards={n}", *options).run for n in (1, 3)]
    for generation in range(4):
        one, three = (steps.load_candidates(run, generation) for run in runs)
        assert np.array_equal(one.samples, three.samples)
        assert np.array_equal(one.parent_ids, three.parent_ids)
    if lookahead:
        records = [json.loads(Path(runs[1].layout.step_record(3, "generate_variations", s)).read_text())["params"]
                   for s in range(3)]
        assert sum(r["reused_lookahead"] for r in records) > 0
        assert sum(r["reused_lookahead"] + r["fresh_variations"] for r in records) == 2 * 60
