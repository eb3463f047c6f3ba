"""export: a generation's synthetic images as an imagefolder or npz, with the run's privacy statement; refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import privevo
from privevo import api
from privevo.cli import main
from privevo.image.export import label_names
from privevo.population import Population

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> api.RunResult:
    """A conditional configs/tiny.yaml run through privevo.run (labelled samples), once for this module."""
    base = tmp_path_factory.mktemp("export")
    return privevo.run(TINY, {"population.conditional": True}, run_root=base / "runs", private_root=base / "private",
                       run_id="export")


def read_imagefolder(folder: Path) -> tuple[list[dict[str, str]], np.ndarray]:
    """metadata.csv's rows and the images they name, stacked NHWC."""
    with open(folder / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = np.stack([np.asarray(Image.open(folder / row["file_name"])) for row in rows])
    return rows, images[..., None] if images.ndim == 3 else images


def test_imagefolder_holds_the_last_generation_with_class_names(finished, tmp_path):
    folder = finished.export(tmp_path / "out")
    population = finished.population()
    rows, images = read_imagefolder(folder)
    assert sorted(p.name for p in folder.glob("*.png")) == [row["file_name"] for row in rows]
    assert len(rows) == len(population) == 24 and list(rows[0]) == ["file_name", "label"]
    assert np.array_equal(images, population.samples)
    names = finished.run.config.class_names
    assert [row["label"] for row in rows] == [names[i] for i in population.labels]
    assert {row["label"] for row in rows} == {"Trouser", "Sneaker", "Bag"}
    statement = json.loads((folder / "privacy.json").read_text())
    assert statement["epsilon"] == finished.epsilon and statement["delta"] == 1e-5
    assert statement["generation"] == statement["generations"] == 2 and statement["votes"] == 2
    assert statement["mechanism"] == "discrete_gaussian" and statement["format"] == "imagefolder"
    assert sorted(p.name for p in folder.iterdir() if p.suffix != ".png") == ["metadata.csv", "privacy.json"]


def test_npz_of_an_earlier_generation_through_the_command_line(finished, tmp_path, capsys):
    folder = tmp_path / "npz"
    folder.mkdir()  # an empty folder is fine
    assert main(["export", finished.path, "--to", str(folder), "--generation", "1", "--format", "npz"]) == 0
    assert f"exported: {folder}" in capsys.readouterr().out
    with np.load(folder / "synthetic.npz") as npz:
        population = finished.population(1)
        assert np.array_equal(npz["images"], population.samples) and np.array_equal(npz["labels"], population.labels)
        assert int(npz["generation"]) == 1 and list(npz["class_names"]) == finished.run.config.class_names
    statement = json.loads((folder / "privacy.json").read_text())
    assert statement["generation"] == 1 and statement["epsilon_through_this_generation"] < statement["epsilon"]


def test_unlabelled_samples_have_no_label_column():
    population = Population(np.zeros((2, 4, 4, 1), np.uint8), np.full(2, -1), np.full(2, -1), generation=0)
    assert label_names(population, ["a", "b"]) is None
    labelled = Population(population.samples, np.array([1, 0]), population.parent_ids, generation=0)
    assert label_names(labelled, ["a", "b"]) == ["b", "a"] and label_names(labelled, None) == ["1", "0"]


def run_cli(argv: list[str]) -> int:
    """main's exit code, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--generation", "3"], "generations 0 to 2: generation 3 does not exist"),
    (["--format", "parquet"], "unknown export format 'parquet' for this image run: use imagefolder or npz"),
])
def test_bad_generation_or_format_is_refused_in_one_line(finished, tmp_path, capsys, extra, fragment):
    folder = tmp_path / "out"
    assert run_cli(["export", finished.path, "--to", str(folder), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written, no staging folder left


def test_a_folder_that_is_not_empty_is_refused_and_kept(finished, tmp_path, capsys):
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep me")
    assert main(["export", finished.path, "--to", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --to {folder} is a folder that is not empty: choose a new or empty folder\n"
    assert [p.name for p in folder.iterdir()] == ["mine.txt"] and [p.name for p in tmp_path.iterdir()] == ["taken"]
    with pytest.raises(privevo.errors.UserError, match="unknown export format 'tar'"):
        finished.export(tmp_path / "new", format="tar")


def test_a_failed_export_leaves_nothing(finished, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("privevo.image.export.write_imagefolder", broken)
    with pytest.raises(OSError, match="disk full"):
        finished.export(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_run_summary_says_where_the_synthetic_set_is_and_how_to_export_it(tiny_run, tmp_path):
    lines = tiny_run.stdout.splitlines()
    population = Path(tiny_run.run_dir) / "gen-002" / "population.npz"
    assert f"synthetic data: {population}" in lines
    command = f"export it: python pipeline.py export {tiny_run.run_dir} --to DIR"
    assert command in lines
    assert main(["export", str(tiny_run.run_dir), "--to", str(tmp_path / "set")]) == 0
    rows, images = read_imagefolder(tmp_path / "set")
    assert len(rows) == 24 and np.array_equal(images, privevo.open_run(tiny_run.run_dir).population().samples)
