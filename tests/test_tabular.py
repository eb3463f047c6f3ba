"""Tables: the public schema and its codes, the loaders, Tab-PE's APIs, the vote's embedding and the table files."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privevo.config import DataConfig
from privevo.data_quality import DataQuality
from privevo.errors import UserError
from privevo.population import Population
from privevo.tabular import table_io
from privevo.tabular.data import load_table
from privevo.tabular.embedding import TabularEmbedding
from privevo.tabular.model import TabularModel, mutation_rates
from privevo.tabular.schema import ColumnSpec, Schema, SchemaSpec, check_codes, load_schema_spec

COLUMNS = [
    {"name": "age", "type": "integer", "min": 17, "max": 90},
    {"name": "job", "type": "categorical", "categories": ["a", "b", "c", "other"], "other": "other"},
    {"name": "gain", "type": "float", "min": 0, "max": 1000, "atoms": [0]},
    {"name": "income", "type": "categorical", "categories": ["<=50K", ">50K"]},
]


def schema() -> Schema:
    return Schema(SchemaSpec.model_validate({"columns": COLUMNS, "label": "income"}))


def test_schema_codes_clip_map_to_other_and_skip() -> None:
    quality, adjusted = DataQuality(), Counter[str]()
    rows = [["30", "b", "12.5", "<=50K"], ["99", "zz", "-3", ">50K."], ["40", "a", "?", "<=50K"], ["1", "a"]]
    codes = schema().encode(rows, na_values=["?"], strip_suffix=".", quality=quality, adjusted=adjusted)
    assert codes.tolist() == [[30, 1, 12.5, 0], [90, 3, 0, 1]]
    assert quality.records_read == 4 and [s["reason"] for s in quality.skipped] == [
        "gain: missing value", "wrong number of values"]
    assert adjusted == {"age: clipped to its bounds": 1, "job: mapped to other": 1, "gain: clipped to its bounds": 1}
    assert schema().decode(codes) == {"age": [30, 90], "job": ["b", "other"], "gain": [12.5, 0.0],
                                      "income": ["<=50K", ">50K"]}


def test_schema_rejects_bad_declarations() -> None:
    with pytest.raises(ValueError, match="needs its categories"):
        ColumnSpec(name="x", type="categorical")
    with pytest.raises(ValueError, match="bounds min < max"):
        ColumnSpec(name="x", type="float", min=1, max=1)
    with pytest.raises(ValueError, match="atoms must lie within"):
        ColumnSpec(name="x", type="integer", min=0, max=5, atoms=[7])
    with pytest.raises(UserError, match="label 'nope' is not a column"):
        load_schema_spec([ColumnSpec.model_validate(c) for c in COLUMNS], "nope", None)
    with pytest.raises(UserError, match="exactly one of"):
        load_schema_spec(None, None, None)
    with pytest.raises(UserError, match="outside its schema's domain"):
        check_codes(schema(), np.array([[10.0, 0, 0, 0]]))


def test_schema_file(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump({"columns": COLUMNS, "label": "income"}))
    assert load_schema_spec(None, None, str(path)) == schema().spec


def test_csv_and_parquet_loaders(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("|a comment\n30, b, 12.5, <=50K.\n50, ?, 7, >50K.\n\n20, c, 1, >50K.\n")
    data = DataConfig.model_validate({"source": "csv", "path": str(tmp_path / "t.csv"),
                                      "csv": {"header": False, "skip_rows": 1, "na_values": ["?"], "strip_suffix": "."}})
    quality = DataQuality()
    codes, labels = load_table(data, schema(), seed=0, quality=quality)
    assert codes.tolist() == [[30, 1, 12.5, 0], [50, 3, 7, 1], [20, 2, 1, 1]]
    assert labels is not None and labels.tolist() == [0, 1, 1]
    assert quality.records_kept == 3 and quality.classes == {"<=50K": 1, ">50K": 2}
    (tmp_path / "t.parquet").write_bytes(table_io.parquet_bytes(schema(), codes))
    parquet = DataConfig.model_validate({"source": "parquet", "path": str(tmp_path / "t.parquet"), "classes": [">50K"]})
    again, _ = load_table(parquet, schema(), seed=0)
    assert again.tolist() == codes[1:].tolist()
    (tmp_path / "h.csv").write_text("job,age,income\nb,30,>50K\n")
    with pytest.raises(UserError, match="no column 'gain' of the schema"):
        load_table(DataConfig(source="csv", path=str(tmp_path / "h.csv")), schema(), seed=0)


def test_random_api_uniform_on_the_declared_domain_and_seeded_per_sample() -> None:
    model = TabularModel(schema())
    rows = model.random(4000, seed=3)
    check_codes(schema(), rows)
    assert set(np.unique(rows[:, 1])) == {0, 1, 2, 3} and rows[:, 0].min() == 17 and rows[:, 0].max() == 90
    assert abs(rows[:, 2].mean() - 500) < 30  # uniform on [0, 1000]: sd of the mean ~ 4.6
    shards = np.concatenate([model.random(1500, seed=3), model.random(2500, seed=3, first_index=1500)])
    assert np.array_equal(shards, rows)
    assert not np.array_equal(model.random(10, seed=4), rows[:10])
    assert np.all(model.random(50, labels=1, seed=0)[:, 3] == 1)


def test_random_api_from_a_public_prior() -> None:
    prior = np.array([[20.0, 0, 0, 0], [60.0, 2, 1000, 1]])
    rows = TabularModel(schema(), prior=prior).random(200, seed=0)
    for j in range(4):
        assert set(rows[:, j]) == set(prior[:, j])


def test_variation_api_mutation_rate_and_atoms() -> None:
    model = TabularModel(schema())
    parents = model.random(3000, seed=1)
    assert np.array_equal(model.variation(parents, 0.0, seed=2), parents)
    children = model.variation(parents, 0.2, seed=2)
    check_codes(schema(), children)
    changed = np.mean(children[:, 1] != parents[:, 1])
    assert 0.2 * 0.75 - 0.03 < changed < 0.2 * 0.75 + 0.03  # resampled with p, lands elsewhere 3 times in 4
    shift = np.abs(children[:, 2] - parents[:, 2])
    assert shift.max() <= 0.2 * 1000 + 1e-9 and np.mean(children[:, 2] == 0) < 0.07  # only clipping: 5% expected
    split = np.concatenate([model.variation(parents[:1000], 0.2, seed=2),
                            model.variation(parents[1000:], 0.2, seed=2, first_index=1000)])
    assert np.array_equal(split, children)
    atoms = TabularModel(schema(), atom_rate=1.0).variation(parents, 0.5, seed=2)
    assert 0.53 < np.mean(atoms[:, 2] == 0) < 0.59  # jumps 50%, plus clipping of the other half: 6.25%
    pinned = model.variation(parents, 1.0, labels=np.ones(3000, np.int64), seed=2)
    assert np.all(pinned[:, 3] == 1)


def test_mutation_rates_decay_from_init_to_final() -> None:
    rates = mutation_rates(29)
    assert rates[-1] == pytest.approx(0.01) and rates[0] == pytest.approx(0.5 - 0.49 * (1 / 29) ** 0.2)
    assert all(a > b for a, b in itertools.pairwise(rates))


def test_embedding_scales_by_public_bounds_and_weights_categories() -> None:
    embedding = TabularEmbedding(schema(), categorical_weight=0.5)
    features = embedding.embed(np.array([[17.0, 3, 1000, 1], [90.0, 0, 0, 0]]))
    assert features.dtype == np.float32 and embedding.dim == 9
    # age, job one-hot, gain scaled, gain at its atom 0 (weighted like a category), income one-hot
    assert features.tolist() == [[0.0, 0, 0, 0, 0.5, 1.0, 0, 0, 0.5], [1.0, 0.5, 0, 0, 0, 0.0, 0.5, 0.5, 0]]


def test_embedding_log_scale_for_a_long_tail() -> None:
    spec = {"columns": [{"name": "gain", "type": "integer", "min": 0, "max": 99999, "scale": "log"}]}
    features = TabularEmbedding(Schema(SchemaSpec.model_validate(spec))).embed(np.array([[0.0], [99999.0], [3000.0]]))
    assert features[:2, 0].tolist() == [0.0, 1.0]
    assert features[2, 0] == pytest.approx(np.log1p(3000) / np.log1p(99999), rel=1e-6)  # 0.70, not 0.03
    with pytest.raises(ValueError, match="scale are for integer and float columns"):
        ColumnSpec(name="x", type="categorical", categories=["a"], scale="log")


def test_population_file_round_trip() -> None:
    codes = TabularModel(schema()).random(7, seed=0)
    population = Population(samples=codes, labels=np.full(7, -1), parent_ids=np.arange(7), generation=3)
    data = table_io.encode_population(population)
    assert data == table_io.encode_population(population)
    back = table_io.decode_population(data, "p.parquet")
    assert np.array_equal(back.samples, codes) and back.generation == 3 and back.parent_ids.tolist() == list(range(7))
    with pytest.raises(UserError, match=r"p\.parquet is not a readable table population"):
        table_io.decode_population(b"junk", "p.parquet")


def test_export_csv_holds_values() -> None:
    text = table_io.csv_bytes(schema(), np.array([[30.0, 1, 2.5, 1]])).decode()
    assert text == "age,job,gain,income\n30,b,2.5,>50K\n"


def _private_config(tmp_path: Path, csv_text: str, name: str) -> Any:
    from privevo.config import load_config

    path = tmp_path / f"{name}.csv"
    path.write_text(csv_text)
    return load_config("configs/tiny-tabular.yaml", [f"private.path={path}", f"name={name}"])


def test_no_statistic_of_the_private_table_reaches_the_random_api(tmp_path: Path) -> None:
    from privevo.modalities import get_modality

    narrow = "age,job,hours,score,income\n30,clerk,40,0.5,<=50K\n31,clerk,40,0.5,<=50K\n"
    wide = "age,job,hours,score,income\n17,manager,1,0.0,>50K\n90,sales,99,1.0,<=50K\n150,SECRET,500,7,>50K\n"
    modality = get_modality("tabular")
    outputs = [modality.load_model(_private_config(tmp_path, text, name)).random(500, seed=7)
               for text, name in ((narrow, "narrow"), (wide, "wide"))]
    assert np.array_equal(outputs[0], outputs[1])
    assert set(np.unique(outputs[0][:, 1])) == {0, 1, 2, 3}  # every declared category, not the two seen


@pytest.mark.slow
def test_released_tier_holds_only_the_schemas_domain(tmp_path: Path) -> None:
    """A private table with an undeclared category and out-of-range numbers: the run releases none of them, and
    the private tier's data-quality report counts them."""
    import privevo
    from privevo import storage

    rows = Path("tests/data/tiny-tabular/private.csv").read_text().splitlines()
    secret = [*rows, "150,SECRETJOB,500,7.5,>50K", "150,clerk,500,7.5,>50K", "16,clerk,0,-1,<=50K"]
    config = _private_config(tmp_path, "\n".join(secret) + "\n", "secret")
    (tmp_path / "c.yaml").write_text(__import__("yaml").safe_dump(config.model_dump(mode="json")))
    run = privevo.run(str(tmp_path / "c.yaml"), run_root=str(tmp_path / "runs"),
                      private_root=str(tmp_path / "private"), overrides=["privacy.max_private_rows=250"])
    released = storage.list_files(str(run.path))
    assert all(b"SECRETJOB" not in storage.read_bytes(uri) for uri in released)
    for generation in range(4):
        samples = run.population(generation=generation).samples
        assert samples[:, 0].max() <= 90 and samples[:, 2].max() <= 99 and samples[:, 3].max() <= 1
    run.export(str(tmp_path / "out"), format="csv")
    assert b"SECRETJOB" not in (tmp_path / "out" / "synthetic.csv").read_bytes()
    quality = list((tmp_path / "private").rglob("data_quality.json"))
    report = quality[0].read_bytes() if quality else b""
    assert b"job: missing or undeclared value" in report and b"age: clipped to its bounds" in report


@pytest.mark.parametrize(("name", "generations"), [("tiny-tabular", 3), ("adult", 1)])
def test_shipped_table_configs_follow_tab_pe_decay(name: str, generations: int) -> None:
    from privevo.config import load_config

    config = load_config(f"configs/{name}.yaml")
    assert config.population.degree_schedule() == pytest.approx(mutation_rates(generations), abs=1e-4)
    if name == "adult":
        n = config.privacy.max_private_rows  # a public bound, not the private count
        assert n is not None and config.privacy.delta <= 1 / (n * np.log(n))
